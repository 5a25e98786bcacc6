"""Tests for explain/series.py: series images/probabilities against an analytic toy, auto_alphas, trace-once.

Toy: G(w) = (w_flat @ M) reshaped to [8, 8, 1], classifier log-odds v . x + b with v = pinv(M) u, so
p(G(w + alpha d)) = sigmoid(u . (w + alpha d) + b) exactly (numpy reference).
"""
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from stylex_jax.explain import direction as dl
from stylex_jax.explain import series as sl

NUM_WS, W_DIM = 2, 8
P = NUM_WS * W_DIM
BIAS = 0.3


def _toy(num_classes=2):
  rng = np.random.default_rng(0)
  m = rng.normal(size=(P, 64)).astype(np.float32) / 200  # small: images never clip
  u = rng.normal(size=P).astype(np.float32)
  v = (np.linalg.pinv(m) @ u).astype(np.float32)

  def synthesize(ws):
    return (ws.reshape(ws.shape[0], P) @ m).reshape(ws.shape[0], 8, 8, 1)

  def classify(images):
    s = images.reshape(images.shape[0], -1) @ v + BIAS
    return jnp.stack([k * s for k in range(num_classes)], axis=1)

  return synthesize, classify, m, u


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def test_series_matches_analytic_and_is_monotone():
  synth, classify, m, u = _toy()
  rng = np.random.default_rng(1)
  ws = rng.normal(size=(5, NUM_WS, W_DIM)).astype(np.float32) * 0.5
  d = (u / np.linalg.norm(u)).reshape(NUM_WS, W_DIM)
  alphas = np.linspace(-3, 3, 7).astype(np.float32)
  renderer = sl.SeriesRenderer(synth, classify, chunk_size=4, num_classes=2)  # 35 frames -> 9 chunks, padded
  images, probs = renderer(ws, d, alphas)
  assert images.shape == (5, 7, 8, 8, 1) and probs.shape == (5, 7, 2)
  shifted = ws[:, None] + alphas[None, :, None, None] * d  # numpy reference
  ref_images = np.clip((shifted.reshape(35, P) @ m).reshape(5, 7, 8, 8, 1), -1, 1)
  np.testing.assert_allclose(images, ref_images, atol=1e-5)
  ref_p1 = _sigmoid(shifted.reshape(5, 7, P) @ u + BIAS)
  # clipping is inactive for these small latents, so the analytic probabilities hold
  assert np.abs(ref_images).max() < 1
  np.testing.assert_allclose(probs[..., 1], ref_p1, atol=1e-5)
  np.testing.assert_allclose(probs.sum(-1), 1, atol=1e-6)
  assert np.all(np.diff(probs[..., 1], axis=1) > 0)


def test_per_image_directions_and_alphas():
  synth, classify, m, u = _toy()
  rng = np.random.default_rng(2)
  ws = rng.normal(size=(3, NUM_WS, W_DIM)).astype(np.float32) * 0.3
  ds = rng.normal(size=(3, NUM_WS, W_DIM)).astype(np.float32)
  ds /= np.linalg.norm(ds.reshape(3, -1), axis=1)[:, None, None]
  alphas = rng.uniform(-1, 1, size=(3, 4)).astype(np.float32)
  _, probs = sl.SeriesRenderer(synth, classify)(ws, ds, alphas)
  shifted = ws[:, None] + alphas[:, :, None, None] * ds[:, None]
  np.testing.assert_allclose(probs[..., 1], _sigmoid(shifted.reshape(3, 4, P) @ u + BIAS), atol=1e-5)


def test_sharded_chunks_match_unsharded():
  from stylex_jax import sharding
  synth, classify, _, u = _toy()
  mesh = sharding.make_mesh()  # the 8 fake CPU devices of conftest
  d = (u / np.linalg.norm(u)).reshape(NUM_WS, W_DIM)
  ws = np.random.default_rng(5).normal(size=(4, NUM_WS, W_DIM)).astype(np.float32)
  alphas = np.linspace(-1, 1, 5)
  ref_images, ref_probs = sl.SeriesRenderer(synth, classify, chunk_size=8)(ws, d, alphas)
  images, probs = sl.SeriesRenderer(synth, classify, chunk_size=8, mesh=mesh)(ws, d, alphas)
  np.testing.assert_allclose(images, ref_images, atol=1e-6)
  np.testing.assert_allclose(probs, ref_probs, atol=1e-6)


