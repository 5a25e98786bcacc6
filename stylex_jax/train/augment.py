"""Adaptive discriminator augmentation (ADA; Karras et al. 2020, "Training Generative Adversarial
Networks with Limited Data") in pure JAX.

`augment` is applied to every image the discriminator sees (reals and fakes, in the D and the G
step alike). It follows the 'bgc' pipeline of the paper: every transformation is applied to each
image independently with probability `p * multiplier`, and the strength `p` is adapted during
training by `update_p` from the overfitting heuristic r_t = E[sign(D(real))].

Pipeline (parameters and their distributions as in NVIDIA's reference implementation):

* blit (exact pixel permutations): x-flip, rotation by a multiple of 90 degrees, integer
  translation by up to `xint_max` of the size. Pixels shifted in from outside come from reflect
  padding (numpy/torch 'reflect': mirrored about the edge pixel's centre, edge not repeated).
* geometric: isotropic scale (2**N(0, scale_std)), pre-rotation, anisotropic scale, post-rotation
  (each rotation with probability 1 - sqrt(1 - p) so that P(any rotation) = p), fractional
  translation (N(0, xfrac_std) of the size). The blit and geometric transforms of an image are
  composed into ONE inverse affine matrix (output pixel -> input pixel, in pixel units about the
  image centre) and the image is resampled ONCE. With `antialias=True` (default, as the reference)
  the image is reflect-padded and upsampled 2x with the orthogonal 'sym6' wavelet low-pass,
  sampled bilinearly and downsampled 2x with the same filter (downsample(upsample(x)) == x), which
  suppresses aliasing when the image is shrunk or rotated; the two filters run as static banded
  matrices along H and W (f32-exact matmuls: fast on CPU, whose small-channel convolutions are
  slow, and cheap on accelerators). With `antialias=False` the image is sampled bilinearly at 1x
  (several times cheaper on CPU; aliases under down-scaling). No black borders: the input is
  reflect-padded by 8 pixels before upsampling (as the reference, whose padding is
  data-dependent), and sample points farther outside are mirrored into the image first.
  Images with no geometric op drawn keep the exact blit result; if no image of the batch draws
  one, the resampling is skipped (`lax.cond`).
* colour: brightness (+N(0, brightness_std)), contrast (x 2**N(0, contrast_std)), luma flip,
  hue rotation about the luma axis and saturation (2**N(0, saturation_std) on the chroma part).
  Like the reference, contrast scales about 0, the mid-grey of [-1, 1], not about the image
  mean. Hue and saturation exist only for 3-channel images. For 1 channel the luma axis
  is the channel itself (the reference averages the rows of its RGB matrix), so the luma flip is
  the negation x -> -x and the colour stage is the per-image affine map x -> f*c*(x + b).

As in the reference, x-flip and luma flip draw flip/no-flip once gated (P(flipped) = p / 2) and
rotate90 draws 0..3 quarter turns (P(rotated) = 3p / 4); every other op changes the image with
probability p * multiplier.

For fixed randomness every op is affine in the pixel values, so `augment` is differentiable with
respect to the images (gradients flow through the gathers, bilinear weights and filters; the
sample coordinates do not depend on the images). With p == 0 no op is ever drawn and the output
is bitwise equal to the input. `p` may be a traced value: changing it does not recompile.

Randomness comes only from the key: one [B, 28] uniform draw (13 gates, 8 value uniforms, 7
value normals by inverse CDF) with fixed columns per op, so enabling or disabling one op does not
change what the others draw.

Imports only jax and numpy (no flax, no tensorflow).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST

# Daubechies' least-asymmetric wavelet 'sym6': decomposition low-pass filter (published constants,
# e.g. PyWavelets; sum sqrt(2), orthonormal to its own even shifts). The ADA paper uses it for the
# 2x up/down-sampling around geometric transforms.
_SYM6 = np.array([
    0.015404109327027373,
    0.0034907120842174702,
    -0.11799011114819057,
    -0.048311742585633,
    0.4910559419267466,
    0.787641141030194,
    0.3379294217276218,
    -0.07263752278646252,
    -0.021060292512300564,
    0.04472490177066578,
    0.0017677118642428036,
    -0.007800708325034148,
])
_TAPS = _SYM6.size
_FILTER_DOWN = _SYM6 / _SYM6.sum()  # sum 1: 2x decimation keeps the mean
_FILTER_UP = 2.0 * _FILTER_DOWN  # sum 2: 2x zero-insertion keeps the mean
_DELAY = float(np.sum(np.arange(_TAPS) * _FILTER_DOWN))  # DC group delay in taps (~5.10)
_OFFSET = int(round(_DELAY))  # integer part of the filter alignment
_PHASE = _DELAY - _OFFSET  # up-grid index k <-> input coordinate (k - _PHASE) / 2
_MARGIN = 8  # reflect padding (input pixels) before upsampling
# Bilinear samples of the up-sampled image are exact (= those of the up-sampled, infinitely
# reflect-padded image) for input coordinates within _VALID pixels of the image (the filter reaches
# ~3.5 pixels, the bilinear neighbour 0.5 more); farther samples are mirrored into the image first.
# The identity's output grid reaches 2.95 pixels outside, so it never mirrors.
_VALID = _MARGIN - 4

# Fixed random columns per op: an op's draws do not depend on which other ops are enabled.
_OP_IDS = {
    name: i for i, name in enumerate(('xflip', 'rotate90', 'xint', 'scale', 'rotate_pre', 'aniso', 'rotate_post',
                                      'xfrac', 'brightness', 'contrast', 'lumaflip', 'hue', 'saturation'))
}  # gate columns
_UNIFORM_COLS = {
    'xflip': 0,
    'rotate90': 1,
    'xint': 2,
    'rotate_pre': 4,
    'rotate_post': 5,
    'lumaflip': 6,
    'hue': 7
}  # xint: 2, 3
_NORMAL_COLS = {'scale': 0, 'aniso': 1, 'xfrac': 2, 'brightness': 4, 'contrast': 5, 'saturation': 6}  # xfrac: 2, 3

_BLIT_OPS = ('xflip', 'rotate90', 'xint')
_GEOM_OPS = ('scale', 'rotate', 'aniso', 'xfrac')
_COLOUR_OPS = ('brightness', 'contrast', 'lumaflip', 'hue', 'saturation')
_ALL_OPS = _BLIT_OPS + _GEOM_OPS + _COLOUR_OPS
_PRESETS = {
    'none': (),
    'b': _BLIT_OPS,
    'g': _GEOM_OPS,
    'c': _COLOUR_OPS,
    'bg': _BLIT_OPS + _GEOM_OPS,
    'bgc': _ALL_OPS,
}


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Which ADA ops run and how strongly. Defaults = the paper's 'bgc' pipeline.

    Multipliers (xflip ... saturation, >= 0) scale the probability p of each op; 0 disables it.
    Ranges: xint_max: max integer translation, fraction of the size, in [0, 0.5];
    scale_std / aniso_std / contrast_std / saturation_std: log2 standard deviations;
    rotate_max / hue_max: rotation range, 1 = full circle; xfrac_std: fraction of the size;
    brightness_std: additive, in image units ([-1, 1] images).
    antialias: 2x sym6 supersampling around the geometric resampling (True, as the reference)
    or plain 1x bilinear (False, cheaper).
    """
  xflip: float = 1.
  rotate90: float = 1.
  xint: float = 1.
  scale: float = 1.
  rotate: float = 1.
  aniso: float = 1.
  xfrac: float = 1.
  brightness: float = 1.
  contrast: float = 1.
  lumaflip: float = 1.
  hue: float = 1.
  saturation: float = 1.
  xint_max: float = 0.125
  scale_std: float = 0.2
  rotate_max: float = 1.
  aniso_std: float = 0.2
  xfrac_std: float = 0.125
  brightness_std: float = 0.2
  contrast_std: float = 0.5
  hue_max: float = 1.
  saturation_std: float = 1.
  antialias: bool = True

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if f.name == 'antialias':
        if not isinstance(value, (bool, np.bool_)):
          raise ValueError(f'AugmentConfig.antialias must be True or False, got {value!r}.')
        continue
      if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f'AugmentConfig.{f.name} must be a number, got {value!r}.')
      if not math.isfinite(value) or value < 0:
        raise ValueError(f'AugmentConfig.{f.name} must be finite and >= 0, got {value!r}; '
                         'use 0 to disable an op.')
    if self.xint_max > 0.5:
      raise ValueError(f'AugmentConfig.xint_max must be in [0, 0.5] (fraction of the image size), '
                       f'got {self.xint_max!r}.')

  @classmethod
  def from_preset(cls, name: str, **overrides) -> 'AugmentConfig':
    """Config of a named pipeline: 'bgc' (blit+geometric+colour), 'bg', 'b', 'g', 'c', 'none'.

        Ops of the preset get multiplier 1, all others 0; `overrides` replace any field afterwards.
        """
    if name not in _PRESETS:
      raise ValueError(f'Unknown ADA preset {name!r}; choose one of {sorted(_PRESETS)}.')
    multipliers = {op: (1. if op in _PRESETS[name] else 0.) for op in _ALL_OPS}
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f'Unknown AugmentConfig field(s) {unknown}; valid fields are '
                       f'{[f.name for f in dataclasses.fields(cls)]}.')
    return cls(**{**multipliers, **overrides})

  def uses(self, group: str, channels: int = 3) -> bool:
    """Whether any op of `group` ('blit' | 'geom' | 'colour') can run on `channels`-channel images."""
    groups = {'blit': _BLIT_OPS, 'geom': _GEOM_OPS, 'colour': _COLOUR_OPS}
    if group not in groups:
      raise ValueError(f'Unknown op group {group!r}; choose one of {sorted(groups)}.')
    ops = groups[group]
    if group == 'colour' and channels == 1:
      ops = ('brightness', 'contrast', 'lumaflip')
    return any(getattr(self, op) > 0 for op in ops)


