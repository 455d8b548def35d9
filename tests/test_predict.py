"""The predict CLI on tiny random-init workdirs: output format per task, and one-line errors."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vlm_jax import inference, predict
from vlm_jax.errors import UserError
from xla_env import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _make_workdir(path, data_dir, model_name):
  """A workdir as training leaves it (config.json + a checkpoint), with a tiny random-init model."""
  from vlm_jax import run, run_config
  config = run_config.base_config()
  config.model.name = model_name
  config.data.builder_config, config.data.data_dir = "tiny", data_dir
  config.batch_size = 8
  config.loss.contrastive = "" if model_name == "prefix_lm" else "softmax"
  config.model.vision.update(width=16, depth=1, num_heads=2, mlp_dim=32)
  config.model.text.update(width=16, depth=1, num_heads=2, mlp_dim=32)
  config.model.multimodal.depth = 1
  config.eval.max_decode_len = 4
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config.to_json(indent=1))
  built = run.Run(config, str(path), for_training=False)
  built.checkpoints.save(1, built.state, None)
  built.checkpoints.close()
  return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """A folder with two PNGs of different sizes (both get resized) and a text file that is skipped."""
  folder = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  for name, size in (("b.png", 40), ("a.png", 32)):
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / name)
  (folder / "notes.txt").write_text("not an image")
  return folder


@pytest.fixture(scope="module")
def coca_workdir(tmp_path_factory, data_dir):
  return _make_workdir(tmp_path_factory.mktemp("w") / "coca", data_dir, "coca")


def _cli(*args):
  env = subprocess_env(devices=1)  # one device, as a user runs it
  return subprocess.run([sys.executable, "-m", "vlm_jax.predict", *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=300)


def test_cli_captions_every_image_of_a_folder_as_json_lines(coca_workdir, images):
  result = _cli("--workdir", coca_workdir, "--image", str(images), "--json")
  assert result.returncode == 0, result.stderr
  rows = [json.loads(line) for line in result.stdout.splitlines()]
  assert [os.path.basename(r["image"]) for r in rows] == ["a.png", "b.png"]  # name order, txt skipped
  for row in rows:
    assert set(row) == {"image", "caption", "scores"} and isinstance(row["caption"], str)
    assert row["scores"]["log_likelihood"] <= 0.0


def test_zero_shot_labels_get_probabilities_and_the_most_likely_label(coca_workdir, images):
  labels = ["red circle", "blue square", "green triangle"]
  rows = list(inference.predict(coca_workdir, str(images / "a.png"), labels=labels))
  assert len(rows) == 1 and set(rows[0]) == {"image", "label", "scores"}
  scores = rows[0]["scores"]
  assert list(scores) == labels and np.isclose(sum(scores.values()), 1.0, atol=1e-5)
  assert rows[0]["label"] == max(scores, key=scores.get)


def test_cli_error_is_one_line_without_traceback(coca_workdir, tmp_path):
  result = _cli("--workdir", coca_workdir, "--image", str(tmp_path / "missing.png"))
  assert result.returncode == 1 and result.stdout == ""
  assert result.stderr.strip().splitlines() == [f"vlm_jax.predict: error: image not found: {tmp_path / 'missing.png'}"]


@pytest.mark.parametrize("make_args,message", [
    (lambda w, d: ["--image", str(d / "fake.png")], "is not a readable image"),
    (lambda w, d: ["--image", str(d), "--prompt", "what is it?"], "does not take a --prompt"),
    (lambda w, d: ["--image", str(d), "--labels", "circle"], "at least two"),
    (lambda w, d: ["--image", str(d / "empty")], "no image files"),
])
def test_user_mistakes_exit_1_with_one_line(coca_workdir, tmp_path, capsys, make_args, message):
  (tmp_path / "fake.png").write_text("not a png")
  (tmp_path / "empty").mkdir()
  assert predict.main(["--workdir", coca_workdir, *make_args(coca_workdir, tmp_path)]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("vlm_jax.predict: error:") and message in err[0]


def test_a_folder_skips_each_unreadable_image_with_one_warning_line(coca_workdir, images, tmp_path, capsys):
  """An undecodable file and a decompression-bomb header in a folder: one warning line each, naming the file and
  why; the readable image is still classified and the exit status is 0. Only unreadable ones: exit 1."""
  from image_text_fixtures import bomb_png
  folder = tmp_path / "mixed"
  folder.mkdir()
  shutil.copy(images / "a.png", folder / "a.png")
  (folder / "b.png").write_bytes(bomb_png())
  (folder / "c.jpg").write_bytes(b"not a jpeg")
  assert predict.main(["--workdir", coca_workdir, "--image", str(folder), "--labels", "circle,square", "--json"]) == 0
  out, err = capsys.readouterr()
  assert [os.path.basename(json.loads(line)["image"]) for line in out.splitlines()] == ["a.png"]
  warnings = err.strip().splitlines()
  assert len(warnings) == 2 and all(w.startswith("vlm_jax.predict: warning:") for w in warnings), warnings
  assert str(folder / "b.png") in warnings[0] and "30000 x 30000" in warnings[0] and "max_image_pixels" in warnings[0]
  assert str(folder / "c.jpg") in warnings[1] and "not a readable image" in warnings[1]
  (folder / "a.png").unlink()
  assert predict.main(["--workdir", coca_workdir, "--image", str(folder)]) == 1
  out, err = capsys.readouterr()
  assert out == "" and err.strip().splitlines()[-1] == (
      f"vlm_jax.predict: error: none of the 2 image files in {folder} could be read")


def test_a_workdir_alone_is_enough_to_predict(coca_workdir, data_dir, images, tmp_path):
  """Inference reads config.json, the workdir's own tokenizer.model and the parameters: no prepared data."""
  from vlm_jax.data import tokenizer as tokenizer_lib
  workdir = tmp_path / "alone"
  shutil.copytree(coca_workdir, workdir)
  tokenizer_lib.save_to_workdir(tokenizer_lib.load_tokenizer("sentencepiece", data_dir, "tiny"), str(workdir))
  config = json.loads((workdir / "config.json").read_text())
  config["data"]["data_dir"] = str(tmp_path / "no_data")
  (workdir / "config.json").write_text(json.dumps(config))
  alone = list(inference.predict(str(workdir), str(images / "a.png")))
  assert alone == list(inference.predict(coca_workdir, str(images / "a.png")))
  assert not (tmp_path / "no_data").exists()


