"""Sharded training equals single-device training; parameters are really sharded; FLOPs by hand."""

import json
import os
import socket
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import SingleDeviceSharding

import tolerances  # tests/ is on sys.path under pytest
from vlm_jax import evaluation, flops, models, run, run_config, sharding, train_state, trainer
from vlm_jax.errors import UserError
from vlm_jax.models import build_model
from vlm_jax.run_config import base_config
from xla_env import subprocess_env

VOCAB = 64


def tiny_config(name="coca", contrastive="softmax", **mesh):
  config = base_config()
  config.model.name = name
  config.loss.contrastive = contrastive
  config.loss.caption_weight = 2.0 if name != "two_tower" else 0.0
  config.model.vision.update(width=32, depth=2, num_heads=2, mlp_dim=64)
  config.model.text.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  config.model.multimodal.depth = 1
  config.model.embed_dim = 16
  config.data.image_size = 16
  config.data.max_text_len = 8
  config.batch_size = 16
  config.mesh.update(mesh)
  return config


def random_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, t = config.batch_size, config.data.max_text_len
  text = rng.integers(3, VOCAB, (b, t)).astype(np.int32)
  text[:, 0], text[:, -1] = 1, 2
  return {"image": rng.normal(size=(b, 16, 16, 3)).astype(np.float32), "text": text, "caption": text.copy()}


@jax.jit
def as_float64(tree):
  """Floating leaves in float64 (needs jax_enable_x64): with float64 parameters and compute, nothing in a
  step is rounded to float32, so two runs of the same math differ only by float64 rounding. Jitted: one
  program for the whole tree, not one per leaf."""
  return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def sharded_run(config, steps=2):
  """Initial params, and per step (loss, grads) through the real sharded train step machinery (the train
  step itself is compiled only when a later step needs its update: steps > 1; steps=0: the state alone)."""
  model = build_model(config.model, vocab_size=VOCAB, max_len=config.data.max_text_len, eos_id=2, pad_id=0)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config)
  sample = models.sample_batch(models.get(config.model.name).FEATURES, 2, 16, config.data.max_text_len)
  state, shardings = train_state.create_train_state(model, train_state.make_optimizer(config), sample,
                                                    jax.random.key(0), mesh, rules)
  if config.model.dtype == "float64":
    state = jax.device_put(as_float64(state), shardings)
  params0 = jax.device_get(state.params)
  grads_fn = jax.jit(trainer.make_loss_and_grads(model, config, 0),
                     in_shardings=(shardings.params, sharding.batch_sharding(mesh)))
  step_fn = trainer.make_train_step(model, config, 0, shardings, mesh) if steps > 1 else None
  results = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    for i in range(steps):
      batch = sharding.global_batch(random_batch(config, i), mesh)
      grads, metrics = grads_fn(state.params, batch)
      results.append((float(metrics["loss"]), jax.device_get(grads)))
      if i + 1 < steps:
        state, _ = step_fn(state, batch)
  return params0, results, state


def single_device_run(config, params, steps=2):
  """The reference: no mesh, everything on one device, plain jit."""
  model = build_model(config.model, vocab_size=VOCAB, max_len=config.data.max_text_len, eos_id=2, pad_id=0)
  tx = train_state.make_optimizer(config)
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  grads_fn = jax.jit(trainer.make_loss_and_grads(model, config, 0))
  update = jax.jit(lambda state, grads: state.apply_gradients(grads=grads))  # one program, not op by op
  results = []
  for i in range(steps):
    batch = random_batch(config, i)
    grads, metrics = grads_fn(state.params, batch)
    results.append((float(metrics["loss"]), jax.device_get(grads)))
    if i + 1 < steps:
      state = update(state, grads)
  return results


