"""The measuring instrument for explanation fidelity: per-series numbers, their aggregation and a scorecard.

An explanation of one image is a series of frames G(w + alpha_s d), s = 0..S-1 (`series: [S, H, W, C] in
[-1, 1]`, alphas [S], the classifier's probs [S, K]), its reconstruction G(w) and a target class; the direction
moves towards the target as alpha grows. The anchor is the frame nearest alpha = 0 and the flip frame the frame
with the smallest |alpha| whose argmax differs from the anchor's (`flip_index`, shared with
`explanations.proximity`). Batches stack series of equal length: series [B, S, H, W, C], probs [B, S, K].

Per series ([B] arrays, NaN where undefined, e.g. a series that never flips):
  proximity_ssim     SSIM (`evaluate.similarity.ssim`) of the flip frame to the reconstruction, in [-1, 1].
  sparsity           share of pixels whose largest channel change |flip frame - reconstruction| exceeds a
                     threshold (in [-1, 1] image units), in [0, 1].
  cout               COUnterfactual Transition (Khorram & Fuxin, CVPR 2022; definition in `cout`), in [-1, 1].
  attribute_recovery on the phantoms, with oracle measurements (`data.measure`) on every frame: do the
                     attributes the labels depend on (causal) move the right way, and do the nuisances stay put?
Per batch:
  realism            KID of frames near the flip vs real images, against the KID of the reconstructions; and
                     the k-nearest-real-neighbour distance of the same sets (defined on a handful of images, where
                     the KID ratio is not).
  bootstrap_ci       percentile bootstrap CI of a NaN-ignoring mean.
  Metric / score / to_markdown   a scorecard: value [low, high], goal, met or missed, meaning.

numpy/scipy (and jax through `evaluate.similarity`); classifiers and feature extractors are passed in as callables.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping, Sequence

import numpy as np
import scipy.spatial

from stylex_jax.evaluate import explanations, metrics, similarity

flip_index = explanations.flip_index  # [B, S, K] probs, [B, S] alphas -> [B] int (-1: never flips)
KNN_K = 3  # neighbours of the k-NN realism distance (Kynkaeaenniemi et al. 2019, improved precision and recall)

# ----------------------------------------------------------------------------------------------------------
# Images at the flip frame
# ----------------------------------------------------------------------------------------------------------


def _flip_frames(series, reconstructions, probs, alphas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(flip index [B], flip frames [n, H, W, C], their reconstructions [n, H, W, C]) for the n flipped series."""
  series = np.asarray(series, np.float32)
  reconstructions = np.asarray(reconstructions, np.float32)
  idx = flip_index(probs, alphas)
  if (series.ndim != 5 or series.shape[:2] != np.shape(alphas) or
      reconstructions.shape != series.shape[:1] + series.shape[2:]):
    raise ValueError(f'series must be [B, S, H, W, C] and reconstructions [B, H, W, C] matching alphas '
                     f'{np.shape(alphas)}; got {series.shape} and {reconstructions.shape}')
  rows = np.flatnonzero(idx >= 0)
  return idx, series[rows, idx[rows]], reconstructions[rows]


def proximity_ssim(series, reconstructions, probs, alphas) -> np.ndarray:
  """[B] SSIM of the flip frame to the reconstruction; NaN where the series never flips.

  series: [B, S, H, W, C] in [-1, 1] (H, W >= 11, the SSIM window); reconstructions: [B, H, W, C] in [-1, 1];
  probs: [B, S, K]; alphas: [B, S]. Returns float64 in [-1, 1] (1 = the flip frame is the reconstruction).
  """
  idx, frames, recons = _flip_frames(series, reconstructions, probs, alphas)
  out = np.full(len(idx), np.nan)
  if len(frames):
    out[idx >= 0] = np.asarray(similarity.ssim(frames, recons), np.float64)
  return out


