"""Evaluation metrics, numpy only (runs on host arrays gathered after a jitted eval step).

Sections:
  * classification: accuracy, AUC (Mann-Whitney with ties), confusion matrix, quadratic-weighted kappa
    (the standard agreement score for ordinal gradings such as Kellgren-Lawrence 0-4), expected grade,
    and `classification_metrics` which bundles them for a (masked, padded) evaluation set;
  * generative-model metrics (FID / KID with pluggable features) follow below in their own section.

Conventions: labels are integer class indices [N]; probs are [N, K] rows of class probabilities
(scores are enough for `accuracy`/`auc`); undefined values (e.g. AUC with one class present, or an
empty input) are float('nan') rather than an exception, while malformed input raises ValueError.
"""
from __future__ import annotations

import numpy as np
import scipy.stats

# ----------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------


def _as_labels(labels, name: str = 'labels') -> np.ndarray:
  """[N] integer class indices (bool and integral floats accepted) -> int64 [N]."""
  arr = np.asarray(labels)
  if arr.ndim != 1:
    raise ValueError(f'{name} must be a 1-D array [N] of class indices; got shape {arr.shape}.')
  if arr.dtype == bool:
    return arr.astype(np.int64)
  if np.issubdtype(arr.dtype, np.integer):
    return arr.astype(np.int64)
  if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
    return arr.astype(np.int64)
  raise ValueError(f'{name} must hold integer class indices; got dtype {arr.dtype} '
                   f'(e.g. {arr.ravel()[:3].tolist()}). Pass argmax(probs) for predictions.')


def _as_probs(probs, n: int) -> np.ndarray:
  """[N, K] finite scores with K >= 2 -> float64 [N, K]."""
  arr = np.asarray(probs, dtype=np.float64)
  if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 2:
    raise ValueError(f'probs must be [N, K] with N = {n} (the number of labels) and K >= 2; '
                     f'got shape {arr.shape}.')
  if not np.all(np.isfinite(arr)):
    raise ValueError('probs contains NaN or inf; check the model outputs.')
  return arr


def _check_range(values: np.ndarray, num_classes: int, name: str) -> None:
  if values.size and (values.min() < 0 or values.max() >= num_classes):
    raise ValueError(f'{name} must be class indices in [0, {num_classes - 1}]; '
                     f'got values in [{values.min()}, {values.max()}].')


def _check_num_classes(num_classes) -> int:
  if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive int; got {num_classes!r}.')
  return int(num_classes)


# ----------------------------------------------------------------------------------------------------------
# Classification
# ----------------------------------------------------------------------------------------------------------


def accuracy(labels, probs) -> float:
  """Top-1 accuracy. labels [N] int, probs [N, K] scores -> fraction of argmax(probs) == labels (NaN if N = 0)."""
  y = _as_labels(labels)
  p = _as_probs(probs, len(y))
  _check_range(y, p.shape[1], 'labels')
  if len(y) == 0:
    return float('nan')
  return float(np.mean(np.argmax(p, axis=1) == y))


def binary_auc(labels, scores) -> float:
  """Area under the ROC curve = P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney U / (n_pos n_neg)).

    labels: [N] in {0, 1} (1 = positive); scores: [N] finite floats (higher = more positive).
    Returns a float in [0, 1]; NaN if only one class is present.
    """
  y = _as_labels(labels)
  s = np.asarray(scores, dtype=np.float64)
  if s.shape != y.shape:
    raise ValueError(f'binary_auc: scores must have the shape of labels {y.shape}; got {s.shape}.')
  if y.size and not np.all((y == 0) | (y == 1)):
    raise ValueError(f'binary_auc: labels must be 0/1; got values {np.unique(y)[:10].tolist()}.')
  if not np.all(np.isfinite(s)):
    raise ValueError('binary_auc: scores contains NaN or inf.')
  n_pos = int(np.sum(y == 1))
  n_neg = len(y) - n_pos
  if n_pos == 0 or n_neg == 0:
    return float('nan')
  ranks = scipy.stats.rankdata(s)
  u = np.sum(ranks[y == 1]) - n_pos * (n_pos + 1) / 2.0
  return float(u / (n_pos * n_neg))