_REFERENCE = {}
# Compared in float64 (parameters, compute, optimizer state): what is left is float64 rounding.
GRAD_RTOL = 1e-9
# Float64 reductions in another order (the batch over 8 devices, the width over fsdp x tensor) differ by at
# most ~n * eps64 * sum|terms| for n terms: with n < 2**14 and eps64 = 1.1e-16 that is < 2e-12 of the terms'
# scale; an element of size g is then within ~2e-12 * scale / g relative, inside GRAD_RTOL for every
# element above 1e-3 * scale. The atol bounds elements whose terms cancel to ~0 (a key bias's gradient is
# 0 in exact arithmetic: softmax ignores a constant shift; it comes out as +-1e-18 noise). The largest
# gradient element of the model stands for the terms' scale; 1e-9 of it leaves room.
GRAD_ATOL_OF_MAX = 1e-9


def assert_same_gradients(grads, reference):
  scale = max(float(np.abs(np.asarray(g, np.float64)).max()) for g in jax.tree.leaves(reference))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                                       rtol=GRAD_RTOL, atol=GRAD_ATOL_OF_MAX * scale),
               grads, reference)


# data x fsdp x tensor (also through one sharded update: 2 steps); fsdp x tensor with the batch over fsdp
# alone. Data parallelism over all 8 devices is the (2, 2, 2) case's batch axis with more devices.
MESH_STEPS = {(2, 2, 2): 2, (1, 4, 2): 1}


@pytest.mark.parametrize("mesh", list(MESH_STEPS))
def test_sharded_losses_and_gradients_equal_the_single_device_run(mesh):
  """Same math on any mesh: compared in float64, where reordered sums differ far below any real bug
  (a missing all-reduce or a wrong mask changes gradients at O(1)). In float32, 8-way sums in another
  order than 1-way round differently on each CPU's kernels (3.4e-4 relative on an Intel Xeon, where
  cancelling terms leave a small sum), so no float32 bound is both safe and tight."""
  with jax.enable_x64(True):
    config = tiny_config(**dict(zip(("data", "fsdp", "tensor"), mesh)))
    config.model.dtype = "float64"
    params0, sharded, _ = sharded_run(config, steps=MESH_STEPS[mesh])
    # One single-device reference for every mesh, from the first mesh's initial parameters: the initial
    # parameters do not depend on the mesh (same seed), so another mesh's differing ones fail here too.
    if "coca" not in _REFERENCE:
      _REFERENCE["coca"] = single_device_run(config, jax.device_put(params0, jax.devices()[0]),
                                             steps=max(MESH_STEPS.values()))
    reference = _REFERENCE["coca"]
  for (loss, grads), (ref_loss, ref_grads) in zip(sharded, reference):
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)  # a float64 scalar: sums of < 2**14 terms
    assert_same_gradients(grads, ref_grads)


