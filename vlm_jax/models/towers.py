"""The towers every composed model is built from, each from its section of the model config.

`config.model.vision` -> `build_vit`, `config.model.text` -> `build_text`; `dtype_of` reads
`config.model.dtype`. The composed models' `build` functions (two_tower.py, coca.py, ...) call these.
"""

import jax.numpy as jnp
import ml_collections

from vlm_jax.errors import UserError
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import ViT

# float64 is for numerical tests (needs jax_enable_x64): "same math" compared without float32 rounding noise.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}
REMAT = ("", "full", "dots")


def dtype_of(model_config: ml_collections.ConfigDict):
  """The compute dtype config.model.dtype names (parameters stay float32)."""
  if model_config.dtype not in DTYPES:
    raise UserError(f"config.model.dtype={model_config.dtype!r} is not one of {sorted(DTYPES)}")
  return DTYPES[model_config.dtype]


def remat_of(model_config: ml_collections.ConfigDict) -> str:
  if model_config.remat not in REMAT:
    raise UserError(f"config.model.remat={model_config.remat!r}: expected '', 'full' or 'dots'")
  return model_config.remat


def build_vit(vision: ml_collections.ConfigDict, dtype, remat: str = "") -> ViT:
  return ViT(patch_size=vision.patch_size, width=vision.width, depth=vision.depth,
             num_heads=vision.num_heads, mlp_dim=vision.mlp_dim, posemb=vision.posemb,
             cls_token=vision.cls_token, pool=vision.pool, remat=remat, dtype=dtype)


def build_text(text: ml_collections.ConfigDict, vocab_size: int, max_len: int, dtype, remat: str = "",
               **kwargs) -> TextTransformer:
  return TextTransformer(vocab_size=vocab_size, width=text.width, depth=text.depth,
                         num_heads=text.num_heads, mlp_dim=text.mlp_dim, max_len=max_len, remat=remat,
                         dtype=dtype, **kwargs)
