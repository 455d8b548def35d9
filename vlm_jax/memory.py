"""Memory per device of a training run, on paper: parameters, optimizer state, gradients and activations.

`estimate(config, vocab_size, device_count)` reads the model's parameter shapes (jax.eval_shape: nothing is
allocated) and the config's mesh and logical axis rules, and counts per device:

- params: in config.model.param_dtype (float32 unless set, whatever config.model.dtype), each split over the mesh
  axes its logical names map to (a dimension that does not split evenly stays whole, as sharding.fit_to_shapes);
- optimizer: AdamW's two moments of the trained parameters only (config.freeze: frozen parameters have no
  optimizer state), the first in config.optimizer.mu_dtype, the second in param_dtype; gradients: param_dtype,
  trained parameters only, sharded like them;
- activations of one micro-batch (batch_size / (data * fsdp) / grad_accum_steps examples per device), in the
  compute dtype, with config.model.remat = "full": the input of every decoder block is kept for the backward
  pass, and one block at a time is recomputed and differentiated: its q/k/v/output, the attention scores
  [b, heads, L, L] (logits and weights in the compute dtype plus the float32 softmax: 2 + 4 + 2 bytes, twice
  for the backward), the MLP's gate, up and product [b, L, mlp]; plus the float32 logits of the text
  positions, their log-softmax and gradient (3 x [b, T, vocab] x 4 bytes). A frozen vision tower at the input
  runs forward only (no backward through it, nothing kept): one block's working set. Without remat every
  block's working set is kept (the estimate multiplies it by the depth).
XLA's buffer reuse and fusion make the real peak lower than this sum, its temporaries higher; the figure is a
planning number (~10-20%), not a promise.
"""

import math

import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import traverse_util

from vlm_jax import models, sharding, train_state
from vlm_jax.models import towers

GB = 1e9


def _shard_factor(shape, spec, mesh_sizes: dict) -> int:
  factor = 1
  for dim, axes in enumerate(spec):
    if axes is None or dim >= len(shape):
      continue
    size = math.prod(mesh_sizes[a] for a in ((axes,) if isinstance(axes, str) else axes))
    if shape[dim] % size == 0:
      factor *= size
  return factor


def parameters(config, vocab_size: int, mesh_sizes: dict) -> dict:
  """{top-level component: (parameter count, bytes per device in config.model.param_dtype, trained count, trained
  bytes per device)}."""
  model = models.build_model(config.model, vocab_size=vocab_size, max_len=config.data.max_text_len, eos_id=2, pad_id=0)
  batch = models.sample_batch(models.get(config.model.name).FEATURES, 1, config.data.image_size,
                              config.data.max_text_len)
  rules = sharding.logical_rules(config)
  with nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))["params"]
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), rules)
  shapes = nn.meta.unbox(boxed)
  frozen = traverse_util.flatten_dict(train_state.frozen_mask(shapes, config.freeze)) if config.freeze else {}
  flat_specs = traverse_util.flatten_dict(specs, is_leaf=lambda _, x: isinstance(x, jax.sharding.PartitionSpec))
  out, itemsize = {}, jnp.dtype(towers.param_dtype_of(config.model)).itemsize
  for path, leaf in traverse_util.flatten_dict(shapes).items():
    count = math.prod(leaf.shape)
    local = count * itemsize / _shard_factor(leaf.shape, flat_specs[path], mesh_sizes)
    trained = not frozen.get(path, False)
    total = out.setdefault(path[0], [0, 0.0, 0, 0.0])
    total[0] += count
    total[1] += local
    total[2] += count if trained else 0
    total[3] += local if trained else 0.0
  return {k: tuple(v) for k, v in out.items()}


def activations(config, vocab_size: int, per_device_batch: int) -> dict:
  """{"decoder": bytes, "vision": bytes, "logits": bytes} of one micro-batch on one device (module docstring)."""
  m, b = config.model, per_device_batch
  act = jnp.dtype(towers.dtype_of(m)).itemsize
  n_image = (config.data.image_size // m.vision.patch_size) ** 2
  t = config.data.max_text_len
  length = n_image + t
  text = m.text
  heads, kv_heads = text.num_heads, text.get("num_kv_heads", 0) or text.num_heads
  head_dim = text.get("head_dim", 0) or text.width // heads
  scores = b * heads * length * length * (2 + 4 + 2) * 2
  block = (b * length * (heads + 2 * kv_heads + heads) * head_dim * act * 2 + scores
           + b * length * text.mlp_dim * 3 * act * 2 + b * length * text.width * act * 4)
  kept = b * length * text.width * act * text.depth
  remat = m.remat == "full"
  decoder = kept + block if remat else block * text.depth
  v = m.vision
  vision_tokens = n_image + (1 if v.cls_token else 0)
  vision_block = (b * vision_tokens * v.width * act * 6 + b * v.num_heads * vision_tokens ** 2 * (2 + 4 + 2)
                  + b * vision_tokens * v.mlp_dim * act * 2)
  return {"decoder": decoder, "vision": vision_block, "logits": 3 * b * t * vocab_size * 4}


def estimate(config, vocab_size: int, device_count: int) -> dict:
  """GB per device: params, optimizer, gradients, activations, total; with the mesh and per-device batch."""
  data, fsdp, tensor = sharding.mesh_shape(config.mesh, device_count)
  mesh_sizes = {"data": data, "fsdp": fsdp, "tensor": tensor}
  params = parameters(config, vocab_size, mesh_sizes)
  param_itemsize = jnp.dtype(towers.param_dtype_of(config.model)).itemsize
  mu_itemsize = jnp.dtype(train_state.mu_dtype_of(config.optimizer) or towers.param_dtype_of(config.model)).itemsize
  per_device_batch = config.batch_size // (data * fsdp) // config.grad_accum_steps
  acts = activations(config, vocab_size, per_device_batch)
  result = dict(
      params_b=sum(p[0] for p in params.values()) / 1e9,
      trained_b=sum(p[2] for p in params.values()) / 1e9,
      params=sum(p[1] for p in params.values()) / GB,
      optimizer=(1 + mu_itemsize / param_itemsize) * sum(p[3] for p in params.values()) / GB,
      gradients=sum(p[3] for p in params.values()) / GB,
      activations=sum(acts.values()) / GB,
      mesh=dict(mesh_sizes), per_device_batch=per_device_batch,
      sequence=(config.data.image_size // config.model.vision.patch_size) ** 2 + config.data.max_text_len)
  result["total"] = result["params"] + result["optimizer"] + result["gradients"] + result["activations"]
  return result
