"""StyleGAN2 losses against numpy and finite differences; lazy-regularisation and EMA arithmetic by hand."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylex_jax.train import losses

jax.config.update('jax_enable_x64', False)


def _softplus(x):
  return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


def test_logistic_losses_match_numpy():
  rng = np.random.default_rng(0)
  real, fake = rng.normal(size=(6, 1)), rng.normal(size=(6, 1))
  np.testing.assert_allclose(losses.d_logistic_loss(real, fake),
                             _softplus(fake).mean() + _softplus(-real).mean(), rtol=1e-6)
  np.testing.assert_allclose(losses.g_nonsaturating_loss(fake), _softplus(-fake).mean(), rtol=1e-6)


def _toy_d(w):

  def d_fn(x):  # per-example logit, nonlinear in x
    return jnp.sum(jnp.tanh(x * w), axis=(1, 2, 3))[:, None]

  return d_fn


def test_r1_matches_finite_differences():
  rng = np.random.default_rng(1)
  x = rng.uniform(-1, 1, (3, 4, 4, 2))
  w = rng.normal(size=(4, 4, 2))
  pen, logits = losses.r1_penalty(_toy_d(jnp.asarray(w, jnp.float32)), jnp.asarray(x, jnp.float32))
  f = lambda img: np.sum(np.tanh(img * w))  # float64 numpy reference
  eps = 1e-5
  for b in range(3):
    grad = np.zeros_like(x[b])
    for idx in np.ndindex(x[b].shape):
      e = np.zeros_like(x[b])
      e[idx] = eps
      grad[idx] = (f(x[b] + e) - f(x[b] - e)) / (2 * eps)
    np.testing.assert_allclose(pen[b], np.sum(grad**2), rtol=1e-4)
    np.testing.assert_allclose(logits[b], f(x[b]), rtol=1e-5)


def test_path_length_matches_finite_difference_jacobian():
  rng = np.random.default_rng(2)
  B, num_ws, w_dim, H, W, C = 2, 3, 4, 4, 4, 1
  A = rng.normal(size=(num_ws * w_dim, H * W * C)) * 0.3

  def synth_np(ws):  # [num_ws, w_dim] -> [H, W, C]
    return np.sin(ws.reshape(-1) @ A).reshape(H, W, C)

  synth = lambda ws: jnp.sin(ws.reshape(ws.shape[0], -1) @ jnp.asarray(A, jnp.float32)).reshape(-1, H, W, C)
  ws = rng.normal(size=(B, num_ws, w_dim))
  key = jax.random.key(3)
  pl_mean = jnp.float32(0.5)
  pen, new_mean, lengths = losses.path_length_penalty(synth, jnp.asarray(ws, jnp.float32), key, pl_mean, 0.01)
  y = np.asarray(jax.random.normal(key, (B, H, W, C), jnp.float32), np.float64) / np.sqrt(H * W)
  eps = 1e-6
  expected = []
  for b in range(B):
    J = np.zeros((H * W * C, num_ws * w_dim))
    for i in range(num_ws * w_dim):
      e = np.zeros(num_ws * w_dim)
      e[i] = eps
      J[:, i] = (synth_np(ws[b].reshape(-1) + e) - synth_np(ws[b].reshape(-1) - e)).reshape(-1) / (2 * eps)
    g = (J.T @ y[b].reshape(-1)).reshape(num_ws, w_dim)
    expected.append(np.sqrt(np.mean(np.sum(g**2, axis=1))))
  expected = np.array(expected)
  np.testing.assert_allclose(lengths, expected, rtol=1e-4)
  mean_ref = 0.5 + 0.01 * (expected.mean() - 0.5)
  np.testing.assert_allclose(new_mean, mean_ref, rtol=1e-5)
  np.testing.assert_allclose(pen, (expected - mean_ref)**2, rtol=1e-4)


def test_lazy_regularization_adam_correction():
  lr, b1, b2 = losses.lazy_regularization_adam(0.0025, 0.0, 0.99, 16)
  c = 16 / 17
  assert lr == pytest.approx(0.0025 * c) and b1 == 0.0 and b2 == pytest.approx(0.99**c)
  assert losses.lazy_regularization_adam(0.1, 0.5, 0.9, 0) == (0.1, 0.5, 0.9)


def test_ema_half_life_arithmetic():
  # after half_life images of steps with beta, the old weight's share is exactly 1/2
  batch, kimg = 32, 10.0
  beta = float(losses.ema_beta(batch, kimg, None, 0))
  steps = kimg * 1000 / batch
  assert beta**steps == pytest.approx(0.5, rel=1e-4)  # beta is float32
  # ramp-up: half life = cur_nimg * rampup when that is smaller
  beta_r = float(losses.ema_beta(batch, kimg, 0.05, 20000))
  assert beta_r == pytest.approx(0.5**(batch / (20000 * 0.05)), rel=1e-6)


def test_r1_gamma_auto():
  assert losses.r1_gamma_auto(256, 16) == pytest.approx(0.8192)
