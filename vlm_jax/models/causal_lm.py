"""A text-only causal language model: the decoder a prefix-LM VLM starts from (LLaVA's "pretrained LM").

Its parameters live under "decoder", as in PrefixLM, so a trained LM's weights load into a VLM as they are.
"""

import flax.linen as nn

from vlm_jax import flops
from vlm_jax.models import text, towers

# What the rest of vlm_jax needs to know (models/__init__.py lists these declarations).
FEATURES = ("caption",)
DATA_TASK = "contrastive_caption"  # its batches' canonical captions are the text it models
LOSS_TERMS = ("caption",)
EVAL_TYPES = ()
DEFAULT_EVALS = ()
PREDICT_TASKS = ()  # it sees no image
GENERATES = False  # no image to caption; decoding.generate continues text for its decoder alone
HF_EXPORT = None  # python -m vlm_jax.export refuses it: not exported (its decoder alone)


class CausalLM(nn.Module):
  """`__call__(batch)` -> (outputs, intermediates): next-token logits for batch["caption"][:, :-1]."""
  decoder: text.TextTransformer

  def __call__(self, batch):
    logits, intermediates = self.decoder(batch["caption"][:, :-1])
    return dict(logits=logits), {"text": intermediates}

  def prefill(self, tokens, start, image_tokens=None):
    """Decoding (vlm_jax.decoding): -> (logits float[B, L, V], cache); there are no image tokens."""
    return self.decoder.prefill(tokens, start)

  def decode_step(self, cache, token, position):
    return self.decoder.decode_step(cache, token, position)


def build(config, *, vocab_size: int, max_len: int, eos_id: int, pad_id: int, dtype, remat: str,
          scan: bool = True, attention: str = "auto") -> CausalLM:
  """config: the run config's `model` section (only its `text` tower)."""
  del eos_id
  return CausalLM(decoder=towers.build_text(config.text, vocab_size, max_len, dtype, remat, scan, compute_logits=True,
                                            tied_embedding=config.text.tied_embedding, pad_id=pad_id,
                                            attention=attention))


def forward_flops(config, vocab_size: int, batch_size: int) -> dict:
  """Forward FLOPs of one example: the decoder over the caption, with its logits."""
  del batch_size
  t, text_config = config.data.max_text_len, config.model.text
  return {"decoder": flops.text_forward_flops(text_config, t - 1, text_config.depth, vocab_size=vocab_size)}


def predict_fns(model: CausalLM) -> dict:
  del model
  return {}
