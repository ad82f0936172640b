#!/usr/bin/env bash
# Type-checks the GPU backends (`cuda`, `wgpu`) without a GPU, in a separate target folder so
# the CPU build is untouched. Run it once per change that touches device code; not in CI
# (the wgpu dependency tree alone is ~400 crates: ~8 min of `cargo check` on 2 cores).
#
# burn 0.22's `cuda` feature pulls cubecl-llvm, whose build script downloads an LLVM bundle.
# Offline, DOCS_RS=1 makes that build script skip the download, which is enough to type-check
# (nothing is linked). A real CUDA build needs the network once.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-gpu}"
cargo check -p decomp-cli --features wgpu
DOCS_RS=1 cargo check -p decomp-cli --features cuda
echo "GPU features type-check: ok"
