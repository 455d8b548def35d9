"""HF `LlamaForCausalLM` <-> vlm_jax TextTransformer configured as a Llama (the one text decoder).

A Llama here is TextTransformer(posemb="rope", norm="rmsnorm", mlp="swiglu", num_kv_heads, no biases
unless the config has them, untied logits unless tie_word_embeddings): the decoder a PrefixLM or a
CausalLM uses, decoded with the key/value cache like any other (Pretrained.generate).
Supported: the default rotary embedding (any rope_theta), grouped-query attention, optional attention and
MLP biases, tied or separate output embedding, SiLU SwiGLU. Rotary scaling variants
(llama3, linear, dynamic, yarn, ...) are refused with a UserError rather than silently computed wrong.
"""

from vlm_jax import hf_configs
from vlm_jax.models.text import TextTransformer
from vlm_jax.pretrained import mapping
from vlm_jax.pretrained.mapping import Link

ARCHITECTURE = hf_configs.LLAMA
DEFAULTS = hf_configs.LLAMA_DEFAULTS
_config = hf_configs.llama


def build(config: dict, scan: bool = True) -> TextTransformer:
  """The vlm_jax decoder computing what this LlamaForCausalLM config computes."""
  c = _config(config)
  return TextTransformer(
      vocab_size=c["vocab_size"], width=c["hidden_size"], depth=c["num_hidden_layers"],
      num_heads=c["num_attention_heads"], num_kv_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
      mlp_dim=c["intermediate_size"], max_len=c["max_position_embeddings"], compute_logits=True,
      tied_embedding=c["tie_word_embeddings"], norm="rmsnorm", mlp="swiglu", norm_eps=c["rms_norm_eps"],
      posemb="rope", rope_theta=c["rope_theta"], attention_bias=c["attention_bias"], mlp_bias=c["mlp_bias"],
      logits_bias=False, scan=scan)


def links(config: dict, scan: bool = True, hf: str = "model", path: tuple = (), lm_head: str = "lm_head") -> list:
  """Every parameter of `build(config, scan)` (under `path`) and its HF tensor: the decoder under `hf`
  ("model" in LlamaForCausalLM, "model.language_model" in a Llava), the output projection `lm_head`."""
  c = _config(config)
  heads, kv_heads, bias = c["num_attention_heads"], c["num_key_value_heads"], c["attention_bias"]

  def block(src, dst):
    attention = dst + ("self_attention",)
    links = [Link(f"{src}.input_layernorm.weight", dst + ("norm_self_attention", "scale"))]
    links += mapping.heads_in(f"{src}.self_attn.q_proj", attention, "query", heads, bias=bias)
    links += mapping.heads_in(f"{src}.self_attn.k_proj", attention, "key", kv_heads, bias=bias)
    links += mapping.heads_in(f"{src}.self_attn.v_proj", attention, "value", kv_heads, bias=bias)
    links += mapping.heads_out(f"{src}.self_attn.o_proj", attention, heads, bias=bias)
    links += [Link(f"{src}.post_attention_layernorm.weight", dst + ("norm_mlp", "scale"))]
    for name in ("gate", "up", "down"):
      links += _linear(f"{src}.mlp.{name}_proj", dst + ("mlp", name), c["mlp_bias"])
    return links

  out = [Link(f"{hf}.embed_tokens.weight", path + ("token_embedding", "embedding"))]
  out += mapping.block_layers(f"{hf}.layers", path + ("transformer",), c["num_hidden_layers"], scan, block)
  out += [Link(f"{hf}.norm.weight", path + ("final_norm", "scale"))]
  if not c["tie_word_embeddings"]:
    out += _linear(lm_head, path + ("logits",), bias=False)
  return out


def _linear(hf: str, path: tuple, bias: bool) -> list:
  """A torch Linear whose flax Dense has no bias parameter at all when `bias` is False."""
  return [link for link in mapping.linear(hf, path, bias) if bias or link.hf is not None]


def export_config(config: dict, image_size=None) -> dict:
  """config.json for the exported model: the imported one."""
  return dict(config, architectures=[ARCHITECTURE])
