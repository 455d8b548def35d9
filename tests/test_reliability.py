"""A run survives SIGKILL, SIGTERM, damaged checkpoints, NaNs and bad records, and loses nothing."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vlm_jax import checkpointing, run, trainer
from vlm_jax.data import pipeline
from vlm_jax.errors import UserError
from test_train import REPO, load_config, read_metrics, tiny
from xla_env import subprocess_env

SMALL = ["--config.batch_size=16", "--config.model.vision.width=32", "--config.model.vision.depth=1",
         "--config.model.vision.num_heads=2", "--config.model.text.width=32", "--config.model.text.depth=1",
         "--config.model.text.num_heads=2", "--config.model.embed_dim=32", "--config.eval.extra_splits=()",
         "--config.eval.batch_size=64", "--config.data.builder_config=tiny", "--config.eval_every_steps=1000",
         "--config.log_every_steps=1", "--config.model.multimodal.depth=1",
         "--config.model.vision.mlp_dim=64", "--config.model.text.mlp_dim=64",
         "--config.eval.at_end=False"]  # training runs: the checkpoints and losses are the point, not scores


def train_command(data_dir, workdir, *extra):
  return [sys.executable, "-m", "vlm_jax.train", "--config", os.path.join(REPO, "configs/shapes_clip.py"),
          "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", *SMALL, *extra]


def env(devices=2):
  return subprocess_env(devices=devices, PYTHONPATH=REPO)


def losses_by_step(workdir):
  """{step: loss} of the training lines written so far (none yet, or a line being written, is fine)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    lines = [line for line in f if line.endswith("\n")]
  return {m["step"]: m["loss"] for m in map(json.loads, lines) if "loss" in m}


def wait_for(predicate, process, timeout=240):
  deadline = time.time() + timeout
  while not predicate():
    assert process.poll() is None, process.stdout.read()[-3000:]
    assert time.time() < deadline, "timed out"
    time.sleep(0.05)


