#!/usr/bin/env bash
# The OCI image as the ExecGo control plane uses it: built from a local root
# with buildah (packaging/oci/build.sh), started with exactly
#   podman run -d -p <port>:8080 -v <dir>:/data <image>
# and checked: /readyz answers, a task runs to success, and the task is
# still there after a container restart and after the container is
# replaced by a new one on the same volume.
#
# Needs root, buildah, podman and runc (installed with apt when missing).
# Containers and images live in a storage of their own under /var/tmp,
# removed on exit; the engine's network (bridge, firewall rules) lives in
# a network namespace of the test's own. The engine settings in containers.conf below are this
# machine's, not the image's: runc (crun refuses hybrid cgroup hosts),
# cgroupfs (no systemd), and modest rlimits (without CAP_SYS_RESOURCE,
# podman's defaults cannot be set).
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[image-test %s] %s\n' "$(date -u +%T)" "$*"; }
fail() {
    log "FAIL: $*"
    exit 1
}

if [ "$(id -u)" != 0 ]; then
    echo "image-test: skipped: needs root (buildah and podman as root)"
    exit 0
fi
missing=()
for tool in buildah podman runc ip; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        buildah podman runc iproute2 netavark aardvark-dns iptables >/dev/null
fi

started=$(date +%s)
target=${CARGO_TARGET_DIR:-$PWD/target}
name=execgo-image
if [ "${1:-}" = --inside ]; then
    work=$2
    image=$3
    export CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage.conf
else
    work=$(mktemp -d /var/tmp/execgo-image.XXXXXX)
fi
cleanup() {
    set +e
    podman rm -f -t 0 "$name" >/dev/null 2>&1
    podman rmi -a -f >/dev/null 2>&1
    buildah rm -a >/dev/null 2>&1
    rm -rf "$work"
}
[ "${1:-}" = --inside ] || trap cleanup EXIT

if [ "${1:-}" != --inside ]; then
# Limits the container may set here (podman's defaults, and even our own
# hard limits, are refused by this machine's sandbox).
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
[network]
network_backend = "netavark"
EOF
cat >"$work/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$work/storage"
runroot = "$work/run"
EOF
export CONTAINERS_CONF=$work/containers.conf CONTAINERS_STORAGE_CONF=$work/storage.conf

log "building the image"
image=$(packaging/oci/build.sh 2>"$work/build.log" | tail -n 1) || {
    tail -n 30 "$work/build.log"
    fail "packaging/oci/build.sh"
}
log "image $image ($(podman image inspect -f '{{.Size}}' "$image") bytes)"
user=$(podman image inspect -f '{{.Config.User}}' "$image")
[ "${user%%:*}" != 0 ] && [ -n "$user" ] || fail "the image runs as '$user'"
fi

if [ "${1:-}" != --inside ]; then
    # The rest runs in a network and mount namespace of its own: the
    # engine's bridge, firewall rules and overlay mounts go with it, and
    # the published port is reached on that namespace's loopback.
    unshare --net --mount --propagation private -- "$0" --inside "$work" "$image"
    exit
fi
ip link set lo up
# The container is removed before the namespaces go (conmon outlives this
# shell otherwise).
trap 'podman rm -f -t 0 "$name" >/dev/null 2>&1' EXIT

data=$work/data
user=$(podman image inspect -f '{{.Config.User}}' "$image")
install -d -m 0750 -o "${user%%:*}" -g "${user##*:}" "$data"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
server=http://127.0.0.1:$port
cli() { "$target/release/execgo-runtime" "$@" --server "$server"; }
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], ""))' "$1" "$2"; }

wait_ready() {
    for _ in $(seq 150); do
        curl -fsS -m 2 "$server/readyz" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    podman logs "$name" 2>&1 | tail -n 20
    fail "/readyz never answered 200"
}

# Exactly the control plane's command.
podman run -d --name "$name" -p "$port:8080" -v "$data:/data" "$image" >/dev/null
wait_ready
log "serving: $(curl -fsS "$server/readyz")"
inside_user=$(podman top "$name" user | tail -n 1 | tr -d ' ')
[ "$inside_user" != root ] || fail "the runtime runs as root in the container"
log "runs as $inside_user"

out=$(cli run --json '{"task_id":"image-1","execution":{"kind":"command","program":"/bin/sh","args":["-c","echo from the image"]}}')
[ "$(field "$out" status)" = success ] || fail "task: $out"
[ "$(field "$out" stdout)" = "from the image" ] || fail "task output: $out"
log "task image-1: success"

podman restart -t 10 "$name" >/dev/null
wait_ready
out=$(cli status image-1)
[ "$(field "$out" status)" = success ] || fail "after a restart: $out"
log "after podman restart: image-1 still success"

podman rm -f -t 10 "$name" >/dev/null
podman run -d --name "$name" -p "$port:8080" -v "$data:/data" "$image" >/dev/null
wait_ready
out=$(cli status image-1)
[ "$(field "$out" status)" = success ] || fail "in a new container: $out"
out=$(cli run --json '{"task_id":"image-2","execution":{"kind":"command","program":"/bin/true"}}')
[ "$(field "$out" status)" = success ] || fail "task in the new container: $out"
log "new container on the same volume: image-1 still success, image-2 success"

log "passed in $(($(date +%s) - started)) s (in its namespaces)"
