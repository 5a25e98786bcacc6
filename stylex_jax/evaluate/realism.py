"""Realism of generated images during and after GAN training: FID/KID with pluggable features, and the
phantom oracles (does a generated knee have a measurable joint space, and is the joint-space-width
distribution of samples the real one?).

Feature extractors, in order of preference:
  * the trained classifier's penultimate features, passed in as `features` (the gan stage does when the
    classifier stage has run) — the features that matter for explaining that classifier (reported as
    `fid_classifier`, `kid_classifier`);
  * the FID InceptionV3 (`models/inception.py`) when `config.gan.inception_weights` names its .npz weights
    (reported as `fid_inception`, `kid_inception`; comparable with published FIDs up to the caveats there);
  * none otherwise (FID/KID are skipped; the oracle metrics still run for phantom datasets).
The maths (Fréchet distance, unbiased KID) is `evaluate.metrics`; this module gathers images and features.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import scipy.stats

from stylex_jax.data import measure
from stylex_jax.evaluate import metrics
from stylex_jax.models import inception


def knee_oracle_metrics(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
  """Joint-space statistics of generated vs real knee images (both [N, H, W, 1] in [-1, 1]).

  joint_found_rate: share of fakes where `measure_knee` finds a joint space; jsw_wasserstein: 1-D Wasserstein
  distance (px) between the joint-space widths of reals and fakes (NaN when fewer than 2 fakes have a joint).
  """
  r = measure.measure_knee_batch(real)
  f = measure.measure_knee_batch(fake)
  rw = r['joint_space_width'][r['joint_found'] > 0]
  fw = f['joint_space_width'][f['joint_found'] > 0]
  out = dict(joint_found_rate=float(np.mean(f['joint_found'] > 0)),
             real_joint_found_rate=float(np.mean(r['joint_found'] > 0)),
             jsw_mean_fake=float(np.mean(fw)) if fw.size else float('nan'),
             jsw_mean_real=float(np.mean(rw)) if rw.size else float('nan'))
  out['jsw_wasserstein'] = (float(scipy.stats.wasserstein_distance(rw, fw))
                            if fw.size >= 2 and rw.size >= 2 else float('nan'))
  return out


class RealismEvaluator:
  """Computes realism metrics of a generator against `num_images` real images of `data`.

  features: images [B, H, W, C] in [-1, 1] -> features [B, F] (numpy) for `fid_classifier` / `kid_classifier`,
  or None to skip them. Call with `generate(z [B, z_dim]) -> images [B, H, W, C] in [-1, 1]` and a key; returns
  a dict of floats.
  """

  def __init__(self, config: ml_collections.ConfigDict, data, num_images: int = 256,
               features: Callable[[np.ndarray], np.ndarray] | None = None):
    self.num_images = int(num_images)
    # global batches, the same on every process: the metrics do not depend on the number of processes
    self.batch = data.global_batch_size
    self.z_dim = config.gan.generator.get('z_dim', 512)
    # the oracles measure images of at least 32 px (data.measure.MIN_RESOLUTION)
    self.is_knee = config.data.dataset == 'synthetic_knee' and config.data.image_size >= 32
    self._real = None
    self._data = data
    self._features = features if self.num_images > 0 else None
    self._inception = None
    weights = config.gan.get('inception_weights', '')
    if weights and self.num_images > 0:
      self._inception = inception.inception_feature_fn(weights)
    self._real_stats = None

  def _reals(self) -> np.ndarray:
    if self._real is None:
      images, step = [], 0
      while sum(len(b) for b in images) < self.num_images:
        images.append(self._data.global_batch(10_000_000 + step)['image'])  # fixed, far from training steps
        step += 1
      self._real = np.concatenate(images)[:self.num_images]
    return self._real

  def __call__(self, generate: Callable, key: jax.Array) -> dict[str, float]:
    if self.num_images <= 0:
      return {}
    reals = self._reals()
    fakes = []
    for i in range(0, self.num_images, self.batch):
      z = jax.random.normal(jax.random.fold_in(key, i), (self.batch, self.z_dim), jnp.float32)
      fakes.append(np.asarray(generate(z)))
    fakes = np.concatenate(fakes)[:self.num_images]
    out = {}
    if self._features is not None:
      fr = np.concatenate([self._features(reals[i:i + self.batch]) for i in range(0, len(reals), self.batch)])
      ff = np.concatenate([self._features(fakes[i:i + self.batch]) for i in range(0, len(fakes), self.batch)])
      out['fid_classifier'] = metrics.fid_from_features(fr, ff)
      out['kid_classifier'] = metrics.kid_from_features(fr, ff)
    if self._inception is not None:
      fr, ff = self._inception(reals), self._inception(fakes)
      out['fid_inception'] = metrics.fid_from_features(fr, ff)
      out['kid_inception'] = metrics.kid_from_features(fr, ff)
    if self.is_knee:
      out.update(knee_oracle_metrics(reals, fakes))
    return out
