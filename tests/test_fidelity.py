"""evaluate/fidelity.py against independent references: hand-computed series, closed-form COUT curves, scipy
(Spearman, SSIM with scipy's Gaussian filter), an explicit MMD sum for KID, and phantoms rendered with known
attributes and measured by the oracles."""
import math

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats

from stylex_jax.data import measure, phantoms
from stylex_jax.evaluate import explanations, fidelity


def _probs(p_pos):
  p = np.asarray(p_pos, np.float64)
  return np.stack([1 - p, p], axis=-1)


def _ref_ssim(a, b):
  """Wang et al. with scipy's Gaussian filter (sigma 1.5, 11 taps), valid region, mean over pixels and channels."""
  f = lambda x: scipy.ndimage.gaussian_filter(x, 1.5, truncate=5 / 1.5, mode='constant')[5:-5, 5:-5]
  c1, c2 = (0.01 * 2)**2, (0.03 * 2)**2
  out = []
  for c in range(a.shape[-1]):
    x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
    mx, my = f(x), f(y)
    vx, vy, cov = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    out.append(np.mean((2 * mx * my + c1) / (mx**2 + my**2 + c1) * (2 * cov + c2) / (vx + vy + c2)))
  return float(np.mean(out))


# ----------------------------------------------------------------------------------------------------------
# flip index, SSIM proximity, sparsity
# ----------------------------------------------------------------------------------------------------------


def test_flip_index_on_hand_built_series():
  alphas = np.array([[0., 1., 2.], [0., 1., 2.], [-1., 0., 1.], [2., -0.5, 1.]])
  p = np.array([
      [0.2, 0.4, 0.7],  # flips at frame 2
      [0.2, 0.3, 0.4],  # never flips
      [0.9, 0.3, 0.8],  # both sides flip at |alpha| = 1: the earlier frame (0) wins
      [0.9, 0.3, 0.6],  # anchor is frame 1 (alpha -0.5); frame 2 (|1|) is nearer than frame 0 (|2|)
  ])
  np.testing.assert_array_equal(fidelity.flip_index(_probs(p), alphas), [2, -1, 0, 2])
  # multi-class: the argmax leaves class 0 for class 2 at frame 3
  probs3 = np.array([[[.6, .3, .1], [.5, .3, .2], [.4, .3, .3], [.2, .3, .5]]])
  np.testing.assert_array_equal(fidelity.flip_index(probs3, np.arange(4.0)[None]), [3])
  # explanations.proximity uses the same frame
  series = np.zeros((4, 3, 2, 2, 1), np.float32)
  series[np.arange(4), [2, 1, 0, 2]] = 0.5
  prox = explanations.proximity(series, np.zeros((4, 2, 2, 1)), _probs(p), alphas)
  np.testing.assert_allclose(prox, [0.5, np.nan, 0.5, 0.5])


def test_proximity_ssim_identical_is_one_else_scipy_reference_nan_without_flip():
  rng = np.random.default_rng(0)
  recon = np.tanh(scipy.ndimage.gaussian_filter(rng.normal(size=(3, 16, 16, 2)), (0, 2, 2, 0)) * 3)
  series = np.repeat(recon[:, None], 3, axis=1).astype(np.float32)
  noisy = np.clip(recon[1] + 0.2 * rng.normal(size=recon[1].shape), -1, 1).astype(np.float32)
  series[1, 2] = noisy
  series[0, 1] = -recon[0]  # frame 1 is no flip frame: must not be used
  alphas = np.tile([0., 1., 2.], (3, 1))
  p = np.array([[0.2, 0.4, 0.7], [0.2, 0.4, 0.7], [0.2, 0.3, 0.4]])  # frame 2 flips in the first two
  out = fidelity.proximity_ssim(series, recon.astype(np.float32), _probs(p), alphas)
  assert out[0] == pytest.approx(1.0, abs=1e-5)
  assert out[1] == pytest.approx(_ref_ssim(noisy, recon[1].astype(np.float32)), abs=1e-4)
  assert out[1] < 0.95
  assert np.isnan(out[2])