def sparsity(series, reconstructions, probs, alphas, threshold: float = 0.1) -> np.ndarray:
  """[B] share of pixels changed at the flip frame; NaN where the series never flips.

  A pixel (spatial location) counts as changed when max over channels of |flip frame - reconstruction| is
  greater than `threshold` (in [-1, 1] image units, i.e. 0.1 = 5% of the range). series: [B, S, H, W, C] in
  [-1, 1]; reconstructions: [B, H, W, C]; probs: [B, S, K]; alphas: [B, S]. Returns float64 in [0, 1].
  """
  idx, frames, recons = _flip_frames(series, reconstructions, probs, alphas)
  out = np.full(len(idx), np.nan)
  if len(frames):
    changed = np.abs(frames - recons).max(axis=-1) > threshold
    out[idx >= 0] = changed.mean(axis=(1, 2))
  return out


# ----------------------------------------------------------------------------------------------------------
# COUT
# ----------------------------------------------------------------------------------------------------------


def cout(original, counterfactual, predict: Callable[[np.ndarray], np.ndarray], source, target, steps: int = 20,
         batch_size: int = 256) -> np.ndarray:
  """[B] COUnterfactual Transition score (COUT; Khorram & Fuxin, "Cycle-Consistent Counterfactuals by Latent
  Transformations", CVPR 2022), in [-1, 1]; higher = the changed pixels move the classifier towards the target.

  Definition (as in the C3LT evaluation code, with `steps` increments instead of a pixel step):
    * change magnitude of pixel (i, j) = sum over channels of |counterfactual - original| (a pixel is a spatial
      location; all its channels are revealed together);
    * order the H*W pixels by decreasing change magnitude (ties in row-major order);
    * x_n, n = 0..steps: the original with its first k_n = floor(n * H * W / steps) pixels of that order
      replaced by the counterfactual's (x_0 = original, x_steps = counterfactual);
    * d_n = p_target(x_n) - p_source(x_n), with p = predict(x_n);
    * COUT = (d_0 / 2 + d_1 + ... + d_{steps-1} + d_steps / 2) / steps (trapezoid over n, normalised to [0, 1]).
  A counterfactual equal to the original scores the constant d_0.

  original, counterfactual: [B, H, W, C] in [-1, 1]; predict: images [N, H, W, C] -> probabilities [N, K];
  source, target: [B] int class indices. All B * (steps + 1) images go through `predict` in chunks of
  `batch_size`.
  """
  x0, x1 = np.asarray(original, np.float32), np.asarray(counterfactual, np.float32)
  if x0.ndim != 4 or x0.shape != x1.shape:
    raise ValueError(f'original and counterfactual must be [B, H, W, C] of the same shape; got {x0.shape} and '
                     f'{x1.shape}')
  b, h, w, _ = x0.shape
  source = np.broadcast_to(np.asarray(source, np.int64), (b,))
  target = np.broadcast_to(np.asarray(target, np.int64), (b,))
  steps, batch_size = int(steps), int(batch_size)
  if steps < 1 or batch_size < 1:
    raise ValueError(f'steps and batch_size must be >= 1; got {steps} and {batch_size}')
  pixels = h * w
  magnitude = np.abs(x1 - x0).sum(axis=-1).reshape(b, pixels)
  order = np.argsort(-magnitude, axis=1, kind='stable')
  rank = np.empty_like(order)
  np.put_along_axis(rank, order, np.arange(pixels)[None].repeat(b, 0), axis=1)  # rank[b, pixel] in the order
  counts = (np.arange(steps + 1) * pixels) // steps  # k_n
  total = b * (steps + 1)
  probs = []
  for start in range(0, total, batch_size):
    flat = np.arange(start, min(start + batch_size, total))
    rows, n = flat // (steps + 1), flat % (steps + 1)
    reveal = (rank[rows] < counts[n][:, None]).reshape(len(flat), h, w, 1)
    p = np.asarray(predict(np.where(reveal, x1[rows], x0[rows])), np.float64)
    if p.ndim != 2 or len(p) != len(flat):
      raise ValueError(f'predict must map [N, H, W, C] images to probabilities [N, K]; got {p.shape} for N = '
                       f'{len(flat)}')
    probs.append(p)
  probs = np.concatenate(probs).reshape(b, steps + 1, -1)
  rows = np.arange(b)
  d = probs[rows, :, target] - probs[rows, :, source]  # [B, steps + 1]
  return (d[:, 0] / 2 + d[:, 1:-1].sum(axis=1) + d[:, -1] / 2) / steps


