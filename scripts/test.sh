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

cargo build --workspace --all-targets
cargo test --workspace

TRIBUTARY_BIN="$PWD/target/debug/tributary" bash tests/python/run.sh
