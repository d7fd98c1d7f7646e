#!/usr/bin/env bash
# Builds agent/wasm/decoder.wasm from decoder.c (freestanding C, no libc).
# Needs clang and lld with the wasm32 target (Debian: clang-14, lld-14; setup.sh
# installs them). The .wasm is checked in: the agent needs only wasmtime.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cc=$(command -v clang-14 || command -v clang)
ld=$(command -v wasm-ld-14 || command -v wasm-ld)
"$cc" --target=wasm32 -O2 -nostdlib -fno-builtin -ffreestanding -Wall -Werror \
  -fuse-ld="$ld" -Wl,--no-entry -Wl,--export-dynamic -Wl,--initial-memory=262144 \
  -Wl,-z,stack-size=65536 -o "$here/agent/wasm/decoder.wasm" "$here/agent/wasm/decoder.c"
echo "built agent/wasm/decoder.wasm ($(stat -c %s "$here/agent/wasm/decoder.wasm") bytes)"
