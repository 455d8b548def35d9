"""The linear order probe (vlm_jax/probes.py): the logistic fit against planted and random labels, the scenes'
labels against their pixels (the command on a workdir: tests/test_predict.py)."""

import json

import numpy as np

from vlm_jax import probes
from vlm_jax.data import shapes


def test_the_logistic_probe_reads_a_planted_linear_label_and_not_a_random_one():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2000, 16)).astype(np.float32)
  score = features[:, 3] - 0.5 * features[:, 7]
  features = features[np.abs(score) > 0.3][:800]  # a margin around the planted boundary
  planted = score[np.abs(score) > 0.3][:800] > 0
  # Column 0 planted, column 1 independent of the features: fitted together, each column on its own.
  train, held_out = probes.fit_logistic(features, np.stack([planted, rng.random(800) < 0.5], axis=1))
  assert train[0] > 0.97 and held_out[0] > 0.97
  assert abs(held_out[1] - 0.5) < 0.12  # 200 held-out rows: chance 0.5, standard deviation 0.035


def test_order_labels_say_where_the_alphabetically_first_object_is_as_its_pixels_do():
  images, labels = probes.order_scenes(120)
  assert images.shape == (120, 32, 32, 3) and images.dtype == np.uint8
  for axis in probes.AXES:
    assert 0.3 < labels[axis].mean() < 0.7  # both orders drawn
  assert (labels["x"] != labels["y"]).any() and (labels["x"] == labels["y"]).any()  # the axes vary apart
  checked = 0
  index = 0
  while checked < 40:  # the same scenes, in order: compare each label with the objects' pixel centroids
    example = shapes.make_example(probes.PROBE_DATA_SEED, "validation", index)
    index += 1
    objects = json.loads(example["scene"])
    if len(objects) != 2 or min(abs(objects[0][a] - objects[1][a]) for a in probes.AXES) < 4:
      continue
    a, b = sorted(objects, key=lambda o: (o["color"], o["shape"]))
    image = np.asarray(example["image"])
    np.testing.assert_array_equal(image, images[checked])
    if a["color"] != b["color"]:
      centre = {o["color"]: np.argwhere((image == shapes.COLORS[o["color"]]).all(-1)).mean(0) for o in (a, b)}
      assert labels["y"][checked] == (centre[a["color"]][0] < centre[b["color"]][0])
      assert labels["x"][checked] == (centre[a["color"]][1] < centre[b["color"]][1])
    checked += 1
