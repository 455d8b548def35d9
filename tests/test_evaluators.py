"""Properties of the zero-shot, caption-metric, POPE and hard-negative (likelihood, blind) evaluators, on cases
small enough to check by hand."""

import jax
import ml_collections
import numpy as np
import pytest

from vlm_jax import evaluation, models
from vlm_jax.data import pipeline
from vlm_jax.evaluators import blind, caption_metrics, pope, vqa, zero_shot
from test_registry import IMAGE, tiny_config  # noqa: E402  (tests/ is on sys.path under pytest)
from tolerances import LOG_LIKELIHOOD_ATOL


def _unit(*v):
  v = np.asarray(v, np.float64)
  return v / np.linalg.norm(v)


# ----------------------------------------------------------------------------- zero-shot

def test_class_prompts_are_label_major():
  assert zero_shot.class_prompts(["cat", "dog"], ("{}", "a {}")) == ["cat", "a cat", "dog", "a dog"]


def test_class_embedding_is_the_renormalised_template_mean():
  prompts = np.stack([_unit(1, 0, 0), _unit(0, 1, 0), _unit(0, 0, 1), _unit(0, 0, 1)])
  classes = zero_shot.class_embeddings(prompts, num_templates=2)
  np.testing.assert_allclose(classes, [_unit(1, 1, 0), _unit(0, 0, 1)], atol=1e-12)


def test_renormalising_lets_a_class_with_disagreeing_templates_win_on_direction():
  """Class A's templates disagree (their mean is short); the image points exactly along A's mean.
  Without renormalising, B's longer mean would win; with it, A does."""
  b = _unit(0.9, 0.436, 0)
  prompts = np.stack([_unit(1, 0, 0), _unit(0, 1, 0), b, b])
  image = _unit(1, 1, 0)[None]
  assert np.argmax(image @ prompts.reshape(2, 2, 3).mean(1).T) == 1  # the naive mean picks B
  classes = zero_shot.class_embeddings(prompts, num_templates=2)
  assert zero_shot.zero_shot_metrics(image, classes, [0], ks=(1,))["zero_shot/top1"] == 1.0
  probs = zero_shot.zero_shot_probabilities(image, classes)
  assert probs.shape == (1, 2) and probs[0, 0] > 0.5 and np.isclose(probs.sum(), 1.0)


def test_zero_shot_top_k_counts_the_true_class_among_the_k_most_similar():
  classes = np.eye(3)
  images = np.stack([_unit(1, 0.5, 0), _unit(0.2, 0, 1), _unit(0.1, 1, 0)])
  metrics = zero_shot.zero_shot_metrics(images, classes, [0, 1, 1], ks=(1, 2, 5))
  assert metrics["zero_shot/top1"] == pytest.approx(2 / 3)  # image 1 is closest to class 2
  assert metrics["zero_shot/top2"] == pytest.approx(2 / 3)  # class 1 is last for image 1
  assert metrics["chance/zero_shot/top1"] == pytest.approx(1 / 3)
  assert "zero_shot/top5" not in metrics  # more than the number of classes


# ----------------------------------------------------------------------------- caption metrics

def test_bleu4_and_rouge_l_of_a_one_word_swap_match_the_hand_computation():
  """'left' for 'right' in 8 words: n-gram precisions 7/8, 5/7, 3/6, 1/5 -> BLEU-4 = (1/16)^(1/4) = 0.5;
  the longest common subsequence is 7 of 8 words either way -> ROUGE-L = 7/8."""
  scores = caption_metrics.caption_metrics(["a red circle left of a blue square"],
                                           [["a red circle right of a blue square"]])
  assert scores["bleu4"] == pytest.approx(0.5, abs=1e-6)
  assert scores["rouge_l"] == pytest.approx(7 / 8, abs=1e-6)


def test_cider_is_ten_for_exact_captions_and_zero_for_disjoint_ones():
  """CIDEr-D is 10x the mean over n = 1..4 of the n-gram tf-idf cosine: 1 for each n when identical (the
  captions have 4 words, so 4-grams exist), 0 when no n-gram is shared."""
  references = [["a big red circle"], ["two small green triangles"]]
  exact = caption_metrics.caption_metrics(["A big red circle.", "two small green  triangles"], references)
  assert exact["cider"] == pytest.approx(10.0, abs=1e-6)
  assert exact["bleu4"] == pytest.approx(1.0, abs=1e-6) and exact["rouge_l"] == pytest.approx(1.0)
  swapped = caption_metrics.caption_metrics(["two small green triangles", "a big red circle"], references)
  assert swapped["cider"] == pytest.approx(0.0, abs=1e-9) and swapped["rouge_l"] == 0.0


