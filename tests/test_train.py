"""End to end: a tiny run learns, resumes at the right step, and bad input fails with one clear line."""

import glob
import json
import os
import subprocess
import sys

import optax
import pytest

from vlm_jax import evaluation, models, run, run_config, train_state, trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str):
  return run_config.load_config(os.path.join(REPO, "configs", f"{name}.py"))


def tiny(config, data_dir, **overrides):
  """A model small enough to train in seconds on the tiny split, 8 simulated devices, batch 16."""
  config.data.builder_config = "tiny"
  config.data.data_dir = data_dir
  config.batch_size = 16
  config.model.vision.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  config.model.text.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  config.model.multimodal.depth = 1
  config.model.embed_dim = 32
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 5
  config.eval.batch_size = 64
  config.eval.extra_splits = ()
  for key, value in overrides.items():
    setattr(config, key, value)
  # One schedule for the tiny runs of up to 40 steps, whatever their total_steps: the schedule's length is compiled
  # into the train step, so runs of the same model share one program and the session's compilation cache serves them.
  config.optimizer.schedule_steps = max(40, config.total_steps)
  return config


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.parametrize("name", ["shapes_clip", "shapes_coca", "shapes_llava"])
def test_tiny_run_lowers_the_loss_and_writes_eval_json(name, data_dir, tmp_path):
  config = tiny(load_config(name), data_dir, total_steps=40, log_every_steps=10, eval_every_steps=1000,
                checkpoint_every_steps=40)
  scores = trainer.train_and_evaluate(config, str(tmp_path))
  losses = [m["loss"] for m in read_metrics(tmp_path) if "loss" in m]
  assert losses[-1] < 0.8 * losses[0], losses
  with open(tmp_path / "eval.json") as f:
    written = json.load(f)
  assert written["step"] == 40
  probes = ["count", "binding", "left_right", "above_below"]
  blind = [f"blind/hardneg/{p}" for p in probes]  # every model: the probes' text-only baselines
  likelihood = [f"hardneg_likelihood/{p}" for p in probes]  # the models that caption: decoder likelihood
  expected = {"shapes_clip": ["img2txt_recall@1", "img2txt_recall@5", "txt2img_recall@1", "txt2img_recall@5",
                              "hardneg/count", "hardneg/binding", "hardneg/left_right", "hardneg/above_below"] + blind,
              "shapes_coca": ["img2txt_recall@1", "hardneg/count", "caption_exact_match", "caption_token_accuracy"]
              + likelihood + blind,
              "shapes_llava": ["vqa_accuracy", "caption_exact_match"] + likelihood + blind}[name]
  for key in expected:
    assert key in written and 0.0 <= written[key] <= 1.0, key
  assert ("img2txt_recall@1" in written) == (name != "shapes_llava")  # keys a model cannot produce are absent
  assert ("hardneg/count" in written) == (name != "shapes_llava")  # no embeddings: likelihood only
  assert ("hardneg_likelihood/count" in written) == (name != "shapes_clip")
  assert all(written[f"chance/{key}"] == 0.5 for key in expected if key.startswith("hardneg"))
  assert scores == {k: v for k, v in written.items() if k != "step"}
  assert os.path.isdir(tmp_path / "checkpoints" / "40")
  assert os.path.exists(tmp_path / "tokenizer.model")  # with config.json, all that inference needs
  assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))
  # Compile time: each program the run compiled, with its seconds and cache outcome, and the time to step 1.
  with open(tmp_path / "compile_times.json") as f:
    compiled = json.load(f)
  programs = compiled["programs"]
  assert {"init", "train_step"} <= set(programs), programs
  assert ("generate" in programs) == models.get(config.model.name).GENERATES  # the captioning evaluators decode
  for name, figures in programs.items():
    assert figures["compile_s"] > 0 and figures["compiles"] >= 1, (name, figures)
    assert figures["cache"] in ("hit", "miss") or figures["cache"].endswith("hits"), (name, figures)
  first = read_metrics(tmp_path)[0]
  assert first["compile_s/train_step"] == pytest.approx(programs["train_step"]["compile_s"], abs=1e-3)
  assert first["time_to_first_step_s"] == pytest.approx(compiled["time_to_first_step_s"], abs=1e-3)
  assert first["time_to_first_step_s"] > programs["train_step"]["compile_s"]