# ----------------------------------------------------------------------------------------------
# Small matrix helpers (batched 3x3 / 4x4, exact f32 products on every backend).


def _matmul(a, b):
  return jnp.einsum('...ij,...jk->...ik', a, b, precision=_HIGHEST)


def _matrix(rows):
  """rows: nested lists of [B] arrays or Python scalars -> [B, R, K] float32."""
  batch = next(jnp.shape(x) for row in rows for x in row if jnp.ndim(x) > 0)
  return jnp.stack([jnp.stack([jnp.broadcast_to(jnp.asarray(x, jnp.float32), batch) for x in row], -1) for row in rows],
                   -2)


def _translate2d(tx, ty):
  return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def _scale2d(sx, sy):
  return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def _rotate2d(cos, sin):
  return _matrix([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]])


def _quarter_turns(k):
  """k: [B] int in 0..3 -> exact (cos, sin) of k * 90 degrees, [B] float32 each."""
  return (jnp.asarray([1., 0., -1., 0.])[k], jnp.asarray([0., 1., 0., -1.])[k])


def blit_matrix(xflip, rot90, tx, ty) -> jax.Array:
  """Inverse affine matrix of `apply_blit` with the same arguments.

    Returns [B, 3, 3] float32 mapping output pixel coordinates (x right, y down, pixel units,
    origin at the image centre, homogeneous) to input coordinates: src = F @ R @ T @ out.
    """
  xflip = jnp.asarray(xflip).astype(jnp.int32)
  cos, sin = _quarter_turns(jnp.asarray(rot90).astype(jnp.int32) % 4)
  return _matmul(_matmul(_scale2d(1 - 2 * xflip, jnp.ones_like(cos)), _rotate2d(cos, sin)),
                 _translate2d(-jnp.asarray(tx, jnp.float32), -jnp.asarray(ty, jnp.float32)))


