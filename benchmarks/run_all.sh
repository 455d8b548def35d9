#!/usr/bin/env bash
# vlm_jax vs open_clip training-step speed on configs/bench_small.py and configs/bench_ti16.py.
#   bash benchmarks/run_all.sh [--steps 10]
# Each benchmark runs in its own process, one after the other, with this shell's environment; the last
# line is a JSON summary with img/s, step_s, TFLOP/s, MFU of each and the vlm_jax / open_clip img/s ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
exec "$PYTHON" benchmarks/open_clip_bench.py --configs configs/bench_small.py,configs/bench_ti16.py "$@"