def never_initialize(monkeypatch):
  """From here on computing an initial state fails the test: a run that restores needs only the state's shape."""
  def fail(*args, **kwargs):
    raise AssertionError("an initial state was computed though a checkpoint was restored")
  monkeypatch.setattr(train_state, "initialize_state", fail)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))), ids=os.path.basename)
def test_every_config_file_validates_or_names_what_it_needs_in_one_line(path):
  """A shipped config loads from any directory (one config may build on another) and passes validation, or, where
  it needs the user's paths (own data, pretrained parts), says so in one line: never another exception."""
  try:
    run_config.validate(run_config.load_config(path))
  except run_config.UserError as e:
    assert "\n" not in str(e) and ("pass --config." in str(e) or "needs " in str(e)), str(e)


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
  """tensorboardX imports torch when it is installed (it is, for the transformers parity tests): 2-3 s at every
  run's start for nothing. The writer's events hold the scalars, torch is not imported, and stays importable."""
  code = ("import sys\nfrom vlm_jax.metrics_writer import MetricsWriter\n"
          f"w = MetricsWriter({str(tmp_path)!r})\nw.write(3, {{'loss': 1.5}})\nw.close()\n"
          "print('torch' in sys.modules)\nimport torch\nprint(torch.__name__)\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
  assert out.split() == ["False", "torch"], out
  (events,) = (tmp_path / "tensorboard").iterdir()
  from tensorboardX.proto import event_pb2
  records, data = [], events.read_bytes()
  while data:  # TFRecord framing: uint64 length, uint32 crc, payload, uint32 crc
    n = int.from_bytes(data[:8], "little")
    records.append(event_pb2.Event.FromString(data[12:12 + n]))
    data = data[16 + n:]
  scalars = [(e.step, v.tag, v.simple_value) for e in records for v in e.summary.value]
  assert scalars == [(3, "loss", 1.5)], scalars


def test_rerunning_resumes_from_the_latest_checkpoint_at_the_right_step(data_dir, tmp_path, capsys, monkeypatch):
  config = tiny(load_config("shapes_clip"), data_dir, total_steps=12, log_every_steps=4,
                eval_every_steps=1000, checkpoint_every_steps=6)
  config.eval.at_end = False  # the steps and checkpoints are the point
  # With the hard-negative twins on (config.data.hard_negatives): their features reach the step, and the run
  # resumes with them like any other (no extra run for the switch).
  config.data.hard_negatives = True
  trainer.train_and_evaluate(config, str(tmp_path))
  assert all(0.0 <= m["hard_negative_accuracy"] <= 1.0 for m in read_metrics(tmp_path) if "loss" in m)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12", "6"]
  config.total_steps = 20
  never_initialize(monkeypatch)
  trainer.train_and_evaluate(config, str(tmp_path))
  assert f"resumed from {tmp_path}/checkpoints/12" in capsys.readouterr().out
  steps = [m["step"] for m in read_metrics(tmp_path) if "loss" in m]
  # Each run's first line comes after its first compiled step: 2, then 14 (resumed at 13, not at 1).
  assert steps == [2, 4, 8, 12, 14, 16, 20]
  assert "20" in os.listdir(tmp_path / "checkpoints")


def test_evaluate_restores_the_latest_checkpoint_and_matches_training(data_dir, tmp_path, monkeypatch):
  config = tiny(load_config("shapes_clip"), data_dir, total_steps=8, log_every_steps=4,
                eval_every_steps=1000, checkpoint_every_steps=8)
  trained = trainer.train_and_evaluate(config, str(tmp_path))
  os.remove(tmp_path / "eval.json")
  never_initialize(monkeypatch)
  evaluated = evaluation.evaluate_checkpoint(config, str(tmp_path))
  assert evaluated == trained
  assert os.path.exists(tmp_path / "eval.json")


# --------------------------------------------------------------------------- bad input through the CLI


def run_cli(module, *args):
  env = {**os.environ, "PYTHONPATH": REPO}
  return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                        cwd=REPO, timeout=300)