# ----------------------------------------------------------------------------------------------
# Executing transformations with given parameters.


def _reflect_index(i, n: int):
  """Integer indices -> [0, n-1] by mirroring about the edge pixels (numpy 'reflect')."""
  if n == 1:
    return jnp.zeros_like(i)
  period = 2 * (n - 1)
  m = jnp.mod(i, period)
  return jnp.where(m > n - 1, period - m, m)


def _reflect_coord(v, n: int):
  """Continuous coordinates -> [0, n-1] by mirroring about 0 and n-1 (pixel centres); values
    already inside are returned unchanged."""
  if n == 1:
    return jnp.zeros_like(v)
  period = 2.0 * (n - 1)
  m = jnp.mod(v, period)
  return jnp.where((v >= 0) & (v <= n - 1), v, jnp.where(m > n - 1, period - m, m))


def _gather(images, y, x):
  """images [B, H, W, C]; y, x [B, Ho, Wo] int32 in range -> [B, Ho, Wo, C]."""
  b, h, w, c = images.shape
  flat = images.reshape(b, h * w, c)
  idx = (y * w + x).reshape(b, -1)
  return jax.vmap(lambda f, i: f[i])(flat, idx).reshape(y.shape + (c,))


def _bilinear(images, sy, sx):
  """Bilinear sampling. images [B, H, W, C]; sy, sx [B, Ho, Wo] float32 index coordinates in
    [0, H-1] x [0, W-1] -> [B, Ho, Wo, C]. Integer coordinates return the pixel exactly."""
  _, h, w, c = images.shape
  y0f, x0f = jnp.floor(sy), jnp.floor(sx)
  wy, wx = (sy - y0f)[..., None], (sx - x0f)[..., None]
  y0 = jnp.clip(y0f.astype(jnp.int32), 0, h - 1)
  x0 = jnp.clip(x0f.astype(jnp.int32), 0, w - 1)
  # One gather of the 2x2 neighbourhood (edge-replicated) instead of four: a quarter of the
  # index work, and one scatter-add instead of four in the backward pass.
  right = jnp.concatenate([images[:, :, 1:], images[:, :, -1:]], axis=2)
  quad = jnp.concatenate([images, right], axis=-1)
  quad = jnp.concatenate([quad, jnp.concatenate([quad[:, 1:], quad[:, -1:]], axis=1)], axis=-1)
  q = _gather(quad, y0, x0)
  top = q[..., :c] * (1 - wx) + q[..., c:2 * c] * wx
  bottom = q[..., 2 * c:3 * c] * (1 - wx) + q[..., 3 * c:] * wx
  return top * (1 - wy) + bottom * wy


