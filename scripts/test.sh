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

# Server packages some tests start processes of their own from, each in a
# temporary directory (only the packages are installed, no service is used):
# - PostgreSQL server binaries for the processor's PostgreSQL test
#   (crates/tributary/tests/postgres.rs). The package also creates the
#   `postgres` user the test runs the server as when run as root.
#   TRIBUTARY_PG_BIN names another installation.
# - Mosquitto (with mosquitto_passwd) for the load generator's MQTT test
#   (crates/bench/tests/mqtt.rs). TRIBUTARY_MOSQUITTO names another broker.
# - fonts-dejavu-core: the font bench-plot draws its chart text with
#   (crates/bench/src/plot.rs; its render tests fail without it).
missing=()
if [ -z "${TRIBUTARY_PG_BIN:-}" ] && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
  missing+=(postgresql)
fi
if [ -z "${TRIBUTARY_MOSQUITTO:-}" ] && [ ! -x /usr/sbin/mosquitto ]; then
  missing+=(mosquitto)
fi
# - make: the build of jemalloc, the binary's allocator (tikv-jemalloc-sys).
if ! command -v make >/dev/null 2>&1; then
  missing+=(make)
fi
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]; then
  missing+=(fonts-dejavu-core)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "${missing[*]} required and apt-get is missing: install them yourself and set TRIBUTARY_PG_BIN (PostgreSQL's bin directory) / TRIBUTARY_MOSQUITTO (the mosquitto binary)" >&2
    exit 1
  fi
  as_root=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "installing ${missing[*]} needs root: run as root or install sudo" >&2
      exit 1
    fi
    as_root=(sudo)
  fi
  echo "installing ${missing[*]} (apt-get install)" >&2
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get update
  ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  # On a systemd machine the mosquitto package starts its own daemon on
  # port 1883; the tests do not use it.
  if [[ " ${missing[*]} " == *" mosquitto "* ]] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    ${as_root[@]+"${as_root[@]}"} systemctl stop mosquitto || true
  fi
fi

cargo build --workspace --all-targets
cargo test --workspace

TRIBUTARY_BIN="$PWD/target/debug/tributary" bash tests/python/run.sh