def test_sigkill_then_rerun_equals_an_uninterrupted_run_bit_for_bit(data_dir, tmp_path):
  steps = ["--config.total_steps=16", "--config.checkpoint_every_steps=4"]
  straight = tmp_path / "straight"
  first = subprocess.run(train_command(data_dir, straight, *steps), env=env(), check=True, capture_output=True,
                         text=True)
  assert "time to first step: " in first.stdout and "compile: train_step " in first.stdout, first.stdout[-2000:]

  killed = tmp_path / "killed"
  process = subprocess.Popen(train_command(data_dir, killed, *steps), env=env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  # Kill it mid-run, some steps after its first committed checkpoint.
  wait_for(lambda: (killed / "checkpoints" / "4").is_dir() and len(losses_by_step(killed)) >= 6, process)
  process.send_signal(signal.SIGKILL)
  process.wait()
  rerun = subprocess.run(train_command(data_dir, killed, *steps), env=env(), check=True, capture_output=True,
                         text=True)
  # The same program as the first process's: read back from the persistent compilation cache, not compiled.
  step_line = [line for line in rerun.stdout.splitlines() if line.startswith("compile: train_step ")]
  assert step_line and "(cache hit" in step_line[0], rerun.stdout[-2000:]

  assert losses_by_step(killed) == losses_by_step(straight)  # every step, before and after the restart
  _, params_straight = checkpointing.read_params(str(straight))
  _, params_killed = checkpointing.read_params(str(killed))
  assert jax.tree.all(jax.tree.map(np.array_equal, params_straight, params_killed))


def test_sigterm_saves_at_the_current_step_and_the_rerun_resumes_there(data_dir, tmp_path):
  workdir = tmp_path / "run"
  command = train_command(data_dir, workdir, "--config.total_steps=100000", "--config.checkpoint_every_steps=100000")
  process = subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  wait_for(lambda: len(losses_by_step(workdir)) >= 3, process)
  sent = time.time()
  process.send_signal(signal.SIGTERM)
  output = process.communicate(timeout=60)[0]
  assert process.returncode == 0, output[-2000:]
  assert time.time() - sent < 30
  saved = [int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()]
  assert len(saved) == 1 and f"stopped by SIGTERM at step {saved[0]}" in output
  resumed = subprocess.run(command[:-2] + ["--config.total_steps=" + str(saved[0] + 2),
                                           "--config.checkpoint_every_steps=100000"],
                           env=env(), capture_output=True, text=True)
  assert f"resumed from {workdir}/checkpoints/{saved[0]}" in resumed.stdout, resumed.stderr[-2000:]


def test_a_damaged_latest_checkpoint_is_reported_and_the_previous_one_restored(data_dir, tmp_path, capsys):
  config = tiny(load_config("shapes_clip"), data_dir, total_steps=8, log_every_steps=4, eval_every_steps=1000,
                checkpoint_every_steps=4)
  config.eval.at_end = False
  trainer.train_and_evaluate(config, str(tmp_path))
  for root, _, files in os.walk(tmp_path / "checkpoints" / "8"):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        f.truncate(0)
  restored = run.Run(config, str(tmp_path), for_training=True)
  assert restored.restore_latest() == 4
  assert f"checkpoints/8 is unreadable" in capsys.readouterr().out
  assert os.path.isdir(tmp_path / "checkpoints" / "8")  # reported, not deleted


def _with_nan_at_step(monkeypatch, step):
  """The step-th training batch gets NaN images (the batch, not the data iterator, is poisoned)."""
  from vlm_jax import sharding
  original, calls = sharding.global_batch, []

  def poisoned(local_batch, mesh):
    calls.append(1)
    if len(calls) == step:
      local_batch = {**local_batch, "image": np.full_like(local_batch["image"], np.nan)}
    return original(local_batch, mesh)

  monkeypatch.setattr(sharding, "global_batch", poisoned)


def test_a_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
  _with_nan_at_step(monkeypatch, 3)
  config = tiny(load_config("shapes_clip"), data_dir, total_steps=8, log_every_steps=1, eval_every_steps=1000,
                checkpoint_every_steps=2)
  with pytest.raises(UserError, match="non-finite loss or gradient at step 3"):
    trainer.train_and_evaluate(config, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  _, params = checkpointing.read_params(str(tmp_path))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(params))


def test_nonfinite_skip_mode_skips_the_update_and_counts_it(data_dir, tmp_path, monkeypatch):
  _with_nan_at_step(monkeypatch, 3)
  config = tiny(load_config("shapes_clip"), data_dir, total_steps=6, log_every_steps=1, eval_every_steps=1000,
                checkpoint_every_steps=6)
  config.nonfinite = "skip"
  config.eval.at_end = False
  trainer.train_and_evaluate(config, str(tmp_path))
  last = [m for m in read_metrics(tmp_path) if "loss" in m][-1]
  assert last["step"] == 6 and last["skipped_steps"] == 1 and np.isfinite(last["loss"])


def test_a_checkpoint_from_a_2x2x2_mesh_restores_on_one_device(data_dir, tmp_path):
  config = tiny(load_config("shapes_clip"), data_dir, total_steps=4, log_every_steps=4, eval_every_steps=1000,
                checkpoint_every_steps=4)
  config.mesh.update(data=2, fsdp=2, tensor=2)
  trained = trainer.train_and_evaluate(config, str(tmp_path))
  result = subprocess.run(
      [sys.executable, "-m", "vlm_jax.evaluate", "--config", os.path.join(REPO, "configs/shapes_clip.py"),
       "--workdir", str(tmp_path), f"--config.data.data_dir={data_dir}", *SMALL, "--config.total_steps=4",
       "--config.checkpoint_every_steps=4", "--config.log_every_steps=4", "--config.mesh.data=1",
       "--config.optimizer.learning_rate=0.003", "--config.optimizer.warmup_steps=5"],
      env=env(devices=1), capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / "eval.json") as f:
    evaluated = json.load(f)
  for key, value in trained.items():
    np.testing.assert_allclose(evaluated[key], value, atol=1e-6, err_msg=key)


class FlakySource:
  """A source whose record 1 cannot be decoded and record 2 has an empty caption."""

  def __init__(self, good):
    self.good = good

  def __len__(self):
    return 4

  def __getitem__(self, index):
    if index == 1:
      raise ValueError("broken PNG")
    record = dict(self.good)
    if index == 2:
      record["caption"] = b""
    return record


def test_bad_records_are_skipped_and_counted_or_fatal_as_configured(data_dir):
  import ml_collections
  config = ml_collections.ConfigDict(dict(name="shapes", builder_config="tiny", data_dir=data_dir))
  good = pipeline.open_split(config, "train")[0]
  before = pipeline.SKIPPED_RECORDS.skipped
  skipping = pipeline.MemoizedSource(FlakySource(good), "skip")
  assert [skipping[i] is None for i in range(4)] == [False, True, True, False]
  assert pipeline.SKIPPED_RECORDS.skipped == before + 2
  failing = pipeline.MemoizedSource(FlakySource(good), "fail")
  with pytest.raises(UserError, match="cannot decode record 1 of the train split"):
    failing[1]
  with pytest.raises(UserError, match="record 2 of the train split has an empty caption"):
    failing[2]
