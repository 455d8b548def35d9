"""config.model.attention: jax.nn.dot_product_attention computes what the explicit einsums compute, for every
mask the models use, forward and backward; attention maps and one-token decoding keep the explicit path."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlm_jax import models
from vlm_jax.errors import UserError
from vlm_jax.models import layers, towers
from vlm_jax.run_config import base_config
from tolerances import SAME_MATH_ATOL  # tests/ is on sys.path under pytest

# The two paths are the same math in float32 in another summation order: jax's XLA path computes the logits as
# one einsum per query group (vmapped) with a float32 accumulator, the softmax and the weighted sum as the
# explicit path does. Per dot product of n <= 64 terms that is the same-math bound of tolerances.py (n * eps32),
# for the outputs and, through the same products, for the gradients of these one-layer models.
PATHS_ATOL = SAME_MATH_ATOL


@pytest.fixture
def dot_product_calls(monkeypatch):
  """The calls jax.nn.dot_product_attention gets (traced ones included), so a test knows which path ran."""
  calls, original = [], jax.nn.dot_product_attention
  monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **k: calls.append(k) or original(*a, **k))
  return calls


def _random_params(module, *args, **kwargs):
  """Random params of `module`'s shapes (traced, not compiled: jax.eval_shape), biases included: at zero init
  they would leave the bias gradients' paths untested."""
  shapes = nn.meta.unbox(jax.eval_shape(module.init, jax.random.key(0), *args, **kwargs)["params"])
  leaves, tree = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves)])


def _paths_outputs_and_grads(cases):
  """{case: {path: (output, gradients of <output, cotangent> w.r.t. params and x)}} of an Attention on each path
  with the same params, for cases {name: (module fields, x, cotangent, call kwargs)}; one program for all."""
  modules = {name: {kind: layers.Attention(attention=kind, **fields) for kind in ("explicit", "dot_product")}
             for name, (fields, *_) in cases.items()}
  params = {name: _random_params(modules[name]["explicit"], x, **call) for name, (_, x, _, call) in cases.items()}

  @jax.jit
  def run(params):
    results = {}
    for name, (_, x, cotangent, call) in cases.items():
      results[name] = {}
      for kind, module in modules[name].items():
        def loss(params, x, module=module, call=call, cotangent=cotangent):
          y, _ = module.apply({"params": params}, x, **call)
          return jnp.sum(y * cotangent), y
        (_, y), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params[name], x)
        results[name][kind] = (y, grads)
    return results
  return run(params)


def _assert_paths_equal(results, name):
  (y_e, g_e), (y_d, g_d) = results["explicit"], results["dot_product"]
  np.testing.assert_allclose(y_d, y_e, atol=PATHS_ATOL, err_msg=name)
  jax.tree.map(lambda d, e: np.testing.assert_allclose(d, e, atol=PATHS_ATOL, err_msg=name), g_d, g_e)


B, T, D = 2, 6, 16
X = jax.random.normal(jax.random.key(1), (B, T, D))
COTANGENT = jax.random.normal(jax.random.key(2), (B, T, D))
TOKENS = jnp.array([[1, 5, 6, 2, 0, 0], [1, 7, 8, 9, 3, 2]])  # row 0 padded after position 3
CONTEXT = jax.random.normal(jax.random.key(3), (B, 5, 12))
# Context padding [B, 1, 1, N]; row 1's context is all padding: both paths then spread its weights evenly over
# the keys (every logit at the same large negative value), so they agree there too.
CONTEXT_MASK = jnp.array([[True, True, True, False, False], [False] * 5])[:, None, None, :]
CASES = {  # name: (Attention fields, mask)
    "causal": (dict(num_heads=4), layers.CAUSAL),  # is_causal on the dot_product path
    "padding": (dict(num_heads=4), layers.padding_mask(TOKENS)),
    "prefix_lm_multi_query": (dict(num_heads=4, num_kv_heads=1, use_bias=False),
                              layers.prefix_lm_mask(jnp.array([2, 4]), T)),
    "grouped_query_rope_causal_array": (dict(num_heads=4, num_kv_heads=2, rope_theta=10_000.0), layers.causal_mask(T)),
}


