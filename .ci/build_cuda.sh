#!/usr/bin/env bash
# Compiles the CUDA variant of the extension (CNNVIS_CUDA=ON) against the CUDA
# build of torch 2.14.1 in a virtualenv cached outside the checkout, so that a
# broken .cu file fails CI even on machines with no GPU to run it.
# Usage: bash .ci/build_cuda.sh  (no-op with a message when nvcc is absent)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${CNNVIS_CUDA_CACHE:-$HOME/.cache/cnnvis_ext}"
VENV="$CACHE/venv-cuda"
PY="${PYTHON:-python3}"

if ! command -v nvcc >/dev/null 2>&1; then
  echo "build_cuda: nvcc not found; skipping the CUDA compile check"
  exit 0
fi
mkdir -p "$CACHE"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.14.1') and torch.version.cuda else 1)" 2>/dev/null; then
  echo "build_cuda: creating $VENV with torch 2.14.1 (CUDA build, from the local wheel store)"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check torch==2.14.1 numpy pybind11 ninja \
      "scikit-build-core>=0.10" cmake
fi
NVCC_BIN="$(readlink -f "$(command -v nvcc)")"
CUDA_ROOT="${CUDA_HOME:-}"
if [ -z "$CUDA_ROOT" ]; then
  for d in /usr/local/cuda-13.0 /usr/local/cuda; do
    if [ -x "$d/bin/nvcc" ]; then CUDA_ROOT="$d"; break; fi
  done
fi
echo "build_cuda: nvcc $(nvcc --version | tail -n 2 | head -n 1); CUDA root ${CUDA_ROOT:-unknown}"
BUILD="$CACHE/build-cuda"
# The CMake build folder is kept between runs (only changed files recompile),
# but CMake refuses a build folder made for another source folder (CI clones
# into a new folder each time): start it over then.
CACHED_SRC="$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$BUILD/cmake/CMakeCache.txt" 2>/dev/null || true)"
if [ -n "$CACHED_SRC" ] && [ "$CACHED_SRC" != "$ROOT" ]; then
  echo "build_cuda: cached build folder was made for $CACHED_SRC; starting it over for $ROOT"
  rm -rf "$BUILD/cmake"
fi
rm -rf "$BUILD/wheel"
mkdir -p "$BUILD"
cd "$ROOT"
# Build a wheel only (nothing is installed): compile errors fail the script.
CNNVIS_CUDA=ON CNNVIS_CUDA_ARCHS="${CNNVIS_CUDA_ARCHS:-90}" \
  CUDACXX="${CUDA_ROOT:+$CUDA_ROOT/bin/}nvcc" CUDA_HOME="$CUDA_ROOT" \
  "$VENV/bin/pip" wheel --no-build-isolation --no-deps -q --disable-pip-version-check \
  -w "$BUILD/wheel" -Cbuild-dir="$BUILD/cmake" "$ROOT"
"$VENV/bin/python" - "$BUILD/wheel" <<'PY'
import sys, zipfile, glob
whl = sorted(glob.glob(sys.argv[1] + "/cnnvis_ext-*.whl") + glob.glob(sys.argv[1] + "/cnnvis_ext*.whl"))[-1]
names = zipfile.ZipFile(whl).namelist()
so = [n for n in names if n.startswith("cnnvis_ext/_C") and n.endswith(".so")]
assert so, f"no extension module in {whl}"
print(f"build_cuda: OK, built {so[0]} in {whl}")
PY
