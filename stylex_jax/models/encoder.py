"""Image -> W+ encoder (ResNet-style, e4e-like output) for inverting real images into a StyleGAN2's latent space.

`Encoder(num_ws, w_dim, ...)(images)` maps images [B, H, W, C] in [-1, 1] (C = 1 or 3, H = W a power of two
>= 8) to *offsets* [B, num_ws, w_dim] from the generator's w_avg: ws = w_avg + offsets.

Architecture: a 3x3 stem conv, then residual stages that halve the resolution down to 4x4 (two 3x3 convs with
GroupNorm and leaky ReLU, average-pool skip with a 1x1 projection), channels width * 2^i capped at
channel_max; the 4x4 features are flattened into a hidden dense layer. Like e4e, the output is one base
offset [w_dim] shared by every layer plus per-layer deltas [num_ws, w_dim]; both heads start at zero, so an
untrained encoder returns w_avg, and the deltas are what the encoder stage's `delta` penalty keeps small
(W+ close to W). `Encoder.apply(..., return_parts=True)` also returns (base, deltas).

With `noise=True` the encoder also predicts the synthesis network's per-layer noise maps (the detail StyleGAN2
puts in noise, which no W+ can carry): a zero-initialised 1x1 conv on the features at each resolution R of the
pyramid gives residuals [B, R, R, 2] (channel k for the block's conv k; the 4x4 block uses channel 1), added to
the generator's constant maps by `noise_inputs` and re-normalised like the projector's maps
(`explain.reconstruction.normalize_noise`); untrained, the start is the constant maps (re-normalised).
`Encoder.apply(..., return_noise=True)` returns (offsets, {R: residuals}). Trained on the maps alone, such an
encoder paints the image through the finest map and its latents draw nothing; `train/encoder.py`'s
`noise_split` keeps the latents drawing the image (measurements in benchmarks/README.md, "Inversion").
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp


def _groups(channels: int) -> int:
  for g in (32, 16, 8, 4, 2, 1):
    if channels % g == 0 and channels // g >= 2:
      return g
  return 1


class ResidualDown(nn.Module):
  """x [B, H, W, c] -> [B, H/2, W/2, features]: (GN, lrelu, conv3x3) x2 then avg-pool, plus pooled 1x1 skip,
    summed with gain 1/sqrt(2)."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    skip = nn.avg_pool(x, (2, 2), strides=(2, 2))
    skip = nn.Conv(self.features, (1, 1), use_bias=False, name='skip')(skip)
    y = nn.GroupNorm(_groups(x.shape[-1]), name='norm0')(x)
    y = nn.Conv(self.features, (3, 3), name='conv0')(nn.leaky_relu(y, 0.2))
    y = nn.GroupNorm(_groups(self.features), name='norm1')(y)
    y = nn.Conv(self.features, (3, 3), name='conv1')(nn.leaky_relu(y, 0.2))
    y = nn.avg_pool(y, (2, 2), strides=(2, 2))
    return (skip + y) * (1 / math.sqrt(2))


class Encoder(nn.Module):
  """images [B, H, W, C] in [-1, 1] -> offsets [B, num_ws, w_dim] from w_avg (float32).

    Attributes: num_ws, w_dim (of the generator); width: channels of the stem; channel_max: cap on channels;
    hidden: width of the dense layer after the 4x4 features; noise: also predict noise-map residuals.
    """
  num_ws: int
  w_dim: int
  width: int = 32
  channel_max: int = 256
  hidden: int = 512
  noise: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, return_parts: bool = False, return_noise: bool = False):
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[1] != images.shape[2]:
      raise ValueError(f'Encoder expects square images [B, H, W, C] with C = 1 or 3 in [-1, 1], got shape '
                       f'{tuple(images.shape)}')
    size = images.shape[1]
    if size < 8 or size & (size - 1):
      raise ValueError(f'Encoder expects a power-of-two image size >= 8, got {size}; resize the images')
    if return_noise and not self.noise:
      raise ValueError('return_noise=True needs an Encoder built with noise=True (config.encoder.model.noise)')
    x = nn.Conv(self.width, (3, 3), name='stem')(images.astype(jnp.float32))
    res, i = size, 0
    noise = {}
    while res > 4:
      if self.noise:
        noise[res] = nn.Conv(2, (1, 1), kernel_init=nn.initializers.zeros, name=f'noise{res}')(x)
      x = ResidualDown(min(self.width * 2**(i + 1), self.channel_max), name=f'down{res}')(x)
      res, i = res // 2, i + 1
    x = nn.leaky_relu(nn.GroupNorm(_groups(x.shape[-1]), name='norm_out')(x), 0.2)
    if self.noise:
      noise[4] = nn.Conv(2, (1, 1), kernel_init=nn.initializers.zeros, name='noise4')(x)
    x = x.reshape(x.shape[0], -1)
    x = nn.leaky_relu(nn.Dense(self.hidden, name='fc')(x), 0.2)
    base = nn.Dense(self.w_dim, kernel_init=nn.initializers.zeros, name='base')(x)
    deltas = nn.Dense(self.num_ws * self.w_dim, kernel_init=nn.initializers.zeros, name='deltas')(x)
    deltas = deltas.reshape(x.shape[0], self.num_ws, self.w_dim)
    offsets = base[:, None, :] + deltas
    if return_parts:
      return offsets, (base, deltas)
    if return_noise:
      return offsets, noise
    return offsets


def noise_inputs(template: Mapping[str, Any], residuals: Mapping[int, jax.Array]) -> dict:
  """The generator's `noise_inputs` collection with the encoder's residuals added (not yet normalised).

  template: the synthesis network's constant maps, {'synthesis_network': {'b<R>': {'conv<k>': {'noise': {'noise':
  [1, R, R, 1]}}}}} (`Inverter.noise_template()`); residuals: {R: [B, R, R, 2]} from `return_noise=True`.
  Returns the same tree with leaves [B, R, R, 1] = template + residuals[R][..., k]. A resolution missing from
  `residuals` raises ValueError (an encoder made for another generator).
  """
  out = {}
  for block, convs in template['synthesis_network'].items():
    r = int(block[1:])
    if r not in residuals:
      raise ValueError(f'the encoder predicts noise at {sorted(residuals)} px but the generator has a {r} px '
                       f'block; use the encoder trained for this generator')
    out[block] = {
        conv: {
            'noise': {
                'noise': leaf['noise']['noise'] + residuals[r][..., int(conv[-1]):int(conv[-1]) + 1]
            }
        } for conv, leaf in convs.items()
    }
  return {'synthesis_network': out}
