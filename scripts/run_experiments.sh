#!/usr/bin/env bash
# Trains every shapes config from scratch, one after the other, timing each command (wall clock,
# data preparation and evaluation included), then prints the markdown table of experiments/README.md.
#   bash scripts/run_experiments.sh [RUNS_DIR]      (default runs/; about an hour on 2 CPU cores;
#   the fashion_mnist configs need Debian's dataset-fashion-mnist package)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs}
mkdir -p "$runs"
for name in shapes_coca shapes_clip shapes_siglip shapes_llava shapes_lm llava_stage1 llava_stage2 fashion_mnist_coca fashion_mnist_vit; do
  extra=()
  case $name in  # the LLaVA stages load the towers trained just before them
    llava_stage1) extra=("--config.init_from=(('vision','$runs/shapes_clip','vision'),('decoder','$runs/shapes_lm','decoder'))") ;;
    llava_stage2) extra=("--config.init_from=(('','$runs/llava_stage1',''),)") ;;
  esac
  start=$(date +%s.%N)
  python -m vlm_jax.train --config "configs/$name.py" --workdir "$runs/$name" "${extra[@]}" > "$runs/$name.log" 2>&1
  python -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 1))" "$(date +%s.%N)" "$start" > "$runs/$name/wall_seconds.txt"
  echo "$name: $(cat "$runs/$name/wall_seconds.txt") s" >&2
done
python scripts/results_table.py "$runs"
