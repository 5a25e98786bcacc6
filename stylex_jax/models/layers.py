"""StyleGAN2 building blocks in Flax Linen (NHWC), faithful to NVIDIA's StyleGAN2-ADA.

What is here:

* FIR resampling: `setup_filter`, `upfirdn2d`, `filter2d`, `upsample2d`, `downsample2d` — the reference's
  pad / zero-insert / FIR-filter / subsample operator, applied per channel (depthwise). It is computed as one
  `lax.pad` (zero insertion, padding, cropping) plus shifted, strided multiply-adds (two 1-D passes for
  separable filters such as [1,3,3,1]): XLA fuses these on every backend, whereas depthwise / input-dilated
  convolutions are 20-60x slower on XLA:CPU. Padding and gain follow the reference: `upsample2d` pads by
  ((fw+up-1)//2, (fw-up)//2) and multiplies by up**2, `downsample2d` pads by ((fw-down+1)//2, (fw-down)//2),
  so a constant image keeps its value away from the borders.
* `conv2d_resample`: 2-D convolution with optional FIR up/down-sampling (up: transposed conv then FIR,
  down: FIR then strided conv, 1x1 down: FIR-subsample then 1x1 conv), with grouped-conv support;
  `transposed_conv2d` computes the stride-2 transposed conv in polyphase form with one ordinary convolution, or,
  inside `dot_transposed_convolutions()`, as one dot + overlap-add.
  Every convolution goes through `conv2d`: XLA's native convolution, or, inside `im2col_convolutions()`, the
  same correlation as slices + one dot (faster second-order derivatives on XLA:CPU; see `conv2d`).
* `bias_act`: bias + linear/lrelu(0.2) activation with the reference's default gains (1, sqrt 2), optional clamp.
* Equalized learning rate everywhere: weights are stored as N(0, 1) / lr_multiplier and multiplied at run time by
  lr_multiplier / sqrt(fan_in); biases are stored as `bias_init` and multiplied by lr_multiplier at run time
  (exactly the reference's FullyConnectedLayer / Conv2dLayer). `EqualDense`, `EqualConv2d`.
* `modulated_conv2d` (pure function) and `ModulatedConv2d` (module with its affine style layer, bias init 1):
  modulation, optional weight demodulation, up=2 via transposed conv + FIR. Both executions are implemented:
  `fused=True` (per-sample weights, one grouped conv with feature_group_count = batch) and `fused=False`
  (scale activations by styles, shared-weight conv, scale outputs by demodulation coefficients); they agree to
  float rounding.
* `NoiseInjection` (learned strength, init 0), `MinibatchStdDev`, `ToRGB`.

Conventions: images/activations are NHWC; dense kernels are [in, out]; conv kernels are HWIO [kh, kw, in, out].
Convolutions without upsampling are correlations (like torch.nn.functional.conv2d); the up=2 convolution applies
its kernel as a true convolution, as the reference does (flip_weight=False there), so weights ported from the
PyTorch reference (transposed OIHW -> HWIO) give the same function. Parameters are always float32; `dtype` is the
compute dtype (e.g. jnp.bfloat16); styles and demodulation coefficients are computed in float32.

Constant noise ('const' mode) is *derived deterministically*, not stored: each NoiseInjection draws
N(0, 1) [H, W] noise from `jax.random.key(CONST_NOISE_SEED)` folded with a CRC32 of its module path. It therefore
needs no rng and no extra variable collection, so a synthesis call is a pure function of (params, ws) in
'const' and 'none' modes, and the same parameters always give the same 'const' images.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import zlib
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Dtype = Any
Padding = Union[int, Sequence[int]]

DEFAULT_FILTER: Tuple[int, ...] = (1, 3, 3, 1)
LRELU_ALPHA = 0.2
ACTIVATION_GAINS = {'linear': 1.0, 'lrelu': math.sqrt(2.0)}
CONST_NOISE_SEED = 0x5EED
NOISE_MODES = ('random', 'const', 'none')
_DN = ('NHWC', 'HWIO', 'NHWC')

# ----------------------------------------------------------------------------------------------------------------
# FIR filters and upfirdn2d.


def setup_filter(f: Any = DEFAULT_FILTER, normalize: bool = True, separable: bool = False,
                 gain: float = 1.0) -> np.ndarray:
  """Prepare an FIR filter for `upfirdn2d`.

    Args:
      f: taps, 1-D sequence (e.g. [1, 3, 3, 1]) or a 2-D array [fh, fw].
      normalize: divide by the sum so a constant (DC) signal keeps its magnitude.
      separable: for 1-D taps, return them as 1-D (applied along x then y); otherwise the outer product [fh, fw].
      gain: overall signal gain, folded into the filter (gain ** (ndim / 2) per tap, like the reference).
    Returns:
      float32 numpy array [fh, fw] (or [taps] when separable).
    """
  f = np.asarray(f, dtype=np.float64)
  if f.ndim == 0:
    f = f[None]
  if f.ndim not in (1, 2) or f.size == 0:
    raise ValueError(f'FIR filter must be 1-D taps or a 2-D array, got shape {f.shape}; pass e.g. [1, 3, 3, 1].')
  if f.ndim == 1 and not separable:
    f = np.outer(f, f)
  if normalize:
    total = f.sum()
    if total == 0:
      raise ValueError('FIR filter sums to 0 and cannot be normalised; pass normalize=False.')
    f = f / total
  f = f * (gain**(f.ndim / 2))
  return f.astype(np.float32)


def _parse_padding(padding: Padding) -> Tuple[int, int, int, int]:
  """int | (pad_x, pad_y) | (x0, x1, y0, y1) -> (x0, x1, y0, y1), the reference's convention."""
  if isinstance(padding, (int, np.integer)):
    p = int(padding)
    return p, p, p, p
  padding = [int(p) for p in padding]
  if len(padding) == 2:
    return padding[0], padding[0], padding[1], padding[1]
  if len(padding) == 4:
    return tuple(padding)  # type: ignore[return-value]
  raise ValueError(f'padding must be an int, (pad_x, pad_y) or (x0, x1, y0, y1); got {padding}.')


