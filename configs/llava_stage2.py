"""LLaVA stage 2 (instruction tuning): projector and LM trained on VQA + captions, the ViT still frozen.

    python -m vlm_jax.train --config configs/llava_stage2.py --workdir runs/llava_stage2

Starts from stage 1's latest checkpoint (runs/llava_stage1; see configs/llava_stage1.py for the order).
"""

import importlib.util
import os


def _stage1():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "llava_stage1.py")
  spec = importlib.util.spec_from_file_location("llava_stage1", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  config = _stage1().get_config(arg)
  config.data.vqa_caption_prob = 0.2  # mostly questions now
  config.freeze = ("vision/.*",)
  config.init_from = (("", "runs/llava_stage1", ""),)
  config.total_steps = 400
  return config
