"""Vision Transformer encoder: square patches, 2D sin-cos positions, optional CLS token, pooling.

Data flow: image float[B, H, W, 3] -> patches float[B, N, p*p*3] -> Dense -> + positions -> (CLS) ->
pre-LN Transformer -> LayerNorm -> pooled float[B, D] (or all tokens float[B, N(+1), D] with pool="none").
With stem="conv" the patches are the output of a few 3x3 stride-2 convolutions instead (Xiao et al. 2021, "Early
convolutions help transformers see better"): the same N tokens, each seeing overlapping pixels.
"""

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlm_jax.models import layers

POOL_TYPES = ("cls", "gap", "map", "none")
POSEMB_TYPES = ("sincos2d", "learned", "learned_with_cls")
STEMS = ("patch", "conv")


def conv_stem_channels(patch_size: int, width: int) -> list:
  """The output channels of stem="conv"'s 3x3 stride-2 convolutions: ceil(log2 p) of them (an image side S
  becomes ceil(S / 2^n), S / p where the patch grid fits), doubling up to `width` (patch 7, width 64: 16, 32, 64)."""
  n = max(1, math.ceil(math.log2(patch_size)))
  return [max(8, width >> (n - 1 - i)) for i in range(n)]


def conv_stem_grid(image_size: int, patch_size: int) -> int:
  """The side of the token grid stem="conv" makes of an image of side image_size (SAME padding, stride 2)."""
  side = image_size
  for _ in conv_stem_channels(patch_size, 8):
    side = -(-side // 2)
  return side


def posemb_sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
  """2D sin-cos position embeddings, float32[height * width, dim], row-major over the patch grid.

  The big_vision variant: frequencies w_i = 1 / temperature**(i / (dim/4 - 1)) for i < dim/4, and the
  output is [sin(x w), cos(x w), sin(y w), cos(y w)] with x the column and y the row of the patch.
  (The MAE/open_clip variant uses w_i = temperature**(-i / (dim/4)) and another order: not the same.)
  """
  assert dim % 4 == 0, f"width {dim} must be a multiple of 4 for 2D sin-cos position embeddings"
  quarter = dim // 4
  omega = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))
  y, x = np.mgrid[:height, :width]
  x_angles = x.reshape(-1, 1) * omega[None, :]
  y_angles = y.reshape(-1, 1) * omega[None, :]
  table = np.concatenate(
      [np.sin(x_angles), np.cos(x_angles), np.sin(y_angles), np.cos(y_angles)], axis=1)
  return table.astype(np.float32)


def patchify(images: jnp.ndarray, patch_size: int) -> jnp.ndarray:
  """float[B, H, W, C] -> float[B, (H/p)*(W/p), p*p*C], patches row-major, pixels (row, col, channel).

  A reshape and a Dense do what a stride-p convolution does, and ran ~1.7x faster on CPU (DESIGN.md).
  """
  b, h, w, c = images.shape
  p = patch_size
  if h % p or w % p:
    raise ValueError(f"image size {h}x{w} is not divisible by patch size {p}")
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


class MAPHead(nn.Module):
  """Multihead attention pooling: a learned probe token cross-attends the tokens, then an MLP.

  probe -> MHA(probe, tokens) = a -> a + MLP(LN(a)); the same order as HF's
  SiglipMultiheadAttentionPoolingHead (its residual is taken after the attention, not before).
  """
  num_heads: int
  mlp_dim: int
  dtype: layers.Dtype = jnp.float32
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  attention: str = "auto"  # one of layers.ATTENTION

  @nn.compact
  def __call__(self, x):
    b, _, d = x.shape
    probe = self.param("probe", layers.partitioned(nn.initializers.xavier_uniform(), (None, None, "embed")),
                       (1, 1, d))
    probe = jnp.tile(probe.astype(self.dtype), (b, 1, 1))
    x, _ = layers.Attention(self.num_heads, cross=True, dtype=self.dtype, attention=self.attention,
                            name="attention")(probe, context=x)
    y = layers.layer_norm("norm", self.dtype, self.layer_norm_eps)(x)
    x = x + layers.MlpBlock(self.mlp_dim, self.activation, dtype=self.dtype, name="mlp")(y)
    return x[:, 0]


