"""Metrics of the shortcut experiment: does an explanation reveal a planted shortcut (and does GradCAM)?

A classifier trained on data where an artefact is tied to the label (the corner "R" marker: LOCAL; scanner B's
blur and noise: GLOBAL) may use the artefact instead of the disease. Its explanation series should then make the
artefact appear or vanish, and those of a classifier trained on clean data should not. Per image:

  artefact_shown      the oracle (data/measure.py) of the artefact changes along the series
                      (`values` [B, S] per frame, see the function for the two modes).
  gradcam_mass_in_box share of the GradCAM heatmap's mass inside the marker's box (the pointing game, as mass).
  heatmap_difference  mean |heat_a - heat_b| of two classifiers' GradCAMs of the same image, in [0, 1].
  correct             whether the argmax of the probabilities is the label (`accuracy` = its mean).

Pure numpy; the inputs are arrays (the stage `stages/shortcut.py` measures and loads them).
"""
from __future__ import annotations

import numpy as np


def artefact_shown(values: np.ndarray, threshold: float, anchor: np.ndarray | None = None,
                   end: np.ndarray | None = None) -> np.ndarray:
  """Whether the artefact appears or vanishes along each series.

  values: [B, S] the artefact's oracle per frame, in units where `threshold` applies (the marker: measured
    presence 0/1; scanner B: noise_level or sharpness divided by its dataset std).
  threshold: > 0. anchor None -> shown when ANY two frames differ by more than `threshold` (max - min over the
    series; marker: threshold 0.5 -> its presence changes somewhere). anchor [B] int (the frame of the image's
    own latent) -> shown when |values[b, end[b]] - values[b, anchor[b]]| > threshold, end [B] int (default the
    last frame S - 1).
  NaN values (not measurable) are ignored; a series with fewer than two measurable frames (or a NaN at anchor or
  end) counts as not shown. Returns bool [B].
  """
  v = np.asarray(values, np.float64)
  if v.ndim != 2:
    raise ValueError(f'values must be [B, S], got shape {v.shape}')
  if not threshold > 0:
    raise ValueError(f'threshold={threshold!r} must be > 0')
  b, s = v.shape
  if anchor is None:
    finite = np.isfinite(v)
    hi = np.where(finite, v, -np.inf).max(axis=1) if s else np.full(b, -np.inf)
    lo = np.where(finite, v, np.inf).min(axis=1) if s else np.full(b, np.inf)
    ok = finite.sum(axis=1) >= 2
    return ok & (hi - lo > threshold)
  rows = np.arange(b)
  anchor = np.asarray(anchor, np.int64).reshape(b)
  end = np.full(b, s - 1, np.int64) if end is None else np.asarray(end, np.int64).reshape(b)
  change = np.abs(v[rows, end] - v[rows, anchor])
  return np.isfinite(change) & (change > threshold)


def gradcam_mass_in_box(heat: np.ndarray, box: tuple[int, int, int]) -> np.ndarray:
  """[B] share of each heatmap's mass inside a square box (the pointing game as mass), in [0, 1].

  heat: [B, H, W] non-negative (GradCAM in [0, 1]); box: (row0, col0, size) as `phantoms.marker_box(H, W)`.
  A heatmap with no mass at all -> NaN (no pointing).
  """
  h = np.asarray(heat, np.float64)
  if h.ndim != 3:
    raise ValueError(f'heat must be [B, H, W], got shape {h.shape}')
  if (h < 0).any():
    raise ValueError('heat must be non-negative')
  r0, c0, size = (int(x) for x in box)
  total = h.sum(axis=(1, 2))
  inside = h[:, max(r0, 0):r0 + size, max(c0, 0):c0 + size].sum(axis=(1, 2))
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(total > 0, inside / np.where(total > 0, total, 1.0), np.nan)


def heatmap_difference(heat_a: np.ndarray, heat_b: np.ndarray) -> np.ndarray:
  """[B] mean absolute difference |heat_a - heat_b| per image (heatmaps [B, H, W] in [0, 1] -> values in [0, 1]):
  0 = two classifiers point at exactly the same pixels. (Mean |delta| rather than 1 - Pearson correlation, which
  is undefined for the flat heatmaps a classifier that learnt little gives.)"""
  a, b = np.asarray(heat_a, np.float64), np.asarray(heat_b, np.float64)
  if a.shape != b.shape or a.ndim != 3:
    raise ValueError(f'heatmaps must both be [B, H, W], got {a.shape} and {b.shape}')
  return np.abs(a - b).mean(axis=(1, 2))


def correct(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """[B] float 1.0 where argmax(probs [B, K]) == labels [B] (int), else 0.0."""
  p = np.asarray(probs)
  labels = np.asarray(labels).reshape(-1)
  if p.ndim != 2 or len(p) != len(labels):
    raise ValueError(f'probs must be [B, K] and labels [B], got {p.shape} and {labels.shape}')
  return (p.argmax(-1) == labels).astype(np.float64)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
  """Share of argmax(probs [B, K]) == labels [B], in [0, 1]; NaN for B = 0."""
  c = correct(probs, labels)
  return float(c.mean()) if c.size else float('nan')
