#!/usr/bin/env bash
# Issue 13's one-call GPU benchmark. Prepare once on the CPU machine (downloads pure-Python wheels the device
# image lacks: diffusers, open_clip_torch, ftfy, wcwidth):
#     bash benchmarks/prepare_gpu_wheels.sh
# then, through the device tool, from the repo root (carry [".whl"]):
#     RENEG_COMMIT=<git rev-parse HEAD> bash benchmarks/gpu_suite.sh
# It installs the wheels into /tmp/site, puts this checkout on PYTHONPATH as the package `reneg`, runs
# benchmarks/gpu_suite.py (all rows, one process) and writes $OUT/gpu_suite.json + $OUT/gpu_suite.log.
# Commit the JSON as benchmarks/results/<date>-<gpu>-<commit>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/reneg-gpu-suite}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
mkdir -p /tmp/reneg-pkg && ln -sfn "$PWD" /tmp/reneg-pkg/reneg
export PYTHONPATH=/tmp/reneg-pkg:${PYTHONPATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu_suite.log" || true
python3 benchmarks/gpu_suite.py --out "$OUT" --commit "${RENEG_COMMIT:-unknown}" "$@" 2>&1 | tee -a "$OUT/gpu_suite.log"