def assert_one_clear_line(result, *needles):
  assert result.returncode != 0
  assert "Traceback" not in result.stderr, result.stderr
  error_lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
  assert error_lines, result.stderr
  for needle in needles:
    assert needle in result.stderr, (needle, result.stderr)


@pytest.mark.parametrize("override,needles", [
    ("--config.no_such_key=1", ["no_such_key"]),
    ("--config.batch_size=abc", ["batch_size"]),
    ("--config.model.vision.patch_size=5", ["config.data.image_size=32", "patch_size=5"]),
    ("--config.model.name=resnet", ["config.model.name='resnet'"]),
    ("--config.data.name=imagenet", ["config.data.name='imagenet'"]),
])
def test_bad_config_fails_with_one_clear_line(override, needles, tmp_path):
  result = run_cli("vlm_jax.train", "--config", "configs/shapes_clip.py", "--workdir", str(tmp_path / "w"),
                   override)
  assert_one_clear_line(result, *needles)


def test_unwritable_workdir_fails_with_one_clear_line(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  result = run_cli("vlm_jax.train", "--config", "configs/shapes_clip.py", "--workdir", str(blocker / "run"))
  assert_one_clear_line(result, "cannot be written", str(blocker / "run"))


def test_workdir_of_another_model_is_refused_and_left_untouched(data_dir, tmp_path):
  config = tiny(load_config("shapes_clip"), data_dir, total_steps=4, log_every_steps=4,
                eval_every_steps=1000, checkpoint_every_steps=4)
  config.eval.at_end = False
  trainer.train_and_evaluate(config, str(tmp_path))
  before = {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(tmp_path) for p in fs}
  result = run_cli("vlm_jax.train", "--config", "configs/shapes_coca.py", "--workdir", str(tmp_path),
                   f"--config.data.data_dir={data_dir}", "--config.data.builder_config=tiny")
  assert_one_clear_line(result, "different model config", str(tmp_path))
  after = {p: os.path.getmtime(os.path.join(r, p)) for r, _, fs in os.walk(tmp_path) for p in fs}
  assert before == after


def test_evaluate_without_checkpoints_fails_with_one_clear_line(tmp_path):
  result = run_cli("vlm_jax.evaluate", "--config", "configs/shapes_clip.py", "--workdir", str(tmp_path))
  assert_one_clear_line(result, "no checkpoints")


def test_llava_two_stages_freeze_what_they_should_and_chain_checkpoints(data_dir, tmp_path):
  """Stage 1 trains only the projector (no optimizer state elsewhere); stage 2 starts from stage 1."""
  import jax
  import numpy as np
  from vlm_jax import checkpointing

  def small(config, steps):
    config = tiny(config, data_dir, total_steps=steps, log_every_steps=steps, eval_every_steps=1000,
                  checkpoint_every_steps=steps)
    config.data.max_text_len = 24
    config.eval.at_end = False  # which parameters each stage trains is the point, not the scores
    return config

  clip, lm = str(tmp_path / "clip"), str(tmp_path / "lm")
  trainer.train_and_evaluate(small(load_config("shapes_clip"), 4), clip)
  trainer.train_and_evaluate(small(load_config("shapes_lm"), 4), lm)
  stage1 = small(load_config("llava_stage1"), 6)
  stage1.init_from = (("vision", clip, "vision"), ("decoder", lm, "decoder"))
  trainer.train_and_evaluate(stage1, str(tmp_path / "stage1"))

  _, clip_params = checkpointing.read_params(clip)
  _, lm_params = checkpointing.read_params(lm)
  _, stage1_params = checkpointing.read_params(str(tmp_path / "stage1"))
  same = lambda a, b: jax.tree.all(jax.tree.map(np.array_equal, a, b))
  assert same(stage1_params["vision"], clip_params["vision"])  # loaded, then frozen
  assert same(stage1_params["decoder"], lm_params["decoder"])
  restored = run.Run(stage1, str(tmp_path / "stage1"), for_training=False)
  restored.restore_latest()
  adam_state = restored.state.opt_state.inner_states
  assert jax.tree.leaves(adam_state["frozen"]) == []  # set_to_zero keeps nothing for frozen params
  moments = adam_state["trained"].inner_state[1][0].mu
  trained_paths = {train_state.param_path(p) for p, x in jax.tree_util.tree_leaves_with_path(moments)
                   if not isinstance(x, optax.MaskedNode)}
  assert trained_paths and all(p.startswith("projector/") for p in trained_paths)

  stage2 = small(load_config("llava_stage2"), 4)
  stage2.init_from = (("", str(tmp_path / "stage1"), ""),)
  trainer.train_and_evaluate(stage2, str(tmp_path / "stage2"))
  _, stage2_params = checkpointing.read_params(str(tmp_path / "stage2"))
  assert same(stage2_params["vision"], clip_params["vision"])  # still frozen
  assert not same(stage2_params["decoder"], lm_params["decoder"])  # now trained


def test_a_run_written_before_scan_resumes_with_its_checkpoint_restacked(data_dir, tmp_path):
  """A workdir of the loop layout (block_NN params, config.json without model.scan or the text block
  fields) resumes under scan=True: the checkpoint is converted (params and optimizer state restored into the
  scanned run's state), values unchanged."""
  import jax
  import numpy as np
  from vlm_jax import checkpointing
  from vlm_jax.models import layers

  def make(steps):
    config = tiny(load_config("shapes_coca"), data_dir, total_steps=steps, log_every_steps=2,
                  eval_every_steps=1000, checkpoint_every_steps=4)
    config.eval.at_end = False  # the layout is the point, not the scores
    return config

  old = make(4)
  old.model.scan = False
  old.model.vision.depth = 2
  trainer.train_and_evaluate(old, str(tmp_path))
  with open(tmp_path / "config.json") as f:
    saved = json.load(f)
  del saved["model"]["scan"]
  for key in ("norm", "mlp", "posemb", "rope_theta", "num_kv_heads", "cross_attention_gate", "use_bias"):
    del saved["model"]["text"][key]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  _, loop_params = checkpointing.read_params(str(tmp_path))
  assert "block_01" in loop_params["vision"]["encoder"]

  config = make(6)
  config.model.scan = True  # what base_config defaults to (the shapes configs choose the loop)
  config.model.vision.depth = 2
  run.check_same_model(config, str(tmp_path))  # not refused
  restored = run.Run(config, str(tmp_path), for_training=True)
  assert restored.restore_latest() == 4
  assert restored.state.params["vision"]["encoder"]["blocks"]["mlp"]["fc1"]["kernel"].shape[0] == 2
  expected = layers.to_scanned_layout(loop_params, jax.tree.map(np.asarray, restored.state.params))
  assert jax.tree.all(jax.tree.map(np.array_equal, expected, jax.tree.map(np.asarray, restored.state.params)))
  assert "blocks" in restored.state.params["multimodal"]["transformer"]
  restored.checkpoints.close()


def test_a_scanned_workdir_resumed_as_a_loop_is_refused_naming_scan(tmp_path):
  """Only loop -> scan is converted; the other way is one clear line naming config.model.scan."""
  from vlm_jax import run_config
  from vlm_jax.errors import UserError
  config = run_config.base_config()
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "config.json").write_text(config.to_json())
  config.model.scan = False
  with pytest.raises(UserError, match=r"config\.model\.scan differs"):
    run.check_same_model(config, str(tmp_path))


