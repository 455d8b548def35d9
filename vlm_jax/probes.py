"""Linear probes of a trained model's image embedding: what spatial order it holds, apart from any text.

`order_probe(workdir)` draws two-object shapes scenes whose objects are clearly apart on both axes (fresh scenes:
a data seed no split uses), embeds them with the model's image tower (its pooled, contrastive embedding), and fits
one logistic regression per axis to the identity-bound order of the two objects: "does the object whose (colour,
shape) comes first alphabetically lie left of (above) the other?". A tower that encodes where each named object is
scores near 1.0 on that axis; one that does not, near the chance level 0.5 (the labels are balanced: the scenes are
drawn symmetrically). The hard-negative probes (hardneg/left_right, hardneg/above_below) need the same fact read
through the text tower; this one asks the image side alone. Command line: scripts/order_probe.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlm_jax import inference, models
from vlm_jax.data import images as images_lib, shapes
from vlm_jax.errors import UserError

PROBE_DATA_SEED = 7_700_001  # no prepared split uses it: the probe's scenes are new to every model
AXES = ("x", "y")


def fit_logistic(features: np.ndarray, labels: np.ndarray, train_fraction: float = 0.75, steps: int = 1000,
                 learning_rate: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
  """(train accuracy, held-out accuracy), each float [K], of K logistic regressions of the bool labels [N, K] (or
  [N]: K = 1) on features float [N, D], one per column, fitted together by full-batch Adam on the first
  train_fraction of the rows (features standardised on those rows)."""
  labels = np.asarray(labels).reshape(len(labels), -1)
  n_train = int(len(labels) * train_fraction)
  if n_train < 2 or n_train == len(labels):
    raise ValueError(f"{len(labels)} rows cannot be split {train_fraction:.2f} / {1 - train_fraction:.2f}")
  mean, std = features[:n_train].mean(0), features[:n_train].std(0) + 1e-6
  x = jnp.asarray((features - mean) / std, jnp.float32)
  y = jnp.asarray(labels, jnp.float32)
  optimizer = optax.adam(learning_rate)
  loss = lambda p: optax.sigmoid_binary_cross_entropy(x[:n_train] @ p["w"] + p["b"], y[:n_train]).mean(0).sum()

  @jax.jit
  def fit(params):
    def step(carry, _):
      params, state = carry
      updates, state = optimizer.update(jax.grad(loss)(params), state)
      return (optax.apply_updates(params, updates), state), None
    return jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)[0][0]

  params = fit({"w": jnp.zeros((x.shape[1], y.shape[1])), "b": jnp.zeros(y.shape[1])})
  correct = np.asarray((x @ params["w"] + params["b"] > 0) == (y > 0.5))
  return correct[:n_train].mean(0), correct[n_train:].mean(0)


def order_scenes(count: int, image_size: int = 32, data_seed: int = PROBE_DATA_SEED):
  """`count` two-object scenes clearly apart on both axes: (uint8 images [count, S, S, 3], {axis: bool [count]}:
  whether the alphabetically first object has the smaller x / y)."""
  margin = shapes.relation_margin(image_size)
  images, labels = [], {axis: [] for axis in AXES}
  index = 0
  while len(images) < count:
    example = shapes.make_example(data_seed, "validation", index, image_size)
    index += 1
    objects = json.loads(example["scene"])
    if len(objects) != 2:
      continue
    a, b = sorted(objects, key=lambda o: (o["color"], o["shape"]))
    if min(abs(a[axis] - b[axis]) for axis in AXES) < margin:
      continue
    images.append(np.asarray(example["image"], np.uint8))
    for axis in AXES:
      labels[axis].append(a[axis] < b[axis])
  return np.stack(images), {axis: np.asarray(v) for axis, v in labels.items()}


def order_probe(workdir: str, count: int = 4000, data_seed: int = PROBE_DATA_SEED) -> dict:
  """{"order_probe/x": held-out accuracy, "order_probe/y": ..., and "/train" accuracies} of a workdir's model."""
  restored = inference.restore(workdir)
  module = models.get(restored.config.model.name)
  fns = module.predict_fns(restored.model)
  if "encode_image" not in fns:
    raise UserError(f"{workdir}: model {restored.config.model.name!r} has no pooled image embedding to probe "
                    "(the contrastive models have: two_tower, coca)")
  if restored.config.data.name != "shapes":
    raise UserError(f"{workdir}: config.data.name={restored.config.data.name!r}; the order probe draws shapes scenes")
  images, labels = order_scenes(count, restored.config.data.image_size, data_seed)
  encode = jax.jit(fns["encode_image"])
  normalization = restored.config.data.get("normalization", "siglip") or "siglip"
  embedding = np.concatenate([np.asarray(encode(restored.params, images_lib.normalize(images[i:i + 500],
                                                                                        normalization)))
                              for i in range(0, len(images), 500)])
  train, held_out = fit_logistic(embedding, np.stack([labels[axis] for axis in AXES], axis=1))
  result = {}
  for i, axis in enumerate(AXES):
    result[f"order_probe/{axis}/train"], result[f"order_probe/{axis}"] = float(train[i]), float(held_out[i])
  return result
