# %postun of execgo-runtime ($1: 0 on removal, 1 on upgrade). The state in
# /var/lib/execgo-runtime is kept, as rpm keeps files it did not install.
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null 2>&1 || :
fi