def test_head_lr_scale_moves_only_the_contrastive_scalars_k_times_as_far_and_keeps_the_old_layout_at_one():
  """Adam's step is lr_t * m_hat / (sqrt(v_hat) + eps): independent of lr, so with head_lr_scale=k the logit scale's
  and bias's updates are k times those at k=1 (to float32 rounding) and every other update is the same; k=1 keeps the
  optimizer state's structure of runs written before the key (their checkpoints resume)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  params = {"logit_scale": jnp.float32(2.3), "logit_bias": jnp.float32(-4.8),
            "text": {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}}
  grads = [jax.tree.map(lambda p, s=s: jnp.full(p.shape, 0.3 * (s + 1), jnp.float32) * (1 + jnp.arange(p.size)
                                                                                        .reshape(p.shape)), params)
           for s in range(3)]

  def updates(scale):
    config = run_config.base_config()
    config.total_steps, config.optimizer.warmup_steps, config.optimizer.head_lr_scale = 10, 2, scale
    tx = train_state.make_optimizer(config)
    state, out = tx.init(params), []
    for g in grads:
      u, state = tx.update(g, state, params)
      out.append(u)
    return out, state

  base, base_state = updates(1.0)
  scaled, _ = updates(8.0)
  for u1, u8 in zip(base[1:], scaled[1:]):  # step 0: the warmup's lr is 0
    for name in ("logit_scale", "logit_bias"):
      np.testing.assert_allclose(u8[name], 8.0 * u1[name], rtol=1e-6)
      assert float(u1[name]) != 0.0
    for a, b in zip(jax.tree.leaves(u1["text"]), jax.tree.leaves(u8["text"])):
      np.testing.assert_array_equal(a, b)
  config = run_config.base_config()
  old = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(  # the optimizer as every run before the key built it
      optax.constant_schedule(1e-3), weight_decay=0.05, mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))
  assert jax.tree.structure(base_state) == jax.tree.structure(old.init(params))
  config.optimizer.head_lr_scale = 0
  with pytest.raises(run_config.UserError, match=r"^config.optimizer.head_lr_scale=0.0 must be a positive number"):
    train_state.make_optimizer(config)


def test_lr_scales_move_each_matched_group_its_multiple_as_far_first_match_first_and_name_a_bad_entry():
  """As with head_lr_scale, Adam's step is proportional to lr and otherwise independent of it: with lr_scales
  (("text/dense/.*", 4.0), ("text/.*", 0.5)) the first pair's parameters step 4x, the rest of text/ 0.5x, the head
  head_lr_scale x, everything else as with no scales (first match wins; decay stays on matrices, scaled like the
  rate). An entry that is not a (regex, positive number) pair, or whose regex matches no trained parameter, is a
  UserError naming the entry."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  params = {"logit_scale": jnp.float32(2.3),
            "text": {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}, "out": {"kernel": jnp.ones((2, 2))}},
            "vision": {"proj": {"kernel": jnp.ones((2, 3))}}}
  grads = [jax.tree.map(lambda p, s=s: jnp.full(p.shape, 0.3 * (s + 1), jnp.float32) * (1 + jnp.arange(p.size)
                                                                                        .reshape(p.shape)), params)
           for s in range(3)]

  def updates(lr_scales, head=1.0, freeze=()):
    config = run_config.base_config()
    config.total_steps, config.optimizer.warmup_steps = 10, 2
    config.optimizer.lr_scales, config.optimizer.head_lr_scale, config.freeze = lr_scales, head, freeze
    tx = train_state.make_optimizer(config)
    state, out = tx.init(params), []
    for g in grads:
      u, state = tx.update(g, state, params)
      out.append(u)
    return out

  base = updates(())
  scaled = updates((("text/dense/.*", 4.0), ("text/.*", 0.5)), head=3.0)
  factors = {"text/dense": 4.0, "text/out": 0.5, "logit_scale": 3.0, "vision": 1.0}
  for u1, uk in zip(base[1:], scaled[1:]):  # step 0: the warmup's lr is 0
    for key, k in factors.items():
      a, b = (jax.tree.leaves(u[key.split("/")[0]][key.split("/")[1]] if "/" in key else u[key]) for u in (u1, uk))
      for x, y in zip(a, b):
        assert np.any(np.asarray(x) != 0.0)
        np.testing.assert_allclose(y, k * np.asarray(x), rtol=1e-6)
  # Frozen wins over a matching pair: text/out frozen gets zero updates, the pair still matches text/dense.
  frozen = updates((("text/.*", 2.0),), freeze=("text/out/.*",))
  assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(frozen[1]["text"]["out"]))
  np.testing.assert_allclose(frozen[1]["text"]["dense"]["kernel"], 2.0 * np.asarray(base[1]["text"]["dense"]["kernel"]),
                             rtol=1e-6)
  for bad, message in [((("vision/.*",),), r"^config.optimizer.lr_scales\[0\]=\('vision/.\*',\): expected a \(regex"),
                       ((("vision/.*", 0),), r"^config.optimizer.lr_scales\[0\]=.*the multiple 0 must be a positive"),
                       ((("vision/.*", 2.0), ("visoin/.*", 2.0)),
                        r"^config.optimizer.lr_scales\[1\]: 'visoin/.\*' matches no trained parameter \(parameter "
                        r"paths look like logit_scale, text/dense/bias"),
                       ((("(", 2.0),), r"^config.optimizer.lr_scales\[0\]=.*'\(' is not a regex")]:
    with pytest.raises(run_config.UserError, match=message):
      updates(bad)