# ----------------------------------------------------------------------------------------------------------
# Realism near the flip
# ----------------------------------------------------------------------------------------------------------


def realism(frames_near_flip_features, reconstruction_features, real_features, num_subsets: int = 100, seed: int = 0,
            k: int = KNN_K) -> dict[str, float]:
  """KID of the frames near the flip and of the reconstructions, each against real images, and their ratio.

  frames_near_flip_features: [N, F]; reconstruction_features: [M, F]; real_features: [R, F] (the same
  extractor). Both KIDs use `metrics.kid_from_features` with the same subset size min(N, M, R, 1000) (over the
  sets with >= 2 rows) and seed, so they are estimated alike (KID is unbiased but noisy at small sizes, and can
  be slightly negative).
  Returns {frame_kid, reconstruction_kid, kid_ratio = frame_kid / reconstruction_kid}: a KID is NaN when its
  set has fewer than 2 rows (KID needs pairs); kid_ratio is NaN unless both KIDs are finite and
  reconstruction_kid > 0. kid_ratio near 1: moving along the direction costs no realism beyond inversion.

  The KID of 16 reconstructions is noise around 0 (often negative), so the ratio is usually undefined on a demo's
  export. The k-NN figures are defined there: `knn_distance` (features [N, F] vs real [R, F]) per image, the
  distance to its k-th nearest real image (k = 3, the manifold radius of Kynkaeaenniemi et al. 2019), in units
  of the real images' own median k-NN radius (among the other real images); frame_knn_distance and
  reconstruction_knn_distance are the medians over the set (NaN with fewer than k + 1 real rows or no rows), and
  knn_distance_ratio = frame / reconstruction (NaN unless both are finite and the latter > 0): near 1, the
  frames lie as close to real images as the reconstructions; 2, twice as far.
  Caveat: an explained image may itself be among the real images, next to its reconstruction; with k = 3 it is
  one of the three neighbours, not the distance.
  """
  sets = [np.asarray(x, np.float64) for x in (frames_near_flip_features, reconstruction_features, real_features)]
  for name, x in zip(('frames_near_flip_features', 'reconstruction_features', 'real_features'), sets):
    if x.ndim != 2:
      raise ValueError(f'{name} must be features [N, F]; got shape {x.shape}')
  frames, recons, real = sets
  if len({x.shape[1] for x in sets}) > 1:
    raise ValueError('frames_near_flip_features, reconstruction_features and real_features must come from the same '
                     f'extractor (same F); got {frames.shape}, {recons.shape} and {real.shape}')
  size = min([len(x) for x in sets if len(x) >= 2] + [1000])  # sets too small for a KID don't shrink the other

  def kid(fake):
    if len(fake) < 2 or len(real) < 2:
      return float('nan')
    return metrics.kid_from_features(real, fake, num_subsets=num_subsets, max_subset_size=size, seed=seed)

  frame_kid, recon_kid = kid(frames), kid(recons)
  ok = math.isfinite(frame_kid) and math.isfinite(recon_kid) and recon_kid > 0
  out = dict(frame_kid=frame_kid, reconstruction_kid=recon_kid, kid_ratio=frame_kid / recon_kid if ok else float('nan'))
  both = knn_distance(np.concatenate([frames, recons]), real, k)  # one k-d tree and radius of the real rows
  frame_d, recon_d = (float(np.median(d)) if d.size else float('nan') for d in (both[:len(frames)], both[len(frames):]))
  ok = math.isfinite(frame_d) and math.isfinite(recon_d) and recon_d > 0
  out.update(frame_knn_distance=frame_d, reconstruction_knn_distance=recon_d,
             knn_distance_ratio=frame_d / recon_d if ok else float('nan'))
  return out


