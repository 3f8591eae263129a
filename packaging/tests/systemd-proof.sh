#!/usr/bin/env bash
# Proof of the packages on a real systemd: boots systemd as pid 1 of a
# minimal Debian bookworm root in fresh namespaces (mount, pid, cgroup,
# uts, ipc, net; unshare + pivot_root), installs both .debs and checks what
# an operator relies on:
#   - the helper's socket and both services are active; the socket is
#     root:execgo-runtime 0660; the runtime runs as execgo-runtime with no
#     capabilities;
#   - a process task and a linux_sandbox task end `success`, and
#     `journalctl TASK_ID=<id>` shows the task's lines;
#   - a running task survives `systemctl restart` of the helper and of the
#     runtime, and an upgrade to a newer version of both packages;
#   - `dpkg --purge` leaves no unit, file or state behind (the accounts
#     stay, as Debian keeps system accounts).
#
# Needs root (skips with a reason otherwise), debootstrap (installed when
# missing) and the packages' build tools (packaging/build.sh). The root is
# cached in $EXECGO_PROOF_CACHE (default /var/cache/execgo-runtime-ci) and
# used read-only, below an overlay. Everything it mounts lives in the
# namespaces it creates; on exit it kills that pid namespace and removes
# its cgroups and work directory.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[systemd-proof %s] %s\n' "$(date -u +%T)" "$*"; }
fail() {
    log "FAIL: $*"
    exit 1
}

if [ "$(id -u)" != 0 ]; then
    echo "systemd-proof: skipped: needs root (namespaces, mounts, cgroups)"
    exit 0
fi
for tool in unshare nsenter pivot_root; do
    command -v "$tool" >/dev/null || fail "$tool is missing (util-linux)"
done

started=$(date +%s)
target=${CARGO_TARGET_DIR:-$PWD/target}
cache=${EXECGO_PROOF_CACHE:-/var/cache/execgo-runtime-ci}
lower=$cache/bookworm-systemd
name=execgo-proof-$$
work=$(mktemp -d /var/tmp/execgo-proof.XXXXXX)
cgroups=()
pid1=
boot_pid=

cleanup() {
    set +e
    if [ -n "$pid1" ] && kill -0 "$pid1" 2>/dev/null; then
        # Killing pid 1 of the namespace kills every process in it; the
        # mounts go with the last of them.
        kill -KILL "$pid1"
    fi
    [ -n "$boot_pid" ] && wait "$boot_pid" 2>/dev/null
    # Children first: systemd and the helper made cgroups below ours.
    local cg
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        local busy=
        for cg in "${cgroups[@]}"; do
            [ -d "$cg" ] || continue
            find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
            [ -d "$cg" ] && busy=1
        done
        [ -z "$busy" ] && break
        sleep 0.5
    done
    rm -rf "$work"
}
trap cleanup EXIT

# --- packages: the version under test and the same code as a newer one ---
log "building packages"
packaging/build.sh --no-rpm >"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log"
    fail "packaging/build.sh"
}
mkdir -p "$work/v1" "$work/v2"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
cp "$target/packages/execgo-runtime_${version}-1_"*.deb \
    "$target/packages/execgo-runtime-helper_${version}-1_"*.deb "$work/v1/"
packaging/build.sh --no-rpm --deb-version "${version}-2" >>"$work/build.log" 2>&1 || {
    tail -n 40 "$work/build.log"
    fail "packaging/build.sh --deb-version"
}
cp "$target/packages/execgo-runtime_${version}-2_"*.deb \
    "$target/packages/execgo-runtime-helper_${version}-2_"*.deb "$work/v2/"

# --- a minimal bookworm with systemd, cached ---
if [ ! -x "$lower/lib/systemd/systemd" ]; then
    command -v debootstrap >/dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
    }
    log "debootstrap into $lower (cached for later runs)"
    rm -rf "$lower.tmp"
    mkdir -p "$cache"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,init-system-helpers,dbus \
        bookworm "$lower.tmp" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 || {
        tail -n 20 "$work/debootstrap.log"
        fail "debootstrap"
    }
    mv "$lower.tmp" "$lower"
fi