def _check_factor(name: str, v: int) -> int:
  if not isinstance(v, (int, np.integer)) or int(v) < 1:
    raise ValueError(f'{name} must be a positive integer, got {v!r}.')
  return int(v)


def _rank1_factors(f: np.ndarray) -> Optional[Tuple[np.ndarray, np.ndarray]]:
  """(col, row) with outer(col, row) == f when the concrete 2-D filter is separable, else None."""
  i, j = np.unravel_index(np.argmax(np.abs(f)), f.shape)
  col, row = f[:, j] / f[i, j], f[i, :]
  if np.allclose(np.outer(col, row), f, rtol=1e-6, atol=1e-9 * np.abs(f).max()):
    return col, row
  return None


def _corr_1d(x: jax.Array, taps: Any, axis: int, down: int) -> jax.Array:
  """Valid correlation of x with `taps` along `axis`, keeping every `down`-th output: shifted, strided sums."""
  k = len(taps)
  n_out = (x.shape[axis] - k) // down + 1
  if n_out < 1:
    raise ValueError(f'upfirdn2d: image of size {x.shape[axis]} (after padding) is smaller than the {k}-tap '
                     f'filter; use a larger image or more padding.')
  out = None
  for t in range(k):
    term = taps[t] * lax.slice_in_dim(x, t, t + down * (n_out - 1) + 1, stride=down, axis=axis)
    out = term if out is None else out + term
  return out


def _corr_2d(x: jax.Array, f: Any, downy: int, downx: int) -> jax.Array:
  """Valid 2-D correlation of x [B, H, W, C] with a (non-separable) filter f [fh, fw], then subsampling."""
  fh, fw = len(f), len(f[0])
  ho, wo = (x.shape[1] - fh) // downy + 1, (x.shape[2] - fw) // downx + 1
  if ho < 1 or wo < 1:
    raise ValueError(f'upfirdn2d: padded image {x.shape[1:3]} is smaller than the {fh}x{fw} filter.')
  out = None
  for ty in range(fh):
    for tx in range(fw):
      win = lax.slice(x, (0, ty, tx, 0), (x.shape[0], ty + downy * (ho - 1) + 1, tx + downx * (wo - 1) + 1, x.shape[3]),
                      (1, downy, downx, 1))
      term = f[ty][tx] * win
      out = term if out is None else out + term
  return out


