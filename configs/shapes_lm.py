"""A small causal language model trained on the shapes captions: the "pretrained LM" of the LLaVA recipe.

    python -m vlm_jax.train --config configs/shapes_lm.py --workdir runs/shapes_lm

Its decoder has the shape of configs/shapes_llava.py's, so llava_stage1 loads it as the VLM's language model.
No images are used (the image pipeline still runs; the model ignores it).
"""

from vlm_jax.run_config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  # Blocks as a Python loop: at these sizes (2-3 blocks, CPU) nn.scan saves no compile time and costs a
  # quarter of the step (shapes_coca, AMD EPYC 2 cores: 300 img/s loop vs 230 scanned), see experiments/.
  config.model.scan = False
  config.model.name = "causal_lm"
  config.model.text.depth = 3
  config.data.max_text_len = 24  # as the prefix-LM it will be loaded into
  config.loss.contrastive = ""
  config.loss.caption_weight = 1.0
  config.total_steps = 600
  config.eval_every_steps = 10_000
  return config
