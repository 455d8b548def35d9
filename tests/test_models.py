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


def test_vit_compute_dtype_bfloat16_keeps_float32_params():
  model = small_vit(dtype=jnp.bfloat16)
  (output, _), variables = model.init_with_output(jax.random.key(0), random_images(0))
  assert output.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.meta.unbox(variables)))


def test_every_parameter_has_logical_axis_names():
  model = CoCa(vision=small_vit(pool="map"), unimodal=small_text(append_cls=True),
               multimodal=MultimodalDecoder(VOCAB, depth=1, num_heads=2, mlp_dim=32), embed_dim=8)
  batch = {"image": random_images(0), "text": jnp.ones((2, 6), jnp.int32), "caption": jnp.ones((2, 6), jnp.int32)}
  params = model.init(jax.random.key(0), batch)["params"]
  leaves = jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  assert leaves and all(isinstance(x, nn.LogicallyPartitioned) for x in leaves)
  assert all(len(x.names) == x.value.ndim for x in leaves)


def test_causal_text_changing_a_future_token_never_changes_earlier_logits():
  model = small_text(compute_logits=True)
  tokens = jnp.array([[1, 5, 6, 7, 8, 9, 2, 0]])
  params = model.init(jax.random.key(0), tokens)
  logits, _ = model.apply(params, tokens)
  changed, _ = model.apply(params, tokens.at[0, 4].set(30))
  np.testing.assert_allclose(logits[0, :4], changed[0, :4], atol=1e-6)
  assert float(jnp.max(jnp.abs(logits[0, 4:] - changed[0, 4:]))) > 1e-4


def test_eos_pooling_ignores_what_follows_eos():
  model = small_text(pool_eos_id=EOS)
  tokens = jnp.array([[1, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0]])
  params = model.init(jax.random.key(0), tokens)
  _, out = model.apply(params, tokens)
  _, out_changed = model.apply(params, tokens.at[:, 4].set(9))
  chex.assert_shape(out["pooled"], (2, 16))
  np.testing.assert_allclose(out["pooled"], out_changed["pooled"], atol=1e-6)
  np.testing.assert_allclose(out["pooled"][1], out["hidden"][1, 2], atol=1e-6)


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
  np.testing.assert_allclose(out["pooled"], out_pad["pooled"], atol=1e-6)


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
  params = model.init(jax.random.key(0), {"image": images, "text": tokens, "prefix_len": prefix_len})
  apply = lambda t: model.apply(params, model.apply(params, images, method="image_tokens"), t, prefix_len,
                                method="caption_logits")
  logits = apply(tokens)
  # A later prompt token changes the logits of an earlier prompt position (full attention in the prefix) ...
  in_prompt = apply(tokens.at[0, 3].set(20))
  assert float(jnp.max(jnp.abs(logits[0, 1] - in_prompt[0, 1]))) > 1e-4
  # ... but an answer token never changes anything before it.
  in_answer = apply(tokens.at[0, 5].set(20))
  np.testing.assert_allclose(logits[0, :5], in_answer[0, :5], atol=1e-6)


def test_decoders_read_the_image():
  coca = CoCa(vision=small_vit(), unimodal=small_text(append_cls=True),
              multimodal=MultimodalDecoder(VOCAB, depth=1, num_heads=2, mlp_dim=32), embed_dim=8)
  tokens = jnp.array([[1, 5, 6, 2, 0, 0]] * 2)
  batch = {"image": random_images(0), "text": tokens, "caption": tokens}
  params = coca.init(jax.random.key(0), batch)
  outputs, _ = coca.apply(params, batch)
  assert float(jnp.max(jnp.abs(outputs["logits"][0] - outputs["logits"][1]))) > 1e-4

  prefix_lm = make_prefix_lm()
  batch = {"image": random_images(1), "text": tokens, "prefix_len": jnp.array([1, 1])}
  params = prefix_lm.init(jax.random.key(0), batch)
  outputs, _ = prefix_lm.apply(params, batch)
  assert float(jnp.max(jnp.abs(outputs["logits"][0] - outputs["logits"][1]))) > 1e-4


def test_two_tower_embeddings_are_unit_norm():
  model = TwoTower(vision=small_vit(), text=small_text(pool_eos_id=EOS), embed_dim=8)
  batch = {"image": random_images(0), "text": jnp.array([[1, 5, 2, 0], [1, 6, 7, 2]])}
  outputs, _ = model.apply(model.init(jax.random.key(0), batch), batch)
  chex.assert_shape([outputs["image_embedding"], outputs["text_embedding"]], (2, 8))
  np.testing.assert_allclose(jnp.linalg.norm(outputs["image_embedding"], axis=-1), 1.0, atol=1e-4)
  np.testing.assert_allclose(outputs["logit_scale"], np.log(1 / 0.07), rtol=1e-6)


def test_cross_attention_every_kth_layer_counts_from_the_top():
  model = layers.Transformer(depth=4, num_heads=2, mlp_dim=8, cross_attention_every=2)
  x, context = jnp.ones((1, 3, 8)), jnp.ones((1, 5, 8))
  params = model.init(jax.random.key(0), x, context=context)["params"]
  with_cross = sorted(k for k, v in params.items() if "cross_attention" in v)
  assert with_cross == ["block_01", "block_03"]


def test_attention_weights_are_sown_for_probing():
  model = small_vit(depth=1)
  images = random_images(0, n=1)
  params = model.init(jax.random.key(0), images)
  _, state = model.apply(params, images, mutable=["intermediates"])
  (weights,) = state["intermediates"]["encoder"]["block_00"]["self_attention"]["attention_weights"]
  chex.assert_shape(weights, (1, 2, 16, 16))
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
