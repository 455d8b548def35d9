"""Prefix-LM VLM (LLaVA / PaliGemma style) on shapes VQA: image tokens -> MLP projector -> prefix.

    python -m vlm_jax.train --config configs/shapes_llava.py --workdir /tmp/shapes_llava

The prompt (a question, or "describe the image." with probability data.vqa_caption_prob) is in the
prefix with the image and seen bidirectionally; the loss is on the answer only.
Reached here (2 CPU cores): see experiments/README.md for wall time and every eval.json metric.
"""

from vlm_jax.run_config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  # Blocks as a Python loop: at these sizes (2-3 blocks, CPU) nn.scan saves no compile time and costs a
  # quarter of the step (shapes_coca, AMD EPYC 2 cores: 300 img/s loop vs 230 scanned), see experiments/.
  config.model.scan = False
  config.model.name = "prefix_lm"
  config.model.projector.type = "mlp"
  config.model.text.depth = 3
  config.loss.contrastive = ""
  config.loss.caption_weight = 1.0
  config.data.max_text_len = 24
  config.eval.max_decode_len = 24
  config.total_steps = 800
  config.eval_every_steps = 400
  return config
