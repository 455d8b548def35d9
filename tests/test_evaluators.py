"""Properties of the zero-shot, caption-metric and POPE evaluators, on cases small enough to check by hand."""

import numpy as np
import pytest

from vlm_jax.evaluators import caption_metrics, pope, vqa, zero_shot


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
