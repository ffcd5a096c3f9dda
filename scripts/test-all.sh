#!/usr/bin/env bash
# Runs every test of lockbroker on a fresh machine: installs what is missing (the wasm32-wasip2
# target, the Debian packages and Python modules of the preflight list below), checks that
# every program the tests spawn is there, builds the WASM plugins, then runs formatting and
# lint checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "toolchain: wasm32-wasip2 target"
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi

# Every program the tests, the checkers and the fuzz smoke spawn or the build runs, as
# "program:Debian package". Missing ones are installed here, then checked again below (the
# preflight). e2e `preflight::every_spawned_program_is_in_the_preflight` fails when a test
# spawns a program (`Command::new("...")`) this list does not name, so it cannot drift.
preflight_programs=(
  redis-server:redis-server     # mirror tests, the chaos checker
  etcd:etcd-server              # cluster tests, the cluster checker
  protoc:protobuf-compiler      # etcd-client compiles etcd's protobufs at build time
  /usr/bin/chromium:chromium    # the status page test (through chromedriver)
  /usr/bin/chromedriver:chromium-driver
  script:bsdutils               # the CLI's terminal test (a pseudo-terminal)
  kill:procps                   # signals to brokers and CLI children; `plugin reload`
  python3:python3               # redis-py interop tests
  openssl:openssl               # the Python package's mutual-TLS test makes its certificates
)
# Python modules the tests import, as "module:pip requirement".
preflight_python=(
  "redis:redis>=5"              # redis-py interop tests
  "maturin:maturin>=1.9,<2"     # builds the Python package (python/)
  "pytest:pytest>=8"            # the Python package's tests
  "pytest_asyncio:pytest-asyncio>=0.23"
)

missing=()
for entry in "${preflight_programs[@]}"; do
  command -v "${entry%%:*}" >/dev/null 2>&1 || missing+=("${entry#*:}")
done
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

step "python modules"
for entry in "${preflight_python[@]}"; do
  # A distribution's python3 refuses pip installs outside a venv (PEP 668): then with
  # --break-system-packages (a test-only module, installed for the user running the tests).
  python3 -c "import ${entry%%:*}" >/dev/null 2>&1 || python3 -m pip install --quiet "${entry#*:}" ||
    python3 -m pip install --quiet --break-system-packages "${entry#*:}" || true
done

step "preflight: programs and modules the tests use"
absent=()
for entry in "${preflight_programs[@]}"; do
  command -v "${entry%%:*}" >/dev/null 2>&1 || absent+=("${entry%%:*} (Debian package ${entry#*:})")
done
for entry in "${preflight_python[@]}"; do
  python3 -c "import ${entry%%:*}" >/dev/null 2>&1 ||
    absent+=("python module ${entry%%:*} (pip install '${entry#*:}')")
done
if [ "${#absent[@]}" -gt 0 ]; then
  list=$(printf '%s; ' "${absent[@]}")
  printf 'preflight: missing, the tests cannot run: %s\n' "${list%; }" >&2
  exit 1
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

# From here on a failing step is recorded and the next steps still run, so one CI run shows
# every failure; the script fails at the end if any step did.
failed=()
step "cargo test"
# Kept in a file: a failing test's name and message are repeated at the very end, where a CI
# log's tail shows them.
test_log="${CARGO_TARGET_DIR:-target}/cargo-test.log"
cargo test --workspace --no-fail-fast -- --test-threads=2 2>&1 | tee "$test_log" ||
  failed+=("cargo test")

step "Python package: build the wheel (maturin), pytest against real brokers and etcd"
target_dir=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)
rm -rf "$target_dir/wheels"
if python3 -m maturin build --quiet --profile dev -m python/Cargo.toml -o "$target_dir/wheels" &&
  { python3 -m pip install --quiet --force-reinstall --no-deps "$target_dir"/wheels/lockbroker-*.whl ||
    python3 -m pip install --quiet --force-reinstall --no-deps --break-system-packages \
      "$target_dir"/wheels/lockbroker-*.whl; }; then
  (cd python && LOCKBROKER_BIN="$target_dir/debug/lockbroker" python3 -m pytest -q tests) ||
    failed+=("python tests")
else
  failed+=("python package build")
fi

step "fuzz smoke (cargo fuzz: frame decoder and in-process sessions, 30 s each)"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# Stable toolchain: --sanitizer none needs no -Z flags. Its own target dir: other RUSTFLAGS.
for t in frame_decoder session; do
  (cd fuzz && CARGO_TARGET_DIR="$PWD/target" cargo fuzz run --sanitizer none -O "$t" -- -max_total_time=30) ||
    failed+=("fuzz $t")
done

step "fault-injection checker"
"${CARGO_TARGET_DIR:-target}"/debug/lockbroker-chaos run --duration 60s --min-grants 20000 ||
  failed+=("checker")

step "fault-injection checker, cluster mode (etcd + 3 brokers, 16 clients, replicas 1)"
"${CARGO_TARGET_DIR:-target}"/debug/lockbroker-chaos run --phases cluster --brokers 3 \
  --replicas 1 --clients 16 --keys 16 --duration 35s --min-grants 5000 || failed+=("cluster checker")

step "fault-injection checker, cluster mode with replicated shards (replicas 2)"
"${CARGO_TARGET_DIR:-target}"/debug/lockbroker-chaos run --phases cluster --brokers 3 \
  --replicas 2 --clients 16 --keys 16 --duration 35s --min-grants 5000 ||
  failed+=("cluster checker, replicas 2")

if [ "${#failed[@]}" -gt 0 ]; then
  if [[ " ${failed[*]} " == *" cargo test "* ]]; then
    step "cargo test failures (from $test_log)"
    grep -E -A4 '^test .+ \.\.\. FAILED$|^---- .+ stdout ----$|panicked at' "$test_log" | head -150 || true
  fi
  list=$(printf '%s; ' "${failed[@]}")
  printf '\n==> FAILED: %s\n' "${list%; }" >&2
  exit 1
fi
step "all tests passed"
