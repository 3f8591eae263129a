# %postun of execgo-runtime-helper ($1: 0 on removal, 1 on upgrade). The
# accounts stay, as Fedora's packaging guidelines keep them.
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