def test_large_parameters_are_split_over_fsdp_and_tensor():
  config = tiny_config(data=1, fsdp=4, tensor=2)
  _, _, state = sharded_run(config, steps=0)  # where the state lives is the point: no step compiled
  for path, param in jax.tree_util.tree_leaves_with_path(state.params):
    name = jax.tree_util.keystr(path)
    # [embed, mlp] kernels ([layers, embed, mlp] when scanned: layers replicated): fsdp x tensor
    if "fc1" in name and "kernel" in name and "mlp" in name:
      shard_bytes = param.addressable_shards[0].data.nbytes
      assert shard_bytes == param.nbytes // 8, name
  # Adam's moments are sharded like the parameters they belong to.
  mu = state.opt_state[1][0].mu
  kernel = mu["vision"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"]  # float[layers, embed, mlp]
  assert kernel.addressable_shards[0].data.nbytes == kernel.nbytes // 8


def test_dimensions_that_do_not_split_over_their_mesh_axes_are_replicated_with_one_warning(capsys):
  """3 text heads over tensor=2: the heads dimension stays whole on every device, one line says so, and
  the dimensions that do split (the MLP's) are still split."""
  config = tiny_config(name="two_tower", data=4, fsdp=1, tensor=2)
  config.model.text.update(width=48, num_heads=3, mlp_dim=64)
  _, results, state = sharded_run(config, steps=1)
  warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
  assert len(warnings) == 1 and "does not split over mesh axes ('tensor',) of size 2" in warnings[0], warnings
  assert "replicated" in warnings[0] and "text/" in warnings[0]
  split, whole = 0, 0
  for path, param in jax.tree_util.tree_leaves_with_path(state.params):
    name = jax.tree_util.keystr(path)
    shard_shape = param.addressable_shards[0].data.shape
    if name.startswith("['text']") and 3 in param.shape:  # a heads dimension of the text tower
      whole += 1
      assert shard_shape[param.shape.index(3)] == 3, name
    elif "mlp" in name and param.ndim >= 2 and 64 in param.shape:
      split += shard_shape[param.shape.index(64)] == 32
  assert whole and split, (whole, split)
  assert np.isfinite(results[0][0])


def test_chunked_sigmoid_loss_trains_like_the_dense_one_on_a_mesh():
  """Same math, sums in another order: compared in float64, with the bounds of the test above."""
  with jax.enable_x64(True):
    dense = tiny_config(name="two_tower", contrastive="sigmoid", data=2, fsdp=2, tensor=2)
    chunked = tiny_config(name="two_tower", contrastive="sigmoid", data=2, fsdp=2, tensor=2)
    for config in (dense, chunked):
      config.model.dtype = "float64"
    chunked.loss.sigmoid_chunks = 8
    _, dense_results, _ = sharded_run(dense, steps=1)
    _, chunked_results, _ = sharded_run(chunked, steps=1)
  np.testing.assert_allclose(chunked_results[0][0], dense_results[0][0], rtol=1e-12)
  assert_same_gradients(chunked_results[0][1], dense_results[0][1])


def test_gradient_accumulation_equals_the_full_batch_for_a_per_example_loss():
  """The mean of 4 micro-batch means is the full mean (equal answer-token counts): in float64, where the
  reordered sums differ by ~n * eps64 (n = 16 examples x 7 tokens), not by float32's ~1e-7."""
  with jax.enable_x64(True):
    config = tiny_config(name="prefix_lm", contrastive="", data=8)
    config.model.dtype = "float64"
    config.loss.caption_weight = 1.0
    model = build_model(config.model, vocab_size=VOCAB, max_len=8, eos_id=2, pad_id=0)
    batch = random_batch(config)
    del batch["caption"]
    batch["prefix_len"] = np.full((16,), 3, np.int32)
    params = as_float64(jax.jit(model.init)(jax.random.key(0), batch)["params"])
    full = jax.jit(trainer.make_loss_and_grads(model, config, 0))(params, batch)
    config.grad_accum_steps = 4
    accumulated = jax.jit(trainer.make_loss_and_grads(model, config, 0))(params, batch)
  assert_same_gradients(accumulated[0], full[0])


def test_mesh_that_does_not_fit_the_devices_is_a_clear_error():
  with pytest.raises(UserError, match="needs 12 devices, but 8 are available"):
    sharding.mesh_shape({"data": 3, "fsdp": 4, "tensor": 1}, 8)
  with pytest.raises(UserError, match="not divisible"):
    sharding.mesh_shape({"data": -1, "fsdp": 3, "tensor": 1}, 8)
  assert sharding.mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)


