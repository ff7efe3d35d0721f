#!/usr/bin/env bash
# Builds the custom-op library with AddressSanitizer + UndefinedBehaviorSanitizer (every report
# fatal) into build/sanitized/, never over the installed library, and runs the native-op tests
# against it. Extra arguments replace the default test files.
#
# Test/CI-only knobs it sets: ONNXPRUNE_SANITIZE=1 (setup.py adds the sanitizer flags) and
# ONNXPRUNE_TEST_OPS_LIBRARY (tests/conftest.py loads that library instead of the installed one).
set -euo pipefail
cd "$(dirname "$0")/.."

out=build/sanitized
ONNXPRUNE_SANITIZE=1 python setup.py -q build_ext --force --build-lib "$out/lib" --build-temp "$out/tmp" >/dev/null
lib="$PWD/$out/lib/onnxprune/runtime_ops/_onnxprune_ops.so"
# grep reads all of nm's output (no -q): an early exit would kill nm with SIGPIPE, which
# pipefail then reports as a failed check.
if ! nm -D "$lib" | grep __asan_init >/dev/null; then
    echo "check_sanitized: $lib is not instrumented" >&2
    exit 1
fi

# The library is dlopen'ed into Python, which is not instrumented: the ASan runtime has to be
# loaded first, and libstdc++ with it, or ASan finds no __cxa_throw to intercept and the first
# C++ exception (an ORT error status) aborts. ORT and Python keep allocations until exit, so
# leak reports would be noise.
export LD_PRELOAD="$(${CXX:-g++} -print-file-name=libasan.so) $(${CXX:-g++} -print-file-name=libstdc++.so.6)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1"
export ONNXPRUNE_TEST_OPS_LIBRARY="$lib"
if [ "$#" -eq 0 ]; then
    set -- tests/test_runtime_ops.py tests/test_runtime_ops_hostile.py tests/test_runtime_ops_review.py \
        tests/test_runtime_ops_v2.py tests/test_runtime_ops_conv_tiles.py tests/test_runtime_ops_activation.py \
        tests/test_runtime_ops_residual.py tests/test_runtime_ops_gemm_residual.py \
        tests/test_runtime_ops_depthwise.py tests/test_runtime_ops_guarded.py tests/test_runtime_ops_transposed.py \
        tests/test_runtime_ops_task_rows.py tests/test_runtime_ops_heads.py tests/test_runtime_ops_pool.py \
        tests/test_runtime_ops_winograd.py tests/test_runtime_ops_sell.py
fi
# The huge-page test measures the process's AnonHugePages, which ASan's shadow memory and
# allocator change by tens of MiB: it says nothing about memory safety.
python -m pytest -q -p no:cacheprovider \
    --deselect tests/test_runtime_ops.py::test_constant_csr_arrays_are_offered_huge_pages "$@"