# --- cgroups of our own, in every hierarchy the root will see ---
# The namespace's cgroup root is a fresh child of our current cgroup in
# each hierarchy, so systemd inside manages a subtree and nothing else.
# Hybrid hosts (as the development machines: systemd's named hierarchy,
# the unified one beside it, memory and pids on v1) get the same layout;
# a unified-only host gets one cgroup2 mount (that branch has not run on
# the hybrid development machines).
own_cgroup() { # hierarchy mount point, key of /proc/self/cgroup
    local path
    path=$(awk -F: -v k="$2" '$2 == k { print $3 }' /proc/self/cgroup)
    echo "$1${path%/}/$name"
}
declare -A cg_of
v1_controllers=()
if [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ]; then
    layout=unified
    cg_of[unified]=$(own_cgroup /sys/fs/cgroup "")
else
    layout=hybrid
    for dir in systemd unified; do
        mountpoint -q "/sys/fs/cgroup/$dir" || fail "/sys/fs/cgroup/$dir is not mounted: neither a hybrid nor a unified cgroup host"
    done
    cg_of[systemd]=$(own_cgroup /sys/fs/cgroup/systemd name=systemd)
    cg_of[unified]=$(own_cgroup /sys/fs/cgroup/unified "")
    for c in memory pids freezer; do
        if mountpoint -q "/sys/fs/cgroup/$c"; then
            v1_controllers+=("$c")
            cg_of[$c]=$(own_cgroup "/sys/fs/cgroup/$c" "$c")
        fi
    done
fi
log "cgroup layout: $layout${v1_controllers[*]:+ (v1: ${v1_controllers[*]})}"
for h in "${!cg_of[@]}"; do
    mkdir "${cg_of[$h]}"
    cgroups+=("${cg_of[$h]}")
done

# --- boot ---
root=$work/root
mkdir -p "$root" "$work/upper" "$work/ovl" "$work/shared"
cat >"$work/boot.sh" <<EOF
set -euo pipefail
# Our pid as the host sees it (this /proc is still the host's).
read -r host_pid _ </proc/self/stat
echo "\$host_pid" >"$work/pid1"
mount --make-rprivate /
mount -t overlay overlay -o lowerdir=$lower,upperdir=$work/upper,workdir=$work/ovl "$root"
mount -t proc proc "$root/proc"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
if [ $layout = unified ]; then
    mount -t cgroup2 -o nsdelegate cgroup2 "$root/sys/fs/cgroup"
else
    mount -t tmpfs -o mode=755,nosuid,nodev,noexec tmpfs "$root/sys/fs/cgroup"
    mkdir "$root/sys/fs/cgroup/systemd" "$root/sys/fs/cgroup/unified"
    mount -t cgroup -o none,name=systemd,xattr cgroup "$root/sys/fs/cgroup/systemd"
    mount -t cgroup2 -o nsdelegate cgroup2 "$root/sys/fs/cgroup/unified"
    for c in ${v1_controllers[*]}; do
        mkdir "$root/sys/fs/cgroup/\$c"
        mount -t cgroup -o "\$c" cgroup "$root/sys/fs/cgroup/\$c"
    done
fi
mount -t tmpfs -o mode=755,nosuid tmpfs "$root/dev"
for node in null:1:3 zero:1:5 full:1:7 random:1:8 urandom:1:9 tty:5:0; do
    IFS=: read -r n maj min <<<"\$node"
    mknod -m 666 "$root/dev/\$n" c "\$maj" "\$min"
done
mkdir "$root/dev/pts" "$root/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts"
ln -s pts/ptmx "$root/dev/ptmx"
touch "$root/dev/console"
mount --bind "$root/dev/null" "$root/dev/console"
mkdir -p "$root/mnt/proof"
mount --bind "$work/shared" "$root/mnt/proof"
cd "$root"
mkdir -p .oldroot
pivot_root . .oldroot
umount -l /.oldroot
rmdir /.oldroot
export container=execgo-proof
exec /lib/systemd/systemd --log-level=warning
EOF
log "booting systemd in fresh namespaces"
(
    # Into our cgroups first; the cgroup namespace then starts there.
    for h in "${!cg_of[@]}"; do
        echo "$BASHPID" >"${cg_of[$h]}/cgroup.procs"
    done
    exec unshare --mount --pid --cgroup --uts --ipc --net --fork --kill-child \
        bash "$work/boot.sh" >"$work/systemd.log" 2>&1
) &
boot_pid=$!
for _ in $(seq 100); do
    [ -s "$work/pid1" ] && break
    sleep 0.1
