"""config.model.param_dtype and config.optimizer.mu_dtype: bf16 end to end trains; parameters and Adam's moments
are stored in the dtypes asked for; init_from hf: lands in them."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import benchmark, hf_configs, models, pretrained, sharding, train_state, trainer
from vlm_jax.errors import UserError
from vlm_jax.models import towers
from vlm_jax.run_config import base_config

VOCAB = 64
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "hf")


def tiny_config(name, dtype, param_dtype, mu_dtype=""):
  config = base_config()
  config.model.name = name
  config.model.update(dtype=dtype, param_dtype=param_dtype, embed_dim=16)
  config.optimizer.update(mu_dtype=mu_dtype, learning_rate=1e-2, warmup_steps=1)
  config.total_steps = 20
  if name != "two_tower":  # the prefix-LM's answer loss
    config.loss.update(contrastive="", caption_weight=1.0)
  config.model.vision.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  config.model.text.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  config.data.update(image_size=16, max_text_len=8)
  config.batch_size = 8
  return config


def build(config):
  """(model, state, state shardings, mesh, rules) as a run builds them."""
  model = models.build_model(config.model, vocab_size=VOCAB, max_len=config.data.max_text_len, eos_id=2, pad_id=0)
  mesh, rules = sharding.make_mesh(config.mesh), sharding.logical_rules(config)
  sample = models.sample_batch(models.get(config.model.name).FEATURES, 2, 16, config.data.max_text_len)
  state, shardings = train_state.create_train_state(model, train_state.make_optimizer(config), sample,
                                                    jax.random.key(0), mesh, rules, towers.param_dtype_of(config.model))
  return model, state, shardings, mesh, rules


def dtypes(tree) -> set:
  return {leaf.dtype for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)}


def adam_state(opt_state):
  """The ScaleByAdamState (mu, nu) inside the optimizer chain."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu")]
  assert len(found) == 1
  return found[0]


# The prefix-LM alone (it holds every kind of layer the two-tower has, plus the projector and the LM): each
# case is a train-step compile, ~15 CPU s, and the suite's budget is tight.
@pytest.mark.parametrize("name", ["prefix_lm"])
def test_bf16_end_to_end_trains_with_every_parameter_in_bf16(name):
  """param_dtype=dtype=bfloat16: every parameter and both Adam moments are bf16 before and after steps on a
  fixed batch, and the loss is finite and goes down (by far more than bf16 rounding of a loss of ~2: 2**-7 * 2)."""
  config = tiny_config(name, "bfloat16", "bfloat16")
  model, state, shardings, mesh, rules = build(config)
  assert dtypes(state.params) == {jnp.dtype(jnp.bfloat16)}
  assert dtypes(adam_state(state.opt_state)) == {jnp.dtype(jnp.bfloat16)}
  step = trainer.make_train_step(model, config, 0, shardings, mesh)
  host = benchmark.random_batch(models.get(name).FEATURES, config.batch_size, 16, config.data.max_text_len, VOCAB)
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    batch = sharding.global_batch(host, mesh)
    for _ in range(4):
      state, metrics = step(state, batch)
      losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)), losses
  assert losses[-1] < losses[0] - 0.1, losses
  assert dtypes(state.params) == dtypes(adam_state(state.opt_state)) == {jnp.dtype(jnp.bfloat16)}


def test_float32_params_with_bf16_compute_keep_float32_and_mu_follows_mu_dtype():
  """Mixed precision (param_dtype float32, dtype bfloat16): the parameters stay float32; Adam's first moment is in
  config.optimizer.mu_dtype, its second in the parameters' dtype; mu_dtype "" keeps the parameters' dtype."""
  for mu_dtype, expected_mu in (("bfloat16", jnp.bfloat16), ("", jnp.float32)):
    config = tiny_config("two_tower", "bfloat16", "float32", mu_dtype)
    model = models.build_model(config.model, vocab_size=VOCAB, max_len=8, eos_id=2, pad_id=0)
    sample = models.sample_batch(models.get("two_tower").FEATURES, 2, 16, 8)
    # What create_train_state initialises, traced only (jax.eval_shape: nothing compiled).
    state = jax.eval_shape(lambda: train_state.TrainState.create(
        apply_fn=model.apply, tx=train_state.make_optimizer(config),
        params=nn.meta.unbox(train_state.init_params(model, jax.random.key(0), sample,
                                                     towers.param_dtype_of(config.model)))))
    assert dtypes(state.params) == {jnp.dtype(jnp.float32)}
    adam = adam_state(state.opt_state)
    assert dtypes(adam.mu) == {jnp.dtype(expected_mu)} and dtypes(adam.nu) == {jnp.dtype(jnp.float32)}


def test_bad_param_and_mu_dtypes_are_one_line():
  config = tiny_config("two_tower", "float32", "float16")
  with pytest.raises(UserError, match=r"^config.model.param_dtype='float16' is not one of"):
    towers.param_dtype_of(config.model)
  config.optimizer.mu_dtype = "fp8"
  with pytest.raises(UserError, match=r"^config.optimizer.mu_dtype='fp8' is not one of"):
    train_state.make_optimizer(config)


def test_init_from_hf_casts_the_imported_weights_to_param_dtype():
  """init_from hf: a Llama's float32 tensors land in a bf16 decoder as their bf16 rounding."""
  config = base_config()
  hf_configs.set_llava_model(config, os.path.join(FIXTURES, "llava_clip_vision"), os.path.join(FIXTURES, "llava_llama"))
  config.data.max_text_len = 8
  model = models.build_model(config.model, vocab_size=259, max_len=8, eos_id=2, pad_id=0)
  batch = models.sample_batch(models.get(config.model.name).FEATURES, 1, config.data.image_size, 8)
  params = nn.meta.unbox(jax.eval_shape(lambda: train_state.init_params(model, jax.random.key(0), batch,
                                                                         jnp.bfloat16)))
  params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), params)
  shardings = jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), params)
  lm = os.path.join(FIXTURES, "llava_llama")
  loaded = trainer.initialize_from(params, shardings, (("decoder", "hf:" + lm, ""),), config.data.image_size)
  assert dtypes(loaded) == {jnp.dtype(jnp.bfloat16)}
  _, _, source = pretrained.read_params(lm)
  jax.tree.map(lambda got, want: np.testing.assert_array_equal(got, np.asarray(want).astype(jnp.bfloat16)),
               loaded["decoder"], source)
