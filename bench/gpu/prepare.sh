#!/usr/bin/env bash
# Run here, before a GPU slot: puts everything the GPU machine lacks into the ignored folder
# .devrun/ (carried to the slot with `carry: [".devrun"]`, then `bash bench/gpu/check.sh $OUT`):
#   - a cp312 wheel of gptcore with the CUDA kernels for sm_90 only (the slot's Python is 3.12);
#   - the wheels of gptcore's dependencies that the slot's image does not hold (scipy-openblas32).
# The slot has no package index, so nothing may be left to download there.
set -euo pipefail
cd "$(dirname "$0")/../.."
DEST=.devrun
ARCHS=${GPTCORE_CUDA_ARCHS:-90}

# Python 3.12 (the slot's version): on PATH, else pyenv's.
# (pyenv's shim is on PATH even when 3.12 is not the selected version, so try each candidate.)
PY312=""
for candidate in python3.12 "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python3.12; do
  if "$candidate" -c "import sys; assert sys.version_info[:2] == (3, 12)" 2>/dev/null; then
    PY312=$(command -v "$candidate")
    break
  fi
done
if [[ -z "$PY312" ]]; then
  echo "prepare: no Python 3.12 found (install it, e.g. \`pyenv install 3.12\`)" >&2
  exit 2
fi
command -v nvcc >/dev/null || { echo "prepare: nvcc not found; the GPU wheel needs the CUDA compiler" >&2; exit 2; }

# A build environment of its own: the wheel's build needs cuBLAS/NCCL headers and libraries to link
# against (from the nvidia-* wheels when the toolkit lacks them) and OpenBLAS.
VENV=build/devrun-venv
[[ -x $VENV/bin/python ]] || "$PY312" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade "scikit-build-core>=0.10" "pybind11>=2.12" scipy-openblas32 \
  "nvidia-cublas>=13" nvidia-nccl-cu13

rm -rf "$DEST" && mkdir -p "$DEST"
GPTCORE_CUDA=ON GPTCORE_CUDA_ARCHS="$ARCHS" "$VENV/bin/python" -m pip wheel --no-build-isolation --no-deps \
  -Cbuild-dir=build/devrun-cp312 -w "$DEST" .

# The dependencies the slot lacks, for its platform, at the versions the wheel was built against.
OPENBLAS=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('scipy-openblas32'))")
"$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$DEST" "scipy-openblas32==$OPENBLAS"

ls -la "$DEST"
SIZE=$(du -sm "$DEST" | cut -f1)
echo "prepare: $DEST holds ${SIZE} MiB (limit 60)"
(( SIZE <= 60 )) || { echo "prepare: $DEST is over 60 MiB" >&2; exit 1; }
