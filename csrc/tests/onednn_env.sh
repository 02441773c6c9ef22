# Sourced by csrc/tests/run_sanitized.sh and benchmarks/build_bench.sh: sets DNNL_INC and
# DNNL_LIB, oneDNN's headers and library located as setup.py does. Needs PY (the
# interpreter of the venv) and OUT (a build folder). The headers come with the test
# extra (onednn-devel-cpu-gomp); without it, the matching version is installed unless
# LK_NO_INSTALL=1.
lk_onednn_paths() { "$PY" csrc/tests/onednn_paths.py 2>"$OUT/onednn_paths.err"; }
mkdir -p "$OUT"
if ! DNNL_PATHS=$(lk_onednn_paths); then
    req=$(grep '^onednn-devel-cpu-gomp==' "$OUT/onednn_paths.err" || true)
    if [ -n "$req" ] && [ "${LK_NO_INSTALL:-0}" != 1 ]; then
        echo "oneDNN headers missing; installing $req into $("$PY" -c 'import sys; print(sys.prefix)')" >&2
        "$PY" -m pip install -q "$req" >&2
        DNNL_PATHS=$(lk_onednn_paths) || { cat "$OUT/onednn_paths.err" >&2; exit 1; }
    else
        cat "$OUT/onednn_paths.err" >&2
        exit 1
    fi
fi
read -r DNNL_INC DNNL_LIB <<<"$DNNL_PATHS"
# The plain-C kernels are compiled for AVX2/FMA where the CPU has them, as in setup.py.
LK_SIMD=""
if grep -qw avx2 /proc/cpuinfo 2>/dev/null && grep -qw fma /proc/cpuinfo 2>/dev/null; then
    LK_SIMD="-mavx2 -mfma"
fi
