#!/usr/bin/env bash
# Runs every test of lockbroker on a fresh machine: installs what is missing (the wasm32-wasip2
# target, redis-server, etcd-server, protobuf-compiler, the Python redis client used by interop
# tests), builds the WASM
# plugins, then runs formatting and lint checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain: wasm32-wasip2 target"
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

# Debian packages the tests need: redis-server (mirror tests), etcd-server (cluster tests),
# protobuf-compiler (etcd-client compiles etcd's protobufs at build time), and chromium with
# chromium-driver (the status page test drives headless Chromium through chromedriver).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
[ -x /usr/bin/chromedriver ] || missing+=(chromium chromium-driver)
step "apt packages: ${missing[*]:-none missing}"
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q "${missing[@]}"
  else
    sudo apt-get update -q && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
  fi
fi
# The distro services are not needed: tests start their own servers on ephemeral ports.

step "python redis client (interop tests)"
if ! python3 -c 'import redis' >/dev/null 2>&1; then
  python3 -m pip install --quiet 'redis>=5'
fi

if [ -x plugins/build.sh ]; then
  step "plugins (wasm32-wasip2)"
  plugins/build.sh
fi

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build (binaries used by end-to-end tests)"
cargo build --workspace --bins

step "cargo test"
cargo test --workspace -- --test-threads=2

step "fuzz smoke (cargo fuzz: frame decoder and in-process sessions, 30 s each)"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# Stable toolchain: --sanitizer none needs no -Z flags. Its own target dir: other RUSTFLAGS.
(cd fuzz && for t in frame_decoder session; do
  CARGO_TARGET_DIR="$PWD/target" cargo fuzz run --sanitizer none -O "$t" -- -max_total_time=30
done)

step "fault-injection checker"
"${CARGO_TARGET_DIR:-target}"/debug/lockbroker-chaos run --duration 60s --min-grants 20000

step "fault-injection checker, cluster mode (etcd + 3 brokers, 16 clients)"
"${CARGO_TARGET_DIR:-target}"/debug/lockbroker-chaos run --phases cluster --brokers 3 \
  --clients 16 --keys 16 --duration 60s --min-grants 10000

step "all tests passed"