def test_schedule_steps_sets_the_schedule_length_whatever_total_steps_is():
  """With a constant gradient Adam's step on a scalar (no weight decay) is lr_t * g / (|g| + eps) = lr_t: the updates
  follow the closed-form warmup + cosine of schedule_steps, not of total_steps, and schedule_steps=0 is total_steps."""
  import math
  import jax.numpy as jnp
  import numpy as np
  params = {"w": jnp.float32(1.0)}

  def learning_rates(total_steps, schedule_steps, steps=6):
    config = run_config.base_config()
    config.total_steps = total_steps
    config.optimizer.update(learning_rate=1e-2, warmup_steps=4, schedule_steps=schedule_steps)
    run_config.validate(config)
    tx = train_state.make_optimizer(config)
    state, out = tx.init(params), []
    for _ in range(steps):
      u, state = tx.update({"w": jnp.float32(0.5)}, state, params)
      out.append(-float(u["w"]))
    return np.array(out)

  closed = [1e-2 * t / 4 if t < 4 else 1e-2 * 0.5 * (1 + math.cos(math.pi * (t - 4) / 16)) for t in range(6)]
  np.testing.assert_allclose(learning_rates(6, 20), closed, rtol=1e-5)
  np.testing.assert_array_equal(learning_rates(6, 20), learning_rates(20, 0))
  assert learning_rates(6, 0)[-1] < 0.5 * closed[-1]  # without it the 6-step run decays over its own 6 steps
  config = run_config.base_config()
  config.optimizer.schedule_steps = -1
  with pytest.raises(run_config.UserError, match=r"^config.optimizer.schedule_steps=-1 must be a non-negative"):
    run_config.validate(config)


