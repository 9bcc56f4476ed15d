#!/usr/bin/env bash
# One JSON file of what a GPU does with specq, in about five minutes on one GPU:
# BossNet at float32, tf32 and bf16 (20 draws, 4,096 spectra) with peak memory and the
# bf16 deviation table, then the feed bench. `--device cpu` is its small self-test.
#   scripts/gpu-check.sh [--device cuda|cpu] [--out gpu-check.json]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's specq, not another installed one
exec "$PYTHON" scripts/gpu_check.py "$@"