done
[ -s "$work/pid1" ] || fail "the namespace did not start: $(cat "$work/systemd.log")"
pid1=$(cat "$work/pid1")

# Runs a command inside the booted root, with a clean environment.
inside() {
    timeout 120 nsenter --target "$pid1" --mount --uts --ipc --net --pid --cgroup \
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}

state=
for _ in $(seq 120); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
    sleep 0.5
done
case "$state" in
running | degraded) log "systemd is up: $state" ;;
*) fail "systemd did not finish booting ($state): $(tail -n 20 "$work/systemd.log")" ;;
esac
if [ "$state" = degraded ]; then
    log "failed units (not ours): $(inside systemctl --failed --plain --no-legend | tr '\n' ' ')"
fi

# --- install ---
cp "$work"/v1/*.deb "$work"/v2/*.deb "$work/shared/"
v1=$(cd "$work/v1" && ls *.deb | sed 's|^|/mnt/proof/|' | tr '\n' ' ')
v2=$(cd "$work/v2" && ls *.deb | sed 's|^|/mnt/proof/|' | tr '\n' ' ')
log "dpkg -i $v1"
# shellcheck disable=SC2086
inside dpkg -i $v1 >"$work/dpkg.log" 2>&1 || {
    cat "$work/dpkg.log"
    fail "dpkg -i"
}

wait_active() { # unit
    local s=
    for _ in $(seq 100); do
        s=$(inside systemctl is-active "$1" || true)
        [ "$s" = active ] && return 0
        sleep 0.2
    done
    inside systemctl status --no-pager "$1" || true
    inside journalctl --no-pager -n 30 -u "$1" || true
    fail "$1 is $s"
}
wait_active execgo-runtime-helper.socket
wait_active execgo-runtime.service
wait_active execgo-runtime-helper.service
log "units active: execgo-runtime-helper.socket, execgo-runtime-helper.service, execgo-runtime.service"

# The root has no man-db, so the Documentation= pages are checked as files
# rather than by running man(1).
for page in execgo-runtime execgo-runtime-serve execgo-runtime-helper; do
    inside test -f "/usr/share/man/man1/$page.1.gz" || fail "no man page $page(1)"
done
verify=$(inside systemd-analyze verify --man=no execgo-runtime.service execgo-runtime-helper.service \
    execgo-runtime-helper.socket 2>&1) || fail "systemd-analyze verify: $verify"
[ -z "$verify" ] || fail "systemd-analyze verify: $verify"
log "systemd-analyze verify: nothing to say; the man pages named by Documentation= are installed"
for unit in execgo-runtime.service execgo-runtime-helper.service; do
    log "systemd-analyze security $unit: $(inside systemd-analyze security --no-pager "$unit" 2>&1 | tail -n 1 | sed 's/.*: //')"
done

sock=$(inside stat -c '%U:%G %a %F' /run/execgo-runtime/helper.sock)
[ "$sock" = "root:execgo-runtime 660 socket" ] || fail "helper socket is '$sock'"
log "socket: $sock"

main_pid=$(inside systemctl show -P MainPID execgo-runtime.service)
user=$(inside stat -c %U "/proc/$main_pid")
[ "$user" = execgo-runtime ] || fail "the runtime runs as '$user'"
caps=$(inside grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' "/proc/$main_pid/status" | awk '{print $2}' | sort -u | tr '\n' ' ')
[ "$caps" = "0000000000000000 " ] || fail "the runtime has capabilities: $caps"
log "runtime: user $user, capability sets all empty"

# --- where the helper and its tasks live (--cgroup-root delegated) ---
unit_cg=$(inside systemctl show -P ControlGroup execgo-runtime-helper.service)
[ -n "$unit_cg" ] && [ "$unit_cg" != / ] || fail "the helper unit has no cgroup of its own ('$unit_cg')"
cg_of_pid() { # pid, key of /proc/<pid>/cgroup ("" for the unified hierarchy)
    inside awk -F: -v k="$2" '$2 == k { print $3 }' "/proc/$1/cgroup"
}
# The hierarchies the unit's processes are placed in, by key, and where
# a process task's one cgroup goes (the one that kills: the v1 freezer,
# else the unified hierarchy's cgroup.kill), mounted where.
if [ $layout = unified ]; then
    unit_keys=("")
    task_key=
    task_mount=/sys/fs/cgroup
    # systemd 252 starts the helper in the unit's cgroup itself; on a pure
    # v2 host the helper then keeps the default root (see
    # docs/deployment.md), so that is what is checked.
    supervisor=$unit_cg
    task_parent=/execgo-runtime
else
    unit_keys=(name=systemd "" memory pids)
    if [[ " ${v1_controllers[*]} " == *" freezer "* ]]; then
        task_key=freezer
        task_mount=/sys/fs/cgroup/freezer
    else
        task_key=
        task_mount=/sys/fs/cgroup/unified
    fi
    supervisor=$unit_cg/supervisor
    task_parent=$unit_cg
fi
check_supervisor() { # pid, what
    local k got
    for k in "${unit_keys[@]}"; do
        [[ $k =~ ^(memory|pids)$ && " ${v1_controllers[*]} " != *" $k "* ]] && continue
        got=$(cg_of_pid "$1" "$k")
        [ "$got" = "$supervisor" ] || fail "$2 (pid $1) is in '$got' in the '${k:-unified}' hierarchy, not in $supervisor"
    done
}
helper_pid=$(inside systemctl show -P MainPID execgo-runtime-helper.service)
check_supervisor "$helper_pid" "the helper"
# Every hierarchy the tasks use is delegated (hybrid), or the fallback is
# explained (unified).
helper_journal=$(inside journalctl --no-pager -o json -u execgo-runtime-helper.service)
not_delegated=$(grep 'not delegated' <<<"$helper_journal" || true)
if [ $layout = unified ]; then
    [ -n "$not_delegated" ] || fail "the helper did not say why task cgroups stay under /sys/fs/cgroup/execgo-runtime"
else
    [ -z "$not_delegated" ] || fail "the helper left hierarchies out: $not_delegated"
    grep -q "delegated: $unit_cg" <<<"$helper_journal" ||
        fail "the helper's start-up line does not name its delegated cgroup $unit_cg"
fi
log "helper (pid $helper_pid) in $supervisor (unit cgroup $unit_cg)"

run_task() { # json → prints the terminal status
    inside execgo-runtime run --poll-interval-ms 100 --json "$1"
}
field() { # json text, key
    python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(v.get(sys.argv[2], ""))' "$1" "$2"
}

out=$(run_task '{"task_id":"proof-process","execution":{"kind":"command","program":"/bin/sh","args":["-c","echo proof-process-out"]}}')
[ "$(field "$out" status)" = success ] || fail "process task: $out"
log "process task: success"

out=$(run_task '{"task_id":"proof-sandbox","execution":{"kind":"command","program":"/bin/sh","args":["-c","echo sandboxed $(hostname)"]},"sandbox":{"profile":"linux_sandbox"},"policy":{"capability_mode":"strict"},"limits":{"memory_bytes":268435456,"pids_max":64}}')
[ "$(field "$out" status)" = success ] || fail "linux_sandbox task: $out"
log "linux_sandbox task (strict, memory and pids limits): success"

journal=$(inside journalctl --no-pager -o cat TASK_ID=proof-process)
[ -n "$journal" ] || fail "journalctl TASK_ID=proof-process shows nothing"
log "journalctl TASK_ID=proof-process: $(echo "$journal" | wc -l) lines"

# --- a task across restarts and an upgrade ---
submit_sleep() { # task id
    inside execgo-runtime submit --json "{\"task_id\":\"$1\",\"execution\":{\"kind\":\"command\",\"program\":\"/bin/sleep\",\"args\":[\"20\"]}}" >/dev/null
    local s=
    for _ in $(seq 100); do
        s=$(field "$(inside execgo-runtime status "$1")" status)
        [ "$s" = running ] && return 0
        sleep 0.1
    done
    fail "$1 is $s, not running"
}
finished_success() { # task id
    local out
    out=$(inside execgo-runtime wait "$1" --timeout-ms 60000) || fail "$1 did not finish"
    [ "$(field "$out" status)" = success ] || fail "$1: $out"
}

main_pids() {
    echo "$(inside systemctl show -P MainPID execgo-runtime-helper.service)/$(inside systemctl show -P MainPID execgo-runtime.service)"
}
submit_sleep proof-restarts
first=$(inside execgo-runtime status proof-restarts)
task_pid=$(field "$first" pid)
check_supervisor "$(field "$first" shim_pid)" "the shim of proof-restarts"
task_cg=$(cg_of_pid "$task_pid" "$task_key")
case "$task_cg" in
"$task_parent"/data-*/proof-restarts) ;;
*) fail "proof-restarts (pid $task_pid) is in '$task_cg' in the '${task_key:-unified}' hierarchy, not in $task_parent/data-*/proof-restarts" ;;
esac
inside test -d "$task_mount$task_cg" || fail "$task_mount$task_cg is not a directory"
log "proof-restarts (pid $task_pid) in $task_cg, its shim in $supervisor"
before=$(main_pids)
inside systemctl restart execgo-runtime-helper.service
wait_active execgo-runtime-helper.service
inside systemctl restart execgo-runtime.service
wait_active execgo-runtime.service
after=$(main_pids)
[ "${before%/*}" != "${after%/*}" ] && [ "${before#*/}" != "${after#*/}" ] ||
    fail "the restarts did not replace the processes (helper/runtime pids $before, then $after)"