def test_ignore_true_counts_with_the_chunked_sigmoid_loss_is_refused_naming_both_keys():
  config = load_config("shapes_siglip")
  config.data.ignore_true_counts, config.loss.sigmoid_chunks = True, 2
  with pytest.raises(run_config.UserError, match=r"^config.data.ignore_true_counts=True cannot be combined with "
                                                 r"config.loss.sigmoid_chunks=2"):
    run_config.validate(config)


def test_the_train_step_gets_the_counts_only_when_ignore_true_counts_is_set_and_the_loss_is_contrastive():
  """trainer.batch_features: what reaches the jitted step (a field the pipeline makes but the step is not given
  would leave the switch without effect)."""
  config = load_config("shapes_siglip")
  two_tower = models.get("two_tower")
  assert not {"object_count", "text_count"} & set(trainer.batch_features(config, two_tower))
  config.data.ignore_true_counts = True
  assert {"object_count", "text_count"} <= set(trainer.batch_features(config, two_tower))
  assert "text_negative_count" not in trainer.batch_features(config, two_tower)
  config.data.hard_negatives = True
  assert {"text_negative", "text_negative_count"} <= set(trainer.batch_features(config, two_tower))
  assert not {"text_count", "text_negative"} & set(trainer.batch_features(config, models.get("prefix_lm")))