def auc(labels, probs) -> float:
  """ROC AUC. labels [N] int in [0, K), probs [N, K].

    K = 2: binary_auc(labels, probs[:, 1]). K > 2: unweighted mean of the one-vs-rest AUCs of the classes
    that are present (and not alone). NaN when no AUC is defined (fewer than two classes present).
    """
  y = _as_labels(labels)
  p = _as_probs(probs, len(y))
  k = p.shape[1]
  _check_range(y, k, 'labels')
  if k == 2:
    return binary_auc(y, p[:, 1])
  per_class = [binary_auc(y == c, p[:, c]) for c in range(k) if np.any(y == c)]
  per_class = [a for a in per_class if not np.isnan(a)]
  return float(np.mean(per_class)) if per_class else float('nan')


def confusion_matrix(labels, preds, num_classes) -> np.ndarray:
  """Counts [K, K] int64; entry [i, j] = number of examples with true class i predicted as j.

    labels, preds: [N] int in [0, num_classes).
    """
  k = _check_num_classes(num_classes)
  y = _as_labels(labels)
  yhat = _as_labels(preds, 'preds')
  if y.shape != yhat.shape:
    raise ValueError(f'labels {y.shape} and preds {yhat.shape} must have the same shape [N].')
  _check_range(y, k, 'labels')
  _check_range(yhat, k, 'preds')
  return np.bincount(y * k + yhat, minlength=k * k).reshape(k, k).astype(np.int64)


def quadratic_weighted_kappa(labels, preds, num_classes) -> float:
  """Cohen's kappa with quadratic weights w_ij = (i - j)^2 / (K - 1)^2.

    labels, preds: [N] int in [0, num_classes), num_classes >= 2.
    kappa = 1 - sum(w * O) / sum(w * E), O the confusion matrix, E = outer(row sums, col sums) / N.
    1 = perfect agreement, 0 = chance, < 0 worse than chance (-1 for fully reversed uniform grades).
    NaN when undefined (N = 0, or labels and preds each constant so that sum(w * E) = 0).
    """
  k = _check_num_classes(num_classes)
  if k < 2:
    raise ValueError(f'quadratic_weighted_kappa needs num_classes >= 2; got {k}.')
  o = confusion_matrix(labels, preds, k).astype(np.float64)
  n = o.sum()
  if n == 0:
    return float('nan')
  i, j = np.meshgrid(np.arange(k), np.arange(k), indexing='ij')
  w = (i - j)**2 / (k - 1)**2
  e = np.outer(o.sum(axis=1), o.sum(axis=0)) / n
  denom = np.sum(w * e)
  if denom == 0:
    return float('nan')
  return float(1.0 - np.sum(w * o) / denom)


def expected_grade(probs) -> np.ndarray:
  """Expected ordinal grade sum_k k * p_k. probs: [N, K] probabilities -> [N] float64 in [0, K - 1]."""
  p = np.asarray(probs, dtype=np.float64)
  if p.ndim != 2:
    raise ValueError(f'expected_grade: probs must be [N, K]; got shape {p.shape}.')
  return p @ np.arange(p.shape[1], dtype=np.float64)


def classification_metrics(labels, probs, mask=None) -> dict:
  """All classification metrics of an evaluation set, as JSON-ready python values.

    labels: [N] int in [0, K); probs: [N, K] class probabilities (softmax of the logits; rows sum to 1);
    mask:   optional [N] in {0, 1} (or bool); examples with mask 0 (batch padding) are dropped.
    Returns {
      'num_examples':      int, examples kept,
      'accuracy':          float, top-1,
      'balanced_accuracy': float, mean per-class recall over the classes present,
      'auc':               float, see `auc` (NaN if fewer than two classes present),
      'qwk':               float, quadratic-weighted kappa of argmax predictions; always reported (for K = 2 it
                           equals Cohen's kappa; it is the headline number for ordinal gradings like KL 0-4),
      'log_loss':          float, mean -log p[label] (p clipped at 1e-12),
      'confusion_matrix':  list of K lists of K ints (rows = true, cols = predicted),
      'sensitivity', 'specificity': floats, only for K = 2 (recall of class 1 / class 0; NaN if absent),
    }. Raises ValueError on bad shapes, non-probabilities, or no examples after masking.
    """
  y = _as_labels(labels)
  p = _as_probs(probs, len(y))
  k = p.shape[1]
  _check_range(y, k, 'labels')
  if mask is not None:
    m = np.asarray(mask)
    if m.shape != y.shape:
      raise ValueError(f'mask must be [N] = {y.shape} like labels; got shape {m.shape}.')
    if not np.all((m == 0) | (m == 1)):
      raise ValueError('mask must contain only 0/1 (or bools); 1 keeps an example, 0 drops padding.')
    keep = m.astype(bool)
    y, p = y[keep], p[keep]
  if len(y) == 0:
    raise ValueError('classification_metrics: no examples to evaluate (empty input or everything masked).')
  if np.any(p < -1e-6) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
    raise ValueError('probs must be probabilities (non-negative, rows summing to 1); '
                     'pass jax.nn.softmax(logits), not the logits.')
  preds = np.argmax(p, axis=1)
  cm = confusion_matrix(y, preds, k)
  support = cm.sum(axis=1)
  present = support > 0
  recalls = np.diag(cm)[present] / support[present]
  p_true = np.clip(p[np.arange(len(y)), y], 1e-12, 1.0)
  out = {
      'num_examples': int(len(y)),
      'accuracy': float(np.mean(preds == y)),
      'balanced_accuracy': float(np.mean(recalls)),
      'auc': auc(y, p),
      'qwk': quadratic_weighted_kappa(y, preds, k),
      'log_loss': float(-np.mean(np.log(p_true))),
      'confusion_matrix': cm.tolist(),
  }
  if k == 2:
    out['sensitivity'] = float(cm[1, 1] / support[1]) if support[1] else float('nan')
    out['specificity'] = float(cm[0, 0] / support[0]) if support[0] else float('nan')
  return out