def knn_distance(features, real_features, k: int = KNN_K) -> np.ndarray:
  """Distance of each row of features [N, F] to its k-th nearest row of real_features [R, F] (Euclidean), divided
  by the median over the real rows of their own k-th-nearest-other-real distance: [N] float64, >= 0 (1 = as far
  from the real images as a typical real image is from its k-th neighbour). All NaN when R < k + 1 or the real
  radius is 0 (e.g. identical real rows)."""
  x, real = np.asarray(features, np.float64), np.asarray(real_features, np.float64)
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f'k must be an int >= 1; got {k!r}')
  if x.ndim != 2 or real.ndim != 2 or (len(x) and x.shape[1] != real.shape[1]):
    raise ValueError(f'features [N, F] and real_features [R, F] must be 2-D with the same F; got {x.shape} and '
                     f'{real.shape}')
  if len(real) < k + 1 or not len(x):
    return np.full(len(x), np.nan)
  tree = scipy.spatial.cKDTree(real)
  radius = np.median(tree.query(real, k=k + 1)[0][:, k])  # neighbour 0 of a real row is itself
  if not radius > 0:
    return np.full(len(x), np.nan)
  return tree.query(x, k=k)[0].reshape(len(x), k)[:, k - 1] / radius


# ----------------------------------------------------------------------------------------------------------
# Attribute recovery (phantoms with oracles)
# ----------------------------------------------------------------------------------------------------------


def implied_signs(attribute_values, labels, target_class: int) -> int:
  """+1 or -1: how the label depends on an attribute across a dataset -- the sign of the Spearman correlation
  between the attribute and (label == target_class) (NaN attribute values are ignored).

  attribute_values: [N] float; labels: [N] int; target_class: int. Raises ValueError when the correlation is
  undefined (constant attribute or label, < 3 pairs) or exactly 0 (no direction is implied).
  """
  values, labels = np.asarray(attribute_values, np.float64), np.asarray(labels)
  if values.ndim != 1 or values.shape != labels.shape:
    raise ValueError(f'attribute_values and labels must both be [N]; got {values.shape} and {labels.shape}')
  rho = explanations.spearman(values, (labels == target_class).astype(np.float64))
  if not np.isfinite(rho) or rho == 0:
    raise ValueError(f'the attribute implies no direction towards class {target_class} (Spearman = {rho}); '
                     'check that both classes are present and the attribute varies')
  return 1 if rho > 0 else -1


def _kleene(values: list[np.ndarray], want_all: bool) -> np.ndarray:
  """Three-valued all/any over per-series {1, 0, NaN} arrays: all = 0 if any 0, else NaN if any NaN, else 1;
  any = 1 if any 1, else NaN if any NaN, else 0."""
  v = np.stack(values)
  decisive = 0.0 if want_all else 1.0
  out = np.where(np.isnan(v).any(axis=0), np.nan, 1.0 - decisive)
  return np.where((v == decisive).any(axis=0), decisive, out)