def apply_blit(images, xflip, rot90, tx, ty) -> jax.Array:
  """Exact pixel blit of each image: x-flip, then rotation, then translation.

    images: [B, H, W, C] float; xflip: [B] bool/int (1 = mirror left-right, as np.flip(axis=W));
    rot90: [B] int, counter-clockwise quarter turns (as np.rot90 over the H, W axes; needs H == W
    when nonzero); tx, ty: [B] int pixels, content moves right / down. Pixels shifted in come from
    reflect padding. Returns [B, H, W, C], same dtype; each output pixel is an input pixel.
    """
  b, h, w, _ = images.shape
  xflip = jnp.asarray(xflip).astype(jnp.int32).reshape(b, 1, 1)
  k = (jnp.asarray(rot90).astype(jnp.int32) % 4).reshape(b, 1, 1)
  tx = jnp.asarray(tx).astype(jnp.int32).reshape(b, 1, 1)
  ty = jnp.asarray(ty).astype(jnp.int32).reshape(b, 1, 1)
  # Doubled centred coordinates keep everything in integers: d = 2 * (index - (n - 1) / 2).
  yy, xx = jnp.meshgrid(jnp.arange(h, dtype=jnp.int32), jnp.arange(w, dtype=jnp.int32), indexing='ij')
  dx = 2 * xx[None] - (w - 1) - 2 * tx
  dy = 2 * yy[None] - (h - 1) - 2 * ty
  cos = jnp.asarray([1, 0, -1, 0], jnp.int32)[k]
  sin = jnp.asarray([0, 1, 0, -1], jnp.int32)[k]
  dx, dy = cos * dx - sin * dy, sin * dx + cos * dy
  dx = (1 - 2 * xflip) * dx
  # Integer for square images (and for any image when k is 0 or 2).
  sx = _reflect_index((dx + (w - 1)) // 2, w)
  sy = _reflect_index((dy + (h - 1)) // 2, h)
  return _gather(images, sy, sx)


@functools.lru_cache(maxsize=None)
def _up_matrix(n: int) -> np.ndarray:
  """[2(n + 2*_MARGIN), n] float32: reflect-pad by _MARGIN, insert zeros, sym6 low-pass.

    Row k is up index k of the padded signal, at padded coordinate (k - _PHASE) / 2:
    up[k] = sum_j _FILTER_UP[k + _OFFSET - 2j] * padded[j], padded[j] = x[reflect(j - _MARGIN)]."""
  q = _MARGIN
  mat = np.zeros((2 * (n + 2 * q), n))
  period = max(2 * (n - 1), 1)
  src = np.mod(np.arange(n + 2 * q) - q, period)
  src = np.where(src > n - 1, period - src, src)
  j = np.arange(n + 2 * q)
  for m in range(_TAPS):
    k = 2 * j + m - _OFFSET
    ok = (k >= 0) & (k < mat.shape[0])
    np.add.at(mat, (k[ok], src[ok]), _FILTER_UP[m])
  return mat.astype(np.float32)


@functools.lru_cache(maxsize=None)
def _down_matrix(n: int) -> np.ndarray:
  """[n, 2n + _TAPS - 2] float32: sym6 low-pass + 2x decimation, out[i] = sum_m _FILTER_DOWN[m] y[2i + m]."""
  mat = np.zeros((n, 2 * n + _TAPS - 2))
  for i in range(n):
    mat[i, 2 * i:2 * i + _TAPS] = _FILTER_DOWN
  return mat.astype(np.float32)


def _along(mat, x, axis: int):
  """Apply a static [N', N] matrix along axis 1 (H) or 2 (W) of x [B, H, W, C] (f32-exact matmul:
    its transpose is a matmul too, and dense banded matmuls beat tiny-channel convolutions on CPU)."""
  spec = 'kh,bhwc->bkwc' if axis == 1 else 'kw,bhwc->bhkc'
  return jnp.einsum(spec, jnp.asarray(mat), x, precision=_HIGHEST)


def _displacement(g_inv, uy, ux):
  """Source minus output position, centred pixel coords: uy [Ho, 1], ux [1, Wo] -> ([B, Ho, Wo],) * 2.

    Computed as (G - I) @ u + t so that the identity gives exactly 0 (no rounding of large
    coordinates), which keeps unchanged pixels bit-exact in the bilinear path."""
  g = g_inv[:, :, :, None, None]
  dx = (g[:, 0, 0] - 1) * ux + g[:, 0, 1] * uy + g[:, 0, 2]
  dy = g[:, 1, 0] * ux + (g[:, 1, 1] - 1) * uy + g[:, 1, 2]
  return dy, dx


def apply_affine(images, g_inv, antialias: bool = True) -> jax.Array:
  """Resample each image under an inverse affine transform, once.

    images: [B, H, W, C] float; g_inv: [B, 3, 3] float maps OUTPUT pixel coordinates to INPUT ones
    (x right, y down, pixel units, origin at the image centre ((W-1)/2, (H-1)/2), homogeneous;
    the last row is ignored). Outside the image the input is mirrored about the edge pixels.
    antialias=True: 2x sym6 upsampling, bilinear sampling, 2x sym6 downsampling (the identity
    matrix returns the image to ~1e-6); False: bilinear at 1x (identity is exact).
    Returns [B, H, W, C] float32; linear in `images`.
    """
  _, h, w, _ = images.shape
  images = images.astype(jnp.float32)
  g_inv = jnp.asarray(g_inv, jnp.float32)
  if not antialias:
    iy = jnp.arange(h, dtype=jnp.float32)[:, None]
    ix = jnp.arange(w, dtype=jnp.float32)[None, :]
    dy, dx = _displacement(g_inv, iy - (h - 1) / 2, ix - (w - 1) / 2)
    return _bilinear(images, _reflect_coord(iy + dy, h), _reflect_coord(ix + dx, w))
  q = _MARGIN
  up = _along(_up_matrix(w), _along(_up_matrix(h), images, 1), 2)  # [B, 2(H+2q), 2(W+2q), C]
  # Output up-grid: array index a <-> output coordinate (a - _OFFSET - _PHASE) / 2; 2n + _TAPS - 2
  # samples per axis cover every tap of the decimation filter. Its source point lies at up index
  # (a - _OFFSET + 2q) + 2 * displacement, or is mirrored into the image when far outside it.
  ay = jnp.arange(2 * h + _TAPS - 2, dtype=jnp.float32)[:, None]
  ax = jnp.arange(2 * w + _TAPS - 2, dtype=jnp.float32)[None, :]
  vy, vx = (ay - _OFFSET - _PHASE) / 2, (ax - _OFFSET - _PHASE) / 2
  dy, dx = _displacement(g_inv, vy - (h - 1) / 2, vx - (w - 1) / 2)

  def up_index(a, v, d, n):
    src = v + d
    inside = (src >= -_VALID) & (src <= n - 1 + _VALID)
    mirrored = 2 * (_reflect_coord(src, n) + q) + _PHASE
    return jnp.where(inside, (a - _OFFSET + 2 * q) + 2 * d, mirrored)

  sampled = _bilinear(up, up_index(ay, vy, dy, h), up_index(ax, vx, dx, w))
  return _along(_down_matrix(w), _along(_down_matrix(h), sampled, 1), 2)


def apply_colour(images, matrix) -> jax.Array:
  """Per-image colour transform. images: [B, H, W, C] float, C = 1 or 3; matrix: [B, 4, 4]
    homogeneous RGB transform (out = M[:3, :3] @ rgb + M[:3, 3]). For C = 1 the luma axis is the
    channel: out = x * sum(mean_rows(M[:3, :3])) + mean(M[:3, 3]) (the reference's reduction).
    Returns [B, H, W, C] float32."""
  images = images.astype(jnp.float32)
  matrix = jnp.asarray(matrix, jnp.float32)
  if images.shape[-1] == 3:
    lin = matrix[:, None, None, :3, :3]
    return (lin * images[..., None, :]).sum(-1) + matrix[:, None, None, :3, 3]
  rows = matrix[:, :3, :].mean(axis=1)
  return images * rows[:, :3].sum(-1)[:, None, None, None] + rows[:, 3][:, None, None, None]


# ----------------------------------------------------------------------------------------------
# Drawing the parameters.


class _Draws(NamedTuple):
  xflip: jax.Array  # [B] int32 in {0, 1}
  rot90: jax.Array  # [B] int32 in 0..3
  tx: jax.Array  # [B] int32 pixels
  ty: jax.Array  # [B] int32 pixels
  geom_inv: jax.Array  # [B, 3, 3] float32, identity where no geometric op was drawn
  geom_active: jax.Array  # [B] bool
  gain: jax.Array  # [B] float32, 1-channel colour: x -> gain * x + offset
  offset: jax.Array  # [B] float32
  colour: jax.Array  # [B, 4, 4] float32, 3-channel colour matrix


def _draw(key, p, batch: int, height: int, width: int, channels: int, cfg: AugmentConfig) -> _Draws:
  # ONE RNG call (threefry compiles slowly on CPU) with a fixed column per op, so an op's draws
  # do not depend on which other ops are enabled: gate uniforms, value uniforms, and uniforms
  # turned into standard normals by the inverse CDF (as jax.random.normal does).
  n_gate, n_unif, n_norm = len(_OP_IDS), len(_UNIFORM_COLS) + 1, len(_NORMAL_COLS) + 1
  draws = jax.random.uniform(key, [batch, n_gate + n_unif + n_norm])
  gates = draws[:, :n_gate]
  unif = draws[:, n_gate:n_gate + n_unif]  # xint uses 2 columns
  lo = np.nextafter(np.float32(-1), np.float32(0))
  norm = np.sqrt(2.) * jax.lax.erf_inv(jnp.maximum(2 * draws[:, n_gate + n_unif:] - 1, lo))  # xfrac: 2

  def gate(op, prob):
    return gates[:, _OP_IDS[op]] < prob

  def u(op, width_=1):
    col = _UNIFORM_COLS[op]
    return unif[:, col] if width_ == 1 else unif[:, col:col + width_]

  def n(op, width_=1):
    col = _NORMAL_COLS[op]
    return norm[:, col] if width_ == 1 else norm[:, col:col + width_]

  ones = jnp.ones([batch], jnp.float32)
  zeros = jnp.zeros([batch], jnp.float32)
  izeros = jnp.zeros([batch], jnp.int32)

  xflip = rot90 = tx = ty = izeros
  if cfg.xflip > 0:
    xflip = jnp.where(gate('xflip', cfg.xflip * p), jnp.floor(u('xflip') * 2), 0.).astype(jnp.int32)
  if cfg.rotate90 > 0:
    rot90 = jnp.where(gate('rotate90', cfg.rotate90 * p), jnp.floor(u('rotate90') * 4), 0.).astype(jnp.int32)
  if cfg.xint > 0:
    t = (u('xint', 2) * 2 - 1) * cfg.xint_max
    on = gate('xint', cfg.xint * p)
    tx = jnp.where(on, jnp.round(t[:, 0] * width), 0.).astype(jnp.int32)
    ty = jnp.where(on, jnp.round(t[:, 1] * height), 0.).astype(jnp.int32)

  geom = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (batch, 3, 3))
  active = jnp.zeros([batch], bool)
  if cfg.scale > 0:
    on = gate('scale', cfg.scale * p)
    s = jnp.where(on, jnp.exp2(n('scale') * cfg.scale_std), 1.)
    geom, active = _matmul(geom, _scale2d(1 / s, 1 / s)), active | on
  # P(pre OR post rotation) = rotate * p.
  p_rot = 1 - jnp.sqrt(jnp.clip(1 - cfg.rotate * p, 0., 1.))
  if cfg.rotate > 0:
    on = gate('rotate_pre', p_rot)
    theta = jnp.where(on, (u('rotate_pre') * 2 - 1) * np.pi * cfg.rotate_max, 0.)
    geom, active = _matmul(geom, _rotate2d(jnp.cos(theta), jnp.sin(theta))), active | on
  if cfg.aniso > 0:
    on = gate('aniso', cfg.aniso * p)
    s = jnp.where(on, jnp.exp2(n('aniso') * cfg.aniso_std), 1.)
    geom, active = _matmul(geom, _scale2d(1 / s, s)), active | on
  if cfg.rotate > 0:
    on = gate('rotate_post', p_rot)
    theta = jnp.where(on, (u('rotate_post') * 2 - 1) * np.pi * cfg.rotate_max, 0.)
    geom, active = _matmul(geom, _rotate2d(jnp.cos(theta), jnp.sin(theta))), active | on
  if cfg.xfrac > 0:
    on = gate('xfrac', cfg.xfrac * p)
    t = jnp.where(on[:, None], n('xfrac', 2) * cfg.xfrac_std, 0.)
    geom, active = _matmul(geom, _translate2d(-t[:, 0] * width, -t[:, 1] * height)), active | on

  # Colour, applied in the order brightness, contrast, luma flip, hue, saturation.
  b, c, flip = zeros, ones, zeros
  if cfg.brightness > 0:
    b = jnp.where(gate('brightness', cfg.brightness * p), n('brightness') * cfg.brightness_std, 0.)
  if cfg.contrast > 0:
    c = jnp.where(gate('contrast', cfg.contrast * p), jnp.exp2(n('contrast') * cfg.contrast_std), 1.)
  if cfg.lumaflip > 0:
    flip = jnp.where(gate('lumaflip', cfg.lumaflip * p), jnp.floor(u('lumaflip') * 2), 0.)
  gain = c * (1 - 2 * flip)
  offset = gain * b

  colour = jnp.broadcast_to(jnp.eye(4, dtype=jnp.float32), (batch, 4, 4))
  if channels == 3 and cfg.uses('colour', 3):
    v = np.array([1., 1., 1., 0.]) / np.sqrt(3.)
    vvt = jnp.asarray(np.outer(v, v), jnp.float32)
    eye = jnp.eye(4, dtype=jnp.float32)
    colour = _matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]])
    colour = _matmul(_matrix([[c, 0, 0, 0], [0, c, 0, 0], [0, 0, c, 0], [0, 0, 0, 1]]), colour)
    colour = _matmul(eye - 2 * vvt * flip[:, None, None], colour)  # Householder
    if cfg.hue > 0:
      theta = jnp.where(gate('hue', cfg.hue * p), (u('hue') * 2 - 1) * np.pi * cfg.hue_max, 0.)
      kx = v[:3]  # rotation axis
      cross = jnp.asarray(np.array([[0, -kx[2], kx[1], 0], [kx[2], 0, -kx[0], 0], [-kx[1], kx[0], 0, 0], [0, 0, 0, 0]]),
                          jnp.float32)
      cross2 = _matmul(cross, cross)
      rot = (eye + jnp.sin(theta)[:, None, None] * cross + (1 - jnp.cos(theta))[:, None, None] * cross2)  # Rodrigues
      colour = _matmul(rot, colour)
    if cfg.saturation > 0:
      s = jnp.where(gate('saturation', cfg.saturation * p), jnp.exp2(n('saturation') * cfg.saturation_std), 1.)
      chroma = jnp.asarray(np.diag([1., 1., 1., 0.]) - np.outer(v, v), jnp.float32)
      colour = _matmul(eye + (s - 1)[:, None, None] * chroma, colour)
  return _Draws(xflip, rot90, tx, ty, geom, active, gain, offset, colour)