def upfirdn2d(x: jax.Array, f: Any, up: int = 1, down: int = 1, padding: Padding = 0, flip_filter: bool = False,
              gain: float = 1.0) -> jax.Array:
  """Pad, upsample, FIR-filter and downsample a batch of images (the reference's `upfirdn2d`).

    Per channel: insert up-1 zeros after every pixel; pad by `padding` (negative crops); convolve with `f`
    keeping only outputs whose footprint lies inside; keep every `down`-th pixel. Same as scipy.signal.upfirdn
    applied along both axes, up to the padding convention. Implemented as one `lax.pad` (zero insertion, padding,
    cropping) and shifted/strided multiply-adds (separable filters in two 1-D passes), computed in float32: XLA
    fuses these into cheap elementwise loops on every backend, forward and backward (depthwise convolutions with
    input dilation are very slow on XLA:CPU).

    Args:
      x: [B, H, W, C] any float dtype.
      f: prepared filter (see `setup_filter`): [fh, fw], or 1-D [taps] for a separable filter.
      up, down: integer factors >= 1 (same on both axes).
      padding: int, (pad_x, pad_y) or (x0, x1, y0, y1), relative to the upsampled image.
      flip_filter: False = convolution (reference default), True = correlation.
      gain: signal gain (multiplies the filter by gain ** (ndim / 2) per pass).
    Returns:
      [B, (H*up + y0 + y1 - fh) // down + 1, (W*up + x0 + x1 - fw) // down + 1, C], dtype of x.
    """
  if x.ndim != 4:
    raise ValueError(f'upfirdn2d expects NHWC images [B, H, W, C], got shape {x.shape}.')
  up = _check_factor('up', up)
  down = _check_factor('down', down)
  x0, x1, y0, y1 = _parse_padding(padding)
  traced = isinstance(f, jax.core.Tracer)
  f = jnp.asarray(f, jnp.float32) if traced else np.asarray(f, np.float64)
  if f.ndim not in (1, 2):
    raise ValueError(f'FIR filter must be [taps] or [fh, fw], got shape {f.shape}; use setup_filter().')
  if not flip_filter:
    f = f[::-1] if f.ndim == 1 else f[::-1, ::-1]
  f = f * (gain**(f.ndim / 2))
  dtype = x.dtype
  y = x.astype(jnp.float32)
  if up > 1 or min(x0, x1, y0, y1) != 0 or max(x0, x1, y0, y1) != 0:
    y = lax.pad(y, jnp.zeros((), jnp.float32), [(0, 0, 0), (y0, y1 + up - 1, up - 1), (x0, x1 + up - 1, up - 1),
                                                (0, 0, 0)])
  factors = (f, f) if f.ndim == 1 else (None if traced else _rank1_factors(f))
  if factors is not None:
    col, row = factors
    if not traced:
      col, row = [float(v) for v in col], [float(v) for v in row]
    y = _corr_1d(y, row, axis=2, down=down)
    y = _corr_1d(y, col, axis=1, down=down)
  else:
    y = _corr_2d(y, f if traced else f.tolist(), down, down)
  return y.astype(dtype)


def _filter_size(f: Any) -> Tuple[int, int]:
  f = np.shape(f)
  return (f[-1], f[0]) if len(f) in (1, 2) else (1, 1)


def _default_filter(f: Any) -> Any:
  return setup_filter(DEFAULT_FILTER) if f is None else f


