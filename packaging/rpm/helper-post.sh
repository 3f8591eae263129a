# %post of execgo-runtime-helper ($1: 1 on install, 2 on upgrade). Like
# %systemd_post: the socket follows the preset policy on a first install.
# On upgrade a running helper is restarted; KillMode=process keeps every
# running task's shim alive.
systemd-tmpfiles --create /usr/lib/tmpfiles.d/execgo-runtime.conf >/dev/null 2>&1 || :
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset execgo-runtime-helper.socket >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ]; then
        systemctl start execgo-runtime-helper.socket >/dev/null 2>&1 || :
    fi
elif [ -d /run/systemd/system ]; then
    systemctl try-restart execgo-runtime-helper.service >/dev/null 2>&1 || :
fi