# ----------------------------------------------------------------------------------------------
# The public entry points.


def _check_inputs(images, p, config):
  if not isinstance(config, AugmentConfig):
    raise ValueError(f'config must be an AugmentConfig (e.g. AugmentConfig.from_preset("bgc")), '
                     f'got {type(config).__name__}.')
  shape = jnp.shape(images)
  if len(shape) != 4:
    raise ValueError(f'augment expects images of shape [B, H, W, C], got shape {shape}; '
                     'add the batch/channel axis.')
  if shape[-1] not in (1, 3):
    raise ValueError(f'augment expects 1 (grey) or 3 (RGB) channels, got {shape[-1]} (shape {shape}); '
                     'images must be NHWC.')
  if not jnp.issubdtype(jnp.result_type(images), jnp.floating):
    raise ValueError(f'augment expects float images in [-1, 1], got dtype {jnp.result_type(images)}; '
                     'convert uint8 with x / 127.5 - 1.')
  if shape[1] < 2 or shape[2] < 2:
    raise ValueError(f'augment needs images of at least 2x2 pixels, got {shape[1]}x{shape[2]}.')
  if config.rotate90 > 0 and shape[1] != shape[2]:
    raise ValueError(f'rotate90 needs square images, got {shape[1]}x{shape[2]}; crop/resize to '
                     'square or set AugmentConfig(rotate90=0).')
  if jnp.ndim(p) != 0:
    raise ValueError(f'p must be a scalar augmentation probability in [0, 1], got shape {jnp.shape(p)}.')


