"""StyleGAN2 losses and regularisers, and the arithmetic of lazy regularisation and generator EMA.

Pure jax functions of arrays and callables; the GAN stage composes them into its jitted steps.
Conventions follow Karras et al. (StyleGAN2, StyleGAN2-ADA): non-saturating logistic loss, R1 on reals,
path-length regularisation with a running mean, lazy regularisation with the Adam correction, G EMA with a
half-life in thousands of images and a ramp-up.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def d_logistic_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """Discriminator loss: mean softplus(D(fake)) + mean softplus(-D(real)). logits: [B] or [B, 1]."""
  return jnp.mean(jax.nn.softplus(fake_logits)) + jnp.mean(jax.nn.softplus(-real_logits))


def g_nonsaturating_loss(fake_logits: jax.Array) -> jax.Array:
  """Generator non-saturating loss: mean softplus(-D(G(z))). fake_logits: [B] or [B, 1]."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def r1_penalty(d_fn: Callable[[jax.Array], jax.Array], reals: jax.Array) -> tuple[jax.Array, jax.Array]:
  """R1: per-example squared norm of dD(x)/dx at the real images.

  d_fn: images [B, H, W, C] -> logits [B] or [B, 1], each logit depending only on its own image.
  reals: [B, H, W, C] in [-1, 1]. Returns (penalty [B] = ||grad||², logits [B]) — the logits let the caller
  reuse this forward pass. Multiply by gamma/2 (and the lazy interval) for the loss.
  """

  def summed(x):
    logits = d_fn(x).reshape(x.shape[0])
    return jnp.sum(logits), logits

  grads, logits = jax.grad(summed, has_aux=True)(reals)
  return jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=(1, 2, 3)), logits


def r1_gamma_auto(resolution: int, batch_size: int) -> float:
  """NVIDIA's `auto` rule: gamma = 0.0002 * resolution² / batch_size."""
  return 0.0002 * resolution**2 / batch_size


def path_length_penalty(synthesis_fn: Callable[[jax.Array], jax.Array], ws: jax.Array, key: jax.Array,
                        pl_mean: jax.Array, decay: float = 0.01) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Path-length regulariser: (|J_w^T y| - a)² with y ~ N(0, I)/sqrt(H*W) and a the running mean of |J_w^T y|.

  synthesis_fn: ws [B, num_ws, w_dim] -> images [B, H, W, C]. ws: [B, num_ws, w_dim]. pl_mean: scalar.
  Returns (penalty [B], new pl_mean scalar, lengths [B]); lengths = sqrt(mean over num_ws of the squared
  norm over w_dim of J^T y), as in the reference. pl_mean moves toward mean(lengths) by `decay`.
  """
  images, vjp = jax.vjp(synthesis_fn, ws)
  h, w = images.shape[1], images.shape[2]
  noise = jax.random.normal(key, images.shape, jnp.float32) / jnp.sqrt(float(h * w))
  (grads,) = vjp(noise.astype(images.dtype))
  lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads.astype(jnp.float32)), axis=2), axis=1))
  new_mean = pl_mean + decay * (jnp.mean(jax.lax.stop_gradient(lengths)) - pl_mean)
  return jnp.square(lengths - new_mean), new_mean, lengths


def lazy_regularization_adam(learning_rate: float, beta1: float, beta2: float,
                             interval: int) -> tuple[float, float, float]:
  """Adam hyper-parameters corrected for a regulariser applied every `interval` steps.

  With c = interval / (interval + 1): (learning_rate * c, beta1 ** c, beta2 ** c); interval 0/None -> unchanged.
  """
  if not interval:
    return learning_rate, beta1, beta2
  c = interval / (interval + 1)
  return learning_rate * c, beta1**c, beta2**c


def ema_beta(batch_size: int, half_life_kimg: float, rampup: float | None, cur_nimg) -> jax.Array:
  """G EMA decay per step: 0.5 ** (batch / half_life_images), half life ramped up as min(h, cur_nimg*rampup).

  cur_nimg may be traced. rampup None/0 disables the ramp-up.
  """
  half_life = half_life_kimg * 1000.0
  if rampup:
    half_life = jnp.minimum(half_life, jnp.asarray(cur_nimg, jnp.float32) * rampup)
  return jnp.power(0.5, batch_size / jnp.maximum(half_life, 1e-8))
