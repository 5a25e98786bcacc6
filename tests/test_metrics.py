"""Tests for stylex_jax.evaluate.metrics against independent references (scipy, brute force, hand-computed)."""
import itertools
import math

import numpy as np
import pytest
from scipy import stats

from stylex_jax.evaluate import metrics as M


def _brute_auc(labels, scores):
  pos = scores[labels == 1]
  neg = scores[labels == 0]
  total = 0.0
  for a, b in itertools.product(pos, neg):
    total += 1.0 if a > b else 0.5 if a == b else 0.0
  return total / (len(pos) * len(neg))


def _brute_qwk(labels, preds, k):
  o = np.zeros((k, k))
  for a, b in zip(labels, preds):
    o[a, b] += 1
  w = np.array([[(i - j)**2 / (k - 1)**2 for j in range(k)] for i in range(k)])
  n = len(labels)
  e = np.array([[np.sum(labels == i) * np.sum(preds == j) / n for j in range(k)] for i in range(k)])
  return 1 - (w * o).sum() / (w * e).sum()


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_binary_auc_matches_mannwhitney_and_bruteforce_with_ties(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, size=57)
  scores = rng.integers(0, 6, size=57).astype(float)  # many ties
  scores += labels * rng.random(57)  # some signal
  ref_u = stats.mannwhitneyu(scores[labels == 1], scores[labels == 0], alternative='two-sided').statistic
  got = M.binary_auc(labels, scores)
  assert got == pytest.approx(ref_u / (np.sum(labels == 1) * np.sum(labels == 0)), abs=1e-12)
  assert got == pytest.approx(_brute_auc(labels, scores), abs=1e-12)


def test_binary_auc_edge_cases():
  y = np.array([0, 0, 1, 1])
  assert M.binary_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
  assert M.binary_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
  assert M.binary_auc(y, np.full(4, 0.5)) == 0.5  # all tied
  assert math.isnan(M.binary_auc(np.ones(4, int), np.arange(4.0)))
  with pytest.raises(ValueError, match='0/1'):
    M.binary_auc(np.array([0, 2]), np.array([0.1, 0.2]))
  with pytest.raises(ValueError, match='shape'):
    M.binary_auc(y, np.zeros(3))


def test_auc_binary_and_one_vs_rest():
  rng = np.random.default_rng(3)
  n, k = 80, 4
  labels = rng.integers(0, k, n)
  logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[labels]
  probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  ref = np.mean([_brute_auc((labels == c).astype(int), probs[:, c]) for c in range(k)])
  assert M.auc(labels, probs) == pytest.approx(ref, abs=1e-12)
  # class 3 absent -> mean over the classes present only
  lab2 = np.where(labels == 3, 0, labels)
  ref2 = np.mean([_brute_auc((lab2 == c).astype(int), probs[:, c]) for c in range(3)])
  assert M.auc(lab2, probs) == pytest.approx(ref2, abs=1e-12)
  # K = 2 uses column 1
  p2 = np.stack([1 - probs[:, 0], probs[:, 0]], 1)
  y2 = (labels == 0).astype(int)
  assert M.auc(y2, p2) == pytest.approx(_brute_auc(y2, probs[:, 0]), abs=1e-12)
  assert math.isnan(M.auc(np.zeros(5, int), np.full((5, 3), 1 / 3)))


def test_accuracy():
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
  assert M.accuracy(np.array([0, 1, 1, 1]), probs) == 0.75
  with pytest.raises(ValueError, match=r'\[N, K\]'):
    M.accuracy(np.array([0, 1, 1]), probs)
  with pytest.raises(ValueError, match='class indices'):
    M.accuracy(np.array([0, 1, 5, 1]), probs)


