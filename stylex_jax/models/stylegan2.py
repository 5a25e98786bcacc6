"""StyleGAN2 generator and discriminator in Flax Linen (NHWC), faithful to NVIDIA's StyleGAN2-ADA config.

* `MappingNetwork`: z (2nd-moment normalised) [+ embedded label] -> `num_layers` equalized-lr lrelu dense layers
  (lr multiplier 0.01) -> w, broadcast to [B, num_ws, w_dim]; tracks `w_avg` (collection 'stats') and truncates
  toward it.
* `SynthesisNetwork`: 'skip' architecture: learned 4x4 constant, per resolution two modulated 3x3 convs (the
  first upsamples x2 with transposed conv + FIR) with noise, lrelu, and a ToRGB; RGB outputs are FIR-upsampled
  and summed. Channels per resolution: min(channel_base // res, channel_max). The ToRGB of one block and the
  first conv of the next share a w index (num_ws = 2 * log2(R) - 2), as the reference.
* `Generator`: mapping + synthesis; `Generator.apply(vars, ..., method='mapping' | 'synthesis')` work.
* `Discriminator`: 'resnet' architecture: FromRGB at the top resolution, residual blocks (3x3 conv, 3x3 conv with
  FIR down, 1x1 FIR-down skip, both branches scaled by 1/sqrt(2)), epilogue at 4x4: minibatch-stddev, 3x3 conv,
  dense, output dense; with c_dim > 0 the output is projected onto a mapped label embedding (cmap).
* `style_mix(ws1, ws2, cutoff)`: style mixing helper.

Variables: `params` (float32) and, for the generator, `stats` = {'mapping_network': {'w_avg': [w_dim]}}.
In 'const' / 'none' noise modes the synthesis network is a pure function of (params, ws): no rng, no other
collections (the constant noise is derived deterministically, see layers.NoiseInjection), so it composes with
jax.grad / jax.vmap / jax.jit. 'random' noise draws from the 'noise' rng stream.

Differences from the PyTorch reference (documented, deliberate): NHWC layout (the epilogue's dense layer therefore
sees the 4x4 features flattened in HWC order); minibatch-stddev groups are consecutive samples; one compute dtype
for the whole network instead of fp16 for the top resolutions; constant noise is derived, not stored.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from stylex_jax.models.layers import (
    ACTIVATION_GAINS,
    NOISE_MODES,
    EqualConv2d,
    EqualDense,
    MinibatchStdDev,
    ModulatedConv2d,
    NoiseInjection,
    ToRGB,
    bias_act,
    upsample2d,
)

Dtype = Any
MIN_RESOLUTION = 16
MAX_RESOLUTION = 1024


def check_resolution_channels(resolution: Any, channels: Any, who: str) -> None:
  """Raise ValueError unless resolution is a power of two in [16, 1024] and channels is 1 or 3."""
  if (not isinstance(resolution, (int, np.integer)) or isinstance(resolution, bool) or
      not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION or resolution & (resolution - 1)):
    raise ValueError(f'{who}: resolution={resolution!r} is not supported; use a power of two from '
                     f'{MIN_RESOLUTION} to {MAX_RESOLUTION} (resize or crop the images to e.g. 64, 128, 256).')
  if channels not in (1, 3) or isinstance(channels, bool):
    raise ValueError(f'{who}: channels={channels!r} is not supported; use 1 (grayscale, e.g. radiographs) '
                     f'or 3 (RGB, e.g. histology).')


def num_ws_for(resolution: int) -> int:
  """Number of w vectors the synthesis network consumes: 2 * log2(resolution) - 2."""
  return 2 * int(round(math.log2(resolution))) - 2


def channels_at(res: int, channel_base: int, channel_max: int) -> int:
  """Feature channels at resolution `res`: min(channel_base // res, channel_max)."""
  return min(channel_base // res, channel_max)


def normalize_2nd_moment(x: jax.Array, axis: int = -1, eps: float = 1e-8) -> jax.Array:
  """x / sqrt(mean(x^2, axis) + eps); x float."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


def style_mix(ws1: jax.Array, ws2: jax.Array, cutoff: Any) -> jax.Array:
  """Style mixing: layers [0, cutoff) from ws1, layers [cutoff, num_ws) from ws2.

    Args:
      ws1, ws2: [B, num_ws, w_dim]; cutoff: int or int scalar array (may be traced), 0 <= cutoff <= num_ws.
    Returns:
      [B, num_ws, w_dim].
    """
  if ws1.shape != ws2.shape or ws1.ndim != 3:
    raise ValueError(f'style_mix needs two [B, num_ws, w_dim] arrays of the same shape, got {ws1.shape} '
                     f'and {ws2.shape}.')
  mask = jnp.arange(ws1.shape[1]) < cutoff
  return jnp.where(mask[None, :, None], ws1, ws2)


def _is_one(psi: Any) -> bool:
  return isinstance(psi, (int, float, np.integer, np.floating)) and float(psi) == 1.0


class MappingNetwork(nn.Module):
  """z [B, z_dim] (+ c [B, c_dim]) -> ws [B, num_ws, w_dim] ([B, w_dim] when num_ws is None).

    z is normalised to unit 2nd moment; a label c is embedded (EqualDense c_dim -> embed_features) and normalised
    too, then concatenated. Layers fc0..fc{num_layers-1}: EqualDense lrelu with lr_multiplier.
    w_avg ([w_dim], collection 'stats', init 0) is tracked when num_ws is set and w_avg_beta is not None; it is
    updated to lerp(mean_batch(w), w_avg, beta) only when update_w_avg=True, which requires mutable=['stats'].
    Truncation: w <- w_avg + psi * (w - w_avg) for layer indices < truncation_cutoff (all when None).
    """
  z_dim: int = 512
  c_dim: int = 0
  w_dim: int = 512
  num_ws: Optional[int] = None
  num_layers: int = 8
  lr_multiplier: float = 0.01
  w_avg_beta: Optional[float] = 0.995
  embed_features: Optional[int] = None
  layer_features: Optional[int] = None

  def __post_init__(self):
    if self.z_dim < 0 or self.c_dim < 0 or self.z_dim + self.c_dim == 0:
      raise ValueError(f'MappingNetwork needs z_dim > 0 or c_dim > 0, got z_dim={self.z_dim}, '
                       f'c_dim={self.c_dim}.')
    if self.num_layers < 1 or self.w_dim < 1:
      raise ValueError(f'MappingNetwork needs num_layers >= 1 and w_dim >= 1, got {self.num_layers}, '
                       f'{self.w_dim}.')
    super().__post_init__()

  @nn.compact
  def __call__(self, z: Optional[jax.Array], c: Optional[jax.Array] = None, truncation_psi: Any = 1.0,
               truncation_cutoff: Optional[int] = None, update_w_avg: bool = False) -> jax.Array:
    parts = []
    if self.z_dim > 0:
      if z is None or z.ndim != 2 or z.shape[1] != self.z_dim:
        raise ValueError(f'MappingNetwork: z must be [B, {self.z_dim}], got '
                         f'{None if z is None else z.shape}.')
      parts.append(normalize_2nd_moment(z.astype(jnp.float32)))
    if self.c_dim > 0:
      if c is None or c.ndim != 2 or c.shape[1] != self.c_dim:
        raise ValueError(f'MappingNetwork: this network is conditional (c_dim={self.c_dim}); pass c as '
                         f'[B, {self.c_dim}] (e.g. one-hot labels), got {None if c is None else c.shape}.')
      embed = self.embed_features if self.embed_features is not None else self.w_dim
      y = EqualDense(embed, name='embed')(c.astype(jnp.float32))
      parts.append(normalize_2nd_moment(y))
    elif c is not None and np.size(c) > 0:
      raise ValueError('MappingNetwork: c was given but c_dim=0; build the network with c_dim=<labels> '
                       'or pass c=None.')
    x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=1)

    hidden = self.layer_features if self.layer_features is not None else self.w_dim
    for idx in range(self.num_layers):
      feats = self.w_dim if idx == self.num_layers - 1 else hidden
      x = EqualDense(feats, activation='lrelu', lr_multiplier=self.lr_multiplier, name=f'fc{idx}')(x)

    track = self.num_ws is not None and self.w_avg_beta is not None
    needed = update_w_avg or not _is_one(truncation_psi)
    w_avg = None
    if track and (self.is_initializing() or self.has_variable('stats', 'w_avg') or needed):
      if not self.is_initializing() and not self.has_variable('stats', 'w_avg'):
        raise ValueError("MappingNetwork: truncation / update_w_avg need w_avg from the 'stats' collection; "
                         "pass the full variables from init ({'params': ..., 'stats': ...}), not params only.")
      w_avg = self.variable('stats', 'w_avg', jnp.zeros, (self.w_dim,), jnp.float32)
    if update_w_avg:
      if not track:
        raise ValueError('update_w_avg=True but this MappingNetwork tracks no w_avg (num_ws or w_avg_beta '
                         'is None).')
      if not self.is_mutable_collection('stats'):
        raise ValueError("update_w_avg=True needs the 'stats' collection to be mutable: call "
                         "apply(..., mutable=['stats']) and keep the returned stats.")
      batch_mean = jnp.mean(jax.lax.stop_gradient(x), axis=0)
      w_avg.value = batch_mean + self.w_avg_beta * (w_avg.value - batch_mean)

    if self.num_ws is not None:
      x = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))

    if not _is_one(truncation_psi):
      if w_avg is None:
        raise ValueError('Truncation needs w_avg, which this MappingNetwork does not track (num_ws or '
                         'w_avg_beta is None); use truncation_psi=1.')
      avg = w_avg.value
      truncated = avg + truncation_psi * (x - avg)
      if truncation_cutoff is None or self.num_ws is None:
        x = truncated
      else:
        mask = jnp.arange(self.num_ws) < truncation_cutoff
        x = jnp.where(mask[None, :, None], truncated, x)
    return x


class SynthesisLayer(nn.Module):
  """Modulated 3x3 conv (optionally up x2) + noise + bias + lrelu(0.2)*sqrt(2) (+ clamp).

    __call__(x: [B, H, W, in], w: [B, w_dim], noise_mode) -> [B, H*up, W*up, features] in `dtype`.
    """
  features: int
  up: int = 1
  kernel_size: int = 3
  conv_clamp: Optional[float] = None
  fused: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array, noise_mode: str = 'random') -> jax.Array:
    x = ModulatedConv2d(self.features, kernel_size=self.kernel_size, up=self.up, demodulate=True, fused=self.fused,
                        dtype=self.dtype, name='modconv')(x, w)
    x = NoiseInjection(name='noise')(x, noise_mode)
    bias = self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
    return bias_act(x, bias, act='lrelu', gain=ACTIVATION_GAINS['lrelu'], clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
  """One resolution of the skip generator.

    __call__(x: [B, R/2, R/2, in] | None (first block), img: [B, R/2, R/2, C] | None, ws: [B, n, w_dim] with
    n = num_conv + 1, noise_mode) -> (x [B, R, R, out_channels], img [B, R, R, C] float32).
    """
  out_channels: int
  resolution: int
  channels: int
  first: bool = False
  conv_clamp: Optional[float] = None
  fused: bool = True
  dtype: Dtype = jnp.float32

  @property
  def num_conv(self) -> int:
    return 1 if self.first else 2

  @nn.compact
  def __call__(self, x, img, ws, noise_mode='random'):
    batch = ws.shape[0]
    if self.first:
      const = self.param('const', nn.initializers.normal(1.0), (self.resolution, self.resolution, self.out_channels),
                         jnp.float32)
      x = jnp.broadcast_to(const[None].astype(self.dtype), (batch,) + const.shape)
      x = SynthesisLayer(self.out_channels, conv_clamp=self.conv_clamp, fused=self.fused, dtype=self.dtype,
                         name='conv1')(x, ws[:, 0], noise_mode)
    else:
      x = SynthesisLayer(self.out_channels, up=2, conv_clamp=self.conv_clamp, fused=self.fused, dtype=self.dtype,
                         name='conv0')(x, ws[:, 0], noise_mode)
      x = SynthesisLayer(self.out_channels, conv_clamp=self.conv_clamp, fused=self.fused, dtype=self.dtype,
                         name='conv1')(x, ws[:, 1], noise_mode)
    if img is not None:
      img = upsample2d(img)
    y = ToRGB(self.channels, conv_clamp=self.conv_clamp, fused=self.fused, dtype=self.dtype,
              name='torgb')(x, ws[:, self.num_conv])
    img = y if img is None else img + y
    return x, img


class SynthesisNetwork(nn.Module):
  """ws [B, num_ws, w_dim] -> images [B, resolution, resolution, channels] float32 (about [-1, 1], unclamped).

    noise_mode (field = default, overridable per call): 'random' (rng stream 'noise'), 'const', 'none'.
    fused_modconv selects the grouped-conv (True) or per-sample-scaling (False) modulated conv; same function
    (False is much faster on CPU, especially under jax.grad; see layers.modulated_conv2d).
    """
  w_dim: int = 512
  resolution: int = 64
  channels: int = 1
  channel_base: int = 32768
  channel_max: int = 512
  noise_mode: str = 'random'
  fused_modconv: bool = True
  dtype: Dtype = jnp.float32
  conv_clamp: Optional[float] = None

  def __post_init__(self):
    check_resolution_channels(self.resolution, self.channels, 'SynthesisNetwork')
    if self.noise_mode not in NOISE_MODES:
      raise ValueError(f'SynthesisNetwork: noise_mode must be one of {NOISE_MODES}, got {self.noise_mode!r}.')
    super().__post_init__()

  @property
  def num_ws(self) -> int:
    return num_ws_for(self.resolution)

  @property
  def block_resolutions(self):
    return [2**i for i in range(2, int(round(math.log2(self.resolution))) + 1)]

  @nn.compact
  def __call__(self, ws: jax.Array, noise_mode: Optional[str] = None) -> jax.Array:
    noise_mode = self.noise_mode if noise_mode is None else noise_mode
    if noise_mode not in NOISE_MODES:
      raise ValueError(f'noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}.')
    if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
      raise ValueError(f'SynthesisNetwork: ws must be [B, {self.num_ws}, {self.w_dim}] (num_ws = '
                       f'2*log2({self.resolution})-2), got {ws.shape}.')
    ws = ws.astype(jnp.float32)
    x = img = None
    w_idx = 0
    for res in self.block_resolutions:
      first = res == 4
      block = SynthesisBlock(channels_at(res, self.channel_base,
                                         self.channel_max), resolution=res, channels=self.channels, first=first,
                             conv_clamp=self.conv_clamp, fused=self.fused_modconv, dtype=self.dtype, name=f'b{res}')
      n_conv = 1 if first else 2
      x, img = block(x, img, ws[:, w_idx:w_idx + n_conv + 1], noise_mode)
      w_idx += n_conv
    return img.astype(jnp.float32)


class Generator(nn.Module):
  """StyleGAN2 generator: z [B, z_dim] (+ c [B, c_dim]) -> images [B, R, R, C] float32 (about [-1, 1]).

    Submodules: `mapping_network` (MappingNetwork), `synthesis_network` (SynthesisNetwork).
    Methods (use with Generator.apply(variables, ..., method=...)):
      __call__(z, c=None, truncation_psi=1., truncation_cutoff=None, noise_mode='random', update_w_avg=False)
      mapping(z, c=None, truncation_psi=1., truncation_cutoff=None, update_w_avg=False) -> ws [B, num_ws, w_dim]
      synthesis(ws, noise_mode='random') -> images [B, R, R, C]
    init: Generator(...).init({'params': k1, 'noise': k2}, z) or init(k, z, noise_mode='const').
    """
  z_dim: int = 512
  c_dim: int = 0
  w_dim: int = 512
  resolution: int = 64
  channels: int = 1
  mapping_layers: int = 8
  channel_base: int = 32768
  channel_max: int = 512
  mapping_lr_multiplier: float = 0.01
  fused_modconv: bool = True
  dtype: Dtype = jnp.float32
  conv_clamp: Optional[float] = None
  w_avg_beta: Optional[float] = 0.995

  def __post_init__(self):
    check_resolution_channels(self.resolution, self.channels, 'Generator')
    if self.z_dim < 1:
      raise ValueError(f'Generator: z_dim must be >= 1, got {self.z_dim}.')
    super().__post_init__()

  @property
  def num_ws(self) -> int:
    return num_ws_for(self.resolution)

  def setup(self):
    self.mapping_network = MappingNetwork(z_dim=self.z_dim, c_dim=self.c_dim, w_dim=self.w_dim, num_ws=self.num_ws,
                                          num_layers=self.mapping_layers, lr_multiplier=self.mapping_lr_multiplier,
                                          w_avg_beta=self.w_avg_beta)
    self.synthesis_network = SynthesisNetwork(w_dim=self.w_dim, resolution=self.resolution, channels=self.channels,
                                              channel_base=self.channel_base, channel_max=self.channel_max,
                                              fused_modconv=self.fused_modconv, dtype=self.dtype,
                                              conv_clamp=self.conv_clamp)

  def mapping(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False):
    """z [B, z_dim] float, c [B, c_dim] | None -> ws [B, num_ws, w_dim] float32."""
    return self.mapping_network(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                                update_w_avg=update_w_avg)

  def synthesis(self, ws, noise_mode='random'):
    """ws [B, num_ws, w_dim] -> images [B, R, R, C] float32; pure in (params, ws) for 'const' / 'none'."""
    return self.synthesis_network(ws, noise_mode=noise_mode)

  def __call__(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, noise_mode='random', update_w_avg=False):
    """z [B, z_dim], c [B, c_dim] | None -> images [B, R, R, C] float32."""
    ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                      update_w_avg=update_w_avg)
    return self.synthesis(ws, noise_mode=noise_mode)


def constant_noise(generator: Generator, g_params: Any) -> dict:
  """The synthesis network's constant noise maps as its `noise_inputs` collection: {'synthesis_network':
  {'b<R>': {'conv<k>': {'noise': {'noise': [1, R, R, 1]}}}}} (N(0, 1) maps; the start of an inversion, and what
  `apply({'params': ..., 'noise_inputs': maps}, ws, method='synthesis', noise_mode='const')` replaces)."""
  ws = jnp.zeros((1, generator.num_ws, generator.w_dim), jnp.float32)
  _, mutated = jax.jit(
      lambda p, w: generator.apply({'params': p}, w, method='synthesis', noise_mode='const', mutable=['noise_inputs']))(
          g_params, ws)
  return mutated['noise_inputs']


class DiscriminatorBlock(nn.Module):
  """Residual D block at resolution R: [FromRGB 1x1] -> conv0 3x3 -> conv1 3x3 down2 (gain 1/sqrt 2),
    plus skip 1x1 down2 no bias (gain 1/sqrt 2). x [B, R, R, C] -> [B, R/2, R/2, out_channels]."""
  tmp_channels: int
  out_channels: int
  from_rgb: bool = False
  conv_clamp: Optional[float] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(self.dtype)
    if self.from_rgb:
      x = EqualConv2d(self.tmp_channels, kernel_size=1, activation='lrelu', conv_clamp=self.conv_clamp,
                      dtype=self.dtype, name='fromrgb')(x)
    gain = np.sqrt(0.5)
    y = EqualConv2d(self.out_channels, kernel_size=1, use_bias=False, down=2, dtype=self.dtype, name='skip')(x,
                                                                                                             gain=gain)
    x = EqualConv2d(self.tmp_channels, kernel_size=3, activation='lrelu', conv_clamp=self.conv_clamp, dtype=self.dtype,
                    name='conv0')(x)
    x = EqualConv2d(self.out_channels, kernel_size=3, activation='lrelu', down=2, conv_clamp=self.conv_clamp,
                    dtype=self.dtype, name='conv1')(x, gain=gain)
    return y + x


class DiscriminatorEpilogue(nn.Module):
  """4x4 head (float32): mbstd -> conv 3x3 lrelu -> dense lrelu -> dense out [B, cmap_dim or 1];
    with cmap [B, cmap_dim] returns sum(out * cmap) / sqrt(cmap_dim) -> [B, 1]."""
  in_channels: int
  cmap_dim: int = 0
  mbstd_group_size: Optional[int] = 4
  mbstd_num_features: int = 1
  conv_clamp: Optional[float] = None

  @nn.compact
  def __call__(self, x: jax.Array, cmap: Optional[jax.Array] = None) -> jax.Array:
    x = x.astype(jnp.float32)
    if self.mbstd_num_features > 0:
      x = MinibatchStdDev(self.mbstd_group_size, self.mbstd_num_features, name='mbstd')(x)
    x = EqualConv2d(self.in_channels, kernel_size=3, activation='lrelu', conv_clamp=self.conv_clamp, name='conv')(x)
    x = EqualDense(self.in_channels, activation='lrelu', name='fc')(x.reshape(x.shape[0], -1))
    x = EqualDense(self.cmap_dim if self.cmap_dim > 0 else 1, name='out')(x)
    if self.cmap_dim > 0:
      x = jnp.sum(x * cmap, axis=1, keepdims=True) * (1.0 / np.sqrt(self.cmap_dim))
    return x


class Discriminator(nn.Module):
  """StyleGAN2 residual discriminator: images [B, R, R, C] in [-1, 1] (+ c [B, c_dim]) -> logits [B, 1] float32.

    Blocks b{R} .. b8 (channels min(channel_base // res, channel_max)), epilogue b4. With c_dim > 0 the label is
    mapped by a MappingNetwork (z_dim=0, w_dim=cmap_dim (default channels at 4x4), mapping_layers layers,
    no w_avg) and used for projection. The batch must be divisible by min(mbstd_group_size, batch).
    """
  resolution: int = 64
  channels: int = 1
  c_dim: int = 0
  channel_base: int = 32768
  channel_max: int = 512
  mbstd_group_size: Optional[int] = 4
  mbstd_num_features: int = 1
  dtype: Dtype = jnp.float32
  conv_clamp: Optional[float] = None
  cmap_dim: Optional[int] = None
  mapping_layers: int = 8

  def __post_init__(self):
    check_resolution_channels(self.resolution, self.channels, 'Discriminator')
    if self.c_dim < 0:
      raise ValueError(f'Discriminator: c_dim must be >= 0, got {self.c_dim}.')
    super().__post_init__()

  @nn.compact
  def __call__(self, images: jax.Array, c: Optional[jax.Array] = None) -> jax.Array:
    r, ch = self.resolution, self.channels
    if images.ndim != 4 or images.shape[1:] != (r, r, ch):
      raise ValueError(f'Discriminator: images must be [B, {r}, {r}, {ch}] (NHWC, in [-1, 1]), got '
                       f'{images.shape}.')
    chans = lambda res: channels_at(res, self.channel_base, self.channel_max)  # noqa: E731
    x = images
    res = r
    while res > 4:
      x = DiscriminatorBlock(chans(res), chans(res // 2), from_rgb=(res == r), conv_clamp=self.conv_clamp,
                             dtype=self.dtype, name=f'b{res}')(x)
      res //= 2
    cmap = None
    cmap_dim = 0
    if self.c_dim > 0:
      cmap_dim = self.cmap_dim if self.cmap_dim is not None else chans(4)
      if c is None:
        raise ValueError(f'Discriminator is conditional (c_dim={self.c_dim}); pass c [B, {self.c_dim}].')
      cmap = MappingNetwork(z_dim=0, c_dim=self.c_dim, w_dim=cmap_dim, num_ws=None, w_avg_beta=None,
                            num_layers=self.mapping_layers, name='mapping')(None, c)
    elif c is not None and np.size(c) > 0:
      raise ValueError('Discriminator: c was given but c_dim=0; build it with c_dim=<labels> or pass c=None.')
    return DiscriminatorEpilogue(chans(4), cmap_dim=cmap_dim, mbstd_group_size=self.mbstd_group_size,
                                 mbstd_num_features=self.mbstd_num_features, conv_clamp=self.conv_clamp,
                                 name='b4')(x, cmap)