def test_dot_product_equals_explicit_for_every_mask(dot_product_calls):
  """Causal (the CAUSAL marker and the array), padding, prefix-LM, grouped-query and multi-query heads, and
  cross-attention with a context padding mask: outputs and gradients (params and input) agree."""
  cases = {name: (fields, X, COTANGENT, dict(mask=mask)) for name, (fields, mask) in CASES.items()}
  cases["cross_context_padding"] = (dict(num_heads=2, cross=True), X, COTANGENT,
                                    dict(context=CONTEXT, mask=CONTEXT_MASK))
  results = _paths_outputs_and_grads(cases)
  for name in cases:
    _assert_paths_equal(results[name], name)
  # The forward and the backward of each case traced the dot_product path once (a wrong plumbing would
  # compare the explicit path with itself).
  assert len(dot_product_calls) == len(cases)


def test_prefill_with_a_cache_then_one_step_agree_on_both_paths(dot_product_calls):
  """Prefill (cache={}, grouped-query heads, rotary positions, a prefix-LM mask over a longer buffer) runs
  dot_product and returns the same output and cache; the next token (one step against the cache) takes the
  explicit einsums on both paths, so dot_product_attention is traced for the prefill alone."""
  fields = dict(num_heads=4, num_kv_heads=2, rope_theta=10_000.0)
  paths = {kind: layers.Attention(attention=kind, **fields) for kind in ("explicit", "dot_product")}
  length = 8  # the buffer: the prompt's T positions and two more
  buffer = jnp.concatenate([X, jnp.zeros((B, length - T, D))], axis=1)
  prefill_mask = layers.prefix_lm_mask(jnp.array([2, 0]), length)
  position = jnp.array([T, T])
  step_mask = (jnp.arange(length)[None] <= position[:, None])[:, None, None, :]

  @jax.jit
  def run(key):
    params = paths["explicit"].init(key, X, mask=layers.CAUSAL)
    outputs = {}
    for kind, module in paths.items():
      y, cache = module.apply(params, buffer, mask=prefill_mask, positions=jnp.arange(length)[None], cache={})
      step, _ = module.apply(params, X[:, :1], mask=step_mask, positions=position[:, None], cache=cache,
                             cache_index=position)
      outputs[kind] = (y, cache, step)
    return outputs

  outputs = run(jax.random.key(0))
  assert len(dot_product_calls) == 1
  jax.tree.map(lambda d, e: np.testing.assert_allclose(d, e, atol=PATHS_ATOL), outputs["dot_product"],
               outputs["explicit"])


def test_attention_maps_are_still_sown_with_dot_product(dot_product_calls):
  """Asking for the maps (mutable intermediates) runs the explicit einsums whatever config.model.attention says:
  weights sum to 1, are causal, and the output is the dot_product one."""
  module = layers.Attention(num_heads=4, attention="dot_product")

  @jax.jit
  def run(key):
    params = module.init(key, X, mask=layers.CAUSAL)
    return module.apply(params, X, mask=layers.CAUSAL), module.apply(params, X, mask=layers.CAUSAL,
                                                                     mutable=["intermediates"])

  (y_plain, _), ((y, _), state) = run(jax.random.key(0))
  assert len(dot_product_calls) == 2  # init and the plain apply; the apply asked for the maps stayed explicit
  (weights,) = state["intermediates"]["attention_weights"]
  assert weights.shape == (B, 4, T, T)
  np.testing.assert_allclose(weights.sum(-1), 1.0, atol=SAME_MATH_ATOL)
  assert float(jnp.max(jnp.triu(weights, k=1))) == 0.0
  np.testing.assert_allclose(y, y_plain, atol=PATHS_ATOL)


def _tiny_model_config(name, attention):
  config = base_config()
  config.model.name = name
  config.model.attention = attention
  config.model.vision.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  config.model.text.update(width=32, depth=2, num_heads=4, mlp_dim=64, num_kv_heads=2)
  config.model.multimodal.depth = 1
  config.model.embed_dim = 16
  return config