# ----------------------------------------------------------------------------------------------------------
# Generative-model metrics: FID and KID on features from any extractor (classifier penultimate, InceptionV3)
# ----------------------------------------------------------------------------------------------------------


def _features_2d(x, name: str) -> np.ndarray:
  f = np.asarray(x, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f'{name} must be features [N, D] with N >= 2, got shape {f.shape}.')
  if not np.all(np.isfinite(f)):
    raise ValueError(f'{name} contains NaN/Inf; check the generator/feature extractor outputs.')
  return f


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): |mu1-mu2|² + tr(S1 + S2 - 2 (S1 S2)^½).

    mu: [D]; sigma: [D, D] symmetric PSD. The matrix square root is scipy.linalg.sqrtm, with a small
    diagonal offset retried when the product is singular; its tiny imaginary part is dropped.
    """
  import scipy.linalg
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
    raise ValueError(f'frechet_distance: shapes do not match: mu {mu1.shape}/{mu2.shape}, '
                     f'sigma {s1.shape}/{s2.shape}.')
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  if not np.all(np.isfinite(covmean)):
    offset = np.eye(s1.shape[0]) * 1e-6
    covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
  covmean = np.real(covmean)
  diff = mu1 - mu2
  return float(max(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean), 0.0))


def fid_from_features(real, fake) -> float:
  """FID between two feature sets real [N, D] and fake [M, D] (Gaussian fit, unbiased covariance)."""
  r, f = _features_2d(real, 'real'), _features_2d(fake, 'fake')
  if r.shape[1] != f.shape[1]:
    raise ValueError(f'real and fake features differ in dimension: {r.shape[1]} vs {f.shape[1]}.')
  return frechet_distance(r.mean(0), np.cov(r, rowvar=False), f.mean(0), np.cov(f, rowvar=False))


def kid_from_features(real, fake, num_subsets: int = 100, max_subset_size: int = 1000, seed: int = 0) -> float:
  """Unbiased KID (squared MMD with the cubic polynomial kernel k(x, y) = (x·y / D + 1)³), averaged over
    `num_subsets` random subsets of size min(N, M, max_subset_size), as in Bińkowski et al. 2018 and NVIDIA's
    metric code. real [N, D], fake [M, D]. Deterministic for a given seed."""
  r, f = _features_2d(real, 'real'), _features_2d(fake, 'fake')
  if r.shape[1] != f.shape[1]:
    raise ValueError(f'real and fake features differ in dimension: {r.shape[1]} vs {f.shape[1]}.')
  d = r.shape[1]
  m = min(len(r), len(f), max_subset_size)
  rng = np.random.default_rng(seed)
  total = 0.0
  for _ in range(num_subsets):
    x = f[rng.choice(len(f), m, replace=False)]
    y = r[rng.choice(len(r), m, replace=False)]
    a = (x @ x.T / d + 1)**3 + (y @ y.T / d + 1)**3
    b = (x @ y.T / d + 1)**3
    total += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
  return float(total / num_subsets / m)
