"""Image similarity for reconstructions: SSIM, MS-SSIM and PSNR, per image, in jax and differentiable.

All functions take two image batches `a, b: [B, H, W, C]` with values in [-1, 1] (data range L = 2) and return
one value per image, `[B]` float32. They are pure jax (usable as losses under `jax.grad` / `jax.jit` /
`jax.vmap`).

SSIM follows Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, 'valid' filtering (no padding, so a
H x W image gives (H-10) x (W-10) local SSIM values), constants C1 = (0.01 L)^2, C2 = (0.03 L)^2, biased local
(co)variances (no N/(N-1) correction), the mean over pixels and channels. Images must be at least 11 px a side.

MS-SSIM follows Wang et al. (2003) with the standard per-scale weights (0.0448, 0.2856, 0.3001, 0.2363,
0.1333), but small images do not have five scales: at 32-64 px the 11-px window only fits three (64 px:
64/32/16) or two (32 px: 32/16) scales. `ms_ssim` therefore uses `scales = min(5, 1 + floor(log2(min(H, W) /
11)))` scales (or the number given) and renormalises the first `scales` weights to sum to 1; downsampling is
2x2 average pooling. Contrast-structure terms are clipped to >= 1e-6 before the fractional power (as
pytorch-msssim clips them at 0) so the gradient stays finite.

PSNR = 10 log10(L^2 / MSE) with L = 2, capped at 100 dB for identical images.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

WINDOW_SIZE = 11
SIGMA = 1.5
DATA_RANGE = 2.0  # images in [-1, 1]
K1, K2 = 0.01, 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MAX_PSNR = 100.0


def gaussian_window(size: int = WINDOW_SIZE, sigma: float = SIGMA) -> np.ndarray:
  """Normalised 1-D Gaussian [size] centred on the middle tap."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  g = np.exp(-x**2 / (2 * sigma**2))
  return (g / g.sum()).astype(np.float32)


def _check(a, b, min_size: int, who: str):
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f'{who}: a and b must be [B, H, W, C] of the same shape, got {a.shape} and {b.shape}')
  if min(a.shape[1:3]) < min_size:
    raise ValueError(f'{who}: images of {a.shape[1]}x{a.shape[2]} px are smaller than the {min_size}-px window; '
                     f'resize them to at least {min_size} px')


@functools.lru_cache(maxsize=None)
def _band(n: int) -> np.ndarray:
  """The 'valid' Gaussian filter along an axis of length n as a banded matrix [n - 10, n]: row i holds the window
  at columns i..i+10."""
  window = gaussian_window()
  m = n - WINDOW_SIZE + 1
  band = np.zeros((m, n), np.float32)
  for i in range(m):
    band[i, i:i + WINDOW_SIZE] = window
  return band


def _filter(x: jax.Array) -> jax.Array:
  """Separable 'valid' Gaussian filtering of every channel: [..., H, W, C] -> [..., H-10, W-10, C].

  Two matrix products with banded matrices rather than two depthwise convolutions: the same sums, but matmuls
  are what every backend runs fastest: SSIM's value and gradient for 16 images of 64x64 take 3 ms instead of 53 ms
  on a 2-core XLA:CPU, 169 ms instead of 689 ms at 256x256 (`benchmarks/ssim.py`)."""
  x = jnp.einsum('ih,...hwc->...iwc', _band(x.shape[-3]), x, precision=jax.lax.Precision.HIGHEST)
  return jnp.einsum('jw,...iwc->...ijc', _band(x.shape[-2]), x, precision=jax.lax.Precision.HIGHEST)


def _ssim_terms(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean SSIM [B], mean contrast-structure [B]) over the valid pixels and channels."""
  c1, c2 = (K1 * DATA_RANGE)**2, (K2 * DATA_RANGE)**2
  mu_a, mu_b, aa, bb, ab = _filter(jnp.stack([a, b, a * a, b * b, a * b]))  # the five local moments at once
  var_a = aa - mu_a**2
  var_b = bb - mu_b**2
  cov = ab - mu_a * mu_b
  cs = (2 * cov + c2) / (var_a + var_b + c2)
  lum = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
  return jnp.mean(lum * cs, axis=(1, 2, 3)), jnp.mean(cs, axis=(1, 2, 3))


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
  """SSIM per image. a, b: [B, H, W, C] in [-1, 1], H, W >= 11. Returns [B] float32 in [-1, 1]."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  _check(a, b, WINDOW_SIZE, 'ssim')
  return _ssim_terms(a, b)[0]


def ms_ssim_scales(height: int, width: int) -> int:
  """Number of MS-SSIM scales whose smallest image still holds the 11-px window (1..5): 64 px -> 3, 32 px -> 2."""
  side = min(height, width)
  if side < WINDOW_SIZE:
    return 0
  return int(min(5, 1 + math.floor(math.log2(side / WINDOW_SIZE))))


def _avg_pool2(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  h2, w2 = h // 2, w // 2
  x = x[:, :2 * h2, :2 * w2]
  return x.reshape(b, h2, 2, w2, 2, c).mean(axis=(2, 4))


def ms_ssim(a: jax.Array, b: jax.Array, scales: int | None = None) -> jax.Array:
  """Multi-scale SSIM per image (see the module docstring for the scales used at 32-64 px).

  a, b: [B, H, W, C] in [-1, 1], H, W >= 11. scales: None = `ms_ssim_scales(H, W)`, else 1..5 and small enough
  for the window. Returns [B] float32 in (0, 1].
  """
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  _check(a, b, WINDOW_SIZE, 'ms_ssim')
  auto = ms_ssim_scales(a.shape[1], a.shape[2])
  scales = auto if scales is None else int(scales)
  if not 1 <= scales <= auto:
    raise ValueError(f'ms_ssim: scales={scales} does not fit {a.shape[1]}x{a.shape[2]} px images with the '
                     f'{WINDOW_SIZE}-px window; use 1..{auto}')
  weights = np.asarray(MS_SSIM_WEIGHTS[:scales], np.float64)
  weights = weights / weights.sum()
  out = jnp.ones(a.shape[0], jnp.float32)
  for s in range(scales):
    full, cs = _ssim_terms(a, b)
    term = full if s == scales - 1 else cs
    out = out * jnp.maximum(term, 1e-6)**float(weights[s])
    if s < scales - 1:
      a, b = _avg_pool2(a), _avg_pool2(b)
  return out


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """PSNR in dB per image, data range 2 ([-1, 1] images). a, b: [B, H, W, C]. Returns [B], capped at 100."""
  a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f'psnr: a and b must be [B, H, W, C] of the same shape, got {a.shape} and {b.shape}')
  mse = jnp.mean(jnp.square(a - b), axis=(1, 2, 3))
  value = 10.0 * jnp.log10(DATA_RANGE**2 / jnp.maximum(mse, 1e-30))
  return jnp.minimum(value, MAX_PSNR)
