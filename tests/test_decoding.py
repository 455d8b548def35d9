"""Properties of cached decoding: it writes exactly the tokens of the uncached reference, and every
decoding method reduces to greedy where it should."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import decoding
from vlm_jax.models.coca import CoCa, MultimodalDecoder
from vlm_jax.models.prefix_lm import PrefixLM
from vlm_jax.models.projector import Projector
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT
from tolerances import LOG_LIKELIHOOD_ATOL  # tests/ is on sys.path under pytest

VOCAB, PAD, BOS, EOS, LENGTH = 16, 0, 1, 2, 12
START = np.array([1, 4, 2, 6], np.int32)  # several prompt lengths in one batch


def _text(**kwargs):
  return TextTransformer(vocab_size=VOCAB, width=16, depth=1, num_heads=2, mlp_dim=32, max_len=LENGTH, **kwargs)


def _vit():
  return ViT(patch_size=4, width=16, depth=1, num_heads=2, mlp_dim=32)


def _make(name):
  """(model, unboxed random params) of a tiny CoCa or PrefixLM."""
  if name == "coca":
    model = CoCa(vision=_vit(), unimodal=_text(append_cls=True),
                 multimodal=MultimodalDecoder(VOCAB, depth=1, num_heads=2, mlp_dim=32), embed_dim=8)
    batch = {"image": jnp.zeros((1, 8, 8, 3)), "text": jnp.ones((1, LENGTH), jnp.int32),
             "caption": jnp.ones((1, LENGTH), jnp.int32)}
  else:
    model = PrefixLM(vision=_vit(), projector=Projector(16), decoder=_text(compute_logits=True))
    batch = {"image": jnp.zeros((1, 8, 8, 3)), "text": jnp.ones((1, LENGTH), jnp.int32),
             "prefix_len": jnp.ones((1,), jnp.int32)}
  # Random values into the init's shapes: tracing init is cheap, compiling it is not (~10 s on 2 cores).
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), batch)["params"])
  rng = np.random.default_rng(0)
  def fill(path, leaf):
    noise = rng.normal(0.0, 0.3, leaf.shape).astype(np.float32)
    return noise + 1.0 if path[-1].key == "scale" else noise  # LayerNorm scales near 1
  return model, jax.tree_util.tree_map_with_path(fill, shapes)


@functools.cache
def _setup(name):
  model, params = _make(name)
  images = jax.random.normal(jax.random.key(1), (len(START), 8, 8, 3))
  prompts = np.array(jax.random.randint(jax.random.key(2), (len(START), LENGTH), 3, VOCAB), np.int32)
  prompts[:, 0] = BOS
  prompts[np.arange(LENGTH)[None] >= START[:, None]] = PAD
  return model, params, images, jnp.asarray(prompts)


@functools.cache
def _logits_fn(name):
  """The flax model's logits for the whole buffer, jitted: fn(tokens int[B, L]) -> float[B, L, V]."""
  model, params, images, _ = _setup(name)
  apply = functools.partial(model.apply, {"params": params})
  image_tokens = apply(images, method="image_tokens")
  if isinstance(model, CoCa):
    return jax.jit(lambda t: apply(image_tokens, t, method="caption_logits"))
  return jax.jit(lambda t: apply(image_tokens, t, jnp.asarray(START), method="caption_logits"))


@functools.cache
def _uncached_fn(name, steps):
  tokens, logits_fn = _setup(name)[3], _logits_fn(name)  # outside the trace: _logits_fn is memoised
  return jax.jit(lambda eos: decoding.greedy_decode(logits_fn, tokens, jnp.asarray(START), steps, eos, PAD))


def _uncached(name, steps, eos_id):
  """The reference: the flax model recomputes the whole buffer at every step."""
  return np.asarray(_uncached_fn(name, steps)(eos_id))


@functools.cache
def _compiled(name, config: decoding.DecodeConfig):
  """jit of the cached decoder: fn(params, eos_id) -> (tokens, scores); EOS traced, so one compile serves all."""
  model, _, images, tokens = _setup(name)
  return jax.jit(lambda params, eos: decoding.generate(model, params, images, tokens, jnp.asarray(START),
                                                       config=config, eos_id=eos, pad_id=PAD,
                                                       rng=jax.random.key(3)))


def _generate(name, steps=LENGTH, eos_id=EOS, params=None, **config):
  """(tokens, scores) of the cached decoder for _setup(name)'s batch."""
  fn = _compiled(name, decoding.DecodeConfig(max_steps=steps, **config))
  out, scores = fn(_setup(name)[1] if params is None else params, eos_id)
  return np.asarray(out), np.asarray(scores)