def test_sparsity_counts_pixels_by_their_largest_channel_change():
  recon = np.zeros((2, 4, 4, 3), np.float32)
  series = np.repeat(recon[:, None], 3, axis=1)
  frame = np.full((4, 4, 3), 0.05, np.float32)  # every pixel changes a little (below the threshold)
  frame[0, 0, 1] = 0.5  # 3 of 16 pixels change in one channel only
  frame[2, 3, 0] = -0.3
  frame[3, 1, 2] = 0.11
  frame[1, 1, :] = 0.1  # exactly at the threshold: not counted (strictly greater)
  series[0, 2] = frame
  series[0, 1] = 1.0  # not the flip frame
  alphas = np.tile([0., 1., 2.], (2, 1))
  p = np.array([[0.2, 0.4, 0.7], [0.2, 0.3, 0.4]])
  out = fidelity.sparsity(series, recon, _probs(p), alphas, threshold=0.1)
  assert out[0] == pytest.approx(3 / 16)
  assert np.isnan(out[1])
  assert fidelity.sparsity(series, recon, _probs(p), alphas, threshold=0.01)[0] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------------------
# COUT
# ----------------------------------------------------------------------------------------------------------


def _region_classifier(region, k, calls=None):
  """probs = softmax([0, k * mean of channel 0 over the region]) -> p1 = sigmoid(k m), p1 - p0 = tanh(k m / 2)."""

  def predict(x):
    if calls is not None:
      calls.append(len(x))
    m = x[:, region[0], region[1], 0].mean(axis=1)
    p1 = 1 / (1 + np.exp(-k * m))
    return np.stack([1 - p1, p1], axis=1)

  return predict


def test_cout_closed_form_on_a_region_classifier():
  # 4x4 image; the classifier reads the mean of the 4 pixels of the top row. The counterfactual raises the
  # region by 1 and the other 12 pixels by 2 (in channel 1 only, which the classifier ignores).
  k = 3.0
  region = (np.zeros(4, int), np.arange(4))
  t = math.tanh(k / 2)  # p1 - p0 once the whole region (mean 1) is revealed
  original = np.zeros((2, 4, 4, 3), np.float32)
  late = original.copy()
  late[0, region[0], region[1], 0] = 1.0
  late[0, 1:, :, 1] = 2.0  # bigger change elsewhere: revealed first (steps 1-3), the region last (step 4)
  early = original.copy()
  early[0, region[0], region[1], 0] = 1.0
  early[0, 1:, :, 1] = 0.5  # smaller change elsewhere: the region is revealed at step 1
  cf = np.concatenate([late[:1], early[:1]])
  predict = _region_classifier(region, k)
  out = fidelity.cout(original, cf, predict, source=[0, 0], target=[1, 1], steps=4)
  # curves d_n over n = 0..4: late = (0, 0, 0, 0, t), early = (0, t, t, t, t); trapezoid / 4
  np.testing.assert_allclose(out, [(t / 2) / 4, (3 * t + t / 2) / 4], rtol=1e-6)
  # swapping source and target negates the score
  np.testing.assert_allclose(fidelity.cout(original, cf, predict, [1, 1], [0, 0], steps=4), -out, rtol=1e-6)


def test_cout_partial_steps_and_identity():
  # 16 pixels, steps = 3: k_n = 0, 5, 10, 16 pixels revealed. The classifier reads the two region pixels
  # (0, 0) and (3, 3); their changes 1.95 and 1.45 are the 2nd and 8th largest (the other 14 pixels change by
  # 2.0, 1.9, ..., 0.7), so step 1 reveals (0, 0) only (mean 0.975) and step 2 both (mean 1.7).
  k = 2.0
  region = (np.array([0, 3]), np.array([0, 3]))
  original = np.zeros((1, 4, 4, 1), np.float32)
  cf = np.zeros_like(original)
  others = [(r, c) for r in range(4) for c in range(4) if (r, c) not in ((0, 0), (3, 3))]
  for j, (r, c) in enumerate(others):
    cf[0, r, c, 0] = 2.0 - 0.1 * j
  cf[0, 0, 0, 0], cf[0, 3, 3, 0] = 1.95, 1.45
  d = [0.0, math.tanh(k * 0.975 / 2), math.tanh(k * 1.7 / 2), math.tanh(k * 1.7 / 2)]
  expected = (d[0] / 2 + d[1] + d[2] + d[3] / 2) / 3
  out = fidelity.cout(original, cf, _region_classifier(region, k), [0], [1], steps=3)
  assert out[0] == pytest.approx(expected, rel=1e-6)
  # counterfactual == original: the curve is the constant p_t - p_s of the original, its area that constant
  x = np.random.default_rng(1).uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32)
  pred = _region_classifier(region, k)(x)
  out = fidelity.cout(x, x, _region_classifier(region, k), [0, 1, 0], [1, 0, 1], steps=5)
  np.testing.assert_allclose(out, [pred[0, 1] - pred[0, 0], pred[1, 0] - pred[1, 1], pred[2, 1] - pred[2, 0]],
                             rtol=1e-6)


