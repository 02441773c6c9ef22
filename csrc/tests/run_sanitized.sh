#!/usr/bin/env bash
# Build the C core (csrc/core, csrc/layers; never csrc/py) and the layer test
# with AddressSanitizer + UndefinedBehaviorSanitizer, run it with leak checking,
# and fail on any sanitizer report or test failure.
#
#   csrc/tests/run_sanitized.sh            # from anywhere; PY=... picks the interpreter
#
# oneDNN is located exactly as setup.py does: headers from the installed
# onednn-devel-cpu-gomp distribution, libdnnl.so.3 from onednn-cpu-gomp.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PY:-.venv/bin/python}
CC=${CC:-gcc}
OUT=${LK_SAN_BUILD:-build/sanitize}

read -r DNNL_INC DNNL_LIB < <("$PY" - <<'PYEOF'
import importlib.metadata as md
from pathlib import Path

def locate(dist, suffix):
    d = md.distribution(dist)
    for f in d.files or []:
        if str(f).replace("\\", "/").endswith(suffix):
            return Path(d.locate_file(f)).resolve()
    raise SystemExit(f"run_sanitized: '{suffix}' not found in distribution '{dist}'")

h = locate("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.h")
lib = locate("onednn-cpu-gomp", "libdnnl.so.3")
print(h.parent.parent.parent, lib.parent)
PYEOF
)

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-std=c11 -fopenmp -g -O1 -Wall -Wextra -Wno-unused-parameter $SAN"
INC="-Icsrc/core -Icsrc/layers -I$DNNL_INC"

mkdir -p "$OUT"
objs=()
for src in csrc/core/*.c csrc/layers/*.c csrc/tests/test_layers.c; do
    obj="$OUT/$(echo "${src%.c}" | tr / _).o"
    $CC $CFLAGS $INC -c "$src" -o "$obj"
    objs+=("$obj")
done
$CC $SAN -fopenmp "${objs[@]}" -L"$DNNL_LIB" -l:libdnnl.so.3 -Wl,-rpath,"$DNNL_LIB" -lm \
    -o "$OUT/test_layers"

log="$OUT/test_layers.log"
supp="$ROOT/csrc/tests/lsan.supp"
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
[ -f "$supp" ] && export LSAN_OPTIONS="suppressions=$supp:print_suppressions=0"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
rc=0
"$OUT/test_layers" "$@" 2>&1 | tee "$log" || rc=${PIPESTATUS[0]}
# The binary's exit status covers ASan/LSan/UBSan (halt_on_error); the grep is a
# second guard in case a runtime report did not change the status.
if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|Undefined|Leak)' "$log"; then
    echo "run_sanitized: sanitizer report in $log" >&2
    [ "$rc" -eq 0 ] && rc=1
fi
if [ "$rc" -ne 0 ]; then
    echo "run_sanitized: FAILED (exit $rc)" >&2
fi
exit "$rc"
