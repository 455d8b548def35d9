#!/usr/bin/env bash
# img/s and MFU of the shapes CLIP (2 heads per tower so tensor=2 splits them) on one CPU device with
# mesh (1,1,1), and on 8 simulated CPU devices with mesh (2,2,2): the same 2 cores either way, so the
# ratio is the cost of partitioning the step 8 ways (collectives, smaller matmuls), not a speed-up.
#   bash scripts/mesh_throughput.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-80}
common=(--config configs/shapes_clip.py "--config.total_steps=$steps" --config.log_every_steps=20
        --config.eval_every_steps=100000 --config.checkpoint_every_steps=100000
        --config.model.vision.num_heads=2 --config.model.text.num_heads=2 "--config.eval.extra_splits=()")
for mesh in "1 1 1 1" "8 2 2 2"; do
  read -r devices data fsdp tensor <<< "$mesh"
  workdir=$(mktemp -d)
  XLA_FLAGS=--xla_force_host_platform_device_count=$devices python -m vlm_jax.train "${common[@]}" \
      --workdir "$workdir" --config.mesh.data=$data --config.mesh.fsdp=$fsdp --config.mesh.tensor=$tensor \
      | grep "^step $steps/" | sed "s|^|mesh ($data,$fsdp,$tensor) on $devices device(s): |"
  rm -rf "$workdir"
done
