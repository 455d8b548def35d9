"""CLIP (two towers, softmax contrastive loss) on your own image-caption pairs (config.data.name="image_text").

    python -m vlm_jax.train --config configs/image_text_clip.py --workdir /tmp/my_clip \
      --config.data.source.format=csv --config.data.source.annotations=captions.csv \
      --config.data.source.images=photos/

Formats: coco | csv | jsonl | llava | webdataset (README, "Your own data"). The data is prepared once into
ArrayRecord under config.data.data_dir (report.json and skipped.txt beside it); 5% of the records (fixed by
config.data.source.seed) are held out as the validation split unless config.data.source.val_annotations names
its own file. Evaluators: image<->text retrieval on the validation split (every caption of an image a query),
and zero-shot classification when the records have a class (config.data.source.label_key).
"""

from vlm_jax.run_config import add_sources, base_config


def get_config(arg=None):
  """arg: names of several sources to mix ("web,coco", README "Your own data"), each then set with
  --config.data.sources.NAME.FIELD=... (weight included); none: the one config.data.source."""
  config = base_config()
  config.data.name = "image_text"
  config.data.image_size = 224
  config.data.max_text_len = 32
  config.data.canonical_caption_prob = 0.0  # a random caption of the image each time
  config.model.name = "two_tower"
  config.model.vision.update(patch_size=16, width=384, depth=6, num_heads=6, mlp_dim=1536, pool="gap")
  config.model.text.update(width=384, depth=6, num_heads=6, mlp_dim=1536)
  config.model.embed_dim = 384
  config.loss.contrastive = "softmax"
  config.batch_size = 128
  config.total_steps = 10_000
  config.optimizer.update(learning_rate=5e-4, warmup_steps=500, weight_decay=0.1)
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.eval.update(split="validation", periodic_split="validation", extra_splits=(), batch_size=256)
  config.evals.retrieval = dict(type="retrieval")
  # Zero-shot over your class names, for records with a class: switched on by --config.evals.zero_shot.type=zero_shot
  # --config.data.source.label_key=KEY (and optionally "--config.data.class_names=('cat','dog')").
  config.evals.zero_shot = dict(type="", every=0)
  return add_sources(config, arg)