now=$(inside execgo-runtime status proof-restarts)
[ "$(field "$now" status)" = running ] ||
    fail "proof-restarts is no longer running after the restarts: $now"
[ "$(field "$now" shim_pid)" = "$(field "$first" shim_pid)" ] ||
    fail "proof-restarts has another shim after the restarts"
log "restarted the helper and the runtime (pids $before, then $after); proof-restarts still running under shim $(field "$now" shim_pid)"
# The restarted helper, placed by systemd in the unit's cgroup again,
# joined the existing supervisor, the old shim still in it.
check_supervisor "${after%/*}" "the restarted helper"
check_supervisor "$(field "$now" shim_pid)" "the shim of proof-restarts"
[ "$(cg_of_pid "$task_pid" "$task_key")" = "$task_cg" ] || fail "proof-restarts moved cgroup across the restart"
log "the restarted helper is in $supervisor again; proof-restarts still in $task_cg"

submit_sleep proof-upgrade
log "dpkg -i $v2"
# shellcheck disable=SC2086
inside dpkg -i $v2 >>"$work/dpkg.log" 2>&1 || {
    cat "$work/dpkg.log"
    fail "upgrade"
}
wait_active execgo-runtime.service
new=$(inside dpkg-query -W -f '${Version}' execgo-runtime)
[ "$new" = "${version}-2" ] || fail "installed version is $new after the upgrade"
[ "$(field "$(inside execgo-runtime status proof-upgrade)" status)" = running ] ||
    fail "proof-upgrade is no longer running after the upgrade"
