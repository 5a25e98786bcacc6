"""Tests for explain/direction.py: targets, gradient mode and black-box mode recover known directions.

Toy problem with a known answer: a linear generator G(w) = (w_flat @ M) reshaped to [8, 8, 1] and a classifier
whose log-odds are v . x + b with v = pinv(M) u, so log-odds(G(w)) = u . w_flat + b exactly: the best direction
is u / ||u|| (analytic reference), in W+ and (for u broadcast over layers) in W.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylex_jax.explain import direction as dl

NUM_WS, W_DIM = 2, 8
P = NUM_WS * W_DIM


def _toy(u_flat, bias=0.3, quad=None, num_classes=2):
  """(synthesize, classify, predict) with log-odds(G(w)) = u . w + bias [+ beta (u2 . w)^2 when quad=(beta, u2)]."""
  rng = np.random.default_rng(0)
  m = rng.normal(size=(P, 64)).astype(np.float32) / 8
  pinv = np.linalg.pinv(m)  # m @ pinv = I_16
  v = (pinv @ u_flat).astype(np.float32)
  v2 = None if quad is None else (pinv @ quad[1]).astype(np.float32)

  def synthesize(ws):
    return (ws.reshape(ws.shape[0], P) @ m).reshape(ws.shape[0], 8, 8, 1)

  def classify(images):
    x = images.reshape(images.shape[0], -1)
    s = x @ v + bias
    if quad is not None:
      s = s + quad[0] * (x @ v2)**2
    if num_classes == 2:
      return jnp.stack([jnp.zeros_like(s), s], axis=1)
    return jnp.stack([k * s for k in range(num_classes)], axis=1)  # ordinal: grade increases with s

  def predict(images):
    logits = np.asarray(classify(jnp.asarray(images)), np.float64)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

  return synthesize, classify, predict


def _cos(a, b):
  a, b = np.ravel(a), np.ravel(b)
  return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _latents(n, seed=1, space='w+'):
  rng = np.random.default_rng(seed)
  if space == 'w':
    return np.repeat(rng.normal(size=(n, 1, W_DIM)), NUM_WS, 1).astype(np.float32)
  return rng.normal(size=(n, NUM_WS, W_DIM)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------- targets


def test_make_target_values_against_numpy():
  logits = np.array([[0.2, -1.0, 2.0], [1.5, 0.3, -0.7]], np.float32)
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  np.testing.assert_allclose(dl.make_target('auto', 3)(logits), p @ np.arange(3), rtol=1e-5)
  np.testing.assert_allclose(dl.make_target('log_odds', 3, 1)(logits), np.log(p[:, 1] / (1 - p[:, 1])), rtol=1e-4)
  np.testing.assert_allclose(dl.make_target('logit', 3, 2)(logits), logits[:, 2])
  two = logits[:, :2]
  np.testing.assert_allclose(dl.make_target('auto', 2)(two), two[:, 1] - two[:, 0], rtol=1e-6)
  np.testing.assert_allclose(dl.make_target('auto', 1)(logits[:, :1]), logits[:, 0])
  t = dl.make_target('expected_grade', 5)
  np.testing.assert_allclose(t.boundary(np.array([0.2, 1.6, 3.9])), [0.5, 2.5, 3.5])
  assert dl.make_target('auto', 2).boundary(np.array([3.0]))[0] == 0.0


@pytest.mark.parametrize('args,match', [
    (('nope', 2), 'unknown target kind'),
    (('logit', 5), 'needs class_index'),
    (('log_odds', 2, 2), 'class_index must be an int in'),
    (('expected_grade', 1), 'needs num_classes >= 2'),
    (('auto', 0), 'num_classes must be'),
])
def test_make_target_bad_arguments(args, match):
  with pytest.raises(ValueError, match=match):
    dl.make_target(*args)


def test_class_count_mismatch_is_clear():
  with pytest.raises(ValueError, match=r'classifier returns K=3 classes but config.data.num_classes=2'):
    dl.make_target('auto', 2)(jnp.zeros((4, 3)))
  u = np.eye(P, dtype=np.float32)[0]
  synth, _, predict = _toy(u, num_classes=3)
  with pytest.raises(ValueError, match=r'K=3 classes but config.data.num_classes=2'):
    dl.LinearProbe(synth, predict, dl.make_target('auto', 2))(_latents(8))


def test_bad_latent_shapes_and_previous():
  u = np.eye(P, dtype=np.float32)[0]
  synth, classify, _ = _toy(u)
  opt = dl.GradientDirection(synth, classify, dl.make_target('auto', 2), steps=2)
  with pytest.raises(ValueError, match=r'ws must be latents \[B, num_ws, w_dim\]'):
    opt(np.zeros((4, P), np.float32))
  with pytest.raises(ValueError, match=r'previous directions must be \[k, num_ws, w_dim\]'):
    opt(_latents(4), previous=np.zeros((1, NUM_WS, W_DIM + 1), np.float32))
  with pytest.raises(ValueError, match="space must be 'w'"):
    dl.GradientDirection(synth, classify, dl.make_target('auto', 2), space='z')


# -------------------------------------------------------------------------------------------- gradient mode


@pytest.mark.parametrize('space', ['w+', 'w'])
def test_gradient_mode_recovers_true_direction_from_random_init(space):
  rng = np.random.default_rng(3)
  if space == 'w':
    u_w = rng.normal(size=W_DIM).astype(np.float32)
    u = np.tile(u_w, NUM_WS)  # log-odds = u_w . (sum over layers of w_l)
    truth = np.asarray(dl.broadcast_w(u_w, NUM_WS))
  else:
    u = rng.normal(size=P).astype(np.float32)
    truth = u.reshape(NUM_WS, W_DIM)
  synth, classify, _ = _toy(u)
  opt = dl.GradientDirection(synth, classify, dl.make_target('auto', 2), space=space, steps=150, learning_rate=0.2,
                             step_size=0.5, init='random')
  fit = opt(_latents(16, space=space), key=jax.random.key(5))
  d = np.asarray(fit.direction)
  assert d.shape == (NUM_WS, W_DIM)
  assert abs(np.linalg.norm(d) - 1) < 1e-5
  assert _cos(d, truth) >= 0.99
  # gain is linear here: exactly step_size * u . d (analytic), and it improved over the random start.
  np.testing.assert_allclose(float(fit.gain), 0.5 * float(u @ d.ravel()), rtol=1e-4)
  assert float(fit.gain) > float(fit.initial_gain)
  if space == 'w':
    np.testing.assert_allclose(d[0], d[1], atol=1e-6)  # broadcast: the same vector on every layer


def test_local_directions_recover_per_image_truth_and_trace_once():
  rng = np.random.default_rng(4)
  u = rng.normal(size=P).astype(np.float32)
  synth, classify, _ = _toy(u)
  opt = dl.GradientDirection(synth, classify, dl.make_target('auto', 2), space='w+', local=True, steps=100,
                             learning_rate=0.2, init='random', chunk_size=3)
  fit = opt(_latents(5), key=jax.random.key(1))
  d = np.asarray(fit.direction)
  assert d.shape == (5, NUM_WS, W_DIM) and np.asarray(fit.gain).shape == (5,)
  np.testing.assert_allclose(np.linalg.norm(d.reshape(5, -1), axis=1), 1, atol=1e-5)
  assert min(_cos(di, u) for di in d) >= 0.99
  opt(_latents(5, seed=9), key=jax.random.key(2))
  assert opt.trace_count == 1


def test_proximity_penalty_trades_gain_for_smaller_pixel_change():
  rng = np.random.default_rng(6)
  u = rng.normal(size=P).astype(np.float32)
  synth, classify, _ = _toy(u)
  target = dl.make_target('auto', 2)
  ws = _latents(8)
  plain = dl.gradient_direction(synth, classify, ws, target, space='w+', steps=60, step_size=1.0)
  close = dl.gradient_direction(synth, classify, ws, target, space='w+', steps=60, step_size=1.0,
                                proximity_weight=200.0)
  # reference proximity from the toy's linear map: mean_pixels (M^T d)^2 computed independently
  m = np.random.default_rng(0).normal(size=(P, 64)).astype(np.float32) / 8
  for fit in (plain, close):
    np.testing.assert_allclose(float(fit.proximity), np.mean((np.asarray(fit.direction).ravel() @ m)**2), rtol=1e-3)
  assert float(close.proximity) < 0.8 * float(plain.proximity)
  assert float(close.gain) < float(plain.gain)


def test_top_k_orthonormal_and_second_recovers_planted_factor():
  u1 = np.zeros(P, np.float32)
  u1[0] = 1.0
  u2 = np.zeros(P, np.float32)
  u2[5] = 1.0
  # log-odds = u1.w + 0.2 (u2.w)^2; latents symmetric (mean u2.w = 0): mean gain at step a for unit d is
  # a <u1,d> + 0.2 a^2 <u2,d>^2, maximised by u1 (since 1 >= 2*0.2*a) and, orthogonal to u1, by +-u2.
  synth, classify, _ = _toy(u1, bias=0.0, quad=(0.2, u2))
  half = _latents(8)
  ws = np.concatenate([half, -half])
  opt = dl.GradientDirection(synth, classify, dl.make_target('auto', 2), space='w+', steps=150, learning_rate=0.2,
                             step_size=1.0, chunk_size=5)  # 16 latents: 4 chunks, padded
  ds = dl.top_k_directions(opt, ws, 3)
  flat = ds.reshape(3, -1)
  np.testing.assert_allclose(flat @ flat.T, np.eye(3), atol=1e-4)
  assert _cos(ds[0], u1) >= 0.99
  assert abs(_cos(ds[1], u2)) >= 0.99
  assert opt.trace_count == 1


# -------------------------------------------------------------------------------------------- black-box mode


@pytest.mark.parametrize('space', ['w', 'w+'])
def test_black_box_probe_recovers_true_direction(space):
  rng = np.random.default_rng(7)
  if space == 'w':
    u_w = rng.normal(size=W_DIM).astype(np.float32)
    u = np.tile(u_w, NUM_WS)
    truth = np.asarray(dl.broadcast_w(u_w, NUM_WS))
  else:
    u = rng.normal(size=P).astype(np.float32)
    truth = u.reshape(NUM_WS, W_DIM)
  u = u / np.linalg.norm(u) * 2.0
  synth, _, predict = _toy(u)
  ws = np.asarray(dl.perturb_latents(_latents(4, space='w'), jax.random.key(0), 1000, 1.0, space=space))
  fit = dl.probe_direction(synth, predict, ws, dl.make_target('auto', 2), space=space, l2=1e-4, batch_size=128)
  assert fit.model == 'logistic' and fit.direction.shape == (NUM_WS, W_DIM)
  assert abs(np.linalg.norm(fit.direction) - 1) < 1e-5
  assert _cos(fit.direction, truth) >= 0.99


def test_black_box_ridge_on_expected_grade_and_top_k():
  rng = np.random.default_rng(8)
  u = rng.normal(size=P).astype(np.float32)
  u /= np.linalg.norm(u)
  synth, _, predict = _toy(u, bias=0.0, num_classes=3)
  ws = rng.normal(size=(1500, NUM_WS, W_DIM)).astype(np.float32)
  probe = dl.LinearProbe(synth, predict, dl.make_target('auto', 3), space='w+', l2=1e-4)
  ds = dl.top_k_directions(probe, ws, 2)
  # Gaussian latents: the least-squares fit of any monotone function of u.w is along u (Stein's lemma)
  assert _cos(ds[0], u) >= 0.99
  flat = ds.reshape(2, -1)
  np.testing.assert_allclose(flat @ flat.T, np.eye(2), atol=1e-5)
  fit = probe(ws)
  assert fit.model == 'ridge' and fit.score > 0.8


def test_fit_logistic_and_ridge_against_references():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(300, 4))
  beta_true = np.array([1.0, -2.0, 0.5, 0.0])
  y = 1 / (1 + np.exp(-(x @ beta_true + 0.3)))  # soft labels exactly from a logistic model
  beta, b = dl.fit_logistic(x, y, 0.0)
  np.testing.assert_allclose(beta, beta_true, atol=1e-3)
  assert abs(b - 0.3) < 1e-3
  yr = x @ beta_true + 0.1 * rng.normal(size=300) + 2.0
  beta_r, b_r = dl.fit_ridge(x, yr, 0.0)
  ref = np.linalg.lstsq(np.c_[x, np.ones(300)], yr, rcond=None)[0]
  np.testing.assert_allclose(np.r_[beta_r, b_r], ref, atol=1e-8)
  wide = rng.normal(size=(5, 12))  # dual (p > n) equals primal
  yw = rng.normal(size=5)
  bd, _ = dl.fit_ridge(wide, yw, 0.1)
  xc, yc = wide - wide.mean(0), yw - yw.mean()
  np.testing.assert_allclose(bd, np.linalg.solve(xc.T @ xc + 5 * 0.1 * np.eye(12), xc.T @ yc), atol=1e-8)


def test_black_box_constant_prediction_is_clear():
  synth, _, _ = _toy(np.eye(P, dtype=np.float32)[0])
  const = lambda images: np.tile([[0.9, 0.1]], (images.shape[0], 1))
  with pytest.raises(ValueError, match='same prediction'):
    dl.probe_direction(synth, const, _latents(16), dl.make_target('auto', 2))


def test_latent_scale_against_numpy():
  ws = _latents(7)
  w_avg = np.ones(W_DIM, np.float32)
  ref = np.median(np.linalg.norm((ws - w_avg).reshape(7, -1), axis=1))
  assert abs(dl.latent_scale(ws, w_avg) - ref) < 1e-5


# --------------------------------------------------------------------------------------- real StyleGAN2 (tiny)


def test_gradient_mode_on_tiny_stylegan2_increases_target():
  from configs import demo
  from stylex_jax.train import gan

  config = demo.get_config('smoke')
  g = gan.build_models(config).generator
  k = config.data.num_classes
  # Random synthesis parameters of the right structure (jitting Flax's init costs ~10 s of compile here; the
  # values do not matter for this check, only that the gradient flows through the real network).
  shapes = jax.eval_shape(
      lambda key: g.init({'params': key}, jnp.zeros((1, g.num_ws, g.w_dim)), method='synthesis', noise_mode='const'),
      jax.random.key(0))
  rng = np.random.default_rng(0)
  g_vars = jax.tree.map(lambda s: jnp.asarray(0.3 * rng.normal(size=s.shape), jnp.float32), shapes)
  head = jnp.asarray(rng.normal(size=(g.resolution * g.resolution * g.channels, k)) / g.resolution, jnp.float32)
  ws = jnp.asarray(np.repeat(rng.normal(size=(4, 1, g.w_dim)), g.num_ws, 1), jnp.float32)

  def synthesize(ws):
    return jnp.clip(g.apply(g_vars, ws, method='synthesis', noise_mode='const'), -1, 1)

  def classify(images):  # a random (linear) classifier: the gradient must flow through the real G
    return images.reshape(images.shape[0], -1) @ head

  opt = dl.GradientDirection(synthesize, classify, dl.make_target('auto', k), space='w', steps=4, learning_rate=0.5,
                             step_size=2.0, init='random')
  fit = opt(ws, key=jax.random.key(3))
  assert np.asarray(fit.direction).shape == (g.num_ws, g.w_dim)
  assert float(fit.gain) > float(fit.initial_gain) + 1e-3
  assert np.all(np.isfinite(np.asarray(fit.history)))
