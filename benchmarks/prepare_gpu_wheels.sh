#!/usr/bin/env bash
# Download (into .whl/, git-ignored) the pure-Python wheels the GPU image lacks for benchmarks/gpu_suite.sh.
# The image has torch 2.11, transformers 5.x, huggingface_hub 1.x, accelerate, safetensors, timm, regex; not
# diffusers (+ importlib_metadata), open_clip_torch, ftfy. Versions: the newest that import with those (pip decides; --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers open_clip_torch ftfy wcwidth importlib_metadata
ls -la .whl
