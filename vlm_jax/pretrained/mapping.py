"""Two-way maps between HF tensor names and vlm_jax parameter paths.

An architecture describes its weights once, as a list of `Link`s; the same list drives import
(HF tensors -> flax params) and export (flax params -> HF tensors), so the two directions cannot drift.
Layout conventions: a torch Linear weight is [out, in], a flax Dense kernel [in, out]; vlm_jax attention
kernels are [D, heads, head_dim] (query/key/value) and [heads, head_dim, D] (out). Scanned blocks hold
every layer's parameter in one array, layers on axis 0 (`Link.layers`).
"""

import dataclasses
from typing import Callable, Optional

import numpy as np
from flax import traverse_util

from vlm_jax.errors import UserError
from vlm_jax.pretrained.checkpoint_io import TensorSource


def _identity(x):
  return x


@dataclasses.dataclass(frozen=True)
class Link:
  """One flax parameter at `path` and where it lives in the HF checkpoint.

  hf: the HF tensor name, or None for a parameter HF does not have (then `fixed(shape)` gives its value,
  and export checks the parameter still has it, since HF could not represent anything else).
  part: (i, n) when the HF tensor is n equal chunks along axis 0 and this parameter is chunk i
  (torch's fused in_proj_weight of nn.MultiheadAttention).
  layers: n > 0 when the parameter is n layers' tensors stacked along axis 0 (scanned blocks, see
  layers.Stack); `hf` is then a pattern with "{i}" for the layer, and the conversions act on one layer.
  """
  hf: Optional[str]
  path: tuple
  to_flax: Callable = _identity
  to_hf: Callable = _identity
  part: Optional[tuple] = None
  fixed: Optional[Callable] = None
  layers: int = 0


def block_layers(hf: str, path: tuple, depth: int, scan: bool, block_links: Callable) -> list:
  """The links of `depth` blocks, HF `{hf}.{i}` <-> vlm_jax layers.Stack at `path`.

  block_links(hf_block, flax_block) gives one block's links. scan=True: one stacked link per parameter,
  path + ("blocks", ...); scan=False: per block, path + ("block_II", ...).
  """
  if scan:
    return [dataclasses.replace(link, layers=depth) for link in block_links(f"{hf}.{{i}}", path + ("blocks",))]
  return [link for i in range(depth) for link in block_links(f"{hf}.{i}", path + (f"block_{i:02d}",))]


def linear(hf: str, path: tuple, bias: bool = True) -> list:
  """torch Linear (weight [out, in], bias [out]) <-> flax Dense {kernel [in, out], bias [out]}."""
  links = [Link(f"{hf}.weight", path + ("kernel",), lambda w: w.T, lambda k: k.T)]
  if bias:
    links.append(Link(f"{hf}.bias", path + ("bias",)))
  else:
    links.append(Link(None, path + ("bias",), fixed=np.zeros))
  return links


def layer_norm(hf: str, path: tuple) -> list:
  """torch LayerNorm {weight, bias} <-> flax LayerNorm {scale, bias}."""
  return [Link(f"{hf}.weight", path + ("scale",)), Link(f"{hf}.bias", path + ("bias",))]


def heads_in(hf: str, path: tuple, name: str, heads: int, bias: bool = True, part=None) -> list:
  """torch Linear to heads (weight [H*hd, D]) <-> {name}_kernel [D, H, hd], {name}_bias [H, hd]."""
  links = [Link(f"{hf}.weight" if part is None else hf + "_weight", path + (f"{name}_kernel",),
                lambda w: w.T.reshape(w.shape[1], heads, -1), lambda k: k.reshape(k.shape[0], -1).T, part)]
  if bias:
    links.append(Link(f"{hf}.bias" if part is None else hf + "_bias", path + (f"{name}_bias",),
                      lambda b: b.reshape(heads, -1), lambda b: b.reshape(-1), part))
  return links


def heads_out(hf: str, path: tuple, heads: int, bias: bool = True) -> list:
  """torch Linear from heads (weight [D, H*hd]) <-> out_kernel [H, hd, D], out_bias [D]."""
  links = [Link(f"{hf}.weight", path + ("out_kernel",),
                lambda w: w.T.reshape(heads, -1, w.shape[0]), lambda k: k.reshape(-1, k.shape[-1]).T)]
  if bias:
    links.append(Link(f"{hf}.bias", path + ("out_bias",)))
  return links


def separate_attention(hf: str, path: tuple, heads: int) -> list:
  """CLIP/SigLIP attention (q_proj, k_proj, v_proj, out_proj, with biases) <-> layers.Attention."""
  links = []
  for torch_name, name in (("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")):
    links += heads_in(f"{hf}.{torch_name}", path, name, heads)
  return links + heads_out(f"{hf}.out_proj", path, heads)


