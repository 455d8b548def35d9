"""Resampling learned position embeddings to another patch grid (loading a tower at another image size).

The interpolation is torch's `F.interpolate(mode="bicubic", align_corners=False)` (cubic convolution with
a = -0.75, edge indices clamped), the one HF's `interpolate_pos_encoding` uses, so a resampled tower agrees
with transformers run at the new size. At the original size it is the identity.
"""

import numpy as np

_A = -0.75  # torch's bicubic coefficient (PIL and jax.image use -0.5: not the same numbers).


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """float64[N, 4]: weights of the samples at offsets -1, 0, 1, 2 for fractional positions t in [0, 1)."""
  def near(x):  # |x| <= 1
    return ((_A + 2) * x - (_A + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def bicubic_matrix(size_in: int, size_out: int) -> np.ndarray:
  """float64[size_out, size_in]: the linear map of 1D bicubic resampling, align_corners=False."""
  source = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
  start = np.floor(source).astype(int)
  weights = _cubic_weights(source - start)
  matrix = np.zeros((size_out, size_in))
  for k in range(4):
    np.add.at(matrix, (np.arange(size_out), np.clip(start - 1 + k, 0, size_in - 1)), weights[:, k])
  return matrix


def resample_grid(table: np.ndarray, grid_in: tuple, grid_out: tuple) -> np.ndarray:
  """float[h_in * w_in, D] (row-major over the patch grid) -> float32[h_out * w_out, D], bicubic."""
  (h_in, w_in), (h_out, w_out) = grid_in, grid_out
  grid = table.reshape(h_in, w_in, -1).astype(np.float64)
  grid = np.einsum("oh,hwd->owd", bicubic_matrix(h_in, h_out), grid)
  grid = np.einsum("pw,owd->opd", bicubic_matrix(w_in, w_out), grid)
  return grid.reshape(h_out * w_out, -1).astype(np.float32)


def resample_posemb(table: np.ndarray, grid_in: int, grid_out: int, num_prefix: int) -> np.ndarray:
  """float[num_prefix + grid_in**2, D] -> float32[num_prefix + grid_out**2, D].

  The first `num_prefix` rows (CLIP's CLS position) are kept as they are; the rest are a square patch grid.
  """
  prefix, grid = table[:num_prefix], table[num_prefix:]
  if grid.shape[0] != grid_in * grid_in:
    raise ValueError(f"position table has {grid.shape[0]} patch rows, expected {grid_in}x{grid_in}")
  return np.concatenate([prefix.astype(np.float32),
                         resample_grid(grid, (grid_in, grid_in), (grid_out, grid_out))], axis=0)
