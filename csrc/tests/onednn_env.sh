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
# No build-machine-only flags, as in setup.py: the hand-written kernels pick AVX-512, AVX2
# or plain C at run time. LK_SIMD (e.g. "-mavx2 -mfma") adds flags, for comparisons only.
LK_SIMD=${LK_SIMD:-}