log "upgraded to $new; proof-upgrade still running"

finished_success proof-restarts
finished_success proof-upgrade
# One run each: a relaunch would have a later start.
for t in proof-restarts proof-upgrade; do
    events=$(inside execgo-runtime status "$t")
    [ "$(field "$events" exit_code)" = 0 ] || fail "$t: $events"
done
log "proof-restarts and proof-upgrade: success"
# The shim removes the task's cgroups right after its result.
for _ in $(seq 50); do
    inside test -e "$task_mount$task_cg" || break
    sleep 0.1
done
! inside test -e "$task_mount$task_cg" || fail "$task_mount$task_cg is still there after proof-restarts ended"
log "proof-restarts ended: $task_cg is gone"

# --- purge ---
inside dpkg --purge execgo-runtime execgo-runtime-helper >>"$work/dpkg.log" 2>&1 || {
    cat "$work/dpkg.log"
    fail "dpkg --purge"
}
left=$(inside sh -c 'ls -d /lib/systemd/system/execgo-runtime* /etc/systemd/system/*/execgo-runtime* \
    /etc/default/execgo-runtime* /var/lib/execgo-runtime /run/execgo-runtime \
    /usr/bin/execgo-runtime* /usr/lib/sysusers.d/execgo-runtime.conf \
    /usr/lib/tmpfiles.d/execgo-runtime.conf /usr/share/doc/execgo-runtime* 2>/dev/null' || true)
[ -z "$left" ] || fail "left behind by the purge: $left"
units=$(inside systemctl list-units --all --plain --no-legend 'execgo-runtime*' | grep -v 'not-found' || true)
[ -z "$units" ] || fail "units still loaded after the purge: $units"
log "purged: no unit, file or state left (accounts kept, as Debian keeps system accounts)"

log "passed in $(($(date +%s) - started)) s"
