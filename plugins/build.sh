#!/usr/bin/env bash
# Builds every plugin in this folder for wasm32-wasip2 and copies the components to dist/.
#
#   plugins/build.sh            # from anywhere
#
# The shared target dir is plugins/target (override with CARGO_TARGET_DIR for the plugins
# only via PLUGINS_TARGET_DIR). Exits non-zero if anything fails.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip2; then
    echo "build.sh: installing the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
fi

# The version-mismatch test plugin is built against a copy of ../wit with another version.
mkdir -p faults/version-mismatch/wit
sed 's/lockbroker:plugin@0\.1\.0/lockbroker:plugin@0.2.0/' ../wit/plugin.wit \
    > faults/version-mismatch/wit/plugin.wit.tmp
if ! cmp -s faults/version-mismatch/wit/plugin.wit.tmp faults/version-mismatch/wit/plugin.wit; then
    mv faults/version-mismatch/wit/plugin.wit.tmp faults/version-mismatch/wit/plugin.wit
else
    rm faults/version-mismatch/wit/plugin.wit.tmp
fi

target_dir="${PLUGINS_TARGET_DIR:-$here/target}"
# Don't inherit the broker's CARGO_TARGET_DIR: plugins share their own target dir.
CARGO_TARGET_DIR="$target_dir" cargo build --release --target wasm32-wasip2 --workspace

mkdir -p dist
count=0
for wasm in "$target_dir"/wasm32-wasip2/release/*.wasm; do
    name="$(basename "$wasm")"
    # copy then rename, so a running broker watching dist/ never sees a half-written file
    cp "$wasm" "dist/.$name.tmp"
    mv -f "dist/.$name.tmp" "dist/$name"
    count=$((count + 1))
done
echo "build.sh: $count plugins in $here/dist"
