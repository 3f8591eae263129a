# %post of execgo-runtime ($1: 1 on install, 2 on upgrade). The service
# follows the preset policy and is started on a first install, restarted
# on upgrade (only the HTTP service restarts: tasks run under the helper's
# shims and are re-attached).
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    systemctl --no-reload preset execgo-runtime.service >/dev/null 2>&1 || :
    if [ -d /run/systemd/system ] && systemctl -q is-enabled execgo-runtime.service; then
        systemctl start execgo-runtime.service >/dev/null 2>&1 || :
    fi
elif [ -d /run/systemd/system ]; then
    systemctl try-restart execgo-runtime.service >/dev/null 2>&1 || :
fi