def test_flop_count_matches_a_hand_count_for_a_tiny_two_tower():
  config = base_config()
  config.model.vision.update(patch_size=4, width=8, depth=1, num_heads=2, mlp_dim=16, pool="gap", cls_token=False)
  config.model.text.update(width=8, depth=1, num_heads=2, mlp_dim=16)
  config.model.embed_dim = 4
  config.data.image_size = 8
  config.data.max_text_len = 3
  config.batch_size = 2
  # Vision: 4 patches of 48 values. Embedding 2*4*48*8 = 3072. Block: QKVO 4 * 2*4*8*8 = 2048,
  # scores + AV 2 * 2*4*4*8 = 512, MLP 2 * 2*4*8*16 = 2048 -> 4608. Total 7680.
  # Text: 3 tokens. QKVO 4 * 2*3*8*8 = 1536, scores + AV 2 * 2*3*3*8 = 288 halved (causal, as MaxText counts)
  # = 144, MLP 2 * 2*3*8*16 = 1536 -> 3216.
  # Projections 2*8*4 * 2 = 128; contrastive logits: this example's row, 2 * B * E = 16.
  forward = 7680 + 3216 + 128 + 16
  parts = models.get(config.model.name).forward_flops(config, vocab_size=10, batch_size=config.batch_size)
  assert flops.train_flops_per_step(parts, config.batch_size) == 3 * forward * 2
  assert flops.train_flops_per_step(parts, config.batch_size, multipliers={"vision": 1}) == (3 * forward - 2 * 7680) * 2


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_together_and_their_checkpoint_restores_on_another_mesh(data_dir, tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  port = _free_port()
  env = subprocess_env(devices=2, PYTHONPATH=repo)
  workdir = tmp_path / "run"
  args = ["--config", os.path.join(repo, "configs/shapes_clip.py"), "--workdir", str(workdir),
          f"--config.data.data_dir={data_dir}", "--config.data.builder_config=tiny", "--config.total_steps=4",
          "--config.batch_size=16", "--config.log_every_steps=1", "--config.checkpoint_every_steps=4",
          "--config.eval_every_steps=100", "--config.model.vision.width=32", "--config.model.vision.depth=1",
          "--config.model.vision.num_heads=2", "--config.model.text.width=32", "--config.model.text.depth=1",
          "--config.model.text.num_heads=2", "--config.mesh.fsdp=2", f"--coordinator_address=127.0.0.1:{port}",
          "--num_processes=2", "--config.eval.extra_splits=()", "--config.eval.batch_size=64",
          "--config.eval.at_end=False"]  # scored below, after the restore onto another mesh
  procs = [subprocess.Popen([sys.executable, "-m", "vlm_jax.train", *args, f"--process_id={i}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outputs = [p.communicate(timeout=400)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  losses = [[line.split("|")[1] for line in out.splitlines() if line.startswith("step ")] for out in outputs]
  assert len(losses[0]) == 4 and losses[0] == losses[1]

  # One process, 8 devices, mesh (2, 2, 2): the 4-device checkpoint restores and evaluates.
  config = run_config.load_config(os.path.join(repo, "configs/shapes_clip.py"))
  config.data.update(data_dir=data_dir, builder_config="tiny")
  config.update(total_steps=4, batch_size=16, log_every_steps=1, checkpoint_every_steps=4, eval_every_steps=100)
  config.model.vision.update(width=32, depth=1, num_heads=2)
  config.model.text.update(width=32, depth=1, num_heads=2)
  config.mesh.update(data=2, fsdp=2, tensor=2)
  config.eval.update(extra_splits=(), batch_size=64)
  restored = run.Run(config, str(workdir), for_training=False)
  assert restored.restore_latest() == 4
  leaf = jax.tree.leaves(restored.state.params)[0]
  assert len(leaf.sharding.mesh.devices.flat) == 8
  scores = evaluation.evaluate_checkpoint(config, str(workdir))
  assert 0.0 <= scores["img2txt_recall@1"] <= 1.0

  # The same config on one process (8 devices, mesh (4, 2, 1)) trains on the same batches: the global data
  # order does not depend on the process count, so the losses agree to float tolerance.
  config.mesh.update(data=-1, fsdp=2, tensor=1)
  config.eval.at_end = False  # the losses are the point
  trainer.train_and_evaluate(config, str(tmp_path / "one_process"))
  read = lambda d: [r["loss"] for r in map(json.loads, open(d / "metrics.jsonl")) if "loss" in r]
  np.testing.assert_allclose(read(tmp_path / "one_process"), read(workdir), atol=tolerances.LOSS_AFTER_STEPS_ATOL)
