#!/usr/bin/env bash
# The anomaly detector's CUDA path in one command, for a machine with a GPU: trains on Ray Train
# with use_gpu=True for about a minute and prints samples/s and checkpoint time.
#   bash benchmarks/gpu_check.sh [--seconds 60] [--workers N]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! uv --version >/dev/null 2>&1; then
  python3 -m pip install --quiet uv
fi
exec uv run python benchmarks/gpu_check.py "$@"