@pytest.mark.parametrize("name,steps", [("coca", LENGTH), ("prefix_lm", LENGTH), ("prefix_lm", 3)])
def test_cached_greedy_writes_the_tokens_of_uncached_recomputation(name, steps):
  tokens = _setup(name)[3]
  # EOS disabled (-1 is never emitted): every row runs to the step limit or the end of its buffer, so
  # every position is compared.
  expected = _uncached(name, steps, eos_id=-1)
  got, _ = _generate(name, steps=steps, eos_id=-1)
  np.testing.assert_array_equal(got, expected)
  written = (np.arange(LENGTH)[None] >= START[:, None]) & (np.arange(LENGTH)[None] < START[:, None] + steps)
  assert np.any(got[written] != PAD)  # the generated region was really written
  np.testing.assert_array_equal(got[~written], np.asarray(tokens)[~written])  # prompts untouched


def test_cached_greedy_stops_each_row_at_its_own_eos_like_the_reference():
  """Take as EOS an id the random CoCa emits mid-way in row 1: that row stops there, and every row's
  output still equals the reference's."""
  free_run, _ = _generate("coca", eos_id=-1)
  eos = next(int(t) for t in free_run[1, START[1] + 1:] if t not in (PAD, BOS))
  expected = _uncached("coca", LENGTH, eos_id=eos)
  got, _ = _generate("coca", eos_id=eos)
  np.testing.assert_array_equal(got, expected)
  row = got[1, START[1]:].tolist()
  assert eos in row and set(row[row.index(eos) + 1:]) <= {PAD}
  assert not np.array_equal(got, free_run)  # the EOS really cut something


@pytest.mark.parametrize("name", ["coca", "prefix_lm"])
def test_greedy_score_is_the_reference_log_likelihood_of_its_tokens(name):
  got, scores = _generate(name, eos_id=-1)
  logp = np.asarray(jax.nn.log_softmax(_logits_fn(name)(jnp.asarray(got)), axis=-1))
  expected = [sum(logp[b, t - 1, got[b, t]] for t in range(s, LENGTH)) for b, s in enumerate(START)]
  np.testing.assert_allclose(scores, expected, rtol=0, atol=LOG_LIKELIHOOD_ATOL)


@pytest.mark.parametrize("name", ["prefix_lm"])
def test_beam_search_with_one_beam_is_greedy(name):
  greedy, _ = _generate(name, eos_id=-1)
  beam, _ = _generate(name, eos_id=-1, method="beam", num_beams=1, length_penalty=0.7)
  np.testing.assert_array_equal(beam, greedy)


def test_top_k_one_sampling_is_greedy_at_any_temperature():
  greedy, _ = _generate("prefix_lm", eos_id=-1)
  sampled, _ = _generate("prefix_lm", eos_id=-1, method="sample", top_k=1, temperature=5.0)
  np.testing.assert_array_equal(sampled, greedy)


def test_tiny_nucleus_sampling_is_greedy_and_full_sampling_is_not():
  greedy, _ = _generate("coca", eos_id=-1)
  nucleus, _ = _generate("coca", eos_id=-1, method="sample", top_p=1e-6)
  np.testing.assert_array_equal(nucleus, greedy)
  # A random-init model is close to uniform: unfiltered samples almost surely differ somewhere.
  sampled, _ = _generate("coca", eos_id=-1, method="sample", temperature=1.0)
  assert np.any(sampled != greedy)


def test_beam_search_score_is_the_log_likelihood_of_the_returned_hypothesis():
  got, scores = _generate("prefix_lm", eos_id=-1, method="beam", num_beams=3, length_penalty=0.0)
  logp = np.asarray(jax.nn.log_softmax(_logits_fn("prefix_lm")(jnp.asarray(got)), axis=-1))
  expected = [sum(logp[b, t - 1, got[b, t]] for t in range(s, LENGTH)) for b, s in enumerate(START)]
  np.testing.assert_allclose(scores, expected, rtol=0, atol=LOG_LIKELIHOOD_ATOL)


def test_beam_search_with_a_beam_per_token_is_exhaustive_over_two_steps():
  """With K = V beams nothing is pruned after the first token, so the best 2-token continuation found is
  the true best, computed here by scoring all V * V continuations with the uncached model."""
  model, params, images, tokens = _setup("coca")
  got, scores = _generate("coca", steps=2, eos_id=-1, method="beam", num_beams=VOCAB, length_penalty=0.0)
  b, rows = len(START), np.arange(len(START))
  apply = functools.partial(model.apply, {"params": params})
  image_tokens = np.repeat(np.asarray(apply(images, method="image_tokens")), VOCAB, axis=0)
  first = np.asarray(tokens).repeat(VOCAB, axis=0)  # row b * V + v has token v at START[b]
  first[np.arange(b * VOCAB), START.repeat(VOCAB)] = np.tile(np.arange(VOCAB), b)
  logits = jax.jit(lambda x, t: apply(x, t, method="caption_logits"))(image_tokens, jnp.asarray(first))
  logp = np.asarray(jax.nn.log_softmax(logits, -1))
  logp = logp.reshape(b, VOCAB, LENGTH, VOCAB)
  first_logp = logp[rows, 0, START - 1]  # [B, V]: the prompt's next-token distribution
  second_logp = logp[rows[:, None], np.arange(VOCAB)[None], START[:, None]]  # [B, V, V]
  total = first_logp[:, :, None] + second_logp
  best = total.reshape(b, -1).max(-1)
  np.testing.assert_allclose(scores, best, rtol=0, atol=LOG_LIKELIHOOD_ATOL)
  v1, v2 = np.unravel_index(total.reshape(b, -1).argmax(-1), (VOCAB, VOCAB))
  np.testing.assert_array_equal(got[rows, START], v1)
  np.testing.assert_array_equal(got[rows, START + 1], v2)


