#!/usr/bin/env bash
# One JSON file of what a GPU does with specq, in about five minutes on one GPU:
# BossNet at float32, tf32 and bf16 (20 draws, 4,096 spectra) with peak memory and the
# bf16 deviation table, then the feed bench. `--device cpu` is its small self-test.
#   scripts/gpu-check.sh [--device cuda|cpu] [--out gpu-check.json]
# On a machine without specq's dependencies (a GPU image with torch alone), carry the
# wheels scripts/gpu-wheels.sh puts in .whl/: they are installed under /tmp/specq-site.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's specq, not another installed one
if [ -d .whl ] && ! "$PYTHON" -c "import astropy, celery, sqlalchemy" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/specq-site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/specq-site"
fi
exec "$PYTHON" scripts/gpu_check.py "$@"
