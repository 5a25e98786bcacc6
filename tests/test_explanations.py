"""evaluate/explanations.py against scipy (Spearman) and hand-built series whose answers are known."""
import numpy as np
import pytest
import scipy.stats

from stylex_jax.evaluate import explanations


def _probs(p_pos):
  p = np.asarray(p_pos, np.float64)
  return np.stack([1 - p, p], axis=-1)


def test_spearman_matches_scipy_including_ties():
  rng = np.random.default_rng(0)
  for _ in range(20):
    x = rng.integers(0, 5, size=12).astype(float)  # many ties
    y = rng.normal(size=12)
    y[::3] = y[0]
    assert explanations.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)


def test_spearman_ignores_nan_and_constant_is_nan():
  x = np.array([0., 1., 2., 3., 4.])
  y = np.array([1., np.nan, 3., 4., 5.])
  assert explanations.spearman(x, y) == pytest.approx(1.0)
  assert np.isnan(explanations.spearman(x, np.ones(5)))
  assert np.isnan(explanations.spearman(x[:2], y[:2]))


def test_flip_monotonicity_proximity_on_known_series():
  alphas = np.array([[-2., -1., 0., 1., 2.], [-2., -1., 0., 1., 2.]])
  p = np.array([
      [0.1, 0.2, 0.3, 0.6, 0.9],  # flips at alpha=1, rises steadily
      [0.3, 0.2, 0.1, 0.2, 0.3]
  ])  # never flips, not monotone
  probs = _probs(p)
  np.testing.assert_array_equal(explanations.flipped(probs, alphas), [True, False])
  mono = explanations.monotonicity(p, alphas)
  assert mono[0] == pytest.approx(1.0)
  assert mono[1] == pytest.approx(scipy.stats.spearmanr(alphas[1], p[1]).statistic)
  series = np.zeros((2, 5, 4, 4, 1), np.float32)
  series[0, 3] = 0.5  # the first flipping frame differs from the reconstruction by 0.5 everywhere
  series[0, 4] = 1.0
  recon = np.zeros((2, 4, 4, 1), np.float32)
  prox = explanations.proximity(series, recon, probs, alphas)
  assert prox[0] == pytest.approx(0.5)
  assert np.isnan(prox[1])
  summary = explanations.summarize(probs, alphas, p, series, recon)
  assert summary['flip_rate'] == 0.5 and summary['proximity'] == pytest.approx(0.5)
  assert summary['monotonicity'] == pytest.approx((1.0 + mono[1]) / 2)


def test_anchor_is_frame_nearest_zero_and_first_flip_is_nearest_zero():
  alphas = np.array([[0.5, 1.5, -3.0, -1.0]])  # unsorted; anchor is 0.5
  p = np.array([[0.4, 0.45, 0.8, 0.7]])  # flips at -1 (nearer) and -3
  series = np.zeros((1, 4, 2, 2, 1), np.float32)
  series[0, 3] = 0.25
  series[0, 2] = 0.75
  prox = explanations.proximity(series, np.zeros((1, 2, 2, 1)), _probs(p), alphas)
  assert prox[0] == pytest.approx(0.25)


def test_attribute_trends_masks_invalid_frames():
  alphas = np.tile(np.arange(5.0), (2, 1))
  jsw = np.array([[5., 4., 3., 2., 1.], [1., 100., 2., 3., 4.]])
  valid = np.array([[True] * 5, [True, False, True, True, True]])
  trends = explanations.attribute_trends({'jsw': jsw}, alphas, valid)
  np.testing.assert_allclose(trends['jsw'], [-1.0, 1.0])


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match=r'\[B, S, K\]'):
    explanations.flipped(np.zeros((2, 3)), np.zeros((2, 3)))
  with pytest.raises(ValueError, match='attribute'):
    explanations.attribute_trends({'x': np.zeros((2, 4))}, np.zeros((2, 5)))