def filter2d(x: jax.Array, f: Any = None, padding: Padding = 0, flip_filter: bool = False,
             gain: float = 1.0) -> jax.Array:
  """FIR-filter x [B, H, W, C] keeping its size (plus `padding`); f defaults to the [1,3,3,1] filter."""
  f = _default_filter(f)
  fw, fh = _filter_size(f)
  x0, x1, y0, y1 = _parse_padding(padding)
  p = (x0 + fw // 2, x1 + (fw - 1) // 2, y0 + fh // 2, y1 + (fh - 1) // 2)
  return upfirdn2d(x, f, padding=p, flip_filter=flip_filter, gain=gain)


def upsample2d(x: jax.Array, f: Any = None, up: int = 2, padding: Padding = 0, flip_filter: bool = False,
               gain: float = 1.0) -> jax.Array:
  """FIR upsampling: x [B, H, W, C] -> [B, H*up, W*up, C] (plus `padding`); f defaults to [1,3,3,1].

    Pads by ((fw + up - 1) // 2, (fw - up) // 2) and uses gain * up**2, as the reference, so constant input stays
    constant away from the borders.
    """
  f = _default_filter(f)
  up = _check_factor('up', up)
  fw, fh = _filter_size(f)
  x0, x1, y0, y1 = _parse_padding(padding)
  p = (x0 + (fw + up - 1) // 2, x1 + (fw - up) // 2, y0 + (fh + up - 1) // 2, y1 + (fh - up) // 2)
  return upfirdn2d(x, f, up=up, padding=p, flip_filter=flip_filter, gain=gain * up * up)


def downsample2d(x: jax.Array, f: Any = None, down: int = 2, padding: Padding = 0, flip_filter: bool = False,
                 gain: float = 1.0) -> jax.Array:
  """FIR downsampling: x [B, H, W, C] -> [B, H//down, W//down, C] (plus `padding`); f defaults to [1,3,3,1].

    Pads by ((fw - down + 1) // 2, (fw - down) // 2), as the reference.
    """
  f = _default_filter(f)
  down = _check_factor('down', down)
  fw, fh = _filter_size(f)
  x0, x1, y0, y1 = _parse_padding(padding)
  p = (x0 + (fw - down + 1) // 2, x1 + (fw - down) // 2, y0 + (fh - down + 1) // 2, y1 + (fh - down) // 2)
  return upfirdn2d(x, f, down=down, padding=p, flip_filter=flip_filter, gain=gain)


# ----------------------------------------------------------------------------------------------------------------
# Convolution with resampling, bias + activation.

_IM2COL = contextvars.ContextVar('stylex_jax_im2col_convolutions', default=False)
_TRANSPOSED_DOT = contextvars.ContextVar('stylex_jax_dot_transposed_convolutions', default=False)


@contextlib.contextmanager
def _switched(switch: contextvars.ContextVar, enabled: bool):
  """Sets a trace-time switch for the block, restoring the outer value after it (contexts nest)."""
  token = switch.set(bool(enabled))
  try:
    yield
  finally:
    switch.reset(token)


def im2col_convolutions(enabled: bool = True):
  """Trace-time switch: ungrouped convolutions traced inside this context are computed as im2col (`conv2d`).

    Wrap the tracing of a step with it (the GAN stage does for its R1 and path-length steps on XLA:CPU, see
    config.gan.reg_convolutions); it changes how a convolution is computed, never what it computes.
    """
  return _switched(_IM2COL, enabled)


def dot_transposed_convolutions(enabled: bool = True):
  """Trace-time switch: ungrouped transposed convolutions traced inside this context are one dot + overlap-add
    (`transposed_conv2d`) instead of the polyphase convolution; how they are computed, never what."""
  return _switched(_TRANSPOSED_DOT, enabled)


def conv2d(x: jax.Array, w: jax.Array, stride: int = 1, padding=((0, 0), (0, 0)), groups: int = 1) -> jax.Array:
  """Correlation of x [B, H, W, Cin] with w [kh, kw, Cin // groups, Cout] (NHWC / HWIO), zero padding
    ((y0, y1), (x0, x1)) and stride `stride` -> [B, (H + y0 + y1 - kh) // stride + 1, ..., Cout], x's dtype.

    lax.conv_general_dilated, or, for ungrouped convolutions traced inside `im2col_convolutions()`, im2col: the
    kh*kw shifted (strided) windows concatenated on the channel axis times the [kh*kw*Cin, Cout] kernel in ONE
    dot, under jax.checkpoint (only x, not the kh*kw times larger patches, is kept for the backward pass). Same
    function and FLOPs; its derivatives are slices, pads and dots. On XLA:CPU that makes the second-order
    derivatives of R1 and path length 2-4x faster, while first-order steps are ~10% slower than the native conv.
    """
  if groups == 1 and _IM2COL.get():
    return _conv2d_im2col(x, w, int(stride), tuple(tuple(int(v) for v in p) for p in padding))
  return lax.conv_general_dilated(x, w, window_strides=(stride, stride), padding=padding, dimension_numbers=_DN,
                                  feature_group_count=groups)


@functools.partial(jax.checkpoint, static_argnums=(2, 3))
def _conv2d_im2col(x: jax.Array, w: jax.Array, stride: int, padding) -> jax.Array:
  kh, kw, cin, cout = w.shape
  x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  b, hp, wp, _ = x.shape
  ho, wo = (hp - kh) // stride + 1, (wp - kw) // stride + 1
  windows = [
      lax.slice(x, (0, ty, tx, 0), (b, ty + stride * (ho - 1) + 1, tx + stride * (wo - 1) + 1, cin),
                (1, stride, stride, 1)) for ty in range(kh) for tx in range(kw)
  ]
  patches = windows[0] if len(windows) == 1 else jnp.concatenate(windows, axis=-1)
  y = jnp.dot(patches.reshape(b * ho * wo, kh * kw * cin), w.reshape(kh * kw * cin, cout))
  return y.reshape(b, ho, wo, cout)


def transposed_conv2d(x: jax.Array, w: jax.Array, up: int, groups: int = 1) -> jax.Array:
  """Full stride-`up` transposed convolution: y[n] = sum_i x[i] w[n - up*i] (zero insertion + true convolution).

    Two forms, the same function (they differ in float rounding only):
    * polyphase (default): the kernel split into up*up sub-kernels of ceil(k/up)^2 taps, applied by ONE ordinary
      stride-1 convolution (phases stacked on the output channels) whose output is interleaved (depth-to-space):
      (ceil(k/up)*up/k)^2 times the FLOPs (16/9 for k=3, up=2), zero taps included.
    * dot + overlap-add (ungrouped convolutions traced inside `dot_transposed_convolutions()`): ONE dot computes
      every tap's contribution of every input pixel, [B*H*W, Cin] @ [Cin, kh*kw*Cout], and the kh*kw
      contributions are added into the upsampled output by shifted pads per output phase: exactly a transposed
      convolution's FLOPs; its derivatives are dots, slices and adds. On XLA:CPU 3-6x faster forward+backward for
      a wide generator's up-convolutions (benchmarks/README.md, GAN training step).
    Neither uses input-dilated convolutions, which are very slow on XLA:CPU.

    Args:
      x: [B, H, W, Cin]; w: [kh, kw, Cin // groups, Cout]; up >= 1; groups: feature_group_count.
    Returns:
      [B, (H - 1) * up + kh, (W - 1) * up + kw, Cout].
    """
  h, wd, kh, kw = x.shape[1], x.shape[2], w.shape[0], w.shape[1]
  if groups == 1 and _TRANSPOSED_DOT.get():
    y = _transposed_overlap_add(x, w, up)
  else:
    y = _transposed_polyphase(x, w, up, groups)
  b, hp, _, wq, _, cout = y.shape  # phase-major: interleave the phases (depth-to-space), then crop
  y = y.reshape(b, hp * up, wq * up, cout)
  return y[:, :(h - 1) * up + kh, :(wd - 1) * up + kw, :]


def _transposed_overlap_add(x: jax.Array, w: jax.Array, up: int) -> jax.Array:
  """[B, H, W, Cin] x [kh, kw, Cin, Cout] -> [B, H + th - 1, up, W + tw - 1, up, Cout] (phase-major output)."""
  b, h, wd, cin = x.shape
  kh, kw, _, cout = w.shape
  th, tw = -(-kh // up), -(-kw // up)
  cols = jnp.dot(x.reshape(b * h * wd, cin), jnp.transpose(w, (2, 0, 1, 3)).reshape(cin, kh * kw * cout))
  cols = cols.reshape(b, h, wd, kh, kw, cout)
  rows = []
  for p in range(up):  # output rows up*m + p receive the taps a = up*t + p of input row m - t
    phase_row = []
    for q in range(up):
      acc = jnp.zeros((b, h + th - 1, wd + tw - 1, cout), cols.dtype)
      for t in range(th):
        for s in range(tw):
          a, c = up * t + p, up * s + q
          if a < kh and c < kw:
            acc = acc + jnp.pad(cols[:, :, :, a, c, :], ((0, 0), (t, th - 1 - t), (s, tw - 1 - s), (0, 0)))
      phase_row.append(acc)
    rows.append(jnp.stack(phase_row, axis=3))  # [B, Hp, Wp, up (q), Cout]
  return jnp.stack(rows, axis=2)  # [B, Hp, up (p), Wp, up (q), Cout]


def _transposed_polyphase(x: jax.Array, w: jax.Array, up: int, groups: int) -> jax.Array:
  """Transposed conv as one stride-1 (grouped) conv -> [B, H + th - 1, up, W + tw - 1, up, Cout]."""
  b, h, wd, _ = x.shape
  kh, kw, ig, cout = w.shape
  og = cout // groups
  th, tw = -(-kh // up), -(-kw // up)  # taps per phase
  wp = jnp.pad(w, ((0, th * up - kh), (0, tw * up - kw), (0, 0), (0, 0)))
  # phase (a, b) holds taps w[up*j + a, up*l + b]; true convolution = correlation with the flipped sub-kernel
  wp = wp.reshape(th, up, tw, up, ig, groups, og)[::-1, :, ::-1]
  wp = jnp.transpose(wp, (0, 2, 4, 5, 1, 3, 6)).reshape(th, tw, ig, groups * up * up * og)
  # explicit pad + VALID conv: XLA:CPU's weight-gradient conv is ~20x slower with "full" conv padding
  x = jnp.pad(x, ((0, 0), (th - 1, th - 1), (tw - 1, tw - 1), (0, 0)))
  y = conv2d(x, wp, groups=groups)
  hp, wq = h + th - 1, wd + tw - 1
  y = y.reshape(b, hp, wq, groups, up, up, og)
  return jnp.transpose(y, (0, 1, 4, 2, 5, 3, 6)).reshape(b, hp, up, wq, up, cout)


def conv2d_resample(x: jax.Array, w: jax.Array, f: Any = None, up: int = 1, down: int = 1, padding: Padding = 0,
                    groups: int = 1) -> jax.Array:
  """2-D convolution with optional FIR up/down-sampling (the reference's conv2d_resample), padding given once.

    * up == 1, down == 1: correlation with `w`, zero padding `padding`.
    * down > 1: FIR filter (padded) then strided correlation; a 1x1 kernel subsamples first then convolves.
    * up > 1: zero-insertion + *true convolution* with `w` (`transposed_conv2d`), then FIR filter with gain up**2.

    Args:
      x: [B, H, W, Cin]; w: [kh, kw, Cin // groups, Cout] in x's dtype; f: prepared FIR filter, default [1,3,3,1].
      padding: with respect to the upsampled image (reference convention), typically kernel_size // 2.
      groups: feature_group_count (Cin and Cout divisible by it).
    Returns:
      [B, H', W', Cout] with H' = H*up/down for `padding = kernel_size // 2` and odd kernels.
    """
  up = _check_factor('up', up)
  down = _check_factor('down', down)
  kh, kw = int(w.shape[0]), int(w.shape[1])
  x0, x1, y0, y1 = _parse_padding(padding)
  if up > 1 or down > 1:
    f = _default_filter(f)
  fw, fh = _filter_size(f)
  if up > 1:
    x0 += (fw + up - 1) // 2
    x1 += (fw - up) // 2
    y0 += (fh + up - 1) // 2
    y1 += (fh - up) // 2
  if down > 1:
    x0 += (fw - down + 1) // 2
    x1 += (fw - down) // 2
    y0 += (fh - down + 1) // 2
    y1 += (fh - down) // 2

  def conv(inp, stride=1, pad=((0, 0), (0, 0))):
    return conv2d(inp, w, stride=stride, padding=pad, groups=groups)

  if up == 1 and down == 1:
    return conv(x, pad=((y0, y1), (x0, x1)))
  if up == 1:
    if kh == 1 and kw == 1:
      x = upfirdn2d(x, f, down=down, padding=(x0, x1, y0, y1))
      return conv(x)
    x = upfirdn2d(x, f, padding=(x0, x1, y0, y1))
    return conv(x, stride=down)
  # Upsampling: full transposed convolution (zero insertion between pixels + true convolution), then FIR.
  x = transposed_conv2d(x, w, up, groups=groups)
  x = upfirdn2d(x, f, padding=(x0 - (kw - 1), x1 - (kw - up), y0 - (kh - 1), y1 - (kh - up)), gain=up * up)
  if down > 1:
    x = upfirdn2d(x, f, down=down)
  return x


def bias_act(x: jax.Array, b: Optional[jax.Array] = None, act: str = 'linear', alpha: float = LRELU_ALPHA,
             gain: Optional[float] = None, clamp: Optional[float] = None) -> jax.Array:
  """Add bias (over the last axis), apply activation, multiply by gain, clamp to [-clamp, clamp].

    Args:
      x: [..., C]; b: [C] or None; act: 'linear' | 'lrelu' (slope `alpha`);
      gain: None -> the activation's default gain (1 for linear, sqrt(2) for lrelu).
    Returns:
      same shape and dtype as x.
    """
  if act not in ACTIVATION_GAINS:
    raise ValueError(f'Unknown activation {act!r}; use one of {sorted(ACTIVATION_GAINS)}.')
  if b is not None:
    x = x + b.astype(x.dtype)
  if act == 'lrelu':
    x = jnp.where(x >= 0, x, x * alpha)
  g = ACTIVATION_GAINS[act] if gain is None else gain
  if g != 1:
    x = x * jnp.asarray(g, x.dtype)
  if clamp is not None and clamp >= 0:
    x = jnp.clip(x, -clamp, clamp)
  return x


def _normal_init(stddev: float):

  def init(key, shape, dtype=jnp.float32):
    return jax.random.normal(key, shape, dtype) * jnp.asarray(stddev, dtype)

  return init


class EqualDense(nn.Module):
  """Fully connected layer with equalized learning rate (reference FullyConnectedLayer).

    Params: `weight` [in, features] ~ N(0, 1) / lr_multiplier, `bias` [features] = bias_init.
    Runtime: y = act(x @ (weight * lr_multiplier / sqrt(in)) + bias * lr_multiplier) * act_gain.
    __call__(x: [..., in]) -> [..., features] in `dtype`.
    """
  features: int
  use_bias: bool = True
  bias_init: float = 0.0
  lr_multiplier: float = 1.0
  activation: str = 'linear'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    weight = self.param('weight', _normal_init(1.0 / self.lr_multiplier), (fan_in, self.features), jnp.float32)
    w = (weight * (self.lr_multiplier / np.sqrt(fan_in))).astype(self.dtype)
    b = None
    if self.use_bias:
      bias = self.param('bias', nn.initializers.constant(self.bias_init), (self.features,), jnp.float32)
      b = bias * self.lr_multiplier
    y = jnp.matmul(x.astype(self.dtype), w)
    return bias_act(y, b, act=self.activation)


class EqualConv2d(nn.Module):
  """Conv layer with equalized learning rate and optional FIR down-sampling (reference Conv2dLayer).

    Params: `weight` [k, k, in, features] ~ N(0, 1) / lr_multiplier, `bias` [features] zeros.
    down=2 filters with [1,3,3,1] before a stride-2 conv (1x1 kernels subsample first).
    __call__(x: [B, H, W, in], gain=1.0) -> [B, H/down, W/down, features] in `dtype`; `gain` multiplies the
    activation gain and the clamp, as in the reference (used for the 1/sqrt(2) residual gains).
    """
  features: int
  kernel_size: int = 3
  use_bias: bool = True
  activation: str = 'linear'
  down: int = 1
  resample_filter: Sequence[int] = DEFAULT_FILTER
  conv_clamp: Optional[float] = None
  lr_multiplier: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, gain: float = 1.0) -> jax.Array:
    in_ch = x.shape[-1]
    k = self.kernel_size
    weight = self.param('weight', _normal_init(1.0 / self.lr_multiplier), (k, k, in_ch, self.features), jnp.float32)
    w = (weight * (self.lr_multiplier / np.sqrt(in_ch * k * k))).astype(self.dtype)
    b = None
    if self.use_bias:
      b = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32) * self.lr_multiplier
    x = conv2d_resample(x.astype(self.dtype), w, f=setup_filter(self.resample_filter), down=self.down, padding=k // 2)
    act_gain = ACTIVATION_GAINS[self.activation] * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)


# ----------------------------------------------------------------------------------------------------------------
# Modulated convolution.


def modulated_conv2d(x: jax.Array, weight: jax.Array, styles: jax.Array, up: int = 1, padding: Padding = 0,
                     resample_filter: Any = None, demodulate: bool = True, fused: bool = True) -> jax.Array:
  """StyleGAN2 modulated convolution (pure function).

    w'[b] = weight * styles[b] (per input channel); with `demodulate`, w''[b] = w'[b] / sqrt(sum_{kh,kw,in} w'^2 + 1e-8)
    per output channel. `fused=True` runs one grouped conv over per-sample weights (feature_group_count = B);
    `fused=False` scales x by styles, runs the shared-weight conv and scales the outputs by the demodulation
    coefficients. Both give the same result. Speed (XLA:CPU, G at 64x64, batch 16): the non-fused form is ~4x
    faster forward and ~40x faster forward+backward, because grouped convolutions are slow there; the reference
    likewise trains non-fused and uses the fused form for inference.

    Args:
      x: [B, H, W, I] in the compute dtype.
      weight: [kh, kw, I, O] float32 (any runtime gain already applied).
      styles: [B, I] float32.
      up: 1 or 2 (transposed conv + FIR); padding: conv padding (kernel_size // 2 for 'same').
    Returns:
      [B, H*up, W*up, O] in x's dtype.
    """
  b, h, wd, i = x.shape
  kh, kw, wi, o = weight.shape
  if wi != i or styles.shape != (b, i):
    raise ValueError(f'modulated_conv2d shape mismatch: x {x.shape}, weight {weight.shape} (HWIO), '
                     f'styles {styles.shape}; need weight in-channels == x channels and styles [B, I].')
  styles = styles.astype(jnp.float32)
  weight = weight.astype(jnp.float32)
  dcoefs = None
  if demodulate:
    # sum_{kh,kw,i} (weight * s_i)^2 = sum_i s_i^2 * sum_{kh,kw} weight^2
    dcoefs = lax.rsqrt(jnp.einsum('io,bi->bo', jnp.sum(weight**2, axis=(0, 1)), styles**2) + 1e-8)  # [B, O]
  if not fused:
    x = x * styles[:, None, None, :].astype(x.dtype)
    x = conv2d_resample(x, weight.astype(x.dtype), f=resample_filter, up=up, padding=padding)
    if demodulate:
      x = x * dcoefs[:, None, None, :].astype(x.dtype)
    return x
  w = weight[None] * styles[:, None, None, :, None]  # [B, kh, kw, I, O]
  if demodulate:
    w = w * dcoefs[:, None, None, None, :]
  if kh == 1 and kw == 1 and up == 1 and padding in (0, (0, 0), (0, 0, 0, 0)):
    # A grouped 1x1 conv is a batched matmul; the einsum is the same computation, and XLA's SPMD partitioner
    # mis-partitions grouped 1x1 convs (e.g. ToRGB, 3 outputs) when the batch is sharded.
    return jnp.einsum('bhwi,bio->bhwo', x, w[:, 0, 0].astype(x.dtype))
  w = jnp.transpose(w, (1, 2, 3, 0, 4)).reshape(kh, kw, i, b * o)  # group g owns outputs g*O .. g*O+O-1
  xg = jnp.transpose(x, (1, 2, 0, 3)).reshape(1, h, wd, b * i)
  y = conv2d_resample(xg, w.astype(x.dtype), f=resample_filter, up=up, padding=padding, groups=b)
  _, ho, wo, _ = y.shape
  return jnp.transpose(y.reshape(ho, wo, b, o), (2, 0, 1, 3))


class ModulatedConv2d(nn.Module):
  """Modulated conv with its affine style layer (no bias, no noise, no activation).

    Params: `affine` (EqualDense w_dim -> in_channels, bias_init 1), `weight` [k, k, in, features] ~ N(0, 1).
    Without demodulation (ToRGB) the styles are multiplied by 1/sqrt(in * k * k), as the reference.
    __call__(x: [B, H, W, in], w: [B, w_dim]) -> [B, H*up, W*up, features] in `dtype`.
    """
  features: int
  kernel_size: int = 3
  up: int = 1
  demodulate: bool = True
  fused: bool = True
  resample_filter: Sequence[int] = DEFAULT_FILTER
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
    in_ch = x.shape[-1]
    k = self.kernel_size
    styles = EqualDense(in_ch, bias_init=1.0, name='affine')(w.astype(jnp.float32))
    if not self.demodulate:
      styles = styles * (1.0 / np.sqrt(in_ch * k * k))
    weight = self.param('weight', _normal_init(1.0), (k, k, in_ch, self.features), jnp.float32)
    return modulated_conv2d(x.astype(self.dtype), weight, styles, up=self.up, padding=k // 2,
                            resample_filter=setup_filter(self.resample_filter), demodulate=self.demodulate,
                            fused=self.fused)


class NoiseInjection(nn.Module):
  """Adds per-pixel noise (shared across channels) times a learned scalar `noise_strength` (init 0).

    noise_mode: 'random' draws N(0, 1) [B, H, W, 1] from the 'noise' rng stream; 'const' uses a fixed
    N(0, 1) [H, W] map derived from jax.random.key(CONST_NOISE_SEED) and a CRC32 of this module's path (no rng,
    no stored buffer; the same for every sample); 'none' adds nothing.
    Given noise maps (projection/inversion optimise them): in 'const' mode, a variable 'noise' in the collection
    'noise_inputs' ([1 or B, H, W, 1]) replaces the constant map; apply with mutable=['noise_inputs'] and no such
    variable to get the constant maps back as that collection (the starting point of an optimisation); `init`
    never creates it.
    __call__(x: [B, H, W, C], noise_mode) -> x + strength * noise, same dtype.
    """

  @nn.compact
  def __call__(self, x: jax.Array, noise_mode: str = 'random') -> jax.Array:
    if noise_mode not in NOISE_MODES:
      raise ValueError(f'noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.')
    strength = self.param('noise_strength', nn.initializers.zeros, (), jnp.float32)
    b, h, w, _ = x.shape
    if noise_mode == 'none':
      return x
    if noise_mode == 'random':
      if not self.has_rng('noise'):
        raise ValueError("noise_mode='random' needs a 'noise' rng: pass rngs={'noise': key} to apply/init, "
                         "or use noise_mode='const' / 'none' for a deterministic call.")
      noise = jax.random.normal(self.make_rng('noise'), (b, h, w, 1), jnp.float32)
    else:
      tag = zlib.crc32('/'.join(self.path).encode()) & 0x7FFFFFFF
      key = jax.random.fold_in(jax.random.key(CONST_NOISE_SEED), tag)
      noise = jax.random.normal(key, (h, w, 1), jnp.float32)[None]
      if self.has_variable('noise_inputs', 'noise') or (self.is_mutable_collection('noise_inputs') and
                                                        not self.is_initializing()):
        noise = self.variable('noise_inputs', 'noise', lambda: noise).value
    return x + (noise * strength).astype(x.dtype)


class MinibatchStdDev(nn.Module):
  """Minibatch standard deviation features (discriminator epilogue).

    Samples are split into groups of G = min(group_size, batch) *consecutive* samples (group j = samples
    j*G .. j*G+G-1; the reference uses strided groups), so when the batch is sharded over devices in contiguous
    blocks whose size is divisible by G, no group straddles a device. Channels are split into `num_features`
    contiguous groups; for each sample group and channel group the std over the group (eps 1e-8 inside the sqrt)
    is averaged over channels and pixels and appended as a constant feature map.
    __call__(x: [N, H, W, C]) -> [N, H, W, C + num_features] (x's dtype). N must be divisible by G and C by
    num_features. group_size=None uses the whole batch.
    """
  group_size: Optional[int] = 4
  num_features: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    g = n if self.group_size is None else min(int(self.group_size), n)
    f = int(self.num_features)
    if g < 1 or n % g:
      raise ValueError(f'MinibatchStdDev: batch {n} is not divisible by group size {g}; use a batch '
                       f'(per device) that is a multiple of mbstd_group_size={self.group_size}.')
    if f < 1 or c % f:
      raise ValueError(f'MinibatchStdDev: {c} channels are not divisible by num_features={f}.')
    y = x.astype(jnp.float32).reshape(n // g, g, h, w, f, c // f)
    y = y - jnp.mean(y, axis=1, keepdims=True)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=1) + 1e-8)  # [n/G, H, W, F, c]
    y = jnp.mean(y, axis=(1, 2, 4))  # [n/G, F]
    y = jnp.broadcast_to(y[:, None, None, None, :], (n // g, g, h, w, f)).reshape(n, h, w, f)
    return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class ToRGB(nn.Module):
  """Modulated 1x1 conv without demodulation, plus bias and optional clamp (reference ToRGBLayer).

    __call__(x: [B, H, W, in], w: [B, w_dim]) -> [B, H, W, channels] float32.
    """
  channels: int
  conv_clamp: Optional[float] = None
  fused: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
    y = ModulatedConv2d(self.channels, kernel_size=1, demodulate=False, fused=self.fused, dtype=self.dtype,
                        name='modconv')(x, w)
    bias = self.param('bias', nn.initializers.zeros, (self.channels,), jnp.float32)
    return bias_act(y.astype(jnp.float32), bias, clamp=self.conv_clamp)
