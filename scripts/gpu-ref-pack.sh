#!/usr/bin/env bash
# Computes here, once, the CPU reference of gpu-check.sh's full4 step (4 full-width synthetic layers,
# 2,200 tokens, logits of the last 32 positions) into .device-ref/ (git-ignored, ~17 MB), so the
# GPU machine spends no device time on the CPU side: carry [".device", ".device-ref"] with
# `bash scripts/gpu-check.sh full4`. Takes ~3 minutes on a 2-core machine (a 9 GB model file
# in /tmp, deleted afterwards). Needs target/ci/ds4 (scripts/gpu-pack.sh builds it) and numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .device-ref
python3 -c "import numpy as np; np.random.default_rng(7).integers(0,129280,2200).astype('<i4').tofile('.device-ref/t2200.i32')"
target/ci/ds4 synth --preset full --layers 4 --seed 5 --out /tmp/full4.gguf
sha256sum /tmp/full4.gguf | cut -c1-64 >.device-ref/full4.sha256
target/ci/ds4 logits -m /tmp/full4.gguf --tokens .device-ref/t2200.i32 --last 32 --out .device-ref/full4-cpu.f32 --backend cpu
rm -f /tmp/full4.gguf
ls -la .device-ref
