"""The training state: parameters and optimizer state, created already sharded; freezing by regex.

Shared by the run builder (vlm_jax.run), the trainer and the benchmark.
"""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from vlm_jax import sharding


class TrainState(train_state.TrainState):
  pass


def param_path(path) -> str:
  """"vision/encoder/block_00/mlp/fc1/kernel" for a pytree key path (box wrappers skipped)."""
  return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def frozen_mask(params, patterns) -> object:
  """A pytree of bools like `params`: True where a path fully matches one of the regexes in `patterns`."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(c.fullmatch(param_path(path)) for c in compiled), params)


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with linear warmup then cosine decay to 0 over total_steps; decay only on matrices.

  Parameters matching config.freeze get `set_to_zero`, which keeps no state: no Adam moments for them.
  """
  o = config.optimizer
  warmup = min(o.warmup_steps, config.total_steps // 2)  # a short run still gets a decay phase
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, o.learning_rate, warmup, config.total_steps, end_value=0.0)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adamw = optax.chain(
      optax.clip_by_global_norm(o.grad_clip_norm),
      optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask))
  if not config.freeze:
    return adamw
  labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "trained", frozen_mask(params, config.freeze))
  return optax.multi_transform({"trained": adamw, "frozen": optax.set_to_zero()}, labels)


def create_train_state(model, tx, batch: dict, rng, mesh, rules):
  """Initialises the state already sharded: jit of init with out_shardings from its abstract shape."""
  def init(rng):
    params = model.init(rng, batch)["params"]
    # The step as a strongly typed int32, as a checkpoint restores it: a weakly typed 0 (flax's default) makes
    # the train step of a fresh run another program than a resumed run's, so a resume missed the compile cache.
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx).replace(step=jnp.zeros((), jnp.int32))

  with nn.logical_axis_rules(rules):
    abstract = jax.eval_shape(init, rng)
    shardings, replicated_dims = sharding.fit_to_shapes(nn.meta.unbox(abstract),
                                                        sharding.state_shardings(abstract, mesh, rules))
    if replicated_dims and jax.process_index() == 0:
      print(sharding.describe_replicated(replicated_dims), flush=True)
    state = jax.jit(init, out_shardings=shardings)(rng)
  return nn.meta.unbox(state), shardings
