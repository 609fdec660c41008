#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests (the real server driven
# by tokio-xmpp and raw sockets), then the slixmpp tests in Python against
# the built binary. Installs what it needs on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is required (https://rustup.rs)" >&2
  exit 1
fi

# PostgreSQL server binaries for the processor's PostgreSQL test
# (crates/tributary/tests/postgres.rs), which starts a server of its own in
# a temporary directory: only the package is installed, no service is
# started. The package also creates the `postgres` user the test runs the
# server as when run as root. TRIBUTARY_PG_BIN names another installation.
if [ -z "${TRIBUTARY_PG_BIN:-}" ] && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL is required (no /usr/lib/postgresql/*/bin/initdb) and apt-get is missing; install the PostgreSQL server yourself and set TRIBUTARY_PG_BIN to its bin directory" >&2
    exit 1
  fi
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "installing PostgreSQL needs root: run as root or install sudo" >&2
      exit 1
    fi
    as_root=(sudo)
  fi
  echo "installing PostgreSQL (apt-get install postgresql)" >&2
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql
fi

cargo build --workspace --all-targets
cargo test --workspace

TRIBUTARY_BIN="$PWD/target/debug/tributary" bash tests/python/run.sh