def _attention_fields(module) -> list:
  """The `attention` field of every tower in a composed model's module tree (its dataclass fields, recursively)."""
  found = [module.attention] if hasattr(module, "attention") else []
  for field in getattr(module, "__dataclass_fields__", {}):
    value = getattr(module, field, None)
    if isinstance(value, nn.Module) and field != "parent":
      found += _attention_fields(value)
  return found


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_config_attention_reaches_every_tower_and_attention_layer(name, dot_product_calls):
  """config.model.attention="dot_product" through build_model: every tower of every model holds it, and tracing
  the model (jax.eval_shape: nothing compiled) calls jax.nn.dot_product_attention in its attention layers
  (scanned blocks, the CLS row of CoCa's text, cross-attention, prefix masks)."""
  model = models.build_model(_tiny_model_config(name, "dot_product").model, vocab_size=50, max_len=8, eos_id=2,
                             pad_id=0)
  towers_found = _attention_fields(model)
  assert towers_found and set(towers_found) == {"dot_product"}, towers_found
  batch = models.sample_batch(models.get(name).FEATURES, 2, 16, 8)
  variables = jax.eval_shape(model.init, jax.random.key(0), batch)
  before = len(dot_product_calls)
  jax.eval_shape(model.apply, variables, batch)
  assert len(dot_product_calls) > before


def test_auto_is_explicit_on_cpu_and_a_bad_value_is_one_line():
  assert layers.attention_path("auto") == ("explicit" if jax.default_backend() == "cpu" else "dot_product")
  config = base_config()
  config.model.attention = "flash"
  with pytest.raises(UserError, match=r"^config.model.attention='flash' is not one of"):
    towers.attention_of(config.model)


def test_cudnn_is_chosen_only_where_it_applies(monkeypatch):
  """On a GPU: bf16 or fp16, head_dim a multiple of 8 up to 128, and no mask array (causal goes as is_causal)."""
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  query = lambda dtype, head_dim=64: jnp.zeros((1, 4, 2, head_dim), dtype)
  assert layers._fits_cudnn(query(jnp.bfloat16), None)
  assert layers._fits_cudnn(query(jnp.float16, 128), None)
  assert not layers._fits_cudnn(query(jnp.float32), None)
  assert not layers._fits_cudnn(query(jnp.bfloat16, 12), None)
  assert not layers._fits_cudnn(query(jnp.bfloat16, 160), None)
  assert not layers._fits_cudnn(query(jnp.bfloat16), layers.causal_mask(4))
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert not layers._fits_cudnn(query(jnp.bfloat16), None)


def test_the_attention_cores_written_out_backward_equals_autodiff_of_its_forward():
  """layers._attention_core's flash-style backward (the softmax gradient from rowsum(dO * O)) against jax's autodiff
  of the same forward (jax.nn.softmax, masked logits), for no mask, a causal-and-padding mask and a row whose every
  key is masked (uniform weights, and no gradient to its logits on either side). Same math, other summation order:
  sums of S, hd <= 16 terms of size ~1, so the same-math bound of tolerances.py holds with room."""
  rows, m, s, hd = 3, 5, 7, 16
  keys = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (rows, n, hd)) for key, n in zip(keys, (m, s, s)))
  d_out = jax.random.normal(keys[3], (rows, m, hd))
  mask = jnp.asarray(np.tril(np.ones((m, s), bool), k=2)[None].repeat(rows, 0))
  mask = mask.at[:, :, -1].set(False).at[1, 2].set(False)  # a padded key, and one fully masked row
  reference = lambda q, k, v, mask: jnp.matmul(layers._softmax_weights(q, k, mask), v)
  for case in (None, mask):
    outputs = {}
    for name, fn in (("written", layers._attention_core), ("autodiff", reference)):
      out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, case), q, k, v)
      outputs[name] = (out, *vjp(d_out))
    for written, autodiff in zip(*outputs.values()):
      np.testing.assert_allclose(written, autodiff, atol=SAME_MATH_ATOL)
  # The fully masked row's queries get no gradient (its logits are constants), as autodiff gives.
  _, vjp = jax.vjp(lambda q: layers._attention_core(q, k, v, mask), q)
  assert float(jnp.max(jnp.abs(vjp(d_out)[0][1, 2]))) == 0.0
