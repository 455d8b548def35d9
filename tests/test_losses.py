"""Losses against closed forms, and the evaluators' and decoder's small pure functions."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from vlm_jax import decoding, losses
from vlm_jax.evaluators import captioning, hardneg, retrieval, vqa

# The closed forms are compared in float64. In float32 a log-softmax over logits of size s (up to 10 here)
# carries an absolute error of a few eps32 * s ~ 1e-6, while the loss itself can be 3e-4 (n = 8, s = 10):
# a relative error of 1e-2 that no rtol can call a match. In float64 the same error is ~1e-14 absolute,
# ~1e-10 relative, so CLOSED_FORM_RTOL = 1e-9 is safe on any CPU and would catch any wrong term.
CLOSED_FORM_RTOL = 1e-9


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("n,scale", [(2, 1.0), (4, 5.0), (8, 10.0)])
def test_softmax_loss_for_orthonormal_pairs_is_the_closed_form(n, scale, x64):
  embeddings = jnp.eye(n, 16)
  loss, _ = losses.contrastive_softmax_loss(embeddings, embeddings, jnp.log(scale))
  np.testing.assert_allclose(loss, np.log1p((n - 1) * np.exp(-scale)), rtol=CLOSED_FORM_RTOL)


def test_softmax_loss_temperature_is_clamped_at_100():
  embeddings = jnp.eye(4, 8)
  clamped, metrics = losses.contrastive_softmax_loss(embeddings, embeddings, jnp.log(1000.0))
  at_100, _ = losses.contrastive_softmax_loss(embeddings, embeddings, jnp.log(100.0))
  np.testing.assert_allclose(clamped, at_100)
  np.testing.assert_allclose(metrics["temperature_scale"], 100.0)
  grad = jax.grad(lambda s: losses.contrastive_softmax_loss(embeddings, embeddings, s)[0])(jnp.log(1000.0))
  assert grad == 0.0


def test_softmax_loss_matches_a_reference_on_random_embeddings(x64):
  x = jax.random.normal(jax.random.key(0), (6, 5))
  y = jax.random.normal(jax.random.key(1), (6, 5))
  loss, _ = losses.contrastive_softmax_loss(x, y, jnp.log(3.0))
  logits = 3.0 * x @ y.T
  labels = jnp.arange(6)
  expected = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                    + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
  np.testing.assert_allclose(loss, expected, rtol=CLOSED_FORM_RTOL)


@pytest.mark.parametrize("n,scale,bias", [(3, 10.0, -10.0), (5, 2.0, 1.0)])
def test_sigmoid_loss_for_orthonormal_pairs_is_the_closed_form(n, scale, bias, x64):
  embeddings = jnp.eye(n, 8)
  loss, _ = losses.contrastive_sigmoid_loss(embeddings, embeddings, jnp.log(scale), bias)
  log_sigmoid = lambda z: -np.log1p(np.exp(-z))
  expected = -(n * log_sigmoid(scale + bias) + n * (n - 1) * log_sigmoid(-bias)) / n
  np.testing.assert_allclose(loss, expected, rtol=CLOSED_FORM_RTOL)


def test_identical_captions_count_as_positives(x64):
  tokens = jnp.array([[1, 4, 2], [1, 5, 2], [1, 4, 2]])
  positives = losses.same_text_mask(tokens)
  np.testing.assert_array_equal(positives, [[1, 0, 1], [0, 1, 0], [1, 0, 1]])
  # Scenes 0 and 2 look the same and share a caption: images [e0, e1, e0], texts [e0, e1, e0]. With copies
  # as positives, the target of row 0 is uniform over columns 0 and 2: CE = log(2 + e^-s); row 1: log(1 + 2e^-s).
  s = 10.0
  embeddings = jnp.eye(4)[jnp.array([0, 1, 0])]
  loss, metrics = losses.contrastive_softmax_loss(embeddings, embeddings, jnp.log(s), positives)
  expected = (2 * np.log(2 + np.exp(-s)) + np.log(1 + 2 * np.exp(-s))) / 3
  np.testing.assert_allclose(loss, expected, rtol=CLOSED_FORM_RTOL)
  assert metrics["contrastive_accuracy"] == 1.0  # the top text is always a positive


def test_next_token_loss_ignores_padding_and_is_log_vocab_for_uniform_logits(x64):
  v = 7
  logits = jnp.zeros((2, 4, v))
  targets = jnp.array([[3, 1, 0, 0], [2, 0, 0, 0]])
  weights = targets != 0
  loss, _ = losses.next_token_loss(logits, targets, weights)
  np.testing.assert_allclose(loss, np.log(v), rtol=CLOSED_FORM_RTOL)
  changed_padding = logits.at[0, 3].set(jax.random.normal(jax.random.key(0), (v,)))
  np.testing.assert_allclose(losses.next_token_loss(changed_padding, targets, weights)[0], loss)


def test_answer_weights_cover_only_the_tokens_after_the_prompt():
  text = jnp.array([[1, 10, 11, 20, 21, 2, 0]])  # BOS, 2 prompt tokens, answer 20 21, EOS, pad
  weights = losses.answer_weights(text, jnp.array([3]), pad_id=0)
  # targets are text[:, 1:] = 10 11 20 21 EOS pad -> loss on 20, 21, EOS
  np.testing.assert_array_equal(weights, [[0, 0, 1, 1, 1, 0]])


def test_greedy_decode_fills_from_each_rows_start_and_stops_at_eos():
  eos, vocab = 2, 10

  def logits_fn(tokens):  # next token = current token + 1, and EOS after token 6
    nxt = jnp.where(tokens == 6, eos, tokens + 1)
    return jax.nn.one_hot(nxt, vocab) * 10

  tokens = jnp.array([[1, 3, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]])
  out = np.asarray(decoding.greedy_decode(logits_fn, tokens, jnp.array([2, 1]), num_steps=6, eos_id=eos))
  np.testing.assert_array_equal(out[0], [1, 3, 4, 5, 6, 2, 0])
  np.testing.assert_array_equal(out[1], [1, 2, 0, 0, 0, 0, 0])  # BOS+1 = 2 = EOS: stops at once
  assert decoding.generated_ids(out[0], 2, eos) == [4, 5, 6]


def test_retrieval_counts_identical_captions_as_hits_and_reports_chance():
  captions = ["a", "b", "a", "c"]
  image = np.eye(4)
  text = np.eye(4)[[2, 1, 0, 3]]  # image 0 is closest to text 2, which has the same caption "a"
  metrics = retrieval.retrieval_metrics(image, text, captions, ks=(1,))
  assert metrics["img2txt_recall@1"] == 1.0
  # chance: 2 of 4 texts are relevant for images 0 and 2, 1 of 4 for the others
  np.testing.assert_allclose(metrics["chance/img2txt_recall@1"], (0.5 + 0.25 + 0.5 + 0.25) / 4)


def test_chance_recall_matches_a_simulation():
  rng = np.random.default_rng(0)
  relevant = np.zeros((5, 6), bool)
  relevant[np.arange(5), np.arange(5)] = True
  relevant[0, 5] = True
  hits = [retrieval.recall_at_k(rng.normal(size=(5, 6)), relevant, 2) for _ in range(4000)]
  np.testing.assert_allclose(np.mean(hits), retrieval.chance_recall_at_k(relevant, 2), atol=0.01)


def test_hardneg_caption_and_vqa_scores():
  image = np.eye(3)
  assert hardneg.hardneg_accuracy(image, np.eye(3), np.eye(3)[[1, 2, 0]]) == 1.0
  scores = captioning.caption_scores([[5, 6], [5, 7]], [[5, 6], [5, 6]], eos_id=2)
  assert scores["caption_exact_match"] == 0.5
  np.testing.assert_allclose(scores["caption_token_accuracy"], 5 / 6)
  v = vqa.vqa_scores(["two", "red", "yes"], ["two", "blue", "yes"], ["count", "color", "exists"])
  np.testing.assert_allclose(v["vqa_accuracy"], 2 / 3)
  assert v["vqa/color"] == 0.0 and v["chance/vqa/count"] == 1.0


def test_chunked_sigmoid_loss_equals_the_dense_loss_in_value_and_gradient(x64):
  """Same math, sums in another order: compared in float64 (64 terms: ~64 * eps64 of the terms' scale)."""
  keys = jax.random.split(jax.random.key(0), 3)
  normalize = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  images = normalize(jax.random.normal(keys[0], (8, 6)))
  texts = normalize(jax.random.normal(keys[1], (8, 6)))
  tokens = jax.random.randint(keys[2], (8, 4), 3, 6).at[5].set(jnp.array([3, 4, 5, 3])).at[2].set(
      jnp.array([3, 4, 5, 3]))  # rows 2 and 5 share a caption: positives off the diagonal too
  args = (images, texts, jnp.log(10.0), -3.0)
  for shared in (False, True):
    dense = lambda i, t, s, b: losses.contrastive_sigmoid_loss(i, t, s, b, losses.same_text_mask(tokens),
                                                               shared_positives=shared)[0]
    for chunks in (1, 2, 4, 8):
      chunked = lambda i, t, s, b: losses.contrastive_sigmoid_loss_chunked(i, t, s, b, tokens, chunks, shared)[0]
      np.testing.assert_allclose(chunked(*args), dense(*args), rtol=1e-12)
      for got, want in zip(jax.grad(chunked, argnums=(0, 1, 2, 3))(*args),
                           jax.grad(dense, argnums=(0, 1, 2, 3))(*args)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _orthogonal_negatives(n, valid):
  """Images = texts = e_0..e_{n-1}; negative i = e_{n+i}: orthogonal to every image (logit 0, or the bias)."""
  embeddings = jnp.eye(2 * n)
  valid = jnp.asarray(valid)
  return embeddings[:n], losses.HardNegatives(embeddings[n:], valid, jnp.zeros((n, n), bool))


@pytest.mark.parametrize("valid", [[True, True, True, True], [True, False, True, False]])
def test_hard_negatives_add_image_to_text_columns_in_the_softmax_loss(valid, x64):
  n, s = 4, 5.0
  embeddings, negatives = _orthogonal_negatives(n, valid)
  loss, metrics = losses.contrastive_softmax_loss(embeddings, embeddings, jnp.log(s), negatives=negatives)
  k = sum(valid)  # the valid negative columns every image sees; text->image has no negatives
  expected = 0.5 * (np.log1p((n - 1 + k) * np.exp(-s)) + np.log1p((n - 1) * np.exp(-s)))
  np.testing.assert_allclose(loss, expected, rtol=CLOSED_FORM_RTOL)
  assert metrics["hard_negative_accuracy"] == 1.0


@pytest.mark.parametrize("valid", [[True, True, True], [False, True, False]])
def test_hard_negatives_add_negative_pairs_to_the_sigmoid_loss(valid, x64):
  n, s, b = 3, 10.0, -4.0
  embeddings, negatives = _orthogonal_negatives(n, valid)
  loss, _ = losses.contrastive_sigmoid_loss(embeddings, embeddings, jnp.log(s), b, negatives=negatives)
  log_sigmoid = lambda z: -np.log1p(np.exp(-z))
  k = sum(valid)
  expected = -(n * log_sigmoid(s + b) + n * (n - 1) * log_sigmoid(-b) + n * k * log_sigmoid(-b)) / n
  np.testing.assert_allclose(loss, expected, rtol=CLOSED_FORM_RTOL)


def test_a_negative_that_is_another_images_caption_is_that_images_positive(x64):
  # Row 0's negative has row 1's tokens: for image 1 that column is a copy of its own text, a positive (target
  # split over its two copies), as contrastive_term builds it; for image 0 it is a negative.
  text = jnp.array([[1, 4, 2], [1, 5, 2]])
  text_negative = jnp.array([[1, 5, 2], [1, 6, 2]])
  batch = {"text": text, "text_negative": text_negative, "text_negative_valid": jnp.array([1, 1])}
  e = jnp.eye(3)
  outputs = {"image_embedding": e[:2], "text_embedding": e[:2], "text_negative_embedding": e[jnp.array([1, 2])],
             "logit_scale": jnp.log(3.0)}
  config = ml_collections.ConfigDict({"contrastive": "softmax", "sigmoid_chunks": 0})
  loss, _ = losses.contrastive_term(config, outputs, batch, pad_id=0)
  s = 3.0
  # Row 0: columns (text0, text1, neg0=e1, neg1=e2) logits (s, 0, 0, 0), target text0: log(e^s + 3) - s.
  # Row 1: logits (0, s, s, 0), target half on text1 and half on neg0: log(2e^s + 2) - s.
  image_to_text = (np.log(np.exp(s) + 3) - s + np.log(2 * np.exp(s) + 2) - s) / 2
  text_to_image = np.log(np.exp(s) + 1) - s
  np.testing.assert_allclose(loss, 0.5 * (image_to_text + text_to_image), rtol=CLOSED_FORM_RTOL)


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_label_smoothing_is_the_cross_entropy_against_the_smoothed_targets(eps, x64):
  # One class at logit L, the other K - 1 at 0: the label's target is 1 - eps + eps / K, every other eps / K.
  k, big = 10, 3.0
  logits = jnp.zeros((2, k)).at[0, 3].set(big).at[1, 5].set(big)
  config = {"label_smoothing": eps}
  loss, _ = losses.classification_term(config, {"class_logits": logits}, {"label": jnp.array([3, 7])}, pad_id=0)
  lse = np.log(np.exp(big) + k - 1)
  on_label = 1 - eps + eps / k
  row_hit = -(on_label * (big - lse) + (1 - on_label) * (0 - lse))  # the label holds the big logit
  row_miss = -(on_label * (0 - lse) + (eps / k) * (big - lse) + (1 - on_label - eps / k) * (0 - lse))
  np.testing.assert_allclose(loss, (row_hit + row_miss) / 2, rtol=CLOSED_FORM_RTOL)


def test_shared_positives_weigh_each_images_positives_as_one(x64):
  # Images [e0, e1, e0] with texts [e0, e1, e0] (texts 0 and 2 identical): image 0 has k = 2 positives, each
  # weighing 1/2; image 1 one positive. Every logit is s * cos + b with cos 1 (positives) or 0.
  tokens = jnp.array([[1, 4, 2], [1, 5, 2], [1, 4, 2]])
  e = jnp.eye(4)[jnp.array([0, 1, 0])]
  s, b = 5.0, -2.0
  log_sigmoid = lambda z: -np.log1p(np.exp(-z))
  loss, _ = losses.contrastive_sigmoid_loss(e, e, jnp.log(s), b, losses.same_text_mask(tokens),
                                            shared_positives=True)
  # Rows 0 and 2: two positives at weight 1/2, one negative (cos 0); row 1: one positive, two negatives.
  expected = -(2 * (log_sigmoid(s + b) + log_sigmoid(-b)) + (log_sigmoid(s + b) + 2 * log_sigmoid(-b))) / 3
  np.testing.assert_allclose(loss, expected, rtol=CLOSED_FORM_RTOL)
  each, _ = losses.contrastive_sigmoid_loss(e, e, jnp.log(s), b, losses.same_text_mask(tokens))
  expected_each = -(2 * (2 * log_sigmoid(s + b) + log_sigmoid(-b)) + (log_sigmoid(s + b) + 2 * log_sigmoid(-b))) / 3
  np.testing.assert_allclose(each, expected_each, rtol=CLOSED_FORM_RTOL)


def _reference_losses(logits, bias, positives, dropped):
  """numpy, one pair at a time: the softmax loss over the kept columns / rows (uniform target on the positives) and
  the sigmoid loss summed over the kept pairs ("each"), where kept = not dropped or positive."""
  n = logits.shape[0]
  kept = ~dropped | positives
  # cross-entropy against the uniform target on `pos`: -sum_j t_j log softmax_j, the softmax over the kept entries
  cross = lambda row, keep, pos: -sum((row[j] - np.log(sum(np.exp(row[k]) for k in range(n) if keep[k]))) / pos.sum()
                                      for j in range(n) if pos[j])
  softmax = 0.5 * (np.mean([cross(logits[i], kept[i], positives[i]) for i in range(n)]) +
                   np.mean([cross(logits[:, j], kept[:, j], positives[:, j]) for j in range(n)]))
  sigmoid = -sum(np.log(1 / (1 + np.exp(-(1 if positives[i, j] else -1) * (logits[i, j] + bias))))
                 for i in range(n) for j in range(n) if kept[i, j]) / n
  return softmax, sigmoid


def test_true_count_pairs_are_left_out_of_both_losses_as_a_pairwise_reference_finds(x64):
  """config.data.ignore_true_counts: pairs (image i, text j) where j states i's count but is not i's text are in
  neither loss; every other pair as before (checked against a pair-by-pair numpy reference)."""
  rng = np.random.default_rng(0)
  n, s, b = 6, 4.0, -2.0
  image, text = (l2 / np.linalg.norm(l2, axis=1, keepdims=True) for l2 in rng.normal(size=(2, n, 5)))
  object_count = jnp.array([2, 2, 3, 1, 2, 3])
  text_count = jnp.array([2, 0, 0, 0, 0, 3])  # texts 0 and 5 are count captions ("two shapes", "three shapes")
  tokens = jnp.array([[1, 7, 2], [1, 8, 2], [1, 9, 2], [1, 10, 2], [1, 11, 2], [1, 12, 2]])
  dropped = np.asarray(losses.true_pairs(object_count, text_count))
  assert dropped.sum() == 5 and dropped[1, 0] and dropped[4, 0] and dropped[2, 5] and not dropped[3].any()
  positives = np.asarray(losses.same_text_mask(tokens))
  logits = s * image @ text.T
  want_softmax, want_sigmoid = _reference_losses(logits, b, positives, dropped)
  batch = {"text": tokens, "object_count": object_count, "text_count": text_count}
  outputs = {"image_embedding": jnp.asarray(image), "text_embedding": jnp.asarray(text), "logit_scale": jnp.log(s),
             "logit_bias": jnp.asarray(b)}
  for contrastive, want in (("softmax", want_softmax), ("sigmoid", want_sigmoid)):
    config = ml_collections.ConfigDict({"contrastive": contrastive, "sigmoid_chunks": 0, "sigmoid_positives": "each"})
    got, _ = losses.contrastive_term(config, outputs, batch, pad_id=0)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    without = losses.contrastive_term(config, outputs, {"text": tokens}, pad_id=0)[0]
    np.testing.assert_allclose(without, _reference_losses(logits, b, positives, np.zeros_like(dropped))[
        contrastive == "sigmoid"], rtol=1e-12)
    assert not np.isclose(got, without)


def test_ignored_hard_negative_pairs_leave_both_losses_as_the_closed_form_without_them(x64):
  """HardNegatives.ignored (ignore_true_counts: a word-swapped count that is true of another image): those (row,
  negative) pairs drop out of the softmax's image->text rows and out of the sigmoid sum; the rest as before."""
  n, s, b = 4, 5.0, -3.0
  embeddings, negatives = _orthogonal_negatives(n, [True, True, False, True])
  ignored = jnp.zeros((n, n), bool).at[0, 1].set(True).at[2, 3].set(True).at[1, 2].set(True)  # [1, 2]: not valid
  negatives = losses.HardNegatives(negatives.embedding, negatives.valid, negatives.positives, ignored)
  kept = np.array([3 - 1, 3, 3 - 1, 3])  # valid negative columns each row sees, less its ignored valid ones
  softmax, _ = losses.contrastive_softmax_loss(embeddings, embeddings, jnp.log(s), negatives=negatives)
  expected = 0.5 * (np.mean(np.log1p((n - 1 + kept) * np.exp(-s))) + np.log1p((n - 1) * np.exp(-s)))
  np.testing.assert_allclose(softmax, expected, rtol=CLOSED_FORM_RTOL)
  sigmoid, _ = losses.contrastive_sigmoid_loss(embeddings, embeddings, jnp.log(s), b, negatives=negatives)
  log_sigmoid = lambda z: -np.log1p(np.exp(-z))
  expected = -(n * log_sigmoid(s + b) + n * (n - 1) * log_sigmoid(-b) + kept.sum() * log_sigmoid(-b)) / n
  np.testing.assert_allclose(sigmoid, expected, rtol=CLOSED_FORM_RTOL)
