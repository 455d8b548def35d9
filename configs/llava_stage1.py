"""LLaVA stage 1 (feature alignment): train only the projector between a frozen ViT and a frozen LM.

    python -m vlm_jax.train --config configs/shapes_clip.py --workdir runs/shapes_clip
    python -m vlm_jax.train --config configs/shapes_lm.py --workdir runs/shapes_lm
    python -m vlm_jax.train --config configs/llava_stage1.py --workdir runs/llava_stage1

The ViT comes from the shapes CLIP (its penultimate block's tokens, as LLaVA-1.5 uses), the decoder from
the shapes LM; both frozen (no gradients, no optimizer state). Data: captions ("describe the image.").
Run from the repository root (init_from paths are relative); then configs/llava_stage2.py.
"""

from vlm_jax.run_config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  # Blocks as a Python loop: at these sizes (2-3 blocks, CPU) nn.scan saves no compile time and costs a
  # quarter of the step (shapes_coca, AMD EPYC 2 cores: 300 img/s loop vs 230 scanned), see experiments/.
  config.model.scan = False
  config.model.name = "prefix_lm"
  config.model.vision_layer = -2
  config.model.projector.type = "mlp"
  config.model.text.depth = 3
  config.data.max_text_len = 24
  config.data.vqa_caption_prob = 1.0  # stage 1 aligns on captions only
  config.loss.contrastive = ""
  config.loss.caption_weight = 1.0
  config.freeze = ("vision/.*", "decoder/.*")
  config.init_from = (("vision", "runs/shapes_clip", "vision"), ("decoder", "runs/shapes_lm", "decoder"))
  config.total_steps = 300
  config.eval_every_steps = 10_000
  config.eval.max_decode_len = 24
  return config