def test_renderer_traces_once_for_repeated_shapes():
  synth, classify, _, u = _toy()
  d = (u / np.linalg.norm(u)).reshape(NUM_WS, W_DIM)
  renderer = sl.SeriesRenderer(synth, classify, chunk_size=8)
  rng = np.random.default_rng(3)
  for _ in range(3):
    renderer(rng.normal(size=(6, NUM_WS, W_DIM)).astype(np.float32), d, np.linspace(-1, 1, 5))
  assert renderer.trace_count == 1  # 30 frames -> chunks of 8, last padded: one shape
  renderer(rng.normal(size=(3, NUM_WS, W_DIM)).astype(np.float32), d, np.linspace(-1, 1, 5))
  assert renderer.trace_count == 1  # 15 frames: still chunks of 8


def test_auto_alphas_cross_the_boundary_from_both_sides():
  synth, classify, _, u = _toy()
  d = (u / np.linalg.norm(u)).reshape(NUM_WS, W_DIM)
  un = u / np.linalg.norm(u)
  # latents placed at known log-odds t0 = u.w + b: two negative, two positive, one beyond reach
  t0 = np.array([-2.0, -0.5, 0.7, 3.0, 40.0])
  ws = ((t0 - BIAS) / np.linalg.norm(u))[:, None] * un[None]
  ws = ws.reshape(5, NUM_WS, W_DIM).astype(np.float32)
  renderer = sl.SeriesRenderer(synth, classify)
  target = dl.make_target('auto', 2)
  res = sl.auto_alphas(renderer, ws, d, target, num_frames=9, max_alpha=6.0, grid_points=13, margin=0.25)
  assert res.alphas.shape == (5, 9)
  assert np.all(np.diff(res.alphas, axis=1) >= 0) and np.all(np.any(res.alphas == 0, axis=1))
  np.testing.assert_array_equal(res.crossed, [True, True, True, True, False])
  # analytic crossing along d: t0 + alpha ||u|| = 0 (the target is linear, so interpolation is exact)
  np.testing.assert_allclose(res.crossing[:4], -t0[:4] / np.linalg.norm(u), rtol=1e-4)
  np.testing.assert_allclose(res.start, t0, rtol=1e-4)
  _, probs = renderer(ws, d, res.alphas)
  p = probs[..., 1]
  for i in range(4):
    assert (p[i].min() < 0.5 < p[i].max())  # the series crosses p = 0.5
    assert np.all(np.diff(p[i]) > 0)
    end = res.alphas[i, -1] if t0[i] < 0 else res.alphas[i, 0]
    np.testing.assert_allclose(end, 1.25 * res.crossing[i], atol=2e-3)  # + 1e-3 grid step nudge
  assert np.all(np.abs(res.alphas[4]) <= 6.0) and res.alphas[4, 0] == -6.0  # toward the boundary, capped


