"""The commands README.md shows stay runnable: every config, override and flag they name exists and
validates, and the scaling-out example trains (shortened to a few steps) on the 8 simulated devices."""

import ast
import os
import re
import shlex

import pytest

from vlm_jax import run_config, trainer
from test_train import REPO  # noqa: E402  (tests/ is on sys.path under pytest)

PLACEHOLDERS = ("NAME", "DIR", "...", "HOST0", "BUCKET")


def readme_commands() -> list:
  """Each `python -m vlm_jax.X ...` invocation in README.md's bash blocks, as an argument list."""
  with open(os.path.join(REPO, "README.md")) as f:
    text = f.read()
  commands = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    for line in block.replace("\\\n", " ").splitlines():
      line = line.split("  #")[0]
      for part in re.split(r"&&|;|&|\bdo\b|\bdone\b", line):
        words = shlex.split(part)
        while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
          words = words[1:]
        if len(words) >= 3 and words[:2] == ["python", "-m"] and words[2].startswith("vlm_jax."):
          commands.append(words[2:])
  return commands


def config_with_overrides(args: list):
  """The config a train/evaluate command line builds: the file, then each --config.key=value."""
  path, _, argument = args[args.index("--config") + 1].partition(":")  # configs/NAME.py[:ARG]
  assert os.path.isfile(os.path.join(REPO, path)), f"README names a missing config file {path}"
  config = run_config.load_config(os.path.join(REPO, path) + (f":{argument}" if argument else ""))
  for arg in args:
    if arg.startswith("--config."):
      key, value = arg[len("--config."):].split("=", 1)
      *parents, last = key.split(".")
      section = config
      for part in parents:
        section = section[part]
      assert last in section, f"README override {arg} names a config key that does not exist"
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        pass  # a string
      section[last] = value
  return config


COMMANDS = readme_commands()


def test_readme_shows_the_commands_it_documents():
  modules = {c[0] for c in COMMANDS}
  assert {"vlm_jax.train", "vlm_jax.evaluate", "vlm_jax.predict"} <= modules, modules
  assert len(COMMANDS) >= 10


@pytest.mark.parametrize("args", [c for c in COMMANDS if c[0] in ("vlm_jax.train", "vlm_jax.evaluate")
                                  and not any(p in " ".join(c) for p in PLACEHOLDERS)], ids=" ".join)
def test_readme_train_and_evaluate_commands_name_valid_configs_and_overrides(args):
  run_config.validate(config_with_overrides(args))


@pytest.mark.parametrize("args", [c for c in COMMANDS if c[0] == "vlm_jax.predict"], ids=" ".join)
def test_readme_predict_commands_use_existing_flags(args, capsys):
  from vlm_jax import predict
  with pytest.raises(SystemExit):
    predict.main(["--help"])
  known = set(re.findall(r"--[a-z_]+", capsys.readouterr().out))
  used = {a for a in args if a.startswith("--")}
  assert used <= known, used - known


def test_readme_scaling_out_example_trains_a_few_steps(data_dir, tmp_path, capsys):
  """The FSDP x tensor example as written (shapes_clip's 3 heads over tensor=2), shortened to 3 steps."""
  (args,) = [c for c in COMMANDS if "--config.mesh.tensor=2" in c and "--config.mesh.fsdp=4" in c]
  config = config_with_overrides(args)
  config.update(total_steps=3, log_every_steps=1, checkpoint_every_steps=3, eval_every_steps=100)
  config.data.update(builder_config="tiny", data_dir=data_dir)
  config.eval.update(extra_splits=(), batch_size=64, at_end=False)  # training on that mesh is the point
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  out = capsys.readouterr().out
  assert "replicated" in out and "step 3/3" in out, out[-2000:]
  assert os.path.isdir(tmp_path / "run" / "checkpoints" / "3")
  assert "no final evaluation (config.eval.at_end=False)" in out
