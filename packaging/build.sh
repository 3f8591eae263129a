#!/usr/bin/env bash
# Builds every packaging artifact of execgo-runtime into
# $CARGO_TARGET_DIR/packages (default target/packages):
#   execgo-runtime_<v>_<arch>.deb, execgo-runtime-helper_<v>_<arch>.deb,
#   execgo-runtime-<v>.<arch>.rpm, execgo-runtime-helper-<v>.<arch>.rpm
# after building the release binaries and generating, from their clap
# definitions, the man pages and shell completions the packages ship.
#
# Options:
#   --deb-version V   version of the .deb packages instead of the crate's
#                     (the upgrade test builds the same code as a newer one)
#   --no-rpm          skip the .rpm packages
#
# Needs cargo-deb 3 and cargo-generate-rpm 0.21; missing ones are installed
# with `cargo install --locked`.
set -euo pipefail
cd "$(dirname "$0")/.."

deb_version=
rpm=1
while [ $# -gt 0 ]; do
    case "$1" in
    --deb-version) deb_version=${2:?--deb-version needs a value}; shift 2 ;;
    --no-rpm) rpm=; shift ;;
    *) echo "build.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done

target=${CARGO_TARGET_DIR:-$PWD/target}
out=$target/packages
gen=$target/release/packaging

need_tool() { # cargo subcommand, crate, version requirement
    if ! cargo "$1" --version >/dev/null 2>&1; then
        echo "build.sh: installing $2 $3" >&2
        cargo install --locked "$2@$3"
    fi
}

echo "==> release binaries"
cargo build --release -p execgo-runtime -p execgo-runtime-helper

echo "==> man pages and completions"
rm -rf "$gen"
"$target/release/execgo-runtime" generate-packaging-files --out-dir "$gen"
mkdir -p "$gen/helper-man" "$gen/bin"
"$target/release/execgo-runtime-helper" --print-man-page >"$gen/helper-man/execgo-runtime-helper.1"
# Debian policy: man pages compressed with gzip -9, no name or time stamp.
gzip -9nf "$gen"/man/*.1 "$gen"/helper-man/*.1
# Stripped copies for the .rpm (cargo-deb strips its own).
for bin in execgo-runtime execgo-runtime-helper; do
    strip --strip-debug -o "$gen/bin/$bin" "$target/release/$bin"
done

mkdir -p "$out"
echo "==> .deb"
need_tool deb cargo-deb "^3"
version_args=()
[ -n "$deb_version" ] && version_args=(--deb-version "$deb_version")
for pkg in execgo-runtime-helper execgo-runtime; do
    cargo deb --no-build --strip -p "$pkg" -o "$out/" "${version_args[@]}"
done

if [ -n "$rpm" ]; then
    echo "==> .rpm"
    need_tool generate-rpm cargo-generate-rpm "^0.21"
    for dir in helper runtime; do
        cargo generate-rpm -p "$dir" --target-dir "$target" -o "$out/"
    done
fi

echo "==> artifacts in $out"
ls -l "$out"
