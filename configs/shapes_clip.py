"""CLIP (two towers, softmax contrastive loss) on the procedural shapes data.

    python -m vlm_jax.train --config configs/shapes_clip.py --workdir /tmp/shapes_clip

Reached here (2 CPU cores): see experiments/README.md for wall time and every eval.json metric.
The learning rate is 1e-3, half the base config's: img2txt R@1 0.622 +- 0.021 (3 seeds) against 0.508 +- 0.038 at
2e-3 (experiments/README.md, "SigLIP against CLIP: the learning rate, the temperature, ..." and the seventh session's
"The headline two-tower rows at today's configs"); 0.945 at --config.total_steps=3000.
"""

from vlm_jax.run_config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  # Blocks as a Python loop: at these sizes (2-3 blocks, CPU) nn.scan saves no compile time and costs a
  # quarter of the step (shapes_coca, AMD EPYC 2 cores: 300 img/s loop vs 230 scanned), see experiments/.
  config.model.scan = False
  config.model.name = "two_tower"
  config.loss.contrastive = "softmax"
  config.optimizer.learning_rate = 1e-3
  return config
