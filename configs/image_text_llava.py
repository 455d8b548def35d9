"""Prefix-LM VLM (LLaVA style) on your own conversations: LLaVA's JSON (config.data.source.format="llava").

    python -m vlm_jax.train --config configs/image_text_llava.py --workdir /tmp/my_llava \
      --config.data.source.annotations=llava_instruct.json --config.data.source.images=images/

Each record is {"image", "conversations": [{"from": "human"|"gpt", "value"}, ...]} with an "<image>"
placeholder (removed: the image is the model's prefix), any number of turns. The prefix (image + first user
turn) is seen bidirectionally; every assistant turn is followed by EOS and the loss is on every assistant turn
and never on the user's. Image-caption sources (any other format) train the same model to answer "describe the
image." with a caption. Evaluator: the first question of each validation conversation, exact-match answers.
A pretrained LM's vocabulary: --config.data.tokenizer=hf:DIR (tokenizer.json or tokenizer.model).
"""

from vlm_jax.run_config import add_sources, base_config


def get_config(arg=None):
  """arg: names of several sources to mix ("web,coco", README "Your own data"), each then set with
  --config.data.sources.NAME.FIELD=... (weight included); none: the one config.data.source."""
  config = base_config()
  config.data.name = "image_text"
  config.data.source.format = "llava"
  config.data.image_size = 224
  config.data.max_text_len = 128
  config.model.name = "prefix_lm"
  config.model.projector.type = "mlp"
  config.model.vision.update(patch_size=16, width=384, depth=6, num_heads=6, mlp_dim=1536, pool="gap")
  config.model.text.update(width=512, depth=8, num_heads=8, mlp_dim=2048)
  config.loss.contrastive = ""
  config.loss.caption_weight = 1.0
  config.batch_size = 64
  config.total_steps = 10_000
  config.optimizer.update(learning_rate=3e-4, warmup_steps=500, weight_decay=0.05)
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 1000
  config.eval.update(split="validation", periodic_split="validation", extra_splits=(), batch_size=64,
                     max_decode_len=64)
  config.evals.vqa = dict(type="vqa", every=0)
  return add_sources(config, arg)
