# %pre of execgo-runtime-helper: the accounts, before the files that name
# them are installed (the socket unit's group). systemd-sysusers reads the
# sysusers.d lines from stdin, as %sysusers_create_compat does.
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers --replace=/usr/lib/sysusers.d/execgo-runtime.conf - <<'SYSUSERS' || :
u execgo-runtime - "execgo-runtime service" /var/lib/execgo-runtime /usr/sbin/nologin
SYSUSERS
fi
