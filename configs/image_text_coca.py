"""CoCa (contrastive + captioning) on your own image-caption pairs (config.data.name="image_text").

    python -m vlm_jax.train --config configs/image_text_coca.py --workdir /tmp/my_coca \
      --config.data.source.format=coco --config.data.source.annotations=annotations/captions_train2017.json \
      --config.data.source.images=train2017/ \
      --config.data.source.val_annotations=annotations/captions_val2017.json --config.data.source.val_images=val2017/

Loss = 2.0 * caption + 1.0 * contrastive (the CoCa paper's weights). Evaluators on the validation split:
retrieval, and captioning (BLEU-4, CIDEr-D, ROUGE-L against every reference caption of an image).
"""

from vlm_jax.run_config import add_sources, base_config


def get_config(arg=None):
  """arg: names of several sources to mix ("web,coco", README "Your own data"), each then set with
  --config.data.sources.NAME.FIELD=... (weight included); none: the one config.data.source."""
  config = base_config()
  config.data.name = "image_text"
  config.data.image_size = 224
  config.data.max_text_len = 32
  config.data.canonical_caption_prob = 0.0
  config.model.name = "coca"
  config.model.vision.update(patch_size=16, width=384, depth=6, num_heads=6, mlp_dim=1536, pool="gap")
  config.model.text.update(width=384, depth=3, num_heads=6, mlp_dim=1536)
  config.model.multimodal.depth = 3
  config.model.embed_dim = 384
  config.loss.contrastive = "softmax"
  config.loss.contrastive_weight = 1.0
  config.loss.caption_weight = 2.0
  config.batch_size = 128
  config.total_steps = 10_000
  config.optimizer.update(learning_rate=5e-4, warmup_steps=500, weight_decay=0.1)
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.eval.update(split="validation", periodic_split="validation", extra_splits=(), batch_size=256,
                     max_decode_len=32)
  config.evals.retrieval = dict(type="retrieval")
  config.evals.captioning = dict(type="captioning", every=0)  # decoding is slow: at the end only
  # Zero-shot over your class names, for records with a class: switched on by --config.evals.zero_shot.type=zero_shot
  # --config.data.source.label_key=KEY (and optionally "--config.data.class_names=('cat','dog')").
  config.evals.zero_shot = dict(type="", every=0)
  return add_sources(config, arg)
