"""Quality of explanation series: flip rate, monotonicity, proximity and attribute trends along a direction.

An explanation of one image is a series of images G(w + alpha_s d), s = 0..S-1, with the classifier's
probabilities on each. These numbers say whether the series does what it claims:

  flipped        the prediction (argmax) somewhere in the series differs from the prediction at the frame
                 nearest to alpha = 0 (the reconstruction) -> the series shows a change of decision.
  monotonicity   Spearman rank correlation between alpha and the target (e.g. p(positive), expected grade)
                 along the series: +1 when the target rises steadily with the shift.
  proximity      mean |pixel difference| (images in [-1, 1]) between the first frame whose prediction differs
                 (`flip_index`) and the reconstruction: how much the image had to change for the decision to change.
  attribute trends  Spearman correlation between alpha and each measured attribute (e.g. the joint-space width
                 measured by `stylex_jax.data.measure` on every frame): the direction should move the
                 attributes the label depends on and leave the nuisances alone (Schutte et al.'s check, done
                 with oracles instead of a radiologist).

numpy only; every function takes the arrays the series renderer returns.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import scipy.stats


def _check_series(probs: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  probs, alphas = np.asarray(probs, np.float64), np.asarray(alphas, np.float64)
  if probs.ndim != 3 or alphas.shape != probs.shape[:2]:
    raise ValueError(f'probs must be [B, S, K] and alphas [B, S]; got {probs.shape} and {alphas.shape}')
  return probs, alphas


def spearman(x: np.ndarray, y: np.ndarray) -> float:
  """Spearman rank correlation of two 1-D arrays, ignoring pairs where either is NaN; NaN if fewer than 3
  pairs remain or either side is constant."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  ok = np.isfinite(x) & np.isfinite(y)
  x, y = x[ok], y[ok]
  if len(x) < 3:
    return float('nan')
  if np.all(x == x[0]) or np.all(y == y[0]):
    return float('nan')
  return float(scipy.stats.spearmanr(x, y).statistic)


def anchor_index(alphas: np.ndarray) -> np.ndarray:
  """[B] index of the frame nearest to alpha = 0 in each row of alphas [B, S]."""
  return np.argmin(np.abs(np.asarray(alphas)), axis=1)


def flipped(probs: np.ndarray, alphas: np.ndarray) -> np.ndarray:
  """bool [B]: some frame's argmax differs from the argmax at the frame nearest alpha = 0.

  probs: [B, S, K] probabilities along each series; alphas: [B, S] shifts.
  """
  probs, alphas = _check_series(probs, alphas)
  pred = probs.argmax(-1)
  anchor = pred[np.arange(len(pred)), anchor_index(alphas)]
  return (pred != anchor[:, None]).any(axis=1)


def monotonicity(values: np.ndarray, alphas: np.ndarray) -> np.ndarray:
  """[B] Spearman correlation between alpha and values along each series (values, alphas: [B, S])."""
  values, alphas = np.asarray(values, np.float64), np.asarray(alphas, np.float64)
  if values.shape != alphas.shape or values.ndim != 2:
    raise ValueError(f'values and alphas must both be [B, S]; got {values.shape} and {alphas.shape}')
  return np.asarray([spearman(a, v) for a, v in zip(alphas, values)])


def flip_index(probs: np.ndarray, alphas: np.ndarray) -> np.ndarray:
  """[B] int64: index of the first flipping frame of each series, -1 where the series never flips.

  The first flipping frame is the frame with the smallest |alpha| whose argmax differs from the argmax at the
  anchor (the frame nearest alpha = 0); on a tie in |alpha| (e.g. both -1 and +1 flip) the earlier frame in
  the series wins. probs: [B, S, K] probabilities along each series; alphas: [B, S] shifts (any order).
  """
  probs, alphas = _check_series(probs, alphas)
  pred = probs.argmax(-1)
  anchors = anchor_index(alphas)
  out = np.full(len(pred), -1, np.int64)
  for b in range(len(pred)):
    differs = np.flatnonzero(pred[b] != pred[b, anchors[b]])
    if differs.size:
      out[b] = differs[np.argmin(np.abs(alphas[b, differs]))]
  return out


def proximity(series: np.ndarray, reference: np.ndarray, probs: np.ndarray, alphas: np.ndarray) -> np.ndarray:
  """[B] mean |series frame - reference| at the first flipping frame (`flip_index`); NaN where the series
  never flips.

  series: [B, S, H, W, C] in [-1, 1]; reference: [B, H, W, C] (the reconstruction); probs [B, S, K]; alphas [B, S].
  """
  probs, alphas = _check_series(probs, alphas)
  series, reference = np.asarray(series, np.float32), np.asarray(reference, np.float32)
  if series.shape[:2] != alphas.shape or series.shape[2:] != reference.shape[1:] or len(reference) != len(series):
    raise ValueError(f'series {series.shape} and reference {reference.shape} do not match alphas {alphas.shape}')
  out = np.full(len(series), np.nan)
  for b, s in enumerate(flip_index(probs, alphas)):
    if s >= 0:
      out[b] = float(np.abs(series[b, s] - reference[b]).mean())
  return out


def attribute_trends(attributes: Mapping[str, np.ndarray], alphas: np.ndarray,
                     valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """{name: [B] Spearman(alpha, attribute)} for attributes {name: [B, S]} measured on every frame.

  valid: optional bool [B, S] (e.g. the oracle found a joint space); invalid frames are ignored.
  """
  alphas = np.asarray(alphas, np.float64)
  return {name: monotonicity(values, alphas) for name, values in masked_attributes(attributes, alphas, valid).items()}


def masked_attributes(attributes: Mapping[str, np.ndarray], alphas: np.ndarray,
                      valid: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """{name: float64 [B, S]} copies of the per-frame attributes with the frames where `valid` [B, S] is False set to
  NaN; a shape other than alphas' [B, S] -> ValueError naming the attribute."""
  out = {}
  for name, values in attributes.items():
    values = np.array(values, np.float64)
    if values.shape != np.shape(alphas):
      raise ValueError(f'attribute {name!r} has shape {values.shape}, expected {np.shape(alphas)} (one per frame)')
    if valid is not None:
      values[~np.asarray(valid, bool)] = np.nan
    out[name] = values
  return out


def summarize(probs: np.ndarray, alphas: np.ndarray, target_values: np.ndarray, series: np.ndarray,
              reconstructions: np.ndarray) -> dict[str, float]:
  """The headline numbers of a batch of explanations (means over images; NaN-aware):
  flip_rate, monotonicity (mean Spearman of the target), proximity (mean over flipped images)."""
  flips = flipped(probs, alphas)
  mono = monotonicity(target_values, alphas)
  prox = proximity(series, reconstructions, probs, alphas)
  nanmean = lambda x: float(np.nanmean(x)) if np.isfinite(x).any() else float('nan')
  return dict(flip_rate=float(flips.mean()), monotonicity=nanmean(mono), proximity=nanmean(prox))