def augment(images, key, p, config: AugmentConfig = AugmentConfig()) -> jax.Array:
  """ADA augmentation of a batch (what the discriminator sees).

    images: [B, H, W, C] float in ~[-1, 1], C 1 or 3 (H == W when rotate90 is on);
    key: jax.random.key; p: scalar probability in [0, 1], may be traced (no recompile when it
    changes; keep it a float32 array, e.g. in the train state: a Python float is weakly typed and
    traces once more); config: static (hashable, frozen). Returns [B, H, W, C] with the input dtype, augmented per image
    independently. Pure, jit-able, differentiable w.r.t. images. p == 0 returns the input exactly.
    """
  _check_inputs(images, p, config)
  images = jnp.asarray(images)
  dtype = images.dtype
  batch, height, width, channels = images.shape
  p = jnp.asarray(p, jnp.float32)
  x = images.astype(jnp.float32)
  d = _draw(key, p, batch, height, width, channels, config)

  out = apply_blit(x, d.xflip, d.rot90, d.tx, d.ty) if config.uses('blit') else x
  if config.uses('geom'):
    g_inv = _matmul(blit_matrix(d.xflip, d.rot90, d.tx, d.ty), d.geom_inv)
    blitted = out

    def resample():
      warped = apply_affine(x, g_inv, config.antialias)
      return jnp.where(d.geom_active[:, None, None, None], warped, blitted)

    out = jax.lax.cond(jnp.any(d.geom_active), resample, lambda: blitted)
  if config.uses('colour', channels):
    if channels == 3:
      out = apply_colour(out, d.colour)
    else:
      out = out * d.gain[:, None, None, None] + d.offset[:, None, None, None]
  return out.astype(dtype)


