"""Properties of the model building blocks: shapes, position embeddings, masking, cross-attention."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax.models import layers
from vlm_jax.models.coca import CoCa, MultimodalDecoder
from vlm_jax.models.prefix_lm import PrefixLM
from vlm_jax.models.projector import Projector
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.two_tower import TwoTower
from vlm_jax.models.vit import ViT, patchify, posemb_sincos_2d
from tolerances import INVARIANCE_ATOL, SAME_MATH_ATOL  # tests/ is on sys.path under pytest

VOCAB, EOS, PAD = 50, 2, 0


def small_vit(**kwargs):
  defaults = dict(patch_size=4, width=16, depth=2, num_heads=2, mlp_dim=32)
  return ViT(**{**defaults, **kwargs})


def small_text(**kwargs):
  defaults = dict(vocab_size=VOCAB, width=16, depth=2, num_heads=2, mlp_dim=32, max_len=10)
  return TextTransformer(**{**defaults, **kwargs})


def random_images(seed, n=2, size=16):
  return jax.random.normal(jax.random.key(seed), (n, size, size, 3))


def test_posemb_sincos_2d_values_at_known_positions():
  dim, h, w = 8, 3, 4
  table = posemb_sincos_2d(h, w, dim)
  assert table.shape == (h * w, dim)
  omega = np.array([1.0, 1.0 / 10_000])  # i / (dim/4 - 1) for i = 0, 1
  y, x = 1, 2
  expected = np.concatenate([np.sin(x * omega), np.cos(x * omega), np.sin(y * omega), np.cos(y * omega)])
  np.testing.assert_allclose(table[y * w + x], expected, rtol=1e-6)
  np.testing.assert_allclose(table[0], [0, 0, 1, 1, 0, 0, 1, 1], atol=1e-7)


def test_patchify_puts_each_square_patch_in_row_major_order():
  images = np.arange(2 * 8 * 12 * 3, dtype=np.float32).reshape(2, 8, 12, 3)
  patches = np.asarray(patchify(jnp.asarray(images), 4))
  assert patches.shape == (2, 2 * 3, 4 * 4 * 3)
  np.testing.assert_array_equal(patches[1, 1 * 3 + 2], images[1, 4:8, 8:12].reshape(-1))


@pytest.mark.parametrize("pool,cls_token,expected", [
    ("gap", False, (2, 16)), ("cls", True, (2, 16)), ("map", False, (2, 16)),
    ("none", False, (2, 16, 16)), ("none", True, (2, 17, 16))])
def test_vit_output_shapes_for_each_pooling(pool, cls_token, expected):
  model = small_vit(pool=pool, cls_token=cls_token)
  images = random_images(0)
  (output, out), _ = model.init_with_output(jax.random.key(1), images)
  chex.assert_shape(output, expected)
  chex.assert_shape(out["encoded"], (2, 16 + cls_token, 16))
  assert "block_01" in out and "pre_logits" in out


@pytest.mark.parametrize("posemb", ["sincos2d", "learned"])
def test_vit_positions_make_the_encoding_depend_on_where_a_patch_is(posemb):
  model = small_vit(pool="none", posemb=posemb)
  images = np.zeros((1, 16, 16, 3), np.float32)
  params = model.init(jax.random.key(0), images)
  tokens, _ = model.apply(params, images)
  # Every patch is the same black square, so only the position embedding can tell them apart.
  assert float(jnp.max(jnp.abs(tokens[0, 0] - tokens[0, 5]))) > 1e-3


@pytest.mark.parametrize("stem", ["patch", "conv"])
def test_a_pixel_on_a_patch_border_reaches_one_token_by_patches_and_its_neighbours_by_the_conv_stem(stem):
  model = small_vit(patch_size=7, stem=stem, pool="none", depth=1)
  images = np.zeros((1, 28, 28, 3), np.float32)
  params = model.init(jax.random.key(0), images)
  stem_tokens = lambda x: model.apply(params, x)[1]["stem"]
  chex.assert_shape(stem_tokens(images), (1, 16, 16))  # the 4 x 4 patch grid either way
  changed = np.abs(stem_tokens(images.copy() + np.pad(np.ones((1, 1, 1, 3)), ((0, 0), (6, 21), (6, 21), (0, 0))))
                   - stem_tokens(images))
  touched = sorted(np.flatnonzero(changed[0].max(axis=-1) > 0).tolist())
  # Pixel (6, 6) is the last of patch (0, 0); the convolutions' windows overlap into patches (0, 1), (1, 0), (1, 1).
  assert touched == ([0] if stem == "patch" else [0, 1, 4, 5])


def test_vit_compute_dtype_bfloat16_keeps_float32_params():
  model = small_vit(dtype=jnp.bfloat16)
  (output, _), variables = model.init_with_output(jax.random.key(0), random_images(0))
  assert output.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.meta.unbox(variables)))


def test_every_parameter_has_logical_axis_names():
  model = CoCa(vision=small_vit(pool="map"), unimodal=small_text(append_cls=True),
               multimodal=MultimodalDecoder(VOCAB, depth=1, num_heads=2, mlp_dim=32), embed_dim=8)
  batch = {"image": random_images(0), "text": jnp.ones((2, 6), jnp.int32), "caption": jnp.ones((2, 6), jnp.int32)}
  params = jax.eval_shape(model.init, jax.random.key(0), batch)["params"]  # shapes and names, no compute
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)


def test_causal_text_changing_a_future_token_never_changes_earlier_logits():
  model = small_text(compute_logits=True)
  tokens = jnp.array([[1, 5, 6, 7, 8, 9, 2, 0]])
  params = model.init(jax.random.key(0), tokens)
  logits, _ = model.apply(params, tokens)
  changed, _ = model.apply(params, tokens.at[0, 4].set(30))
  np.testing.assert_allclose(logits[0, :4], changed[0, :4], atol=INVARIANCE_ATOL)
  assert float(jnp.max(jnp.abs(logits[0, 4:] - changed[0, 4:]))) > 1e-4


def test_eos_pooling_ignores_what_follows_eos():
  model = small_text(pool_eos_id=EOS)
  tokens = jnp.array([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0]])
  params = model.init(jax.random.key(0), tokens)
  _, out = model.apply(params, tokens)
  _, out_changed = model.apply(params, tokens.at[:, 4].set(9))
  chex.assert_shape(out["pooled"], (2, 16))
  np.testing.assert_allclose(out["pooled"], out_changed["pooled"], atol=INVARIANCE_ATOL)
  np.testing.assert_allclose(out["pooled"][1], out["hidden"][1, 2], atol=INVARIANCE_ATOL)


def test_cls_token_appended_at_the_end_sees_the_whole_text_but_not_padding():
  model = small_text(append_cls=True)
  tokens = jnp.array([[1, 5, 6, 7, 2, 0, 0]])
  params = model.init(jax.random.key(0), tokens)
  _, out = model.apply(params, tokens)
  _, out_last_word = model.apply(params, tokens.at[0, 3].set(8))
  assert float(jnp.max(jnp.abs(out["pooled"] - out_last_word["pooled"]))) > 1e-4
  # Padding is masked out of the CLS row: a different pad id in a padded slot changes nothing there.
  padded = jnp.array([[1, 5, 6, 7, 2, 0, 0]])
  _, out_pad = model.apply(params, padded.at[0, 6].set(0))
  np.testing.assert_allclose(out["pooled"], out_pad["pooled"], atol=INVARIANCE_ATOL)


def test_prefix_lm_mask_is_full_over_the_prefix_and_causal_after():
  mask = np.asarray(layers.prefix_lm_mask(jnp.array([2, 4]), 5))[:, 0]
  for b, prefix in enumerate([2, 4]):
    for i in range(5):
      for j in range(5):
        assert mask[b, i, j] == (j <= i or j < prefix)


def make_prefix_lm():
  return PrefixLM(vision=small_vit(pool="none"), projector=Projector(16, "mlp"),
                  decoder=small_text(compute_logits=True, max_len=12))


def test_prefix_lm_prompt_is_bidirectional_and_answer_is_causal():
  model = make_prefix_lm()
  images = random_images(0, n=1)
  tokens = jnp.array([[1, 5, 6, 7, 8, 9, 2, 0]])
  prefix_len = jnp.array([4])  # BOS + 3 prompt tokens
  params = jax.jit(model.init)(jax.random.key(0), {"image": images, "text": tokens, "prefix_len": prefix_len})
  apply = jax.jit(lambda t: model.apply(params, model.apply(params, images, method="image_tokens"), t, prefix_len,
                                        method="caption_logits"))
  logits = apply(tokens)
  # A later prompt token changes the logits of an earlier prompt position (full attention in the prefix) ...
  in_prompt = apply(tokens.at[0, 3].set(20))
  assert float(jnp.max(jnp.abs(logits[0, 1] - in_prompt[0, 1]))) > 1e-4
  # ... but an answer token never changes anything before it.
  in_answer = apply(tokens.at[0, 5].set(20))
  np.testing.assert_allclose(logits[0, :5], in_answer[0, :5], atol=INVARIANCE_ATOL)


def test_decoders_read_the_image():
  coca = CoCa(vision=small_vit(), unimodal=small_text(append_cls=True),
              multimodal=MultimodalDecoder(VOCAB, depth=1, num_heads=2, mlp_dim=32), embed_dim=8)
  tokens = jnp.array([[1, 5, 6, 2, 0, 0]] * 2)
  batch = {"image": random_images(0), "text": tokens, "caption": tokens}
  params = jax.jit(coca.init)(jax.random.key(0), batch)  # jitted: one compile, not op by op
  outputs, _ = jax.jit(coca.apply)(params, batch)
  assert float(jnp.max(jnp.abs(outputs["logits"][0] - outputs["logits"][1]))) > 1e-4

  prefix_lm = make_prefix_lm()
  batch = {"image": random_images(1), "text": tokens, "prefix_len": jnp.array([1, 1])}
  params = jax.jit(prefix_lm.init)(jax.random.key(0), batch)
  outputs, _ = jax.jit(prefix_lm.apply)(params, batch)
  assert float(jnp.max(jnp.abs(outputs["logits"][0] - outputs["logits"][1]))) > 1e-4


def test_two_tower_embeddings_are_unit_norm():
  model = TwoTower(vision=small_vit(), text=small_text(pool_eos_id=EOS), embed_dim=8)
  batch = {"image": random_images(0), "text": jnp.array([[1, 5, 2, 0], [1, 6, 7, 2]])}
  outputs, _ = model.apply(model.init(jax.random.key(0), batch), batch)
  chex.assert_shape([outputs["image_embedding"], outputs["text_embedding"]], (2, 8))
  np.testing.assert_allclose(jnp.linalg.norm(outputs["image_embedding"], axis=-1), 1.0, atol=1e-4)
  np.testing.assert_allclose(outputs["logit_scale"], np.log(1 / 0.07), rtol=1e-6)


def _stack(**kwargs):
  return layers.Stack(**{**dict(depth=4, num_heads=2, mlp_dim=8), **kwargs})


def test_cross_attention_every_kth_layer_counts_from_the_top():
  x, context = jnp.ones((1, 3, 8)), jnp.ones((1, 5, 8))
  params = _stack(cross_attention_every=2, scan=False).init(jax.random.key(0), x, context=context)["params"]
  with_cross = sorted(k for k, v in params.items() if "cross_attention" in v)
  assert with_cross == ["block_01", "block_03"]
  # Scanned: 5 blocks in groups of 2 from the top (blocks 1-2, 3-4, each ending in cross-attention),
  # block 0 left over at the bottom, and cross-attending (it is 4 blocks below the top).
  params = _stack(depth=5, cross_attention_every=2).init(jax.random.key(0), x, context=context)["params"]
  assert sorted(params) == ["block_00", "groups"] and "cross_attention" in params["block_00"]
  assert "cross_attention" in params["groups"]["block_01"] and "cross_attention" not in params["groups"]["block_00"]
  assert params["groups"]["block_01"]["mlp"]["fc1"]["kernel"].value.shape == (2, 8, 8)


def _loop_params_as_scanned(loop_params, scanned_params):
  return layers.to_scanned_layout(nn.meta.unbox(loop_params), nn.meta.unbox(scanned_params))


@pytest.mark.parametrize("config", [
    dict(), dict(cross_attention_every=1), dict(cross_attention_every=2, depth=5, cross_attention_gate=True),
    dict(cross_attention_every=3, depth=6),
    dict(norm="rmsnorm", mlp="swiglu", rope_theta=10_000.0, num_kv_heads=1, attention_bias=False, mlp_bias=False),
    dict(remat="full")])
def test_scan_and_loop_compute_the_same_function_on_restacked_params(config):
  x = jax.random.normal(jax.random.key(1), (2, 6, 8))
  context = jax.random.normal(jax.random.key(2), (2, 5, 8))
  mask = layers.causal_mask(6)
  loop, scanned = _stack(scan=False, **config), _stack(scan=True, **config)
  loop_params = loop.init(jax.random.key(0), x, mask, context)["params"]
  scanned_params = scanned.init(jax.random.key(0), x, mask, context)["params"]
  # Random gates: an all-zero gate would hide cross-attention from the comparison.
  noisy = lambda tree: jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(3), a.shape), tree)
  loop_params = noisy(nn.meta.unbox(loop_params))
  restacked = _loop_params_as_scanned(loop_params, scanned_params)
  assert jax.tree.structure(restacked) == jax.tree.structure(nn.meta.unbox(scanned_params))
  # to_loop_layout is its inverse: the blocks split back out are the loop's, bit for bit.
  jax.tree.map(np.testing.assert_array_equal, layers.to_loop_layout(restacked), loop_params)
  y_loop, out_loop, _ = loop.apply({"params": loop_params}, x, mask, context)
  y_scan, out_scan, _ = scanned.apply({"params": restacked}, x, mask, context)
  np.testing.assert_allclose(y_scan, y_loop, atol=SAME_MATH_ATOL)
  np.testing.assert_allclose(out_scan["blocks"], out_loop["blocks"], atol=SAME_MATH_ATOL)
  assert out_scan["blocks"].shape == (loop.depth, 2, 6, 8)
  np.testing.assert_allclose(out_scan["block_01"], out_loop["block_01"], atol=SAME_MATH_ATOL)


def test_a_scanned_stack_given_loop_layout_params_runs_them_as_the_loop():
  """What decoding does on CPU: a scan=True Stack (a leftover block and groups of 2 with cross-attention)
  applied to its params split into blocks computes what it computes on the stacked params, and returns
  one cache entry per block."""
  x, context, mask = jax.random.normal(jax.random.key(1), (2, 6, 8)), jnp.ones((2, 5, 8)), layers.causal_mask(6)
  scanned = _stack(depth=3, cross_attention_every=2)
  params = nn.meta.unbox(jax.eval_shape(scanned.init, jax.random.key(0), x, mask, context)["params"])
  params = jax.tree.map(lambda a: jax.random.normal(jax.random.key(3), a.shape), params)
  assert sorted(params) == ["block_00", "groups"]
  apply = jax.jit(lambda params: scanned.apply({"params": params}, x, mask, context, cache={}))
  y, out, cache = apply(params)
  y_loop, out_loop, cache_loop = apply(layers.to_loop_layout(params))
  np.testing.assert_allclose(y_loop, y, atol=SAME_MATH_ATOL)
  np.testing.assert_allclose(out_loop["blocks"], out["blocks"], atol=SAME_MATH_ATOL)
  assert sorted(cache) == ["cross", "self"] and sorted(cache_loop) == ["block_00", "block_01", "block_02"]
  np.testing.assert_allclose(cache_loop["block_02"]["self"]["key"], cache["self"]["key"][2], atol=SAME_MATH_ATOL)
  np.testing.assert_allclose(cache_loop["block_02"]["cross"]["value"], cache["cross"]["value"][1], atol=SAME_MATH_ATOL)
  assert layers.cache_length(cache_loop) == layers.cache_length(cache) == 6


@pytest.mark.parametrize("scan", [False, True])
def test_gated_cross_attention_leaves_the_decoder_unchanged_at_init(scan):
  """A tanh gate at 0: the same text model with or without image tokens gives the same logits at init."""
  tokens = jnp.array([[1, 5, 6, 7, 2, 0]])
  images = jax.random.normal(jax.random.key(1), (1, 4, 16))
  gated = small_text(compute_logits=True, cross_attention_every=1, cross_attention_gate=True, scan=scan)
  plain = small_text(compute_logits=True, scan=scan)
  params = nn.meta.unbox(gated.init(jax.random.key(0), tokens, image_tokens=images)["params"])
  strip = lambda tree: {k: strip(v) for k, v in tree.items() if "cross" not in k} if isinstance(tree, dict) else tree
  logits, _ = gated.apply({"params": params}, tokens, image_tokens=images)
  expected, _ = plain.apply({"params": strip(params)}, tokens)
  np.testing.assert_allclose(logits, expected, atol=INVARIANCE_ATOL)
  opened = jax.tree_util.tree_map_with_path(
      lambda path, a: a + 1.0 if path[-1].key == "cross_attention_gate" else a, params)
  changed, _ = gated.apply({"params": opened}, tokens, image_tokens=images)
  assert float(jnp.max(jnp.abs(changed - expected))) > 1e-4


def test_vision_layer_reads_the_stacked_blocks_of_a_scanned_vit():
  """vision_layer=-2 (LLaVA-1.5's choice here) takes the penultimate block's tokens (HF's hidden_states[-2]),
  from out["blocks"] with scan and from out["block_NN"] without; both the same numbers."""
  images = random_images(0, n=1)
  tokens = {}
  for scan in (False, True):
    model = PrefixLM(vision=small_vit(pool="none", scan=scan), projector=Projector(16, "linear"),
                     decoder=small_text(compute_logits=True, max_len=12, scan=scan), vision_layer=-2)
    batch = {"image": images, "text": jnp.ones((1, 4), jnp.int32), "prefix_len": jnp.ones((1,), jnp.int32)}
    params = nn.meta.unbox(model.init(jax.random.key(0), batch)["params"])
    if scan:
      params = layers.to_scanned_layout(tokens["loop_params"], params)
    else:
      tokens["loop_params"] = params
    _, out = model.apply({"params": params}, images, method=lambda m, x: m.vision(x))
    tokens[scan] = model.apply({"params": params}, images, method="image_tokens")
    np.testing.assert_allclose(out["blocks"][-1], out["block_01"], atol=INVARIANCE_ATOL)
  np.testing.assert_allclose(tokens[True], tokens[False], atol=SAME_MATH_ATOL)


def test_attention_weights_are_sown_for_probing():
  images = random_images(0, n=1)
  for scan in (False, True):
    model = small_vit(depth=3, scan=scan)
    params = model.init(jax.random.key(0), images)
    _, state = model.apply(params, images, mutable=["intermediates"])
    if scan:  # stacked along the layer axis
      (weights,) = state["intermediates"]["encoder"]["blocks"]["self_attention"]["attention_weights"]
      chex.assert_shape(weights, (3, 1, 2, 16, 16))
    else:
      (weights,) = state["intermediates"]["encoder"]["block_00"]["self_attention"]["attention_weights"]
      chex.assert_shape(weights, (1, 2, 16, 16))
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=SAME_MATH_ATOL)


def test_grouped_query_attention_equals_multi_head_with_repeated_key_value_heads():
  """Query head h reads key/value head h // (heads / kv_heads): HF's repeat_kv."""
  x = jax.random.normal(jax.random.key(1), (2, 5, 16))
  gqa = layers.Attention(num_heads=4, num_kv_heads=2, rope_theta=10_000.0)
  mha = layers.Attention(num_heads=4, rope_theta=10_000.0)
  params = nn.meta.unbox(gqa.init(jax.random.key(0), x)["params"])
  repeated = {**params, **{f"{n}_{p}": jnp.repeat(params[f"{n}_{p}"], 2, axis=-2 if p == "kernel" else 0)
                           for n in ("key", "value") for p in ("kernel", "bias")}}
  np.testing.assert_allclose(gqa.apply({"params": params}, x, mask=layers.causal_mask(5))[0],
                             mha.apply({"params": repeated}, x, mask=layers.causal_mask(5))[0], atol=SAME_MATH_ATOL)


def test_rotary_attention_logits_depend_only_on_relative_position():
  """RoPE: shifting every position by the same amount leaves attention unchanged."""
  x = jax.random.normal(jax.random.key(1), (1, 5, 16))
  attention = layers.Attention(num_heads=2, rope_theta=10_000.0)
  params = attention.init(jax.random.key(0), x)
  y, _ = attention.apply(params, x, positions=jnp.arange(5)[None])
  shifted, _ = attention.apply(params, x, positions=jnp.arange(5)[None] + 7)
  np.testing.assert_allclose(y, shifted, atol=SAME_MATH_ATOL)
  moved, _ = attention.apply(params, x, positions=jnp.array([[0, 2, 4, 6, 8]]))
  assert float(jnp.max(jnp.abs(moved - y))) > 1e-4


LLAMA_STYLE = dict(posemb="rope", norm="rmsnorm", mlp="swiglu", num_kv_heads=1, attention_bias=False,
                   mlp_bias=False, logits_bias=False, tied_embedding=False)


@pytest.mark.parametrize("config", [
    LLAMA_STYLE, dict(LLAMA_STYLE, scan=False),
    dict(depth=3, cross_attention_every=2), dict(depth=3, cross_attention_every=2, scan=False)],
    ids=["llama", "llama_loop", "cross_groups", "cross_loop"])
def test_prefill_then_decode_steps_equal_the_full_forward_pass(config):
  """The cache path (prefill of a prompt, then one token at a time) computes the logits of the training
  forward pass: RoPE, RMSNorm, SwiGLU, grouped-query attention, untied logits without biases; and
  cross-attention every 2nd of 3 blocks (a scanned group of 2 plus one block left over)."""
  model = small_text(compute_logits=True, **config)
  tokens = jnp.array([[1, 5, 6, 7, 8, 9, 3, 4], [1, 9, 8, 7, 6, 5, 4, 3]])
  images = jax.random.normal(jax.random.key(1), (2, 5, 16)) if config.get("cross_attention_every") else None
  params = model.init(jax.random.key(0), tokens, image_tokens=images)
  if config.get("posemb") == "rope":
    assert "pos_embedding" not in params["params"] and "bias" not in params["params"]["logits"]
  full, _ = model.apply(params, tokens, image_tokens=images)
  start = jnp.array([3, 5])
  logits, cache = model.apply(params, tokens, start, images, method="prefill")
  rows = jnp.arange(2)
  for i in range(2):  # the tokens at start, start + 1, fed one at a time
    step, cache = model.apply(params, cache, tokens[rows, start + i], start + i, method="decode_step")
    np.testing.assert_allclose(step, full[rows, start + i], atol=SAME_MATH_ATOL)
  np.testing.assert_allclose(logits[rows, start - 1], full[rows, start - 1], atol=SAME_MATH_ATOL)
