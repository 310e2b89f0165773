#!/usr/bin/env bash
# Wheels that the GPU machines lack, for running benchmarks/bench_precision.py and bench_wsi.py there (see
# benchmarks/gpu/README.md).
#
# The GPU image has Python 3.12, torch, torchvision, timm, numpy, scipy, pandas, scikit-image, pillow,
# pyyaml, matplotlib and tifffile, but not MONAI, pydantic or the medical readers; no registry can be
# reached from it. This downloads those wheels, at the versions installed in .venv (the ones the test
# suite ran with), into .whl/ (git-ignored; about 40 MB, imagecodecs 26 MB of it), for:
#     python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#
# Usage: bash benchmarks/gpu/wheels.sh [PYTHON_VERSION]   (default 3.12; 3.11 makes a set for this machine)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYV="${1:-3.12}"
PIP=".venv/bin/python -m pip"
NAMES=(monai pydantic pydantic-core annotated-types typing-inspection typing-extensions pytorch-ignite
       nibabel pydicom pynrrd wfdb soundfile imagecodecs openslide-python openslide-bin)
SPECS=()
for n in "${NAMES[@]}"; do
  v=$($PIP show "$n" 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$v" ] || { echo "wheels.sh: $n is not installed in .venv (run make install first)" >&2; exit 2; }
  SPECS+=("$n==$v")
done
rm -rf .whl && mkdir -p .whl
$PIP download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "${SPECS[@]}"
du -sh .whl
ls .whl
