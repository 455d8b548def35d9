"""SigLIP (two towers, sigmoid contrastive loss: scale init 10, bias init -10) on the shapes data.

    python -m vlm_jax.train --config configs/shapes_siglip.py --workdir /tmp/shapes_siglip

Reached here (2 CPU cores): see experiments/README.md for wall time and every eval.json metric.
"""

import math

from vlm_jax.run_config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  # Blocks as a Python loop: at these sizes (2-3 blocks, CPU) nn.scan saves no compile time and costs a
  # quarter of the step (shapes_coca, AMD EPYC 2 cores: 300 img/s loop vs 230 scanned), see experiments/.
  config.model.scan = False
  config.model.name = "two_tower"
  config.model.logit_scale_init = math.log(10.0)
  config.model.logit_bias_init = -10.0
  config.loss.contrastive = "sigmoid"
  return config
