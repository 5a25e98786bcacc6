"""Losses that say how well G(w) reconstructs an image, shared by the encoder stage and the projector.

Every function returns one value per image (`[B]`), so a batch loss is a (weighted) sum over images and each
image's gradient depends on that image only. Images are `[B, H, W, C]` in [-1, 1].

Terms (weights in `config.encoder` / `config.invert`, see `reconstruction_loss`):
  mse, l1            pixel losses (means over pixels)
  ssim, ms_ssim      1 - SSIM / 1 - MS-SSIM (evaluate.similarity)
  perceptual         LPIPS-style distance on feature maps available offline (the classifier's sown
                     intermediates, optionally the discriminator's blocks): each feature map is unit-normalised
                     along channels, then the squared difference is averaged over pixels and summed over layers
  kl                 prediction consistency KL(f(x) || f(G(w))) of the classifier's softmax
  delta              e4e-style: mean squared distance of each layer's w from the mean w over layers (0 in W)
  w_l2               squared distance of the mean w from w_avg
Noise maps have NVIDIA's projector regulariser (`noise_regularization`).
"""
from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from stylex_jax.evaluate import similarity
from stylex_jax.models import encoder as encoder_lib

LOSS_TERMS = ('mse', 'l1', 'ssim', 'ms_ssim', 'perceptual', 'kl', 'delta', 'w_l2')


def classifier_features(model, variables, images: jax.Array, layers) -> tuple[jax.Array, dict]:
  """(logits [B, K], {layer: features [B, h, w, c]}) of a classifier that sows 'intermediates' (models.classifier
  ResNet: 'stem', 'stage1', ...), for the layers in `layers` that it sows. images [B, H, W, C] in [-1, 1]."""
  logits, state = model.apply(variables, images, train=False, mutable=['intermediates'])
  inter = state.get('intermediates', {})
  layers = tuple(layers)
  return logits, {k: v[0] if isinstance(v, tuple) else v for k, v in inter.items() if k in layers}


def _mean_per_image(x: jax.Array) -> jax.Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def normalized_feature_distance(fa: jax.Array, fb: jax.Array, eps: float = 1e-10) -> jax.Array:
  """LPIPS-style distance (unit weights) of feature maps [B, h, w, c]: unit-normalise along c, sum of squared
  differences over c, mean over pixels -> [B] in [0, 4]."""
  na = fa * jax.lax.rsqrt(jnp.sum(jnp.square(fa), axis=-1, keepdims=True) + eps)
  nb = fb * jax.lax.rsqrt(jnp.sum(jnp.square(fb), axis=-1, keepdims=True) + eps)
  return jnp.mean(jnp.sum(jnp.square(na - nb), axis=-1).reshape(fa.shape[0], -1), axis=1)


def kl_divergence(logits_p: jax.Array, logits_q: jax.Array) -> jax.Array:
  """KL(softmax(p) || softmax(q)) per row: [B, K] logits -> [B] (>= 0)."""
  lp, lq = jax.nn.log_softmax(logits_p), jax.nn.log_softmax(logits_q)
  return jnp.sum(jnp.exp(lp) * (lp - lq), axis=-1)


def delta_penalty(ws: jax.Array) -> jax.Array:
  """e4e-style W+ -> W penalty: mean over layers and dims of (w_i - mean_j w_j)^2. ws [B, num_ws, w_dim] -> [B]."""
  return jnp.mean(jnp.square(ws - jnp.mean(ws, axis=1, keepdims=True)), axis=(1, 2))


def w_distance(ws: jax.Array, w_avg: jax.Array) -> jax.Array:
  """||w - w_avg|| per image, with w the mean over layers: ws [B, num_ws, w_dim], w_avg [w_dim] -> [B]."""
  return jnp.sqrt(jnp.sum(jnp.square(jnp.mean(ws, axis=1) - w_avg), axis=-1))


def noise_regularization(noise: Mapping | list, min_size: int = 8) -> jax.Array:
  """NVIDIA's projector noise regulariser per image: for each noise map [B, H, W, 1] and each 2x average-pooled
  version down to `min_size` px, mean(n * roll(n, 1, W))^2 + mean(n * roll(n, 1, H))^2, summed. Returns [B]."""
  total = 0.0
  for n in jax.tree.leaves(noise):
    while True:
      total = total + jnp.square(jnp.mean(n * jnp.roll(n, 1, axis=2), axis=(1, 2, 3)))
      total = total + jnp.square(jnp.mean(n * jnp.roll(n, 1, axis=1), axis=(1, 2, 3)))
      if n.shape[1] <= min_size:
        break
      b, h, w, c = n.shape
      n = n.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  return total


