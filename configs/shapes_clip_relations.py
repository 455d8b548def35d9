"""CLIP on shapes that reads both spatial relations from the image: relation texts with their reversed twins in the
batch, objects named top to bottom as well as left to right, and half shapes_clip's learning rate.

    python -m vlm_jax.train --config configs/shapes_clip_relations.py --workdir /tmp/shapes_clip_relations

configs/shapes_clip (same towers) with
- config.data.hard_negatives (each text's word-swapped twin as an extra negative) and relation_caption_prob=0.5
  (half the texts state a relation where the scene has one, so half the twins reverse one);
- top_down_caption_prob=1.0 (objects named top to bottom, chained by "above", where the scene allows) and
  canonical_caption_prob=0.9 (the rest mostly the left-to-right list): texts that order the objects on both axes;
- learning rate 5e-4 (at 1e-3 the same texts teach one axis well and the other half-way: 0.714 / 0.791);
- 3000 steps of batch 128.
Reached on one core of an AMD EPYC (about 25 min alone): left/right 0.897, above/below 0.871 (shapes_clip: 0.904 /
0.490), binding 0.984, img2txt R@1 0.900; seed 1 (Intel Xeon) 0.831 / 0.836, binding 0.984, R@1 0.889;
experiments/README.md, ninth and tenth sessions.
"""

import os

from vlm_jax.run_config import load_config


def get_config(arg=None):
  del arg
  config = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "shapes_clip.py"))
  config.total_steps = 3000
  config.optimizer.learning_rate = 5e-4
  config.data.update(hard_negatives=True, relation_caption_prob=0.5, top_down_caption_prob=1.0,
                     canonical_caption_prob=0.9)
  return config