class ViT(nn.Module):
  """Vision Transformer. Returns (output, out): output is float[B, D] pooled, or all tokens if pool="none".

  out holds named intermediates: "patches" (stem="conv": the convolutions' output tokens), "stem" (patch embeddings
  before positions), "embedded" (the tokens the blocks read: with positions, CLS and pre-norm), "blocks"
  float[depth, B, N, D] (the tokens after each block; one by one as "block_NN"), "encoded" (all tokens
  after the final LayerNorm), "pre_logits" (the pooled output). scan=True runs the blocks as one nn.scan
  (params stacked under encoder/blocks; see layers.Stack).

  posemb="learned_with_cls" (needs cls_token) is HF CLIP's table float[1 + N, D]: row 0 is the CLS
  position, added after the CLS token is prepended. With pool="cls" the final LayerNorm on the CLS row
  is exactly CLIP's `post_layernorm` on the pooled output (LayerNorm acts on each token alone).
  """
  patch_size: int = 4
  stem: str = "patch"  # one of STEMS
  stem_width: int = 0  # stem="conv": the channels of its last convolution (conv_stem_channels); 0: width
  width: int = 96
  depth: int = 3
  num_heads: int = 3
  mlp_dim: int = 384
  posemb: str = "sincos2d"
  cls_token: bool = False
  pool: str = "gap"
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  pre_norm: bool = False  # CLIP's `pre_layrnorm` on the embedded tokens before the blocks.
  scan: bool = True
  remat: str = ""
  dtype: layers.Dtype = jnp.float32
  attention: str = "auto"  # one of layers.ATTENTION

  @nn.compact
  def __call__(self, images):
    if self.pool not in POOL_TYPES:
      raise ValueError(f"unknown pool {self.pool!r}; expected one of {POOL_TYPES}")
    if self.pool == "cls" and not self.cls_token:
      raise ValueError("pool='cls' needs cls_token=True")
    out = {}
    _, h, w, _ = images.shape
    grid_h, grid_w = h // self.patch_size, w // self.patch_size
    if self.stem == "conv":
      patches = images.astype(self.dtype)
      for i, channels in enumerate(conv_stem_channels(self.patch_size, self.stem_width or self.width)):
        conv = nn.Conv(channels, (3, 3), strides=2, padding="SAME", dtype=self.dtype, name=f"stem_conv_{i}",
                       kernel_init=layers.partitioned(nn.initializers.he_normal(), (None, None, None, "mlp")),
                       bias_init=layers.partitioned(nn.initializers.zeros, ("mlp",)))
        patches = layers.ACTIVATIONS[self.activation](conv(patches))
      if patches.shape[1:3] != (grid_h, grid_w):
        raise ValueError(f"stem='conv' makes a {patches.shape[1]}x{patches.shape[2]} grid of a {h}x{w} image, not the "
                         f"{grid_h}x{grid_w} of patch size {self.patch_size}")
      patches = patches.reshape(patches.shape[0], grid_h * grid_w, patches.shape[-1])
    elif self.stem == "patch":
      patches = patchify(images.astype(self.dtype), self.patch_size)
    else:
      raise ValueError(f"unknown stem {self.stem!r}; expected one of {STEMS}")
    out["patches"] = patches
    x = layers.dense(self.width, ("patch", "embed"), self.dtype, "embedding")(patches)
    out["stem"] = x

    if self.posemb == "sincos2d":
      x = x + jnp.asarray(posemb_sincos_2d(grid_h, grid_w, self.width), self.dtype)[None]
    elif self.posemb == "learned":
      table = self.param("pos_embedding",
                         layers.partitioned(nn.initializers.normal(0.02), ("position", "embed")),
                         (grid_h * grid_w, self.width))
      x = x + table.astype(self.dtype)[None]
    elif self.posemb == "learned_with_cls":
      if not self.cls_token:
        raise ValueError("posemb='learned_with_cls' needs cls_token=True")
    else:
      raise ValueError(f"unknown posemb {self.posemb!r}; expected one of {POSEMB_TYPES}")

    if self.cls_token:
      cls = self.param("cls", layers.partitioned(nn.initializers.zeros, (None, None, "embed")),
                       (1, 1, self.width))
      x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (x.shape[0], 1, 1)), x], axis=1)
    if self.posemb == "learned_with_cls":
      table = self.param("pos_embedding",
                         layers.partitioned(nn.initializers.normal(0.02), ("position", "embed")),
                         (1 + grid_h * grid_w, self.width))
      x = x + table.astype(self.dtype)[None]

    if self.pre_norm:
      x = layers.layer_norm("pre_norm", self.dtype, self.layer_norm_eps)(x)
    out["embedded"] = x  # what the blocks read (HF's hidden_states[0])
    x, blocks, _ = layers.Stack(
        self.depth, self.num_heads, self.mlp_dim, mlp=self.activation, norm_eps=self.layer_norm_eps,
        scan=self.scan, remat=self.remat, dtype=self.dtype, attention=self.attention, name="encoder")(x)
    out.update(blocks)
    x = layers.layer_norm("encoder_norm", self.dtype, self.layer_norm_eps)(x)
    out["encoded"] = x

    if self.pool == "cls":
      pooled = x[:, 0]
    elif self.pool == "gap":
      pooled = jnp.mean(x[:, 1:] if self.cls_token else x, axis=1)
    elif self.pool == "map":
      pooled = MAPHead(self.num_heads, self.mlp_dim, self.dtype, self.activation, self.layer_norm_eps,
                       self.attention, name="map_head")(x)
    else:
      pooled = x
    out["pre_logits"] = pooled
    return pooled, out