def normalize_noise(noise):
  """Each noise map [B, H, W, 1] to zero mean and unit variance per image (NVIDIA's projector, after each step)."""

  def norm(n):
    n = n - jnp.mean(n, axis=(1, 2, 3), keepdims=True)
    return n * jax.lax.rsqrt(jnp.mean(jnp.square(n), axis=(1, 2, 3), keepdims=True) + 1e-12)

  return jax.tree.map(norm, noise)


def encoder_noise(template: Mapping, residuals: Mapping) -> dict:
  """The noise maps of an encoder with noise=True: its residuals {R: [B, R, R, 2]} on the constant maps
  (`models.encoder.noise_inputs`), each map normalised per image like the projector keeps them. Returns the
  generator's `noise_inputs` tree with leaves [B, R, R, 1]."""
  return normalize_noise(encoder_lib.noise_inputs(template, residuals))


def reconstruction_loss(images: jax.Array, recon: jax.Array, ws: jax.Array, w_avg: jax.Array, weights: Mapping[str,
                                                                                                               float],
                        *, classify: Callable[[jax.Array], tuple[jax.Array, dict]] | None = None,
                        image_logits: jax.Array | None = None, image_features: dict | None = None,
                        extra_features: Callable[[jax.Array], dict] | None = None,
                        extra_image_features: dict | None = None) -> tuple[jax.Array, dict]:
  """Weighted reconstruction loss per image and its terms.

  images, recon: [B, H, W, C] in [-1, 1] (recon = G(ws)); ws [B, num_ws, w_dim]; w_avg [w_dim].
  weights: {term: weight} for terms in LOSS_TERMS (missing = 0).
  classify(images) -> (logits [B, K], {layer: features}) is needed for 'kl' and 'perceptual'; image_logits /
  image_features are its values on `images` (precomputed, treated as constants).
  extra_features(images) -> {layer: features} (e.g. the discriminator's) adds to 'perceptual' with
  extra_image_features its values on `images`.
  Returns (loss [B], {term: [B]} for the terms with non-zero weight).
  """
  unknown = set(weights) - set(LOSS_TERMS)
  if unknown:
    raise ValueError(f'unknown reconstruction loss term(s) {sorted(unknown)}; use {LOSS_TERMS}')
  w = {k: float(v) for k, v in weights.items() if float(v) != 0.0}
  terms = {}
  if 'mse' in w:
    terms['mse'] = _mean_per_image(jnp.square(recon - images))
  if 'l1' in w:
    terms['l1'] = _mean_per_image(jnp.abs(recon - images))
  if 'ssim' in w:
    terms['ssim'] = 1.0 - similarity.ssim(recon, images)
  if 'ms_ssim' in w:
    terms['ms_ssim'] = 1.0 - similarity.ms_ssim(recon, images)
  if 'kl' in w or 'perceptual' in w:
    if classify is None or image_logits is None:
      raise ValueError("the 'kl' and 'perceptual' terms need `classify` and the images' logits")
    logits, feats = classify(recon)
    if 'kl' in w:
      terms['kl'] = kl_divergence(jax.lax.stop_gradient(image_logits), logits)
    if 'perceptual' in w:
      p = 0.0
      for name, f in feats.items():
        p = p + normalized_feature_distance(jax.lax.stop_gradient(image_features[name]), f)
      if extra_features is not None:
        for name, f in extra_features(recon).items():
          p = p + normalized_feature_distance(jax.lax.stop_gradient(extra_image_features[name]), f)
      terms['perceptual'] = p
  if 'delta' in w:
    terms['delta'] = delta_penalty(ws)
  if 'w_l2' in w:
    terms['w_l2'] = jnp.sum(jnp.square(jnp.mean(ws, axis=1) - w_avg), axis=-1)
  loss = sum(w[k] * v for k, v in terms.items()) if terms else jnp.zeros(images.shape[0])
  return loss, terms