def test_caption_metrics_refuse_mismatched_inputs():
  with pytest.raises(ValueError):
    caption_metrics.caption_metrics(["a"], [["a"], ["b"]])
  with pytest.raises(ValueError):
    caption_metrics.caption_metrics(["a"], [[]])


# ----------------------------------------------------------------------------- POPE

def test_pope_metrics_by_hand():
  """said yes: 1 0 1 1 0; truth yes: 1 0 0 1 1 -> TP 2, precision 2/3, recall 2/3, accuracy 3/5."""
  metrics = pope.pope_metrics(["Yes.", "no", "yes there is", "yes", "No, there is not."],
                              ["yes", "no", "no", True, "yes"])
  assert metrics == pytest.approx({"pope/accuracy": 0.6, "pope/precision": 2 / 3, "pope/recall": 2 / 3,
                                   "pope/f1": 2 / 3, "pope/yes_ratio": 0.6,
                                   # blind baselines: 3 of 5 truths are yes; always-yes has F1 2*0.6/1.6
                                   "chance/pope/accuracy": 0.6, "chance/pope/precision": 0.6,
                                   "chance/pope/recall": 1.0, "chance/pope/f1": 0.75})


def test_a_model_that_always_says_yes_has_full_recall_and_chance_precision():
  truths = ["yes", "no"] * 5
  metrics = pope.pope_metrics(["yes"] * 10, truths)
  assert metrics["pope/recall"] == 1.0 and metrics["pope/precision"] == 0.5 and metrics["pope/yes_ratio"] == 1.0


def test_pope_questions_ask_about_absent_objects_only_from_outside_the_image():
  present = ["red circle", "blue square"]
  pool = ["red circle", "blue square", "orange star", "green triangle", "orange star"]
  pairs = pope.pope_questions(present, pool, np.random.default_rng(0))
  assert pairs[:2] == [("is there a red circle?", "yes"), ("is there a blue square?", "yes")]
  absent = sorted(q for q, truth in pairs if truth == "no")
  assert absent == ["is there a green triangle?", "is there an orange star?"]  # balanced, no repeats


def test_vqa_chance_is_the_majority_answer_of_each_question_type():
  """count: 1 question; exists: "no" and "yes" (majority 1 of 2); color: 1 -> a blind model gets 3 of 4."""
  metrics = vqa.vqa_scores(["two", "yes", "red", "no"], ["two", "no", "red", "yes"],
                           ["count", "exists", "color", "exists"])
  assert metrics["vqa_accuracy"] == 0.5
  assert metrics["chance/vqa_accuracy"] == 0.75
  assert metrics["chance/vqa/exists"] == 0.5 and metrics["vqa/exists"] == 0.0


# ----------------------------------------------------------------------------- hard negatives: blind baseline

def test_bigram_kneser_ney_probabilities_match_the_hand_computation():
  """Corpus "a b", "a c", "b c", D = 1/2. Bigram counts: <s> -> a 2, b 1; a -> b 1, c 1; b -> </s> 1, c 1;
  c -> </s> 2. Continuation counts (distinct predecessors): a 1, b 2, c 2, </s> 2: 7 in all, 4 types.
  Vocabulary a, b, c, </s>, <unk>: P1(w) = (N(w) - 1/2) / 7 + (1/2 * 4 / 7) / 5 = 9/70 for a, 19/70 for b, c
  and </s>, 4/70 for an unseen word. P(a | <s>) = 3/2 / 3 + (1/2 * 2 / 3) 9/70 = 19/35, P(b | a) = 1/4 + 1/2 *
  19/70 = 27/70, P(</s> | b) = 27/70 likewise; an unseen word after c: 1/2 * 1/2 * 4/70 = 1/70."""
  model = blind.fit(["a b", "a c", "b c"], order=2, discount=0.5)
  assert model.probability("a", []) == pytest.approx(19 / 35)
  assert model.probability("b", ["a"]) == pytest.approx(27 / 70)
  assert model.probability("zebra", ["c"]) == pytest.approx(1 / 70)
  assert model.log_likelihood(["a", "b"]) == pytest.approx(np.log(19 / 35 * 27 / 70 * 27 / 70))


