#!/usr/bin/env bash
# Sets gptcore up from this checkout and runs every check: ruff, the C++ tests (ctest) and
# pytest. The CUDA kernels are compiled whenever nvcc is found (they run only on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch is a runtime dependency; 2.13.0 is the version CI pins (a CPU build where one is at hand).
"$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install "torch==2.13.0"
if command -v nvcc >/dev/null; then
  # cuBLAS and NCCL for the CUDA build, when the toolkit lacks them.
  "$PY" -m pip install "nvidia-cublas>=13" "nvidia-nccl-cu13"
fi
"$PY" -m pip install ".[test]"

"$PY" -m ruff check python tests bench examples
"$PY" -m ruff format --check python tests bench examples

# The install above compiled the CUDA kernels for every architecture; with no GPU to run them on, the
# C++ tests' build compiles them for one (the CUDA compile is most of a run's time on two cores).
archs=()
command -v nvcc >/dev/null && ! nvidia-smi -L >/dev/null 2>&1 && archs=(-DCMAKE_CUDA_ARCHITECTURES=90)
cmake -S . -B build/cpp -G Ninja -DCMAKE_BUILD_TYPE=Release -DGPTCORE_BUILD_TESTS=ON -DGPTCORE_BUILD_BENCH=ON \
  -DPython_EXECUTABLE="$(command -v "$PY")" "${archs[@]}"
cmake --build build/cpp
ctest --test-dir build/cpp --output-on-failure

"$PY" -m pytest tests/python