@dataclasses.dataclass(frozen=True)
class AdaController:
  """ADA strength schedule: every `interval` steps, move p by batch*interval/(speed_kimg*1000)
    towards r_t = E[sign(D(real))] == target (p can go 0 -> 1 in speed_kimg thousand images)."""
  target: float = 0.6
  interval: int = 4
  speed_kimg: float = 500.

  def __post_init__(self):
    _check_controller(self.interval, self.target, self.speed_kimg)

  def update(self, p, rt_sign_mean, batch_size: int) -> jax.Array:
    """New p (scalar float32 in [0, 1]) after one interval; see `update_p`."""
    return update_p(p, rt_sign_mean, batch_size, self.interval, self.target, self.speed_kimg)


def _check_controller(interval, target, speed_kimg):
  if isinstance(interval, bool) or not isinstance(interval, (int, np.integer)) or interval < 1:
    raise ValueError(f'ADA interval must be a positive int (steps between p updates), got {interval!r}.')
  if not (isinstance(target, (int, float, np.floating)) and 0 < target <= 1):
    raise ValueError(f'ADA target must be in (0, 1] (the paper uses 0.6), got {target!r}.')
  if not (isinstance(speed_kimg, (int, float, np.floating)) and speed_kimg > 0):
    raise ValueError(f'ADA speed_kimg must be > 0 (thousands of images for p to go 0 -> 1), '
                     f'got {speed_kimg!r}.')


def update_p(p, rt_sign_mean, batch_size: int, interval: int = 4, target: float = 0.6,
             speed_kimg: float = 500.) -> jax.Array:
  """One ADA strength update.

    p: scalar in [0, 1]; rt_sign_mean: scalar E[sign(D(real logits))] over the last `interval`
    steps, in [-1, 1] (both may be traced); batch_size: global images per step (static).
    Returns float32 scalar clip(p + sign(rt - target) * batch_size * interval / (speed_kimg * 1000), 0, 1).
    """
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
    raise ValueError(f'batch_size must be a positive int (global images per step), got {batch_size!r}.')
  _check_controller(interval, target, speed_kimg)
  if jnp.ndim(p) != 0 or jnp.ndim(rt_sign_mean) != 0:
    raise ValueError(f'p and rt_sign_mean must be scalars, got shapes {jnp.shape(p)} and '
                     f'{jnp.shape(rt_sign_mean)}; average sign(D(real)) over the interval first.')
  step = batch_size * interval / (speed_kimg * 1000.)
  rt = jnp.asarray(rt_sign_mean, jnp.float32)
  new_p = jnp.asarray(p, jnp.float32) + jnp.sign(rt - target) * step
  return jnp.clip(new_p, 0., 1.)
