#!/usr/bin/env bash
# Build macaw_fast._C with AddressSanitizer in a throwaway directory and run the sampler tests
# (including the fuzz test) and the low-rank Adam, theta-generation, skinny-product, value-forward
# and OpenMP-runtime tests against that build. Called by .ci/run; needs a C++ compiler, CMake
# (pip-installed if absent) and the active Python environment with macaw-fast's test dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/macaw-asan.XXXXXX")
[ -n "${KEEP_ASAN_DIR:-}" ] || trap 'rm -rf "$work"' EXIT

python -m pip install --quiet "pybind11>=3.0"
command -v cmake >/dev/null || python -m pip install --quiet cmake
CXX=${CXX:-c++}
flags="-fsanitize=address -fno-omit-frame-pointer -g -O1"
cmake -S "$root" -B "$work/build" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_CXX_COMPILER="$CXX" \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_MODULE_LINKER_FLAGS="-fsanitize=address" \
  -DPython_EXECUTABLE="$(command -v python)" -Dpybind11_DIR="$(python -m pybind11 --cmakedir)" >/dev/null
cmake --build "$work/build" -j 2 >/dev/null

# A private copy of the package holding the instrumented extension.
mkdir -p "$work/pkg"
cp -r "$root/macaw_fast" "$work/pkg/"
find "$work/pkg" -name '_C*.so' -delete
cp "$work"/build/_C*.so "$work/pkg/macaw_fast/"

# Python is not instrumented, so the ASan runtime must be loaded first, and libstdc++ with it
# (else ASan's __cxa_throw interceptor finds no real __cxa_throw and aborts on the first C++
# exception). Leak checking is off: CPython and torch keep allocations alive until exit by design.
export LD_PRELOAD="$("$CXX" -print-file-name=libasan.so) $("$CXX" -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:verify_asan_link_order=0"
export MACAW_FAST_ASAN_PKG="$work/pkg"
python - "$@" <<'PY'
import glob
import os
import sys

# Drop the editable install's import hook so `macaw_fast` comes from the instrumented copy.
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("_editable")]
sys.path.insert(0, os.environ["MACAW_FAST_ASAN_PKG"])
import macaw_fast._C as C  # noqa: E402

if not (C._asan and C.__file__.startswith(os.environ["MACAW_FAST_ASAN_PKG"])):
    sys.exit(f"asan.sh: loaded the wrong extension: {C.__file__} (asan={C._asan})")
print(f"asan.sh: testing {C.__file__}", flush=True)
import pytest  # noqa: E402

sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", *sorted(glob.glob("tests/test_sampler*.py")), "tests/test_lowrank_adam.py", "tests/test_generate.py", "tests/test_skinny.py", "tests/test_value_forward.py", "tests/test_openmp.py", *sys.argv[1:]]))
PY
