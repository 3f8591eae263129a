#!/usr/bin/env bash
# Property-based API test: schemathesis generates requests from the
# OpenAPI document the live runtime serves (GET /api/v1/openapi.json) and
# checks every answer: no 5xx, a status the document lists for the
# operation, its content type, headers and a body its schema accepts, and
# 405 with a correct Allow for methods a path does not answer. It must
# report no failure.
#
# Generated submits run real commands with random argv, so the runtime
# (and its embedded helper, and so every task) runs as `nobody` from a
# private copy of the binaries in a temporary directory, with few slots and
# a short queue; everything is removed on any exit.
#
# Usage: tests/schemathesis/run.sh [BIN_DIR]   (default: the cargo target
# dir's release/, i.e. after `cargo build --release`)
# Env: SCHEMATHESIS_MAX_EXAMPLES (default 100), SCHEMATHESIS_VENV (default
# a venv under the cargo target dir, created on first use).
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
target=${CARGO_TARGET_DIR:-target}
bin_dir=${1:-$target/release}
max_examples=${SCHEMATHESIS_MAX_EXAMPLES:-100}
venv=$(realpath -m "${SCHEMATHESIS_VENV:-$target/schemathesis-venv}")

for b in execgo-runtime execgo-runtime-helper; do
    [ -x "$bin_dir/$b" ] || { echo "schemathesis: $bin_dir/$b missing: cargo build --release first" >&2; exit 1; }
done

if [ "$("$venv/bin/schemathesis" --version 2>/dev/null | grep -o '[0-9][0-9.]*$')" != "$SCHEMATHESIS_VERSION" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

work=$(mktemp -d /var/tmp/execgo-schemathesis.XXXXXX)
serve_pid=
cleanup() {
    if [ -n "$serve_pid" ]; then
        kill -TERM "$serve_pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$serve_pid" 2>/dev/null || true
    fi
    # Shims and tasks outlive the runtime by design: end the ones this run
    # started, known by their executable (this run's copy of the helper),
    # working directory (a task workspace under $work) or the HOME the
    # runtime passes on to tasks.
    for _ in 1 2 3; do
        for d in /proc/[0-9]*; do
            case "$(readlink "$d/exe" 2>/dev/null)|$(readlink "$d/cwd" 2>/dev/null)" in
                "$work/"*|*"|$work/"*) kill -KILL "${d#/proc/}" 2>/dev/null || true; continue ;;
            esac
            if { tr '\0' '\n' <"$d/environ"; } 2>/dev/null | grep -qxF "HOME=$work/home"; then
                kill -KILL "${d#/proc/}" 2>/dev/null || true
            fi
        done
        sleep 0.1
    done
    if [ "${keep_work:-0}" = 1 ]; then echo "schemathesis: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

chmod 755 "$work"
mkdir "$work/bin" "$work/data" "$work/home"
cp "$bin_dir/execgo-runtime" "$bin_dir/execgo-runtime-helper" "$work/bin/"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
serve=("$work/bin/execgo-runtime" serve --listen-addr "127.0.0.1:$port" --data-dir "$work/data"
    --max-running-tasks 2 --max-queued-tasks 16 --termination-grace-ms 200
    --result-retention-secs 60)
if [ "$(id -u)" = 0 ]; then
    # As root the embedded helper would be privileged: drop to nobody.
    chown -R nobody "$work/data" "$work/home"
    run_as=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups --)
else
    run_as=()
fi
env -i PATH=/usr/bin:/bin HOME="$work/home" RUST_LOG=warn \
    "${run_as[@]}" "${serve[@]}" 2>"$work/serve.log" &
serve_pid=$!
base="http://127.0.0.1:$port"
for _ in $(seq 200); do
    curl -fsS "$base/readyz" >/dev/null 2>&1 && break
    kill -0 "$serve_pid" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
    sleep 0.1
done
curl -fsS "$base/readyz" >/dev/null

# The served document is docs/openapi.json byte for byte; schemathesis
# reads it from the file because, loading from a URL, it leaves out the
# operation that serves the schema itself.
curl -fsS "$base/api/v1/openapi.json" -o "$work/openapi.json"
cmp "$work/openapi.json" docs/openapi.json

status=0
# One worker: with two threads, hypothesis's lambda descriptions
# (ast.parse of schemathesis's own sources) race inside CPython 3.11's
# AST converter now and then ("AST constructor recursion depth
# mismatch"), a tool error that is no finding about the server.
# From $work: schemathesis keeps a crash cache in ./.schemathesis.
(cd "$work" && "$venv/bin/schemathesis" run "$work/openapi.json" --url "$base" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance,unsupported_method,allow_header_conformance \
    --phases examples,coverage,fuzzing,stateful \
    --max-examples "$max_examples" \
    --workers 1 \
    --request-timeout 10 \
    --generation-database none \
    --no-color) || status=$?
if [ "$status" != 0 ]; then
    echo "schemathesis: failures (exit $status); runtime log:" >&2
    tail -n 50 "$work/serve.log" >&2
    exit "$status"
fi
# The server must have survived the run.
curl -fsS "$base/healthz" >/dev/null
echo "schemathesis: 0 failures"
