"""Config-driven evaluators (config.evals), the supervised ViT classifier, and small Fashion-MNIST runs."""

import json

import jax
import numpy as np
import pytest

from vlm_jax import evaluation, losses, models, run_config, trainer
from vlm_jax.errors import UserError
from vlm_jax.evaluators.specs import eval_specs
from vlm_jax.models import build_model
from test_train import load_config, tiny  # noqa: E402  (tests/ is on sys.path under pytest)



def test_default_evaluators_follow_the_model_and_prefix_the_extra_splits():
  config = load_config("shapes_coca")
  specs = eval_specs(config)
  main = [(s["type"], s["prefix"]) for s in specs if s["split"] == config.eval.split]
  assert main == [("retrieval", ""), ("hardneg", ""), ("captioning", "")]
  extra = {(s["type"], s["prefix"]) for s in specs if s["split"] == "compositional"}
  assert extra == {("retrieval", "compositional/"), ("hardneg", "compositional/"), ("captioning", "compositional/")}
  # Periodic evaluation: the main split's evaluators every eval_every_steps, the extra splits only at the end.
  assert {s["every"] for s in specs if s["split"] == config.eval.split} == {config.eval_every_steps}
  assert {s["every"] for s in specs if s["split"] == "compositional"} == {0}
  llava = {s["type"] for s in eval_specs(load_config("shapes_llava"))}
  assert llava == {"captioning", "vqa", "pope", "hardneg"}  # hardneg by the caption's likelihood


def test_configured_evaluators_replace_the_defaults_with_their_split_period_and_prefix():
  config = load_config("shapes_clip")
  config.evals.r = dict(type="retrieval", split="validation", every=7)
  config.evals.h = dict(type="hardneg", every=0, prefix="probe/")
  specs = {s["name"]: s for s in eval_specs(config)}
  assert set(specs) == {"r", "h"}
  assert (specs["r"]["split"], specs["r"]["every"], specs["r"]["prefix"]) == ("validation", 7, "validation/")
  assert (specs["h"]["split"], specs["h"]["every"], specs["h"]["prefix"]) == ("test", 0, "probe/")


@pytest.mark.parametrize("entry,needle", [
    (dict(type="bleu"), "config.evals.e.type='bleu'"),
    (dict(type="captioning"), "cannot score model 'two_tower'"),
    (dict(type="retrieval", evry=3), "config.evals.e.evry"),
    (dict(type="retrieval", every=-1), "config.evals.e.every=-1"),
])
def test_bad_evaluator_entries_name_the_key(entry, needle):
  config = load_config("shapes_clip")
  config.evals.e = entry
  with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
    run_config.validate(config)


class RecordingEvaluator:
  """Stands in for evaluation.Evaluator: records which evaluators ran on which split."""

  def __init__(self):
    self.calls = []

  def __call__(self, params, split, specs):
    self.calls.append((split, sorted(s["name"] for s in specs)))
    return {s["name"]: 1.0 for s in specs}


def test_periodic_scores_run_the_due_evaluators_on_the_periodic_split():
  config = load_config("shapes_clip")
  config.evals.often = dict(type="retrieval", every=2)
  config.evals.rarely = dict(type="hardneg", every=3)
  config.evals.never = dict(type="retrieval", every=0)
  recorder = RecordingEvaluator()
  due = {step: evaluation.periodic_scores(recorder, None, config, step) for step in range(1, 7)}
  assert {step: sorted(d) for step, d in due.items()} == {
      1: [], 2: ["often"], 3: ["rarely"], 4: ["often"], 5: [], 6: ["often", "rarely"]}
  assert {split for split, _ in recorder.calls} == {config.eval.periodic_split}


def test_classifier_starts_uniform_so_its_loss_is_log_classes_and_it_learns_a_batch():
  """A zero-initialised head gives equal logits: cross-entropy log(C) exactly; then it fits 8 images."""
  config = load_config("fashion_mnist_vit")
  config.model.vision.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  model = build_model(config.model, vocab_size=1, max_len=1, eos_id=0, pad_id=0)
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(8, 28, 28, 3)).astype(np.float32), "label": np.arange(8) % 10}
  params = model.init(jax.random.key(0), batch)["params"]
  terms = models.get(config.model.name).LOSS_TERMS
  loss_fn = lambda p: losses.compute_loss(config.loss, terms, model.apply({"params": p}, batch)[0], batch, 0)
  loss, metrics = loss_fn(params)
  np.testing.assert_allclose(loss, np.log(10), rtol=1e-6)
  import optax
  tx = optax.adam(1e-2)
  opt = tx.init(params)
  grad = jax.jit(jax.grad(lambda p: loss_fn(p)[0]))
  for _ in range(60):
    updates, opt = tx.update(grad(params), opt)
    params = optax.apply_updates(params, updates)
  assert float(loss_fn(params)[1]["accuracy"]) == 1.0


def fashion_tiny(name, data_dir, **overrides):
  config = tiny(load_config(name), data_dir, **overrides)
  config.data.builder_config = "tiny"
  config.model.vision.update(patch_size=7)
  config.eval.batch_size = 500
  return config


def test_small_fashion_mnist_coca_run_scores_zero_shot_and_captions(tmp_path):
  """The CI's small version of configs/fashion_mnist_coca.py: every configured evaluator lands in eval.json."""
  config = fashion_tiny("fashion_mnist_coca", str(tmp_path / "data"), total_steps=6, log_every_steps=3,
                        eval_every_steps=1000, checkpoint_every_steps=6)
  config.evals.zero_shot.every = 3  # also periodically, on the validation images
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  with open(tmp_path / "run" / "eval.json") as f:
    scores = json.load(f)
  for key in ("img2txt_recall@1", "hardneg/count", "hardneg/left_right", "caption_exact_match", "bleu4", "cider",
              "fashion_mnist/zero_shot/top1", "fashion_mnist/zero_shot/top5",
              # the configured "hardneg" entry scores by the decoder's likelihood too, beside the blind baseline
              "hardneg_likelihood/count", "hardneg_likelihood/left_right", "blind/hardneg/left_right"):
    assert key in scores and np.isfinite(scores[key]), key
  assert not [key for key in scores if "binding" in key]  # Fashion-MNIST items have no attributes to bind
  assert scores["fashion_mnist/chance/zero_shot/top1"] == pytest.approx(0.1)
  with open(tmp_path / "run" / "metrics.jsonl") as f:
    periodic = [json.loads(line) for line in f if "validation/zero_shot/top1" in line]
  assert [m["step"] for m in periodic] == [3]


def test_small_fashion_mnist_classifier_run_learns_above_chance(tmp_path):
  config = fashion_tiny("fashion_mnist_vit", str(tmp_path / "data"), total_steps=200, log_every_steps=50,
                        eval_every_steps=1000, checkpoint_every_steps=200)
  config.batch_size = 64
  scores = trainer.train_and_evaluate(config, str(tmp_path / "run"))
  assert scores["chance/accuracy"] == pytest.approx(0.1)
  assert scores["accuracy"] > 0.5, scores  # 10 classes: a ViT learns the easy ones within 200 steps