def test_auto_alphas_expected_grade_and_threshold():
  synth, classify, _, u = _toy(num_classes=3)
  d = (u / np.linalg.norm(u)).reshape(NUM_WS, W_DIM)
  renderer = sl.SeriesRenderer(synth, classify, num_classes=3)
  ws = np.zeros((1, NUM_WS, W_DIM), np.float32)
  target = dl.make_target('auto', 3)
  res = renderer.auto_alphas(ws, d, target, max_alpha=8.0, grid_points=9, refine_steps=6)
  # expected grade at 0 with logits (0, b, 2b): numpy reference; boundary = next grade up
  lg = np.array([0, BIAS, 2 * BIAS])
  e0 = (np.exp(lg) / np.exp(lg).sum()) @ np.arange(3)
  np.testing.assert_allclose(res.start, [e0], rtol=1e-5)
  assert res.threshold[0] == 1.5 and res.crossed[0]
  # independent reference: root of the analytic expected grade along d, E(s) = (e^s + 2 e^2s) / (1 + e^s + e^2s)
  # with s = alpha ||u|| + b, by scipy's brentq
  grade = lambda a: (lambda s: (np.exp(s) + 2 * np.exp(2 * s)) /
                     (1 + np.exp(s) + np.exp(2 * s)))(a * np.linalg.norm(u) + BIAS) - 1.5
  root = scipy.optimize.brentq(grade, 0.0, 8.0, xtol=1e-10)
  assert abs(res.crossing[0] - root) < 1e-3
  coarse = renderer.auto_alphas(ws, d, target, max_alpha=8.0, grid_points=9, refine_steps=0)
  assert abs(coarse.crossing[0] - root) > 10 * abs(res.crossing[0] - root)  # the refinement matters
  logits = renderer.logits(ws, d, res.alphas)
  grades = np.asarray(target(jnp.asarray(logits[0])))
  assert grades.min() < 1.5 < grades.max()
  with pytest.raises(ValueError, match='has no decision boundary'):
    renderer.auto_alphas(ws, d, dl.make_target('logit', 3, 1))
  ok = renderer.auto_alphas(ws, d, dl.make_target('logit', 3, 1), threshold=2.0)
  assert ok.crossed[0] and ok.threshold[0] == 2.0


def test_fixed_alphas_and_probabilities():
  np.testing.assert_allclose(sl.fixed_alphas(2.0, 5), [-2, -1, 0, 1, 2])
  assert sl.fixed_alphas(1.0, 3, batch=4).shape == (4, 3)
  np.testing.assert_allclose(sl.probabilities(jnp.array([[0.0]])), [[0.5]])
  np.testing.assert_allclose(sl.probabilities(jnp.array([[0.0, np.log(3.0)]])), [[0.25, 0.75]], rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
  synth, classify, _, _ = _toy()
  renderer = sl.SeriesRenderer(synth, classify, num_classes=3)
  ws = np.zeros((2, NUM_WS, W_DIM), np.float32)
  d = np.zeros((NUM_WS, W_DIM), np.float32)
  with pytest.raises(ValueError, match=r'K=2 classes but config.data.num_classes=3'):
    renderer(ws, d, [0.0])
  renderer = sl.SeriesRenderer(synth, classify)
  with pytest.raises(ValueError, match=r'directions must be \[num_ws, w_dim\]'):
    renderer(ws, np.zeros((3, NUM_WS, W_DIM)), [0.0])
  with pytest.raises(ValueError, match=r'alphas must be \[S\]'):
    renderer(ws, d, np.zeros((3, 2)))
  with pytest.raises(ValueError, match=r'ws must be latents'):
    renderer(ws[0], d, [0.0])
  with pytest.raises(ValueError, match='chunk_size must be'):
    sl.SeriesRenderer(synth, classify, chunk_size=0)


def test_per_image_extras_reach_every_frame_of_their_image():
  """extras (e.g. an inversion's noise maps) are passed per image: frame (b, s) = G(w_b + a_s d) + extras_b."""
  synth, classify, m, u = _toy()
  rng = np.random.default_rng(3)
  ws = rng.normal(size=(3, NUM_WS, W_DIM)).astype(np.float32) * 0.5
  extras = {'noise': rng.normal(size=(3, 8, 8, 1)).astype(np.float32) * 0.01}
  d = (u / np.linalg.norm(u)).reshape(NUM_WS, W_DIM)
  alphas = np.array([-1.0, 0.0, 2.0], np.float32)
  renderer = sl.SeriesRenderer(lambda w, e: synth(w) + e['noise'], classify, chunk_size=4)
  images, _ = renderer(ws, d, alphas, extras=extras)
  shifted = ws[:, None] + alphas[None, :, None, None] * d
  ref = (shifted.reshape(9, P) @ m).reshape(3, 3, 8, 8, 1) + extras['noise'][:, None]
  np.testing.assert_allclose(images, np.clip(ref, -1, 1), atol=1e-5)
  auto = renderer.auto_alphas(ws, d, dl.make_target('auto', 2), num_frames=3, max_alpha=5.0, extras=extras)
  assert auto.alphas.shape == (3, 3)
  with pytest.raises(ValueError, match='leading batch axis'):
    renderer(ws, d, alphas, extras={'noise': extras['noise'][:2]})