def test_confusion_matrix_matches_add_at():
  rng = np.random.default_rng(4)
  labels, preds = rng.integers(0, 5, 200), rng.integers(0, 5, 200)
  ref = np.zeros((5, 5), int)
  np.add.at(ref, (labels, preds), 1)
  got = M.confusion_matrix(labels, preds, 5)
  np.testing.assert_array_equal(got, ref)
  assert got.dtype == np.int64 and got.sum() == 200
  with pytest.raises(ValueError, match='preds must be class indices'):
    M.confusion_matrix(labels, preds + 1, 5)


def test_qwk_hand_computed_example():
  # labels [0,1,2], preds [0,2,2], K=3: O has one (1,2) error, w12 = 1/4 -> sum(wO) = 0.25.
  # rows (1,1,1), cols (1,0,2), E = outer / 3; sum(wE) = (1*(0*0 + 0.25*0 + 1*2) + 1*(0.25*1 + 0.25*2)
  #   + 1*(1*1 + 0.25*0)) / 3 = (2 + 0.75 + 1) / 3 = 1.25 -> kappa = 1 - 0.25 / 1.25 = 0.8
  assert M.quadratic_weighted_kappa([0, 1, 2], [0, 2, 2], 3) == pytest.approx(0.8, abs=1e-12)


@pytest.mark.parametrize('seed', [0, 1])
def test_qwk_matches_bruteforce(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 5, 60)
  preds = np.clip(labels + rng.integers(-2, 3, 60), 0, 4)
  assert M.quadratic_weighted_kappa(labels, preds, 5) == pytest.approx(_brute_qwk(labels, preds, 5), abs=1e-12)


def test_qwk_edge_cases():
  labels = np.repeat(np.arange(5), 4)
  assert M.quadratic_weighted_kappa(labels, labels, 5) == pytest.approx(1.0)
  assert M.quadratic_weighted_kappa(labels, 4 - labels, 5) == pytest.approx(-1.0)  # fully reversed
  rng = np.random.default_rng(0)
  big = rng.integers(0, 5, 20000)
  assert abs(M.quadratic_weighted_kappa(big, rng.integers(0, 5, 20000), 5)) < 0.03  # chance ~ 0
  assert math.isnan(M.quadratic_weighted_kappa([1, 1], [1, 1], 3))  # undefined
  with pytest.raises(ValueError, match='num_classes'):
    M.quadratic_weighted_kappa([0], [0], 1)


def test_expected_grade():
  probs = np.array([[1, 0, 0], [0, 0.5, 0.5], [0.2, 0.3, 0.5]])
  np.testing.assert_allclose(M.expected_grade(probs), [0.0, 1.5, 0.2 * 0 + 0.3 * 1 + 0.5 * 2])


def test_classification_metrics_perfect_reversed_and_mask():
  labels = np.array([0, 1, 2, 3, 0, 1, 2, 3])
  perfect = np.eye(4)[labels] * 0.97 + 0.0075
  out = M.classification_metrics(labels, perfect)
  assert out['accuracy'] == 1.0 and out['balanced_accuracy'] == 1.0
  assert out['auc'] == 1.0 and out['qwk'] == pytest.approx(1.0)
  assert out['confusion_matrix'] == np.diag([2, 2, 2, 2]).tolist()
  assert out['log_loss'] == pytest.approx(-np.log(0.9775))
  assert 'sensitivity' not in out

  reversed_probs = np.eye(4)[3 - labels] * 0.97 + 0.0075
  rev = M.classification_metrics(labels, reversed_probs)
  assert rev['accuracy'] == 0.0 and rev['qwk'] == pytest.approx(-1.0)

  # padding rows (garbage) are dropped by the mask
  lab_pad = np.r_[labels, [0, 0]]
  probs_pad = np.r_[perfect, np.full((2, 4), 0.25)]
  masked = M.classification_metrics(lab_pad, probs_pad, mask=np.r_[np.ones(8), np.zeros(2)])
  assert masked == out
  assert M.classification_metrics(lab_pad, probs_pad)['num_examples'] == 10