def test_cout_batches_predict_calls():
  calls = []
  x = np.zeros((5, 4, 4, 1), np.float32)
  cf = np.ones_like(x)
  region = (np.zeros(4, int), np.arange(4))
  out = fidelity.cout(x, cf, _region_classifier(region, 1.0, calls), [0] * 5, [1] * 5, steps=20, batch_size=32)
  assert sum(calls) == 5 * 21 and max(calls) <= 32 and len(calls) == math.ceil(105 / 32)
  assert out.shape == (5,) and np.all(out > 0)


# ----------------------------------------------------------------------------------------------------------
# realism
# ----------------------------------------------------------------------------------------------------------


def _ref_kid(x, y):
  """Unbiased squared MMD with k(a, b) = (a.b / D + 1)^3, written as explicit sums over pairs."""
  d = x.shape[1]
  k = lambda a, b: (a @ b / d + 1)**3
  n, m = len(x), len(y)
  kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
  return kxx + kyy - 2 * kxy


def test_realism_against_explicit_mmd_and_small_sets():
  rng = np.random.default_rng(0)
  real = rng.normal(size=(6, 5))
  recon = rng.normal(size=(6, 5)) + 0.2
  frames = rng.normal(size=(6, 5)) + 1.0
  # equal sizes: every subset is the whole set, so the KID is the full unbiased MMD^2
  out = fidelity.realism(frames, recon, real, num_subsets=3)
  assert out['frame_kid'] == pytest.approx(_ref_kid(frames, real), rel=1e-9)
  assert out['reconstruction_kid'] == pytest.approx(_ref_kid(recon, real), rel=1e-9)
  assert out['kid_ratio'] == pytest.approx(out['frame_kid'] / out['reconstruction_kid'])
  assert out['frame_kid'] > out['reconstruction_kid'] > 0
  tiny = fidelity.realism(frames[:1], recon, real)  # KID needs >= 2 rows
  assert np.isnan(tiny['frame_kid']) and np.isnan(tiny['kid_ratio']) and np.isfinite(tiny['reconstruction_kid'])
  # reconstructions that are the real images: the unbiased KID is <= 0 (the diagonal pairs count only in the
  # cross term), so there is no ratio
  same = fidelity.realism(frames, real, real)
  assert same['reconstruction_kid'] == pytest.approx(_ref_kid(real, real)) and same['reconstruction_kid'] < 0
  assert np.isnan(same['kid_ratio']) and same['frame_kid'] == pytest.approx(out['frame_kid'])


# ----------------------------------------------------------------------------------------------------------
# attribute recovery
# ----------------------------------------------------------------------------------------------------------


def test_implied_signs_matches_scipy_and_rejects_no_dependence():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 3, 200)
  width = 5 - labels + rng.normal(size=200)  # narrower in higher classes
  assert fidelity.implied_signs(width, labels, 2) == -1
  assert fidelity.implied_signs(width, labels, 0) == 1
  rho = scipy.stats.spearmanr(width, labels == 2).statistic
  assert np.sign(rho) == -1
  with pytest.raises(ValueError, match='no direction'):
    fidelity.implied_signs(np.ones(10), rng.integers(0, 2, 10), 1)


