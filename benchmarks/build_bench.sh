#!/usr/bin/env bash
# Build csrc/tests/bench_layers.c (plan once, time execution) against the C core
# with the extension's optimisation flags; prints the binary's path. Also builds
# csrc/tests/bench_dw_layout.c (NHWC vs blocked inference layouts) beside it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-.venv/bin/python}
CC=${CC:-gcc}
OUT=${LK_BENCH_BUILD:-build/bench}

# shellcheck source=/dev/null
. csrc/tests/onednn_env.sh

mkdir -p "$OUT"
# Same flags as setup.py's release build.
# shellcheck disable=SC2086
$CC -std=c11 -fopenmp -O3 $LK_SIMD -Wall -Wextra -Wno-unused-parameter \
    -Icsrc/core -Icsrc/layers -Icsrc/blocks -Icsrc/model -I"$DNNL_INC" \
    csrc/core/*.c csrc/layers/*.c csrc/model/optim.c csrc/tests/bench_layers.c \
    -L"$DNNL_LIB" -l:libdnnl.so.3 -Wl,-rpath,"$DNNL_LIB" -lm -o "$OUT/bench_layers" >&2
# The inference layout study (oneDNN only): $OUT/bench_dw_layout.
$CC -std=c11 -O2 -Wall -Wextra -I"$DNNL_INC" csrc/tests/bench_dw_layout.c \
    -L"$DNNL_LIB" -l:libdnnl.so.3 -Wl,-rpath,"$DNNL_LIB" -o "$OUT/bench_dw_layout" >&2
echo "$ROOT/$OUT/bench_layers"