def test_trigram_kneser_ney_probabilities_match_the_hand_computation():
  """The same corpus, order 3: the middle order counts continuations of the trigrams. "a c": P(a | <s> <s>)
  = 3/2 / 3 + (1/2 * 2 / 3) P2(a | <s>), P2(a | <s>) = 1/2 / 2 + 1/2 * 9/70 = 11/35 -> 127/210; P(c | <s> a) =
  1/4 + 1/2 P2(c | a), P2(c | a) = 1/4 + 1/2 * 19/70 = 27/70 -> 31/70; P(</s> | a c) = 1/2 + 1/2 P2(</s> | c),
  P2(</s> | c) = 3/2 / 2 + 1/4 * 19/70 = 229/280 -> 509/560."""
  model = blind.fit(["a b", "a c", "b c"], order=3, discount=0.5)
  assert model.probability("a", []) == pytest.approx(127 / 210)
  assert model.probability("c", ["a"]) == pytest.approx(31 / 70)
  assert model.probability(blind.EOS, ["a", "c"]) == pytest.approx(509 / 560)
  assert model.log_likelihood(blind.words("A c.")) == pytest.approx(np.log(127 / 210 * 31 / 70 * 509 / 560))
  # Every history's probabilities sum to 1 over the vocabulary (the unknown word included).
  for history in ([], ["a"], ["a", "b"], ["c", "b"], ["x", "y"]):
    assert sum(model.probability(w, history) for w in model.vocabulary) == pytest.approx(1.0)


def test_blind_accuracy_prefers_the_more_frequent_caption_and_counts_ties_as_half():
  model = blind.fit(["two shapes"] * 3 + ["one shape"])
  # P(two) > P(one) > P(three), which training never wrote: right, wrong, right; a tie is a coin flip.
  assert blind.blind_accuracy(model, ["two shapes", "one shape", "two shapes"],
                              ["one shape", "two shapes", "three shapes"]) == pytest.approx(2 / 3)
  assert blind.blind_accuracy(model, ["four shapes"], ["four shapes"]) == 0.5


def test_scenes_train_captions_are_every_captions_field_of_the_train_split(data_dir):
  """Read from the records without their images, they are the decoded examples' captions, in order."""
  from vlm_jax.data import datasets
  builder = datasets.get(ml_collections.ConfigDict(dict(name="shapes", data_dir=data_dir, builder_config="tiny")))
  source = builder.open("train")
  assert builder.train_captions() == [c for i in range(len(source)) for c in builder.decode(source[i])["captions"]]


# ----------------------------------------------------------------------------- hard negatives: likelihood

class WordTokenizer:
  """Whole words as ids from 3 (pad 0, BOS 1, EOS 2): short sequences, so the sums stay within tolerance."""
  pad_id, bos_id, eos_id = 0, 1, 2

  def __init__(self, texts):
    self.ids = {w: i + 3 for i, w in enumerate(sorted({w for t in texts for w in t.split()}))}
    self.vocab_size = len(self.ids) + 3

  def encode(self, text):
    return [self.ids[w] for w in text.split()]


def reference_log_likelihoods(model, params, images, prompt_ids, captions_ids, max_len):
  """log p(caption + EOS | image, BOS + prompt) of each (image, caption ids) from the training forward pass
  (model.apply(batch)) of one example at a time, its log-softmax in float64 and an explicit sum over the
  caption's positions."""
  forward = jax.jit(lambda batch: model.apply({"params": params}, batch)[0]["logits"][0])
  scores = []
  for image, caption_ids in zip(images, captions_ids):
    ids = [1] + prompt_ids + caption_ids + [2]
    text = np.zeros((1, max_len), np.int32)
    text[0, :len(ids)] = ids
    logits = np.asarray(forward({"image": image[None], "text": text, "caption": text,
                                 "prefix_len": np.array([1 + len(prompt_ids)], np.int32)}), np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.sum(np.exp(shifted), -1, keepdims=True))
    scores.append(sum(log_probs[p - 1, ids[p]] for p in range(1 + len(prompt_ids), len(ids))))
  return np.array(scores)


