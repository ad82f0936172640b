#!/bin/bash
# Times the decomposition stages of the pretrained ResNet-20 on one engine:
# concern identification (10 classes x 1,000 positives), decompose (concern + tangling
# identification + MC-BLN modularization) and the composed evaluation of the 10 modules on
# the 10,000 test images. Appends `/usr/bin/time` lines (wall, user, system, peak RSS) and the
# load average before/after each stage to OUT_DIR/times.txt.
#
#   scripts/time_stages.sh burn target/debug/decomp runs/perf/burn
#   scripts/time_stages.sh cpu  target/debug/decomp runs/perf/cpu
#
# ENGINE is `burn` (burn ops, the reference) or `cpu` (the compiled CPU plan); it is passed as
# DECOMP_ENGINE. Shared data: $DECOMP_SHARED_DIR (default ../shared).
set -euo pipefail
if [ $# -ne 3 ]; then
    echo "usage: $0 burn|cpu DECOMP_BINARY OUT_DIR" >&2
    exit 2
fi
ENGINE=$1
BIN=$2
OUT=$3
SHARED=${DECOMP_SHARED_DIR:-../shared}
W=$SHARED/models/cifar10/resnet20-12fca82f.th
D=$SHARED/datasets
mkdir -p "$OUT"
export DECOMP_ENGINE=$ENGINE
t() {
    local name=$1
    shift
    echo "== $name engine=$ENGINE load=$(cut -d' ' -f1 /proc/loadavg) start=$(date +%T)" >>"$OUT/times.txt"
    /usr/bin/time -f "$name wall_s=%e user_s=%U sys_s=%S maxrss_kib=%M" -a -o "$OUT/times.txt" \
        "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
    echo "   end load=$(cut -d' ' -f1 /proc/loadavg)" >>"$OUT/times.txt"
}
t concern "$BIN" concern --weights "$W" --data-dir "$D" --out "$OUT/concern.cs"
t decompose "$BIN" decompose --weights "$W" --data-dir "$D" --variants mc-bln --out-dir "$OUT/dec"
t compose "$BIN" compose "$OUT"/dec/mc-bln/module_*.mod --data-dir "$D" --split test --json