def attribute_recovery(attributes: Mapping[str, np.ndarray], alphas, flip_index, causal: Mapping[str, int],
                       nuisances: Sequence[str], dataset_std: Mapping[str, float], valid=None) -> dict[str, np.ndarray]:
  """Do the oracle-measured attributes move as the labels imply, and only those? Per-series arrays [B].

  attributes: {name: [B, S]} measured on every frame (e.g. `data.measure.measure_knee_batch` per series);
  alphas: [B, S]; flip_index: [B] int (`flip_index`; -1 = no flip); causal: {name: +1 | -1}, the sign of the
  change that the labels imply towards the target class (`implied_signs`); nuisances: names the labels do not
  depend on; dataset_std: {name: std of the attribute over the dataset} (> 0) for every causal and nuisance
  name; valid: optional bool [B, S] (False = the oracle failed on that frame; NaN values count as invalid too).

  Returns {
    'trend_<name>':              Spearman(alpha, attribute) for every attribute (`explanations.attribute_trends`),
    'right_direction_<name>':    per causal attribute: 1.0 if its trend has the implied sign, 0.0 if not (also
                                 for a trend of exactly 0), NaN if the trend is undefined,
    'causal_right_direction':    all causal attributes right, three-valued: 0 if any is wrong, else NaN if any
                                 is undefined, else 1,
    'causal_right_direction_any': some causal attribute right: 1 if any is right, else NaN if any is
                                 undefined, else 0,
    'causal_change_std_<name>', 'nuisance_change_std_<name>':
                                 |attribute at the flip frame - at the anchor frame| / dataset_std (NaN without
                                 a flip or where either frame is invalid),
    'nuisance_change_max_std':   max over the nuisances (NaN-ignoring; NaN if all are NaN),
    'causal_share':              sum of the causal changes / sum of all (causal + nuisance) changes, in std
                                 units, at the flip frame, in [0, 1]: 1 = only causal attributes changed. NaN
                                 without a flip, when any causal or nuisance change is NaN (a missing term would
                                 bias the share), or when nothing changed at all.
  } All values float64 [B].
  """
  alphas = np.asarray(alphas, np.float64)
  if alphas.ndim != 2:
    raise ValueError(f'alphas must be [B, S]; got {alphas.shape}')
  b = len(alphas)
  idx = np.asarray(flip_index, np.int64)
  if idx.shape != (b,) or np.any(idx >= alphas.shape[1]) or np.any(idx < -1):
    raise ValueError(f'flip_index must be [B] = [{b}] frame indices (or -1); got {idx.tolist()}')
  nuisances = tuple(nuisances)
  missing = [n for n in (*causal, *nuisances) if n not in attributes or n not in dataset_std]
  if missing:
    raise ValueError(f'attributes and dataset_std need every causal and nuisance name; missing {missing}')
  bad_sign = {n: s for n, s in causal.items() if s not in (1, -1)}
  if bad_sign:
    raise ValueError(f'causal signs must be +1 or -1; got {bad_sign}')
  bad_std = {n: dataset_std[n] for n in (*causal, *nuisances) if not dataset_std[n] > 0}
  if bad_std:
    raise ValueError(f'dataset_std must be > 0; got {bad_std}')

  values = explanations.masked_attributes(attributes, alphas, valid)
  out = {f'trend_{n}': t for n, t in explanations.attribute_trends(values, alphas).items()}

  right = {}
  for name, sign in causal.items():
    trend = out[f'trend_{name}']
    right[name] = np.where(np.isnan(trend), np.nan, (np.sign(trend) == sign).astype(np.float64))
    out[f'right_direction_{name}'] = right[name]
  if right:
    out['causal_right_direction'] = _kleene(list(right.values()), want_all=True)
    out['causal_right_direction_any'] = _kleene(list(right.values()), want_all=False)

  anchors = explanations.anchor_index(alphas)
  rows, flip = np.arange(b), np.where(idx >= 0, idx, 0)

  def change(name):
    v = values[name]
    return np.where(idx >= 0, np.abs(v[rows, flip] - v[rows, anchors]), np.nan) / float(dataset_std[name])

  causal_changes = {n: change(n) for n in causal}
  nuisance_changes = {n: change(n) for n in nuisances}
  for n, c in causal_changes.items():
    out[f'causal_change_std_{n}'] = c
  for n, c in nuisance_changes.items():
    out[f'nuisance_change_std_{n}'] = c
  if nuisances:
    stacked = np.stack(list(nuisance_changes.values()))
    finite = np.isfinite(stacked).any(axis=0)
    out['nuisance_change_max_std'] = np.where(finite, np.max(np.where(np.isnan(stacked), -np.inf, stacked), 0), np.nan)
  c_sum = np.sum(list(causal_changes.values()), axis=0) if causal else np.zeros(b)
  n_sum = np.sum(list(nuisance_changes.values()), axis=0) if nuisances else np.zeros(b)
  total = c_sum + n_sum
  with np.errstate(invalid='ignore', divide='ignore'):
    out['causal_share'] = np.where(total > 0, c_sum / total, np.nan)
  return out


# ----------------------------------------------------------------------------------------------------------
# Aggregation and the scorecard
# ----------------------------------------------------------------------------------------------------------

_BOOTSTRAP_ELEMENTS = 2**20  # indices drawn at once by bootstrap_ci (8 MiB, + 8 MiB of gathered values)