def test_attribute_recovery_on_hand_built_series():
  alphas = np.tile([-1., 0., 1., 2.], (3, 1))  # anchor: frame 1
  jsw = np.array([[6., 5., 4., 3.], [4., 5., 6., 7.], [6., 5., 4., 3.]])  # causal, implied sign -1
  ost = np.array([[0., 0., 1., 2.], [0., 0., 1., 2.], [0., 0., 0., 0.]])  # causal, implied sign +1 (row 2: flat)
  marker = np.array([[0., 0., 0., 0.], [0., 0., 1., 1.], [0., 0., 0., 1.]])  # nuisance
  bright = np.array([[0., 0., 0.1, 0.2], [0., 0., 0., 0.], [0., 0., np.nan, 0.]])  # nuisance, oracle failed
  attrs = dict(jsw=jsw, ost=ost, marker=marker, bright=bright)
  std = dict(jsw=2.0, ost=4.0, marker=0.5, bright=0.1)
  out = fidelity.attribute_recovery(attrs, alphas, np.array([2, 3, 2]), dict(jsw=-1, ost=1), ('marker', 'bright'), std)
  np.testing.assert_allclose(out['trend_jsw'], [-1, 1, -1])
  np.testing.assert_allclose(out['trend_ost'][:2], [scipy.stats.spearmanr([-1, 0, 1, 2], ost[0]).statistic] * 2)
  assert np.isnan(out['trend_ost'][2])  # constant attribute
  np.testing.assert_allclose(out['right_direction_jsw'], [1, 0, 1])
  np.testing.assert_allclose(out['right_direction_ost'], [1, 1, np.nan])
  np.testing.assert_allclose(out['causal_right_direction'], [1, 0, np.nan])  # all: 0 beats NaN beats 1
  np.testing.assert_allclose(out['causal_right_direction_any'], [1, 1, 1])
  # changes at the flip frame vs the anchor, in std units
  np.testing.assert_allclose(out['causal_change_std_jsw'], [1 / 2, 2 / 2, 1 / 2])
  np.testing.assert_allclose(out['causal_change_std_ost'], [1 / 4, 2 / 4, 0])
  np.testing.assert_allclose(out['nuisance_change_std_marker'], [0, 1 / 0.5, 0])
  np.testing.assert_allclose(out['nuisance_change_std_bright'], [0.1 / 0.1, 0, np.nan])
  np.testing.assert_allclose(out['nuisance_change_max_std'], [1, 2, 0])
  np.testing.assert_allclose(out['causal_share'], [0.75 / 1.75, 1.5 / 3.5, np.nan])  # row 2: a NaN term
  # valid masks frames; no flip -> NaN changes
  valid = np.ones((3, 4), bool)
  valid[0, 2] = False
  out = fidelity.attribute_recovery(attrs, alphas, np.array([2, -1, 3]), dict(jsw=-1), ('marker',), std, valid)
  assert np.isnan(out['causal_change_std_jsw'][0]) and np.isnan(out['causal_share'][0])
  assert np.isnan(out['causal_change_std_jsw'][1]) and np.isnan(out['nuisance_change_max_std'][1])
  assert out['trend_jsw'][0] == pytest.approx(-1.0)  # the 3 valid frames still rank
  np.testing.assert_allclose(out['causal_share'][2], 1.0 / (1.0 + 2.0))


def _phantom_series(renders):
  """Measure each frame list with the knee oracle: {name: [B, S]} plus the images."""
  images = np.stack([np.stack(frames) for frames in renders])  # [B, S, H, W, 1] uint8
  measured = [measure.measure_knee_batch(series) for series in images]
  return {k: np.stack([m[k] for m in measured]) for k in measure.KNEE_MEASUREMENTS}


