"""Device mesh and logical-axis sharding.

The model names logical axes only ("embed", "mlp", "heads", ...); `config.sharding.logical_axis_rules`
maps them to the mesh axes ("data", "fsdp", "tensor"), MaxText style, so a new layout is a config change.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from vlm_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the batch is split over both: FSDP is data parallel with sharded state


def mesh_shape(mesh_config, device_count: int) -> tuple:
  """(data, fsdp, tensor) sizes; at most one -1, which takes the devices that are left."""
  sizes = [int(mesh_config[axis]) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise UserError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise UserError(f"config.mesh: sizes must be positive or -1, got {dict(zip(MESH_AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if device_count % known:
      raise UserError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: {device_count} devices are not divisible "
                      f"by the fixed axes' product {known}")
    sizes[sizes.index(-1)] = device_count // known
  if math.prod(sizes) != device_count:
    raise UserError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                    f"but {device_count} are available")
  return tuple(sizes)


def make_mesh(mesh_config) -> jax.sharding.Mesh:
  shape = mesh_shape(mesh_config, jax.device_count())
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_rules(config) -> tuple:
  """The config's rules as a tuple of (logical name, mesh axis or None)."""
  return tuple((name, axis if axis else None) for name, axis in config.sharding.logical_axis_rules)


def state_shardings(abstract_boxed_state, mesh, rules: Sequence):
  """NamedShardings for a pytree whose parameters are boxed with logical axis names."""
  specs = nn.get_partition_spec(abstract_boxed_state)
  return nn.logical_to_mesh_sharding(specs, mesh, rules)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def global_batch(local_batch: dict, mesh) -> dict:
  """Assembles each process's slice of the batch into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local_batch.items()}


def _leaf_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def fit_to_shapes(abstract_tree, shardings):
  """`shardings` with every dimension that does not split evenly over its mesh axes replicated instead.

  A rules table maps e.g. "heads" to the tensor axis for every model; a model with 3 heads on tensor=2
  cannot split that dimension (XLA would fail deep inside jit), but it can keep it whole on every device
  and still split the others. Returns (shardings, [(parameter, dimension, size, axes, axes' size), ...]).
  """
  replicated_dims = []

  def fit(path, named, leaf):
    if not hasattr(leaf, "shape"):  # an empty node (optax's MaskedNode for a frozen parameter)
      return named
    spec = list(named.spec)
    for dim, axes in enumerate(spec):
      if axes is None or dim >= len(leaf.shape):
        continue
      axes_tuple = (axes,) if isinstance(axes, str) else tuple(axes)
      size = math.prod(named.mesh.shape[a] for a in axes_tuple)
      if leaf.shape[dim] % size:
        replicated_dims.append((_leaf_name(path), dim, leaf.shape[dim], axes_tuple, size))
        spec[dim] = None
    return NamedSharding(named.mesh, PartitionSpec(*spec)) if spec != list(named.spec) else named

  # The shardings lead: where the state has an empty node, they hold a sharding nobody uses.
  fitted = jax.tree_util.tree_map_with_path(fit, shardings, abstract_tree,
                                            is_leaf=lambda x: isinstance(x, NamedSharding))
  return fitted, replicated_dims


def describe_replicated(replicated_dims) -> str:
  """One warning line for what `fit_to_shapes` replicated ('' if nothing)."""
  if not replicated_dims:
    return ""
  name, dim, size, axes, axes_size = replicated_dims[0]
  more = f" and {len(replicated_dims) - 1} more" if len(replicated_dims) > 1 else ""
  return (f"warning: {name} has {size} along dimension {dim}, which does not split over mesh axes {axes} of "
          f"size {axes_size}{more}: those dimensions are replicated (change config.mesh or the model sizes, "
          f"e.g. num_heads, mlp_dim, width, to split them)")