@pytest.mark.parametrize("name,prompt", [("coca", ""), ("prefix_lm", pipeline.DESCRIBE_PROMPT)])
def test_hardneg_likelihood_is_each_captions_log_likelihood_after_the_caption_prompt(name, prompt, monkeypatch):
  """The evaluator scores a caption as the model trains to caption (CoCa: after BOS; the prefix-LM: after BOS +
  "describe the image.", the caption's question in training): its log-likelihoods equal the training forward
  pass's, and hardneg_likelihood/<type> is the share of probes whose true caption is the more likely one."""
  probes = {"count": (["one shape", "two shapes", "three shapes"], ["two shapes", "one shape", "four shapes"]),
            "binding": (["a red circle and a blue square", "", "a blue circle"],
                        ["a blue circle and a red square", "", "a red circle"]),
            "left_right": (["", "a red circle left of a blue square", ""],
                           ["", "a red circle right of a blue square", ""]),
            "above_below": (["", "", ""], ["", "", ""])}  # no probe of this kind: no key
  tokenizer = WordTokenizer([prompt] + [t for pair in probes.values() for side in pair for t in side])
  config = tiny_config(name)
  config.data.max_text_len = 16
  config.eval.batch_size = 2  # a pair of texts per image: one image per call, several calls of one program
  model = models.build_model(config.model, vocab_size=tokenizer.vocab_size, max_len=16, eos_id=2, pad_id=0)
  batch = models.sample_batch(models.get(name).FEATURES, 1, IMAGE, 16)
  params = jax.jit(model.init)(jax.random.key(0), batch)["params"]
  images = np.random.default_rng(0).normal(size=(3, IMAGE, IMAGE, 3)).astype(np.float32)
  evaluator = evaluation.Evaluator(model, config, tokenizer)
  evaluator._splits["test"] = {"image": images, **{f"hardneg_{kind}_{side}": pair[j] for kind, pair in probes.items()
                                                   for j, side in enumerate(("pos", "neg"))}}
  training = ["two shapes", "two shapes", "one shape", "three shapes"]
  monkeypatch.setattr(evaluation.pipeline, "train_captions", lambda data_config: training)
  metrics = evaluator.hardneg(params, "test", {})

  image_tokens = evaluator._per_image(params, "test", "image_tokens")
  for kind, (positives, negatives) in probes.items():
    rows = [i for i in range(3) if positives[i]]
    if not rows:
      continue
    # What hardneg scores for this kind: (true, false) caption pairs of the images that have one.
    ours = evaluator._caption_log_likelihoods(params, image_tokens[rows], [[positives[i], negatives[i]] for i in rows])
    reference = reference_log_likelihoods(model, params, images[np.repeat(rows, 2)], tokenizer.encode(prompt),
                                          [tokenizer.encode(t) for i in rows for t in (positives[i], negatives[i])],
                                          16).reshape(ours.shape)
    np.testing.assert_allclose(ours, reference, atol=LOG_LIKELIHOOD_ATOL)
    assert metrics[f"hardneg_likelihood/{kind}"] == np.mean(reference[:, 0] > reference[:, 1])
    assert metrics[f"chance/hardneg_likelihood/{kind}"] == 0.5
    assert (f"hardneg/{kind}" in metrics) == (name == "coca")  # by embeddings too where the model has them
  assert not [key for key in metrics if "above_below" in key]
  # The blind scorer of the training captions, where "two" is the most frequent count and "four" never written,
  # is wrong on one shape vs two and right on two vs one and three vs four.
  assert metrics["blind/hardneg/count"] == pytest.approx(2 / 3)


def _script(name):
  import importlib.util
  import os
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_results_table_marks_the_probes_text_alone_comes_close_to(tmp_path, capsys):
  """blind >= 0.6 (binding) or within 0.05 of the score (left/right) is marked, with its footnote; a probe the
  model solves far above its blind baseline (count) is not. hardneg_likelihood/<type> reads blind/hardneg/<type>."""
  import json
  table = _script("results_table")
  probes = {"count": (0.96, 0.385), "binding": (0.95, 0.711), "left_right": (0.52, 0.51)}
  for name, scorer in (("shapes_clip", "hardneg"), ("shapes_llava", "hardneg_likelihood")):
    (tmp_path / name).mkdir()
    scores = {"step": 1, **{f"{scorer}/{p}": s for p, (s, _) in probes.items()},
              **{f"chance/{scorer}/{p}": 0.5 for p in probes},
              **{f"blind/hardneg/{p}": b for p, (_, b) in probes.items()}}
    (tmp_path / name / "eval.json").write_text(json.dumps(scores))
  table.main(str(tmp_path))
  lines = capsys.readouterr().out.splitlines()
  for scorer in ("hardneg", "hardneg_likelihood"):
    rows = {p: next(line for line in lines if line.startswith(f"| {scorer}/{p} ")) for p in probes}
    assert rows["binding"].startswith(f"| {scorer}/binding (0.500; blind 0.711) |") and "0.950†" in rows["binding"]
    assert "0.520†" in rows["left_right"] and "†" not in rows["count"]
  assert lines[-1].startswith("† text alone comes close")


