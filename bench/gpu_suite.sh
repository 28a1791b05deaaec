#!/usr/bin/env bash
# The GPU benchmark suite: one table in at most 8 minutes on one H100/H200 (see bench/gpu_suite.py).
#
#   bash bench/gpu_suite.sh                 # on a GPU machine: prints the table (add --out results.json)
#   bash bench/gpu_suite.sh --dry-run       # every step for a few iterations on a tiny model, on the CPU
#
# Rows: convnextv2_large.fcmae_ft_in22k_in1k, coatnet_rmlp_1_rw2_224.sw_in12k_ft_in1k,
# xcit_large_24_p16_224.fb_in1k, efficientnet_lite0 -- training img/s of a naive fp32 loop vs our GPU recipe
# (bf16 autocast, channels_last, fused AdamW, uint8 GPU cache + GPU augmentation, eager and torch.compile),
# fraction of the bf16 peak; then a 1-process torchrun smoke and slide inference tiles/s.
# Weights are random (throughput does not depend on them, and the machine needs no network).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PY" ]; then
  echo "error: $PY not found; run 'bash scripts/setup.sh' first (or set PYTHON=/path/to/python)" >&2
  exit 2
fi
export HF_HUB_OFFLINE=1
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/mai_inductor_cache}"
exec "$PY" bench/gpu_suite.py "$@"
