"""CoCa on scenes of real Fashion-MNIST items with template captions ("a sneaker left of a bag").

    sudo apt-get install dataset-fashion-mnist      # Debian's package: /usr/share/datasets/fashion-mnist
    python -m vlm_jax.train --config configs/fashion_mnist_coca.py --workdir /tmp/fashion_mnist_coca

A scene is a 56 x 56 canvas cut into a 2 x 2 grid of 28 x 28 cells holding 1 to 3 items: training scenes
draw items from the Fashion-MNIST training images, test scenes from its test images. Evaluators: retrieval,
the hard-negative probes (count, left/right, above/below; no attributes to bind), captioning (exact match,
BLEU-4, CIDEr, ROUGE-L) on the test scenes, and zero-shot classification of the 10 000 Fashion-MNIST test
images (each alone on the canvas) among the 10 class names in prompt templates. Its supervised baseline is
configs/fashion_mnist_vit.py (same ViT width and depth, same pixels per patch).
Reached here (2 CPU cores): see experiments/README.md.
"""

from vlm_jax.run_config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  # Blocks as a Python loop: at these sizes (2-3 blocks, CPU) nn.scan saves no compile time and costs a
  # quarter of the step (shapes_coca, AMD EPYC 2 cores: 300 img/s loop vs 230 scanned), see experiments/.
  config.model.scan = False
  config.data.name = "fashion_mnist_scenes"
  config.data.image_size = 56
  config.model.name = "coca"
  config.model.vision.patch_size = 7  # 8 x 8 = 64 tokens, as the shapes configs; 4 x 4 per item
  config.model.text.depth = 2
  config.model.multimodal.depth = 2
  config.loss.contrastive = "softmax"
  config.loss.contrastive_weight = 1.0
  config.loss.caption_weight = 2.0
  config.total_steps = 1000
  config.eval_every_steps = 500
  config.eval.extra_splits = ()
  config.evals.retrieval = dict(type="retrieval", every=0)
  config.evals.hardneg = dict(type="hardneg", every=0)
  config.evals.captioning = dict(type="captioning", every=0)
  # The Fashion-MNIST test images; periodically its validation images (the last 5000 training images).
  config.evals.zero_shot = dict(type="zero_shot", split="test", every=500, prefix="fashion_mnist/",
                                templates=("{}", "a {}", "an image of a {}"))
  return config
