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
