#!/usr/bin/env bash
# The accelerator benchmark (benchmarks/gpu_bench.py): training img/s, TFLOP/s per device, MFU against the chip's
# dense bf16 peak and peak memory for bench_ti16 and a CLIP ViT-B/16 at batch 256, and a Llama's decode tokens/s,
# written as a markdown table (and JSON) to --out.
#   bash benchmarks/gpu.sh [--out gpu_bench.md] [--steps 20] [--cases train_b16,decode_b1]   on a GPU or TPU machine
#   bash benchmarks/gpu.sh --dry-run --out /tmp/gpu_dry.md                                  CPU, tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's vlm_jax, whatever is installed
exec "$PYTHON" benchmarks/gpu_bench.py "$@"