def test_attribute_recovery_on_phantom_series():
  """Same patient (seed), only the causal attribute changing (KL grade 0..4) vs only the nuisance (the corner
  tag, through marker_strength for a fixed grade): the causal share is ~1 for the first and ~0 for the second.

  The generator draws every attribute from independent streams of the seed, so a fixed seed with a different
  grade (or marker_strength) renders the same knee with only the disease (or only the tag) changed. Brightness,
  pose etc. cannot be varied alone, and the oracle does not measure them, so the tag is the nuisance here.
  """
  # dataset statistics: std of each measurement and the signs the labels (grade >= 2) imply
  data = [phantoms.knee_radiograph(100 + i, 64, marker_strength=0.8) for i in range(40)]
  m = measure.measure_knee_batch(np.stack([d[0] for d in data]))
  labels = np.array([int(d[1] >= 2) for d in data])
  causal_names = ('joint_space_width', 'osteophyte_area', 'sclerosis')
  causal = {n: fidelity.implied_signs(m[n], labels, 1) for n in causal_names}
  assert causal == dict(joint_space_width=-1, osteophyte_area=1, sclerosis=1)
  assert fidelity.implied_signs(m['marker'], labels, 1) == 1  # the shortcut: the tag "implies" disease too
  std = {n: float(np.nanstd(m[n])) for n in (*causal_names, 'marker')}

  # causal series: grades 0..4 of three patients; the toy classifier says positive from grade 2
  seeds = (0, 1, 3)
  attrs = _phantom_series([[phantoms.knee_radiograph(s, 64, grade=g)[0] for g in range(5)] for s in seeds])
  alphas = np.tile(np.arange(5.0), (3, 1))
  flips = fidelity.flip_index(_probs(np.tile([0.1, 0.3, 0.6, 0.8, 0.9], (3, 1))), alphas)
  np.testing.assert_array_equal(flips, [2, 2, 2])
  measured = {n: attrs[n] for n in (*causal_names, 'marker')}
  out = fidelity.attribute_recovery(measured, alphas, flips, causal, ('marker',), std, valid=attrs['joint_found'] > 0)
  np.testing.assert_allclose(out['causal_share'], 1.0, atol=1e-9)
  np.testing.assert_allclose(out['causal_right_direction'], 1.0)
  np.testing.assert_allclose(out['trend_joint_space_width'], -1.0)
  np.testing.assert_allclose(out['nuisance_change_max_std'], 0.0)

  # nuisance series: the tag appears (seeds 0, 1 at KL3) or disappears (seed 2 at KL0) as marker_strength grows
  cases = ((0, 3), (1, 3), (2, 0))
  renders = [
      [phantoms.knee_radiograph(s, 64, grade=g, marker_strength=t) for t in np.linspace(0, 1, 5)] for s, g in cases
  ]
  truth = np.array([[r[2]['marker'] for r in row] for row in renders])
  attrs = _phantom_series([[r[0] for r in row] for row in renders])
  np.testing.assert_array_equal(attrs['marker'], truth)  # the oracle sees the tag
  marker_probs = np.where(truth > 0, 0.9, 0.1)  # the toy classifier is a tag detector
  flips = fidelity.flip_index(_probs(marker_probs), np.tile(np.linspace(0, 1, 5), (3, 1)))
  assert np.all(flips > 0)
  out = fidelity.attribute_recovery({n: attrs[n] for n in (*causal_names, 'marker')},
                                    np.tile(np.linspace(0, 1, 5), (3, 1)), flips, causal, ('marker',), std,
                                    valid=attrs['joint_found'] > 0)
  np.testing.assert_allclose(out['nuisance_change_std_marker'], 1 / std['marker'])
  assert np.all(out['causal_share'] < 0.1), out['causal_share']  # the tag nudges the measured width a little


# ----------------------------------------------------------------------------------------------------------
# bootstrap, scorecard
# ----------------------------------------------------------------------------------------------------------


def test_bootstrap_ci_basics():
  x = np.array([1., 2., np.nan, 4., 8.])
  mean, low, high = fidelity.bootstrap_ci(x, seed=3)
  assert mean == pytest.approx(3.75)
  assert low < mean < high and 1 <= low and high <= 8
  assert fidelity.bootstrap_ci(x, seed=3) == (mean, low, high)  # deterministic
  assert fidelity.bootstrap_ci(x[~np.isnan(x)], seed=3) == (mean, low, high)  # NaN dropped first
  assert all(math.isnan(v) for v in fidelity.bootstrap_ci([np.nan, np.nan]))
  assert fidelity.bootstrap_ci([2.5]) == (2.5, 2.5, 2.5)


def test_bootstrap_ci_covers_the_true_mean_at_about_its_level():
  rng = np.random.default_rng(0)
  covered = 0
  for i in range(200):
    x = rng.normal(1.0, 2.0, 30)
    _, low, high = fidelity.bootstrap_ci(x, num_resamples=2000, level=0.95, seed=i)
    covered += low <= 1.0 <= high
  assert 0.90 <= covered / 200 <= 0.99, covered


