#!/usr/bin/env bash
# Builds the OCI image localhost/execgo-runtime:<version> with buildah from
# a local root, no registry: a copy of the debootstrap'd bookworm root the
# systemd proof caches (made here when missing), plus the release binaries
# and the account execgo-runtime (uid and gid 10001) owning /data.
#   packaging/oci/build.sh [--archive FILE]   (also save it as an OCI archive)
set -euo pipefail
cd "$(dirname "$0")/../.."

[ "$(id -u)" = 0 ] || { echo "oci/build.sh: needs root (the root's files belong to root)" >&2; exit 1; }
archive=
case "${1:-}" in
--archive) archive=${2:?--archive needs a file} ;;
"") ;;
*) echo "oci/build.sh: unknown argument: $1" >&2; exit 2 ;;
esac

target=${CARGO_TARGET_DIR:-$PWD/target}
cache=${EXECGO_PROOF_CACHE:-/var/cache/execgo-runtime-ci}
lower=$cache/bookworm-minbase
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
image=localhost/execgo-runtime:$version

cargo build --release -p execgo-runtime -p execgo-runtime-helper

if [ ! -x "$lower/bin/sh" ]; then
    echo "==> debootstrap --variant=minbase into $lower (cached)"
    rm -rf "$lower.tmp"
    mkdir -p "$cache"
    debootstrap --variant=minbase bookworm "$lower.tmp" http://deb.debian.org/debian >/dev/null
    mv "$lower.tmp" "$lower"
fi

work=$(mktemp -d /var/tmp/execgo-oci.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
echo "==> root in $root"
cp -a "$lower" "$root"
install -m 0755 "$target/release/execgo-runtime" "$target/release/execgo-runtime-helper" "$root/usr/bin/"
strip --strip-debug "$root/usr/bin/execgo-runtime" "$root/usr/bin/execgo-runtime-helper"
chroot "$root" groupadd --gid 10001 execgo-runtime
chroot "$root" useradd --uid 10001 --gid 10001 --home-dir /data \
    --no-create-home --shell /usr/sbin/nologin --comment "execgo-runtime service" execgo-runtime
install -d -m 0750 -o 10001 -g 10001 "$root/data"
# Nothing the image does not need at run time.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar -C "$root" --numeric-owner -cf packaging/oci/rootfs.tar .
trap 'rm -rf "$work" packaging/oci/rootfs.tar' EXIT

echo "==> buildah build $image"
buildah build --quiet --layers=false -f packaging/oci/Containerfile -t "$image" packaging/oci
if [ -n "$archive" ]; then
    rm -f "$archive"
    buildah push "$image" "oci-archive:$archive:$image"
fi
echo "$image"
