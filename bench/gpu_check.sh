#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (nvcc, CMake, Ninja and a CUDA
# build of torch installed; nothing is downloaded): configure and build
# against that torch for this GPU's architecture only, run the CUDA tests
# (pytest tests/python/test_cuda.py, and the GoogleTest Cuda.* suite when
# GoogleTest is installed), then benchmark (bench/bench_cuda.py). About 3-5
# minutes of build on 16 cores, 1-2 of tests, 1-2 of benchmark.
#
#   bench/gpu_check.sh [--quick]        (--quick: benchmark 2^24 and 2^26 only)
#
# Writes bench/results/fake_quantize_cuda.md, and copies it with the logs into
# $OUT when that is set.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=$(${PYTHON:-python3} -c 'import sys; print(sys.executable)')
BUILD=${BUILD_DIR:-build-gpu}
LOGS=${OUT:-$BUILD}
mkdir -p "$LOGS" "$BUILD"
export PYTHONUNBUFFERED=1
status=0

nvidia-smi -L || true
command -v nvcc >/dev/null || export CUDACXX=/usr/local/cuda/bin/nvcc
ARCH=$("$PY" -c 'import torch; m, n = torch.cuda.get_device_capability(); print(f"{m}{n}")') || {
  echo "gpu_check: torch sees no CUDA device"; exit 1; }
echo "gpu_check: torch $("$PY" -c 'import torch; print(torch.__version__)'), sm_$ARCH, $(nproc) cores"

configure() {
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release \
    -DPython3_EXECUTABLE="$PY" -DQTORCHEXT_WITH_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DQTORCHEXT_BUILD_EXAMPLES=OFF "$@"
}
# GoogleTest may be missing there: build without the C++ tests then.
if ! configure -DQTORCHEXT_BUILD_TESTS=ON >"$LOGS/configure.log" 2>&1; then
  echo "gpu_check: configuring with the C++ tests failed (GoogleTest?); building without them"
  rm -f "$BUILD/CMakeCache.txt"
  configure -DQTORCHEXT_BUILD_TESTS=OFF >"$LOGS/configure.log" 2>&1 || {
    tail -30 "$LOGS/configure.log"; exit 1; }
fi
grep "qtorchext:" "$LOGS/configure.log"
start=$(date +%s)
# Only what the checks use: the library with the Python module, and the C++
# tests when configured (no examples).
targets=(qtorchext_python)
grep -q "^QTORCHEXT_BUILD_TESTS:BOOL=ON" "$BUILD/CMakeCache.txt" && targets+=(qtorchext_cpp_tests)
cmake --build "$BUILD" -j"$(nproc)" --target "${targets[@]}" >"$LOGS/build.log" 2>&1 || {
  tail -60 "$LOGS/build.log"; exit 1; }
echo "gpu_check: built in $(( $(date +%s) - start )) s"

# The build placed libqtorchext and _C into python/qtorchext.
export PYTHONPATH="$PWD/python:$PWD/tests/python${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c 'import qtorchext, torch; print("qtorchext from", qtorchext.__file__, "with_cuda", qtorchext._C.with_cuda)'

# Argument errors, one per subprocess: which raise and which crash (a native
# backtrace of the first crash when gdb is there).
"$PY" bench/diagnose_errors.py 2>&1 | tee "$LOGS/diagnose_errors.log" | tail -70
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# The error-message test runs on its own, so that a crash there (seen with
# torch 2.11) cannot hide the results of the others. --maxfail=25 only bounds
# the log of a badly broken build; any failure still fails this script.
"$PY" -m pytest -q --maxfail=25 --tb=short -p no:cacheprovider tests/python/test_cuda.py \
  -k "not test_argument_errors_match_cpu" 2>&1 | tee "$LOGS/pytest_cuda.log" | tail -25
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
"$PY" -m pytest -q --tb=short -p no:cacheprovider tests/python/test_cuda.py \
  -k "test_argument_errors_match_cpu" 2>&1 | tee "$LOGS/pytest_cuda_errors.log" | tail -8
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
if [ -x "$BUILD/tests/cpp/qtorchext_cpp_tests" ]; then
  "$BUILD/tests/cpp/qtorchext_cpp_tests" --gtest_filter='Cuda.*' 2>&1 | tee "$LOGS/gtest_cuda.log" | tail -15
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

"$PY" bench/bench_cuda.py "$@" 2>&1 | tee "$LOGS/bench_cuda.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
[ -n "${OUT:-}" ] && cp bench/results/fake_quantize_cuda.md "$OUT/" 2>/dev/null
echo "gpu_check: exit status $status"
exit $status
