#!/usr/bin/env bash
# Build the C core (csrc/core, layers, blocks, model; never csrc/py) and the layer and
# model tests
# with AddressSanitizer + UndefinedBehaviorSanitizer, run it with leak checking,
# and fail on any sanitizer report or test failure.
#
#   csrc/tests/run_sanitized.sh            # from anywhere; PY=... picks the interpreter
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PY:-.venv/bin/python}
CC=${CC:-gcc}
OUT=${LK_SAN_BUILD:-build/sanitize}

# shellcheck source=/dev/null
. csrc/tests/onednn_env.sh

SAN="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="-std=c11 -fopenmp -g -O1 $LK_SIMD -Wall -Wextra -Wno-unused-parameter $SAN"
INC="-Icsrc/core -Icsrc/layers -Icsrc/blocks -Icsrc/model -I$DNNL_INC"

core=()
for src in csrc/core/*.c csrc/layers/*.c csrc/blocks/*.c csrc/model/*.c; do
    obj="$OUT/$(echo "${src%.c}" | tr / _).o"
    $CC $CFLAGS $INC -c "$src" -o "$obj"
    core+=("$obj")
done
for t in test_layers test_model; do
    $CC $CFLAGS $INC -c "csrc/tests/$t.c" -o "$OUT/$t.o"
    $CC $SAN -fopenmp "$OUT/$t.o" "${core[@]}" -L"$DNNL_LIB" -l:libdnnl.so.3 \
        -Wl,-rpath,"$DNNL_LIB" -lm -o "$OUT/$t"
done

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:halt_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Run twice: with the ISA oneDNN picks here, and capped at AVX2 (the development
# machines' ISA), so that both families of JIT kernels are exercised.
rc=0 passed=0 failed=0
for run in test_layers:native test_layers:AVX2 test_model:native; do
    t=${run%%:*} isa=${run#*:}
    log="$OUT/$t.$isa.log"
    echo "== $t (oneDNN ISA: $isa)"
    r=0
    if [ "$isa" = native ]; then
        "$OUT/$t" 2>&1 | tee "$log" || r=${PIPESTATUS[0]}
    else
        ONEDNN_MAX_CPU_ISA=$isa "$OUT/$t" 2>&1 | tee "$log" || r=${PIPESTATUS[0]}
    fi
    # The exit status covers ASan/LSan/UBSan (halt_on_error); the grep is a second
    # guard in case a runtime report did not change it.
    if grep -qE 'ERROR: (Address|Leak)Sanitizer|runtime error:|SUMMARY: (Address|Undefined|Leak)' "$log"; then
        echo "run_sanitized: sanitizer report in $log" >&2
        [ "$r" -eq 0 ] && r=1
    fi
    summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$log" | tail -n 1 || true)
    if [ -z "$summary" ]; then
        echo "run_sanitized: $t ended without its summary line (crash?)" >&2
        [ "$r" -eq 0 ] && r=1
        failed=$((failed + 1))
    else
        passed=$((passed + ${summary%% passed*}))
        f=${summary#*, }
        failed=$((failed + ${f%% failed}))
    fi
    [ "$r" -ne 0 ] && rc=$r
done
[ "$rc" -ne 0 ] && [ "$failed" -eq 0 ] && failed=1
echo "$passed passed, $failed failed"
exit "$rc"