def fused_attention(hf: str, path: tuple, heads: int) -> list:
  """torch nn.MultiheadAttention (in_proj_weight [3D, D] = q;k;v) <-> layers.Attention."""
  links = []
  for i, name in enumerate(("query", "key", "value")):
    links += heads_in(f"{hf}.in_proj", path, name, heads, part=(i, 3))
  return links + heads_out(f"{hf}.out_proj", path, heads)


def encoder_layers(hf: str, path: tuple, depth: int, heads: int, scan: bool = True) -> list:
  """CLIP/SigLIP `encoder.layers.{i}` <-> layers.Stack blocks (pre-LN, same math); see block_layers."""
  def block(src, dst):
    links = layer_norm(f"{src}.layer_norm1", dst + ("norm_self_attention",))
    links += separate_attention(f"{src}.self_attn", dst + ("self_attention",), heads)
    links += layer_norm(f"{src}.layer_norm2", dst + ("norm_mlp",))
    links += linear(f"{src}.mlp.fc1", dst + ("mlp", "fc1"))
    return links + linear(f"{src}.mlp.fc2", dst + ("mlp", "fc2"))
  return block_layers(hf, path, depth, scan, block)


def patch_conv(hf: str, path: tuple, patch: int, bias: bool) -> list:
  """Conv2d patch embedding (weight OIHW [D, 3, p, p]) <-> Dense over patchified pixels [p*p*3, D].

  vit.patchify flattens each patch as (row, col, channel), hence the O,I,H,W -> H,W,I,O transpose.
  """
  def to_flax(w):
    return w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0])

  def to_hf(k):
    return k.reshape(patch, patch, -1, k.shape[-1]).transpose(3, 2, 0, 1)

  links = [Link(f"{hf}.weight", path + ("kernel",), to_flax, to_hf)]
  if bias:
    return links + [Link(f"{hf}.bias", path + ("bias",))]
  return links + [Link(None, path + ("bias",), fixed=np.zeros)]


# ---------------------------------------------------------------------------------------------------------


def _convert(link: Link, value: np.ndarray, expected_shape: tuple, architecture: str) -> np.ndarray:
  """HF tensor (or its chunk) -> flax parameter of `expected_shape`, or a UserError naming the tensor."""
  if link.part is not None:
    i, n = link.part
    value = np.split(value, n, axis=0)[i]
  try:
    converted = np.asarray(link.to_flax(value), np.float32)
  except ValueError:
    converted = None
  if converted is None or converted.shape != tuple(expected_shape):
    raise UserError(f"{architecture}: tensor {link.hf} has shape {value.shape}, which does not fit the "
                    f"parameter {'/'.join(link.path)} of shape {tuple(expected_shape)} the config implies")
  return converted


def import_params(links: list, tensors: dict, abstract_params: dict, architecture: str) -> dict:
  """HF tensors -> nested flax params with the structure and shapes of `abstract_params`.

  Raises UserError naming every missing tensor, unexpected tensor, or wrong shape.
  """
  expected = traverse_util.flatten_dict(abstract_params)
  source = TensorSource(tensors, architecture)
  flat = {}
  for link in links:
    shape = expected[link.path].shape
    if link.hf is None:
      flat[link.path] = np.asarray(link.fixed(shape), np.float32)
      continue
    if link.layers:
      values = [source.get(link.hf.format(i=i)) for i in range(link.layers)]
      if all(v is not None for v in values):
        flat[link.path] = np.stack([_convert(dataclasses.replace(link, hf=link.hf.format(i=i)), v, shape[1:],
                                             architecture) for i, v in enumerate(values)])
      continue
    value = source.get(link.hf)
    if value is not None:
      flat[link.path] = _convert(link, value, shape, architecture)
  source.check()
  unmapped = sorted("/".join(p) for p in expected if p not in flat)
  if unmapped:  # a bug in the link table, not the user's fault
    raise AssertionError(f"{architecture}: no HF tensor maps to {unmapped}")
  return traverse_util.unflatten_dict(flat)


def export_params(links: list, params: dict, architecture: str) -> dict:
  """Nested flax params -> HF tensors {name: float32 array}; the inverse of `import_params`."""
  flat = {k: np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(params).items()}
  tensors, parts = {}, {}
  for link in links:
    value = flat[link.path]
    if link.hf is None:
      if not np.array_equal(value, link.fixed(value.shape)):
        raise UserError(f"{architecture}: parameter {'/'.join(link.path)} differs from the fixed value the "
                        "HF architecture assumes (it has no such tensor), so it cannot be exported")
      continue
    per_layer = [(link.hf.format(i=i), value[i]) for i in range(link.layers)] if link.layers else [(link.hf, value)]
    for name, layer_value in per_layer:
      converted = np.asarray(link.to_hf(layer_value), np.float32)
      if link.part is None:
        tensors[name] = converted
      else:
        parts.setdefault(name, {})[link.part[0]] = converted
  for name, chunks in parts.items():
    tensors[name] = np.concatenate([chunks[i] for i in sorted(chunks)], axis=0)
  return tensors