def bootstrap_ci(values, num_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
  """(mean, low, high): the NaN-ignoring mean of values [B] and its percentile-bootstrap confidence interval.

  NaN values are dropped first; the n remaining are resampled with replacement `num_resamples` times
  (np.random.default_rng(seed), drawn in blocks of about 2**20 indices so memory stays bounded for any B; the
  result is deterministic), and low/high are the (1 - level) / 2 and
  (1 + level) / 2 quantiles of the resampled means. All-NaN or empty -> (nan, nan, nan); one value v ->
  (v, v, v).
  """
  x = np.asarray(values, np.float64).ravel()
  x = x[~np.isnan(x)]
  if not 0 < level < 1 or num_resamples < 1:
    raise ValueError(f'level must be in (0, 1) and num_resamples >= 1; got {level} and {num_resamples}')
  if x.size == 0:
    return float('nan'), float('nan'), float('nan')
  rng = np.random.default_rng(seed)
  rows = max(1, _BOOTSTRAP_ELEMENTS // x.size)  # resamples per draw: memory bounded whatever the number of values
  means = np.concatenate([
      x[rng.integers(0, x.size, size=(min(rows,
                                          int(num_resamples) - start), x.size))].mean(axis=1)
      for start in range(0, int(num_resamples), rows)
  ])
  low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
  return float(x.mean()), float(low), float(high)


_COMPARE = {'>=': np.greater_equal, '<=': np.less_equal, '>': np.greater, '<': np.less}


@dataclasses.dataclass(frozen=True)
class Metric:
  """One scorecard line. values: [B] per-series values (NaN = undefined, ignored by the mean); goal: e.g.
  ('>=', 0.95) or ('<=', 0.25) (operators >=, <=, >, <), or None; meaning: what the number says, one phrase."""
  name: str
  values: np.ndarray
  goal: tuple[str, float] | None
  meaning: str

  def __post_init__(self):
    if self.goal is not None and (len(self.goal) != 2 or self.goal[0] not in _COMPARE):
      raise ValueError(f'goal of {self.name!r} must be (op, threshold) with op in {sorted(_COMPARE)}; got '
                       f'{self.goal!r}')


def score(metric: Metric, num_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> dict:
  """{value, low, high, goal, met, meaning} of a Metric: value = NaN-ignoring mean of its values, [low, high]
  its `bootstrap_ci`; met = whether value satisfies the goal (the point estimate, not the interval), None when
  there is no goal or the value is NaN."""
  value, low, high = bootstrap_ci(np.asarray(metric.values, np.float64), num_resamples, level, seed)
  met = None
  if metric.goal is not None and not math.isnan(value):
    op, threshold = metric.goal
    met = bool(_COMPARE[op](value, float(threshold)))
  return dict(value=value, low=low, high=high, goal=metric.goal, met=met, meaning=metric.meaning)


def scorecard(metric_list: Sequence[Metric], **kwargs) -> dict[str, dict]:
  """{metric.name: score(metric, **kwargs)} in the given order (the input of `to_markdown`)."""
  return {m.name: score(m, **kwargs) for m in metric_list}


def _number(x: float) -> str:
  return 'nan' if x is None or math.isnan(x) else f'{x:.3g}'


def to_markdown(scorecard: Mapping[str, Mapping]) -> str:
  """A markdown table of {name: score(...)}: metric | value [low, high] | goal | met/missed | meaning.

  Numbers have 3 significant digits; a missing goal or an undecided `met` (None) is shown as '-'; an entry without
  an interval (low/high None) shows the value alone.
  """
  lines = ['| metric | value [low, high] | goal | met/missed | meaning |', '|---|---|---|---|---|']
  for name, s in scorecard.items():
    goal = '-' if s['goal'] is None else f'{s["goal"][0]} {_number(float(s["goal"][1]))}'
    met = {None: '-', True: 'met', False: 'missed'}[s['met']]
    value = _number(s['value'])
    if s.get('low') is not None and s.get('high') is not None:  # one number over the export has no interval
      value += f' [{_number(s["low"])}, {_number(s["high"])}]'
    cells = [name, value, goal, met, s['meaning']]
    lines.append('| ' + ' | '.join(str(c).replace('|', '\\|') for c in cells) + ' |')
  return '\n'.join(lines) + '\n'
