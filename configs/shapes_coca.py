"""CoCa (contrastive + captioning, one ViT) on the shapes data: the README's main command.

    python -m vlm_jax.train --config configs/shapes_coca.py --workdir /tmp/shapes_coca

Loss = 2.0 * caption + 1.0 * contrastive (the CoCa paper's weights).
Reached here (2 CPU cores): see experiments/README.md for wall time and every eval.json metric.
"""

from vlm_jax.run_config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  # Blocks as a Python loop: at these sizes (2-3 blocks, CPU) nn.scan saves no compile time and costs a
  # quarter of the step (shapes_coca, AMD EPYC 2 cores: 300 img/s loop vs 230 scanned), see experiments/.
  config.model.scan = False
  config.model.name = "coca"
  config.model.text.depth = 2       # the unimodal half
  config.model.multimodal.depth = 2  # the half that cross-attends image tokens
  config.loss.contrastive = "softmax"
  config.loss.contrastive_weight = 1.0
  config.loss.caption_weight = 2.0
  # Sized for the README's promise: data preparation, training and evaluation within 10 minutes on
  # 2 CPU cores (no periodic evaluation; the held-out splits are scored at the end).
  config.total_steps = 1200
  config.eval_every_steps = 1200
  return config
