#!/usr/bin/env bash
# Runs the slixmpp integration tests against the real tributary binary.
#   tests/python/run.sh [pytest args...]
# TRIBUTARY_BIN: binary to test; when unset, `cargo build -p tributary` is
# run and <repo>/target/debug/tributary is used.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="$here/.venv"

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

if ! command -v python3 >/dev/null; then
    echo "run.sh: python3 not found; installing it with apt-get" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3
fi

# A venv made without ensurepip has no pip: start again.
if [ -d "$venv" ] && [ ! -x "$venv/bin/pip" ]; then
    rm -rf "$venv"
fi
if [ ! -d "$venv" ]; then
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        rm -rf "$venv"
        # Debian ships venv/ensurepip separately.
        pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
        echo "run.sh: python3 -m venv failed; installing python3-venv with apt-get" >&2
        as_root apt-get update -q
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv \
            || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "python${pyver}-venv"
        python3 -m venv "$venv"
    fi
fi

"$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$here/requirements.txt"

if [ -z "${TRIBUTARY_BIN:-}" ]; then
    (cd "$repo" && cargo build -q -p tributary)
    TRIBUTARY_BIN="$repo/target/debug/tributary"
fi
export TRIBUTARY_BIN

cd "$repo"
set +e
"$venv/bin/python" -m pytest -q tests/python "$@"
status=$?
exit $status
