"""A text-only causal language model: the decoder a prefix-LM VLM starts from (LLaVA's "pretrained LM").

Its parameters live under "decoder", as in PrefixLM, so a trained LM's weights load into a VLM as they are.
"""

import flax.linen as nn

from vlm_jax.models import text


class CausalLM(nn.Module):
  """`__call__(batch)` -> (outputs, out): next-token logits for batch["caption"][:, :-1]."""
  decoder: text.TextTransformer

  def __call__(self, batch):
    logits, out = self.decoder(batch["caption"][:, :-1])
    return dict(logits=logits), {"text": out}

  def prefill(self, tokens, start, image_tokens=None):
    """Decoding (vlm_jax.decoding): -> (logits float[B, L, V], cache); there are no image tokens."""
    return self.decoder.prefill(tokens, start)

  def decode_step(self, cache, token, position):
    return self.decoder.decode_step(cache, token, position)
