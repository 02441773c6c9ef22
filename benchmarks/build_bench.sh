#!/usr/bin/env bash
# Build csrc/tests/bench_layers.c (plan once, time execution) against the C core
# with the extension's optimisation flags; prints the binary's path.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PY:-.venv/bin/python}
CC=${CC:-gcc}
OUT=${LK_BENCH_BUILD:-build/bench}

# oneDNN headers and library, located as setup.py does. The headers' wheel is a
# build requirement only, so a fresh `pip install -e .` venv lacks it: install the
# version matching the runtime wheel (LK_NO_INSTALL=1 refuses instead).
paths() { "$PY" csrc/tests/onednn_paths.py 2>"$OUT/onednn_paths.err"; }
mkdir -p "$OUT"
if ! DNNL_PATHS=$(paths); then
    req=$(grep '^onednn-devel-cpu-gomp==' "$OUT/onednn_paths.err" || true)
    if [ -n "$req" ] && [ "${LK_NO_INSTALL:-0}" != 1 ]; then
        echo "build_bench: oneDNN headers missing; installing $req into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
        "$PY" -m pip install -q "$req" >&2
        DNNL_PATHS=$(paths) || { cat "$OUT/onednn_paths.err" >&2; exit 1; }
    else
        cat "$OUT/onednn_paths.err" >&2
        exit 1
    fi
fi
read -r DNNL_INC DNNL_LIB <<<"$DNNL_PATHS"

mkdir -p "$OUT"
# Same flags as setup.py's release build.
$CC -std=c11 -fopenmp -O3 -Wall -Wextra -Wno-unused-parameter \
    -Icsrc/core -Icsrc/layers -I"$DNNL_INC" \
    csrc/core/*.c csrc/layers/*.c csrc/tests/bench_layers.c \
    -L"$DNNL_LIB" -l:libdnnl.so.3 -Wl,-rpath,"$DNNL_LIB" -lm -o "$OUT/bench_layers" >&2
echo "$ROOT/$OUT/bench_layers"