def test_seeds_table_gives_mean_and_sample_standard_deviation_per_group(tmp_path, capsys):
  """Each cell is the mean ± the n-1 standard deviation (numpy's ddof=1) of the group's runs, with the values; a
  key no run of a group has is '–'; runs of one group stopped at different steps are refused, naming the group."""
  import json
  seeds = _script("seeds_table")
  values = {"a": [0.61, 0.55, 0.49], "b": [0.9]}
  for group, scores in values.items():
    for i, v in enumerate(scores):
      (tmp_path / f"{group}{i}").mkdir()
      (tmp_path / f"{group}{i}" / "eval.json").write_text(json.dumps(
          {"step": 1000, "img2txt_recall@1": v, **({"hardneg/count": 0.5 + v / 10} if group == "a" else {})}))
  groups = [f"{g}=" + ",".join(str(tmp_path / f"{g}{i}") for i in range(len(v))) for g, v in values.items()]
  seeds.main(groups)
  lines = capsys.readouterr().out.splitlines()
  assert lines[0] == "| run (seeds) | img2txt_recall@1 | hardneg/count |"
  a = np.asarray(values["a"])
  assert lines[2] == (f"| a (3) | {a.mean():.3f} ± {a.std(ddof=1):.3f} (0.610 / 0.550 / 0.490) | "
                      f"{(0.5 + a / 10).mean():.3f} ± {(0.5 + a / 10).std(ddof=1):.3f} (0.561 / 0.555 / 0.549) |")
  assert lines[3] == "| b (1) | 0.900 | – |"
  (tmp_path / "a2" / "eval.json").write_text(json.dumps({"step": 500, "img2txt_recall@1": 0.5}))
  with pytest.raises(SystemExit, match="group a stopped at different steps"):
    seeds.main(groups[:1])


def test_plot_sweep_groups_seeds_by_the_config_field_and_writes_the_figure(tmp_path, capsys):
  """Runs of a group with the same config value are one point at their mean, with the n-1 standard deviation;
  points are sorted by the value; the PNG is written; a key or config field a run lacks is refused naming the file."""
  import json
  plot = _script("plot_sweep")
  runs = {"r1": (128, 0.6), "r2": (32, 0.3), "r3": (128, 0.5), "r4": (32, 0.4), "r5": (64, 0.45)}
  for name, (batch, score) in runs.items():
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps({"batch_size": batch, "optimizer": {"lr": 1}}))
    (tmp_path / name / "eval.json").write_text(json.dumps({"img2txt_recall@1": score}))
  points = plot.sweep_points({"clip": [str(tmp_path / n) for n in runs]}, "batch_size", "img2txt_recall@1")
  [(x32, m32, sd32, n32), (x64, m64, sd64, n64), (x128, m128, sd128, n128)] = points["clip"]
  assert (x32, x64, x128) == (32, 64, 128) and (n32, n64, n128) == (2, 1, 2)
  assert m32 == pytest.approx(0.35) and sd32 == pytest.approx(np.std([0.3, 0.4], ddof=1)) and sd64 is None
  assert m128 == pytest.approx(0.55) and m64 == pytest.approx(0.45)
  out = tmp_path / "sweep.png"
  plot.main(["--field", "batch_size", "--key", "img2txt_recall@1", "--out", str(out), "--logx",
             "clip=" + ",".join(str(tmp_path / n) for n in runs)])
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert "| clip | 32 | 0.350 ± 0.071 | 2 |" in capsys.readouterr().out
  with pytest.raises(SystemExit, match="has no 'txt2img_recall@1'"):
    plot.sweep_points({"clip": [str(tmp_path / "r1")]}, "batch_size", "txt2img_recall@1")
  with pytest.raises(SystemExit, match=r"config.optimizer.learning_rate is not in .*r1.config.json"):
    plot.sweep_points({"clip": [str(tmp_path / "r1")]}, "optimizer.learning_rate", "img2txt_recall@1")