@pytest.mark.parametrize("config", [dict(method="sample"), dict(method="beam", num_beams=VOCAB, steps=2)])
def test_eos_stops_a_row_and_leaves_padding_after_it(config):
  """A model biased to say EOS next emits it right after the prompt, and nothing after it."""
  params = _setup("coca")[1]
  logits = {**params["multimodal"]["logits"], "bias": jnp.asarray(params["multimodal"]["logits"]["bias"]).at[EOS].set(100.0)}
  got, _ = _generate("coca", params={**params, "multimodal": {**params["multimodal"], "logits": logits}}, **config)
  expected = np.asarray(_setup("coca")[3]).copy()
  expected[np.arange(len(START)), START] = EOS
  np.testing.assert_array_equal(got, expected)
  assert [decoding.generated_ids(row, s, EOS, PAD) for row, s in zip(got, START)] == [[]] * len(START)


def test_nucleus_mask_keeps_the_smallest_most_likely_set_reaching_top_p():
  """Against the definition in float64 (sort, cumulative sum): for top_p halfway between two cumulative
  sums, so float32 rounding of the sums cannot move the edge; rows with ties (rounded logits) included."""
  rng = np.random.default_rng(0)
  logits = rng.normal(0.0, 2.0, (6, 300)).astype(np.float32)
  logits[3:] = np.round(logits[3:])  # ties across the edge
  mask_fn = jax.jit(decoding.nucleus_mask)  # top_p float[B, 1] traced: one row's top_p each, one compile
  for top_p_rank in (0, 5, 120):
    expected, top_p = [], []
    for row in logits.astype(np.float64):
      probs = np.exp(row - row.max()) / np.exp(row - row.max()).sum()
      order = np.argsort(-row, kind="stable")
      cumulative = np.cumsum(probs[order])
      p = (cumulative[top_p_rank - 1] + cumulative[top_p_rank]) / 2 if top_p_rank else cumulative[0] / 2
      count = int(np.searchsorted(cumulative, p)) + 1  # the fewest tokens whose mass reaches p
      expected.append(row >= row[order[count - 1]])  # and every token tied with the last of them
      top_p.append(p)
    got = mask_fn(jnp.asarray(logits), jnp.asarray(top_p, jnp.float32)[:, None])
    np.testing.assert_array_equal(np.asarray(got), np.array(expected))


def test_sample_draws_each_token_at_its_probability_and_never_an_impossible_one():
  """40000 draws from one distribution with zeros among its tokens: each frequency within 0.012 of its
  probability (over 5 standard deviations, sqrt(0.25 / 40000) = 0.0025); the zeros never drawn."""
  probs = np.array([0.5, 0.0, 0.25, 0.15, 0.1, 0.0])
  logits = jnp.log(jnp.asarray(np.tile(probs, (40000, 1)), jnp.float32))
  drawn = np.asarray(jax.jit(decoding.sample)(jax.random.key(0), logits))
  frequencies = np.bincount(drawn, minlength=len(probs)) / len(drawn)
  np.testing.assert_allclose(frequencies, probs, atol=0.012)
  assert frequencies[1] == frequencies[5] == 0.0


def test_argmax_is_the_first_index_of_the_maximum():
  x = jnp.array([[1.0, 3.0, 3.0, -jnp.inf], [-jnp.inf, -jnp.inf, 0.0, 0.0], [2.0, 1.0, 0.0, 2.0]])
  assert decoding.argmax(x).tolist() == jnp.argmax(x, axis=-1).tolist() == [1, 2, 0]


@pytest.mark.parametrize("name", ["coca", "prefix_lm"])
def test_prefill_of_the_prompts_only_writes_the_tokens_of_the_whole_buffer_prefill(name):
  """prompt_len: the prefill encodes tokens[:, :max(START)] and the cache is extended for the rest."""
  model, params, images, tokens = _setup(name)
  config = decoding.DecodeConfig(max_steps=LENGTH)
  short = jax.jit(lambda p: decoding.generate(model, p, images, tokens, jnp.asarray(START), config=config, eos_id=-1,
                                              pad_id=PAD, prompt_len=int(START.max())))
  np.testing.assert_array_equal(np.asarray(short(params)[0]), _generate(name, eos_id=-1)[0])


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.2, 0.1]]))
  assert np.isfinite(decoding.filter_logits(logits, top_k=2)).sum() == 3  # a tie at the 2nd value stays
  assert np.isfinite(decoding.filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
  assert np.isfinite(decoding.filter_logits(logits, top_p=0.6)).sum() == 3  # 0.5 < 0.6: the tie joins
  np.testing.assert_allclose(decoding.filter_logits(logits, temperature=2.0), logits / 2.0, rtol=1e-6)