def test_score_and_markdown():
  metrics = [
      fidelity.Metric('flip_rate', np.array([1., 1., 1., 0.]), ('>=', 0.95), 'share of series that flip'),
      fidelity.Metric('causal_share', np.array([0.9, np.nan, 0.7]), ('>=', 0.5), 'causal | nuisance'),
      fidelity.Metric('proximity_ssim', np.array([np.nan, np.nan]), ('<=', 0.25), 'undefined here'),
      fidelity.Metric('kid_ratio', np.array([1.5]), None, 'no goal'),
  ]
  card = fidelity.scorecard(metrics)
  assert card['flip_rate']['value'] == pytest.approx(0.75) and card['flip_rate']['met'] is False
  assert card['causal_share']['value'] == pytest.approx(0.8) and card['causal_share']['met'] is True
  assert math.isnan(card['proximity_ssim']['value']) and card['proximity_ssim']['met'] is None
  assert card['kid_ratio']['met'] is None and card['kid_ratio']['goal'] is None
  assert card['flip_rate'] == fidelity.score(metrics[0])
  assert set(card['flip_rate']) == {'value', 'low', 'high', 'goal', 'met', 'meaning'}
  text = fidelity.to_markdown(card)
  lines = text.strip().split('\n')
  assert lines[0] == '| metric | value [low, high] | goal | met/missed | meaning |'
  assert len(lines) == 2 + len(metrics)
  lo, hi = card['flip_rate']['low'], card['flip_rate']['high']
  assert lines[2] == f'| flip_rate | 0.75 [{lo:.3g}, {hi:.3g}] | >= 0.95 | missed | share of series that flip |'
  assert '| met | causal \\| nuisance |' in lines[3]
  assert lines[4] == '| proximity_ssim | nan [nan, nan] | <= 0.25 | - | undefined here |'
  assert lines[5] == '| kid_ratio | 1.5 [1.5, 1.5] | - | - | no goal |'
  with pytest.raises(ValueError, match='goal'):
    fidelity.Metric('x', np.zeros(2), ('==', 1.0), '')


def _ref_knn(x, real, k):
  """k-th nearest real row by explicit sorted distances, over the median real-to-other-real k-th distance."""
  dist = lambda a, rows: np.sort([math.sqrt(sum((a[j] - r[j])**2 for j in range(len(a)))) for r in rows])
  radius = np.median([dist(real[i], np.delete(real, i, axis=0))[k - 1] for i in range(len(real))])
  return np.array([dist(a, real)[k - 1] / radius for a in x])


def test_knn_distance_against_explicit_sorting_and_an_analytic_line():
  rng = np.random.default_rng(1)
  real = rng.normal(size=(9, 4))
  x = rng.normal(size=(5, 4)) * 2
  for k in (1, 3):
    np.testing.assert_allclose(fidelity.knn_distance(x, real, k), _ref_knn(x, real, k), rtol=1e-12)
  # real rows at 0, 1, ..., 9 on a line: every real row's 3rd-nearest other row is 2 away except at the ends
  # (3), median 2; a point at 20 is 13 from its 3rd-nearest real row (7)
  line = np.arange(10.0)[:, None]
  assert fidelity.knn_distance(np.array([[20.0], [4.5]]), line, 3) == pytest.approx([13 / 2, 1.5 / 2])
  assert np.all(np.isnan(fidelity.knn_distance(x, real[:3], 3)))  # needs k + 1 real rows
  assert np.all(np.isnan(fidelity.knn_distance(x, np.zeros((5, 4)), 3)))  # real radius 0
  with pytest.raises(ValueError, match='same F'):
    fidelity.knn_distance(x, real[:, :3])


def test_realism_knn_ratio_orders_far_frames_and_is_defined_where_kid_ratio_is_not():
  rng = np.random.default_rng(2)
  real = rng.normal(size=(40, 6))
  recon = real[:16] + 0.05 * rng.normal(size=(16, 6))  # reconstructions of real images: KID <= 0 or noise
  near = recon + 0.05 * rng.normal(size=(16, 6))
  far = recon + 3.0
  out_near, out_far = fidelity.realism(near, recon, real), fidelity.realism(far, recon, real)
  for out, frames in ((out_near, near), (out_far, far)):
    assert out['frame_knn_distance'] == pytest.approx(np.median(_ref_knn(frames, real, 3)))
    assert out['reconstruction_knn_distance'] == pytest.approx(np.median(_ref_knn(recon, real, 3)))
    assert out['knn_distance_ratio'] == pytest.approx(out['frame_knn_distance'] / out['reconstruction_knn_distance'])
  assert out_near['knn_distance_ratio'] < 1.5 < 2 < out_far['knn_distance_ratio']
  assert np.isnan(fidelity.realism(near[:0], recon, real)['knn_distance_ratio'])  # no frames: undefined
  with pytest.raises(ValueError, match='same extractor'):
    fidelity.realism(near[:, :5], recon, real)
