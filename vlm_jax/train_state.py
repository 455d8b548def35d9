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
from vlm_jax.errors import UserError
from vlm_jax.models import towers


class TrainState(train_state.TrainState):
  pass


# The contrastive head's scalars (two_tower, CoCa): config.optimizer.head_lr_scale gives them their own learning rate.
HEAD_PARAMS = re.compile(r"(.*/)?logit_(scale|bias)")


def param_path(path) -> str:
  """"vision/encoder/block_00/mlp/fc1/kernel" for a pytree key path (box wrappers skipped)."""
  return "/".join(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def frozen_mask(params, patterns) -> object:
  """A pytree of bools like `params`: True where a path fully matches one of the regexes in `patterns`."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(c.fullmatch(param_path(path)) for c in compiled), params)


def cast_floating(tree, dtype):
  """`tree` with every floating-point leaf in `dtype` (integer leaves kept; boxes with their axis names kept)."""
  return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def init_params(model, rng, batch: dict, param_dtype=jnp.float32):
  """The model's params (boxed with their logical axes), drawn by the initialisers in float32 and stored in
  `param_dtype` (config.model.param_dtype): one place decides every parameter's dtype, whichever layer made it."""
  return cast_floating(model.init(rng, batch)["params"], param_dtype)


def mu_dtype_of(optimizer_config):
  """The dtype of Adam's first moment, config.optimizer.mu_dtype; None ("", or absent in configs written before
  it) keeps the parameters' dtype."""
  name = optimizer_config.get("mu_dtype", "")
  if not name:
    return None
  if name not in towers.DTYPES:
    raise UserError(f"config.optimizer.mu_dtype={name!r} is not one of {sorted(towers.DTYPES)} or ''")
  return towers.DTYPES[name]


def lr_scale_rules(config) -> list:
  """config.optimizer.lr_scales as [(compiled regex, multiple)], checked: each entry a (regex over parameter paths,
  positive number) pair. A UserError names the entry that is not."""
  rules = []
  for i, entry in enumerate(config.optimizer.get("lr_scales", ())):
    where = f"config.optimizer.lr_scales[{i}]={tuple(entry) if isinstance(entry, list) else entry!r}"
    if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not isinstance(entry[0], str):
      raise UserError(f"{where}: expected a (regex over parameter paths, multiple of the learning rate) pair, "
                      "e.g. ('vision/.*', 2.0)")
    pattern, scale = entry
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
      raise UserError(f"{where}: the multiple {scale!r} must be a positive number")
    try:
      rules.append((re.compile(pattern), float(scale)))
    except re.error as e:
      raise UserError(f"{where}: {pattern!r} is not a regex ({e})") from None
  return rules


def lr_labels(params, config) -> object:
  """The optimizer group of each parameter, a pytree of strings like `params`: "frozen" (config.freeze), else
  "lr_scales_I" for the first config.optimizer.lr_scales entry I whose regex fully matches its path, else "head"
  for the contrastive head's scalars when head_lr_scale != 1, else "trained". An lr_scales regex that matches no
  parameter, or matches only frozen ones, is a UserError (a typo would otherwise train at the base rate unseen)."""
  rules, head = lr_scale_rules(config), config.optimizer.get("head_lr_scale", 1.0) != 1.0
  frozen = frozen_mask(params, config.freeze)
  used = set()

  def label(path, is_frozen):
    name = param_path(path)
    if is_frozen:
      return "frozen"
    for i, (regex, _) in enumerate(rules):
      if regex.fullmatch(name):
        used.add(i)
        return f"lr_scales_{i}"
    return "head" if head and HEAD_PARAMS.fullmatch(name) else "trained"

  labels = jax.tree_util.tree_map_with_path(label, frozen)
  for i, (regex, _) in enumerate(rules):
    if i not in used:
      names = [param_path(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
      shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
      raise UserError(f"config.optimizer.lr_scales[{i}]: {regex.pattern!r} matches no trained parameter "
                      f"(parameter paths look like {shown})")
  return labels


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW with linear warmup then cosine decay to 0 over config.optimizer.schedule_steps (0: total_steps; the
  schedule's length is part of the compiled step, total_steps is not); decay only on matrices. The first
  moment in config.optimizer.mu_dtype, the second in the parameters' dtype (optax's adamw).

  Parameters matching config.freeze get `set_to_zero`, which keeps no state: no Adam moments for them.
  config.optimizer.head_lr_scale != 1: the contrastive head's temperature and bias (HEAD_PARAMS) at that multiple
  of the learning rate (warmup and decay alike); config.optimizer.lr_scales: (regex, multiple) pairs, the
  parameters whose paths match at their multiple (lr_labels says which group each parameter is in). Every group
  after one gradient clip over all parameters.
  """
  o = config.optimizer
  steps = o.get("schedule_steps", 0) or config.total_steps
  warmup = min(o.warmup_steps, steps // 2)  # a short run still gets a decay phase
  schedule = lambda peak: optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, end_value=0.0)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  adam = lambda peak: optax.adamw(schedule(peak), b1=o.b1, b2=o.b2, weight_decay=o.weight_decay, mask=decay_mask,
                                  mu_dtype=mu_dtype_of(o))
  head_scale = o.get("head_lr_scale", 1.0)
  if isinstance(head_scale, bool) or not isinstance(head_scale, (int, float)) or head_scale <= 0:
    raise UserError(f"config.optimizer.head_lr_scale={head_scale!r} must be a positive number")
  rules = lr_scale_rules(config)
  if head_scale != 1.0 or rules:
    # The clip over every gradient first, then each group its own Adam at its multiple of the schedule.
    groups = {"trained": adam(o.learning_rate), "frozen": optax.set_to_zero()}
    if head_scale != 1.0:
      groups["head"] = adam(o.learning_rate * head_scale)
    groups.update({f"lr_scales_{i}": adam(o.learning_rate * scale) for i, (_, scale) in enumerate(rules)})
    return optax.chain(optax.clip_by_global_norm(o.grad_clip_norm),
                       optax.multi_transform(groups, lambda params: lr_labels(params, config)))
  # (The layout of every run before head_lr_scale: its checkpoints' optimizer state has this structure.)
  adamw = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), adam(o.learning_rate))
  if not config.freeze:
    return adamw
  labels = lambda params: jax.tree.map(lambda f: "frozen" if f else "trained", frozen_mask(params, config.freeze))
  return optax.multi_transform({"trained": adamw, "frozen": optax.set_to_zero()}, labels)


def state_init(model, tx, batch: dict, mesh, rules, param_dtype=jnp.float32):
  """(init, abstract, shardings): the state's init function of an rng, its unboxed abstract shape with each leaf's
  sharding (jax.ShapeDtypeStruct: what a checkpoint restores onto, nothing computed) and the shardings. The params
  in `param_dtype` (init_params)."""
  def init(rng):
    params = init_params(model, rng, batch, param_dtype)
    # The step as a strongly typed int32, as a checkpoint restores it: a weakly typed 0 (flax's default) makes
    # the train step of a fresh run another program than a resumed run's, so a resume missed the compile cache.
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx).replace(step=jnp.zeros((), jnp.int32))

  with nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, jax.random.key(0))
    shardings, replicated_dims = sharding.fit_to_shapes(nn.meta.unbox(boxed),
                                                        sharding.state_shardings(boxed, mesh, rules))
    abstract = nn.meta.unbox(jax.eval_shape(jax.jit(init, out_shardings=shardings), jax.random.key(0)))
  if replicated_dims and jax.process_index() == 0:
    print(sharding.describe_replicated(replicated_dims), flush=True)
  return init, abstract, shardings


def initialize_state(init, shardings, rng, rules):
  """The state computed already sharded: jit of `init` (state_init's) with out_shardings."""
  with nn.logical_axis_rules(rules):
    return nn.meta.unbox(jax.jit(init, out_shardings=shardings)(rng))


def create_train_state(model, tx, batch: dict, rng, mesh, rules, param_dtype=jnp.float32):
  """Initialises the state already sharded (state_init, then initialize_state); returns (state, shardings)."""
  init, _, shardings = state_init(model, tx, batch, mesh, rules, param_dtype)
  return initialize_state(init, shardings, rng, rules), shardings
