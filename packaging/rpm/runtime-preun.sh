# %preun of execgo-runtime ($1: 0 on removal, 1 on upgrade).
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now execgo-runtime.service >/dev/null 2>&1 || :
fi