def test_classification_metrics_binary_sensitivity_specificity():
  labels = np.array([1, 1, 1, 1, 0, 0, 0])
  p1 = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.2, 0.1])
  out = M.classification_metrics(labels, np.stack([1 - p1, p1], 1))
  assert out['sensitivity'] == pytest.approx(3 / 4) and out['specificity'] == pytest.approx(2 / 3)
  assert out['auc'] == pytest.approx(_brute_auc(labels, p1))
  assert out['balanced_accuracy'] == pytest.approx((3 / 4 + 2 / 3) / 2)


def test_classification_metrics_bad_input():
  labels = np.array([0, 1, 1])
  probs = np.array([[0.5, 0.5], [0.1, 0.9], [0.3, 0.7]])
  with pytest.raises(ValueError, match='softmax'):
    M.classification_metrics(labels, probs * 3)  # logits-like
  with pytest.raises(ValueError, match='mask'):
    M.classification_metrics(labels, probs, mask=np.ones(2))
  with pytest.raises(ValueError, match='mask'):
    M.classification_metrics(labels, probs, mask=np.array([0, 2, 1]))
  with pytest.raises(ValueError, match='no examples'):
    M.classification_metrics(labels, probs, mask=np.zeros(3))
  with pytest.raises(ValueError, match='NaN'):
    M.classification_metrics(labels, np.array([[np.nan, 1], [0, 1], [0, 1]]))
  with pytest.raises(ValueError, match='1-D'):
    M.classification_metrics(labels[:, None], probs)


# ---------------------------------------------------------------- FID / KID


def test_frechet_distance_closed_forms():
  from stylex_jax.evaluate import metrics as m
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
  s1, s2 = np.diag(rng.uniform(0.5, 2, 4)), np.diag(rng.uniform(0.5, 2, 4))
  expected = np.sum((mu1 - mu2)**2) + np.sum((np.sqrt(np.diag(s1)) - np.sqrt(np.diag(s2)))**2)
  np.testing.assert_allclose(m.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-8)
  # general PSD matrices: tr sqrt(S1 S2) = sum sqrt(eig(S1 S2)) (real, non-negative eigenvalues)
  a, b = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
  s1, s2 = a @ a.T + 0.1 * np.eye(4), b @ b.T + 0.1 * np.eye(4)
  tr = np.sum(np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)))
  expected = np.sum((mu1 - mu2)**2) + np.trace(s1) + np.trace(s2) - 2 * tr
  np.testing.assert_allclose(m.frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_shift_adds_squared_norm():
  from stylex_jax.evaluate import metrics as m
  f = np.random.default_rng(1).normal(size=(200, 5))
  assert m.fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
  shift = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
  assert m.fid_from_features(f, f + shift) == pytest.approx(np.sum(shift**2), rel=1e-6)


def test_kid_matches_brute_force_unbiased_mmd():
  from stylex_jax.evaluate import metrics as m
  rng = np.random.default_rng(2)
  x, y = rng.normal(size=(12, 3)), rng.normal(loc=0.5, size=(12, 3))
  k = lambda a, b: (np.dot(a, b) / 3 + 1)**3
  n = 12
  kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(n)) / (n * n)
  expected = kxx + kyy - 2 * kxy
  np.testing.assert_allclose(m.kid_from_features(y, x, num_subsets=3), expected, rtol=1e-9)
  same = rng.normal(size=(400, 3))
  kid_same = m.kid_from_features(same[:200], same[200:], num_subsets=20)
  kid_shifted = m.kid_from_features(same[:200], same[200:] + 1.0, num_subsets=20)
  assert abs(kid_same) < 0.1 * kid_shifted


def test_fid_kid_reject_bad_features():
  from stylex_jax.evaluate import metrics as m
  with pytest.raises(ValueError, match='dimension'):
    m.fid_from_features(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(ValueError, match='NaN'):
    m.kid_from_features(np.full((4, 3), np.nan), np.zeros((4, 3)))
