"""The supervised baseline for Fashion-MNIST: a ViT with a linear head, softmax cross-entropy on labels.

    sudo apt-get install dataset-fashion-mnist
    python -m vlm_jax.train --config configs/fashion_mnist_vit.py --workdir /tmp/fashion_mnist_vit

Trained on the 55 000 first training images at 28 x 28 (the last 5000 are the validation split), scored
on the 10 000 test images: `accuracy` in eval.json, beside the zero-shot accuracy of
configs/fashion_mnist_coca.py (same ViT width and depth, 7 x 7 pixels per patch in both).
"""

from vlm_jax.run_config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  # Blocks as a Python loop: at these sizes (2-3 blocks, CPU) nn.scan saves no compile time and costs a
  # quarter of the step (shapes_coca, AMD EPYC 2 cores: 300 img/s loop vs 230 scanned), see experiments/.
  config.model.scan = False
  config.data.name = "fashion_mnist"
  config.data.image_size = 28
  config.data.tokenizer = "byte"  # no text; the byte tokenizer needs no preparation
  config.model.name = "vit_classifier"
  config.model.num_classes = 10
  config.model.vision.patch_size = 7  # 4 x 4 = 16 tokens
  config.loss.contrastive = ""
  config.loss.caption_weight = 0.0
  config.total_steps = 1000
  config.eval_every_steps = 500
  config.eval.extra_splits = ()
  config.evals.classification = dict(type="classification")
  return config