def test_a_two_tower_model_cannot_caption():
  with pytest.raises(UserError, match="cannot generate text"):
    inference.task_for("two_tower", None, None)
  assert inference.task_for("coca", None, None) == "caption"
  assert inference.task_for("prefix_lm", "why?", None) == "answer"


def test_the_order_probe_command_writes_both_axes_for_a_contrastive_workdir_and_refuses_a_missing_one(
    coca_workdir, tmp_path, capsys):
  """scripts/order_probe.py (vlm_jax/probes.py) on a random-init CoCa: a result per axis, in [0, 1]."""
  import importlib.util
  workdir = shutil.copytree(coca_workdir, tmp_path / "coca")
  spec = importlib.util.spec_from_file_location(
      "order_probe", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
                                  "order_probe.py"))
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  assert script.main([str(workdir), "--scenes", "120"]) == 0
  with open(os.path.join(workdir, "order_probe.json")) as f:
    result = json.load(f)
  assert set(result) == {"order_probe/x", "order_probe/y", "order_probe/x/train", "order_probe/y/train"}
  assert all(0.0 <= v <= 1.0 for v in result.values())
  assert script.main([str(tmp_path / "none")]) == 1
  assert capsys.readouterr().err.strip().startswith("order_probe: error: no checkpoints in")
