"""Every registered model declares what the package needs, and its declarations hold for the built model:
the sample batch initialises it, its outputs feed its loss terms, its prediction functions run."""

import jax
import numpy as np
import pytest

from vlm_jax import losses, models, run_config
from vlm_jax.errors import UserError
from vlm_jax.data import pipeline
from vlm_jax.evaluators import specs

VOCAB, IMAGE, TEXT = 32, 16, 8


def tiny_config(name):
  config = run_config.base_config()
  config.model.name = name
  config.model.vision.update(patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32)
  config.model.text.update(width=16, depth=1, num_heads=2, mlp_dim=32)
  config.model.multimodal.depth = 1
  config.model.embed_dim = 8
  config.data.update(image_size=IMAGE, max_text_len=TEXT)
  config.loss.caption_weight = 1.0  # every next-token term on; the contrastive one is on by default
  config.batch_size = 4
  return config


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_declarations_are_consistent(name):
  module = models.get(name)
  assert module.DATA_TASK in pipeline.TASKS
  assert set(module.LOSS_TERMS) <= set(losses.TERMS) and module.LOSS_TERMS
  assert set(module.DEFAULT_EVALS) <= set(module.EVAL_TYPES) <= set(specs.EVAL_TYPES)
  assert set(module.PREDICT_TASKS) <= set(models.PREDICT_TASKS)
  assert module.GENERATES or not {"caption", "answer"} & set(module.PREDICT_TASKS)
  assert module.GENERATES or not {"captioning", "vqa", "pope"} & set(module.EVAL_TYPES)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_the_sample_batch_initialises_the_model_and_its_outputs_feed_its_loss_terms(name):
  config, module = tiny_config(name), models.get(name)
  model = models.build_model(config.model, vocab_size=VOCAB, max_len=TEXT, eos_id=2, pad_id=0)
  batch = models.sample_batch(module.FEATURES, config.batch_size, IMAGE, TEXT)
  assert set(batch) == set(module.FEATURES)
  params = jax.jit(model.init)(jax.random.key(0), batch)["params"]  # jitted: one compile, not op by op
  outputs, intermediates = jax.jit(model.apply)({"params": params}, batch)
  assert isinstance(intermediates, dict)
  loss, metrics = jax.jit(lambda o, b: losses.compute_loss(config.loss, module.LOSS_TERMS, o, b, pad_id=0))(
      outputs, batch)
  assert np.isfinite(float(loss)) and float(metrics["loss"]) == float(loss)
  parts = module.forward_flops(config, VOCAB, config.batch_size)
  assert parts and all(flops > 0 for flops in parts.values())
  fns = {k: jax.jit(fn) for k, fn in module.predict_fns(model).items()}
  assert set(fns) <= set(models.PREDICT_FNS)
  images = batch.get("image", np.zeros((config.batch_size, IMAGE, IMAGE, 3), np.float32))
  shapes = {"encode_image": lambda: fns["encode_image"](params, images).shape,
            "encode_text": lambda: fns["encode_text"](params, np.ones((config.batch_size, TEXT), np.int32)).shape,
            "logit_scale": lambda: np.shape(fns["logit_scale"](params)),
            "image_tokens": lambda: fns["image_tokens"](params, images).shape[:1],
            "classify": lambda: fns["classify"](params, images).shape,
            "token_log_probs": lambda: fns["token_log_probs"](params, fns["image_tokens"](params, images),
                                                              np.ones((config.batch_size, 2, TEXT), np.int32),
                                                              np.ones((config.batch_size, 2), np.int32)).shape}
  expected = {"encode_image": (4, 8), "encode_text": (4, 8), "logit_scale": (), "image_tokens": (4,),
              "classify": (4, config.model.num_classes), "token_log_probs": (4, 2, TEXT - 1)}
  for fn_name in fns:
    assert shapes[fn_name]() == expected[fn_name], fn_name


def test_a_loss_key_the_model_does_not_use_is_refused_naming_it():
  config = tiny_config("prefix_lm")
  with pytest.raises(UserError, match=r"config.loss.contrastive='softmax' does not apply to model prefix_lm"):
    run_config.validate(config)
  config.loss.contrastive = ""
  config.loss.caption_weight = 0.0
  with pytest.raises(UserError, match=r"model prefix_lm has no loss term switched on: set config.loss.caption_weight"):
    run_config.validate(config)


def test_a_model_cannot_train_on_a_dataset_without_its_batches():
  config = tiny_config("vit_classifier")
  config.loss.update(contrastive="", caption_weight=0.0)
  with pytest.raises(UserError, match=r"config.model.name='vit_classifier' cannot train on config.data.name='shapes'"):
    run_config.validate(config)


def test_a_conv_stem_that_misses_the_patch_grid_or_an_unknown_stem_is_refused_naming_the_key():
  config = tiny_config("coca")
  config.model.vision.stem = "conv"
  config.data.image_size, config.model.vision.patch_size = 28, 7
  run_config.validate(config)  # 28 -> 14 -> 7 -> 4 = 28 / 7
  config.data.image_size = 98  # 98 -> 49 -> 25 -> 13, not 14
  with pytest.raises(UserError, match=r"config.model.vision.stem='conv' turns a 98 px image into a 13-wide grid"):
    run_config.validate(config)
  config.model.vision.stem = "convnext"
  with pytest.raises(UserError, match=r"config.model.vision.stem='convnext' is not one of"):
    models.build_model(config.model, vocab_size=50, max_len=8, eos_id=2, pad_id=0)


def test_caption_mix_fields_out_of_range_are_refused_naming_their_key():
  config = tiny_config("two_tower")
  config.data.relation_caption_prob = 1.5
  with pytest.raises(UserError, match=r"config.data.relation_caption_prob=1.5 must be a probability in \[0, 1\]"):
    run_config.validate(config)
  config.data.relation_caption_prob = 0.5
  config.data.relation_twins = -0.1
  with pytest.raises(UserError, match=r"config.data.relation_twins=-0.1 must be a probability in \[0, 1\]"):
    run_config.validate(config)
  config.data.relation_twins = 0.25
  config.data.decoder_caption = "relations"
  with pytest.raises(UserError, match=r"config.data.decoder_caption='relations': expected one of"):
    run_config.validate(config)
