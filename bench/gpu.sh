#!/usr/bin/env bash
# The accelerator measurement (bench/gpu.py) as one prepared script.
#
#   bench/gpu.sh --fetch    # where the package registry is reachable: cp312 wheels of what a
#                           # GPU image may lack, into bench/wheels/ (git-ignored)
#   bench/gpu.sh [args]     # on the GPU machine (bench/wheels/ copied along): installs the
#                           # missing packages offline, then runs bench/gpu.py [args]
#   bench/gpu.sh --quick    # the same on a CPU, small sizes: checks the script
#
# Writes bench/results/gpu.json (and $OUT/gpu.json when $OUT is set).
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=bench/wheels
NEEDED="grain ml-collections pycocotools faster-coco-eval munkres==1.1.4"

if [[ "${1:-}" == "--fetch" ]]; then
  mkdir -p "$WHEELS"
  python -m pip download --dest "$WHEELS" --only-binary=:all: --python-version 3.12 \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux_2_28_x86_64 $NEEDED
  exit 0
fi

missing=""
for pkg in grain ml_collections pycocotools faster_coco_eval munkres; do
  python -c "import $pkg" 2>/dev/null || missing="$missing $pkg"
done
if [[ -n "$missing" ]]; then
  echo "installing:$missing (from $WHEELS)"
  # Only what is missing, without touching the image's jax/numpy/torch.
  python -m pip install --quiet --no-index --find-links "$WHEELS" ${missing//_/-}
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # PyTorch shares the GPU in the same process
exec python bench/gpu.py "$@"
