# %preun of execgo-runtime-helper ($1: 0 on removal, 1 on upgrade). On
# removal the units are disabled and stopped; running tasks finish under
# their shims.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now execgo-runtime-helper.socket execgo-runtime-helper.service >/dev/null 2>&1 || :
fi
