"""SSIM, MS-SSIM and PSNR against an independent numpy/scipy implementation of Wang et al.'s definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from stylex_jax.evaluate import similarity


def _ref_ssim_maps(a, b):
  """Wang et al. with scipy's Gaussian filter (sigma 1.5, radius 5 = 11 taps), valid region only. a, b [H, W]."""
  f = lambda x: scipy.ndimage.gaussian_filter(x, 1.5, truncate=5 / 1.5, mode='constant')[5:-5, 5:-5]
  a, b = a.astype(np.float64), b.astype(np.float64)
  c1, c2 = (0.01 * 2)**2, (0.03 * 2)**2
  ma, mb = f(a), f(b)
  va, vb, cov = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
  cs = (2 * cov + c2) / (va + vb + c2)
  return (2 * ma * mb + c1) / (ma**2 + mb**2 + c1) * cs, cs


def _ref_ssim(a, b):
  return np.array(
      [np.mean([_ref_ssim_maps(x[..., c], y[..., c])[0].mean() for c in range(x.shape[-1])]) for x, y in zip(a, b)])


def _ref_ms_ssim(a, b, scales):
  w = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:scales])
  w = w / w.sum()
  out = []
  for x, y in zip(a, b):
    x, y = x[..., 0].astype(np.float64), y[..., 0].astype(np.float64)
    v = 1.0
    for s in range(scales):
      full, cs = _ref_ssim_maps(x, y)
      v *= max(full.mean() if s == scales - 1 else cs.mean(), 1e-6)**w[s]
      h, wd = x.shape[0] // 2, x.shape[1] // 2
      x = x[:2 * h, :2 * wd].reshape(h, 2, wd, 2).mean(axis=(1, 3))
      y = y[:2 * h, :2 * wd].reshape(h, 2, wd, 2).mean(axis=(1, 3))
    out.append(v)
  return np.array(out)


def _pair(shape, noise, seed=0):
  rng = np.random.default_rng(seed)
  a = np.tanh(scipy.ndimage.gaussian_filter(rng.normal(size=shape), (0, 2, 2, 0)) * 3).astype(np.float32)
  b = np.clip(a + noise * rng.normal(size=shape), -1, 1).astype(np.float32)
  return a, b


@pytest.mark.parametrize('shape', [(3, 32, 32, 1), (2, 24, 20, 3)])
def test_ssim_matches_scipy_reference(shape):
  a, b = _pair(shape, 0.3)
  got = np.asarray(similarity.ssim(a, b))
  np.testing.assert_allclose(got, _ref_ssim(a, b), atol=1e-5)
  assert got.shape == (shape[0],) and (got < 0.99).all()
  np.testing.assert_allclose(np.asarray(similarity.ssim(a, a)), 1.0, atol=1e-6)


@pytest.mark.parametrize('size,scales', [(64, 3), (32, 2)])
def test_ms_ssim_matches_reference_and_uses_documented_scales(size, scales):
  assert similarity.ms_ssim_scales(size, size) == scales
  a, b = _pair((2, size, size, 1), 0.2, seed=1)
  np.testing.assert_allclose(np.asarray(similarity.ms_ssim(a, b)), _ref_ms_ssim(a, b, scales), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(similarity.ms_ssim(a, b, scales=1)), _ref_ssim(a, b), rtol=1e-5)
  with pytest.raises(ValueError, match='scales'):
    similarity.ms_ssim(a, b, scales=scales + 1)


def test_psnr_is_analytic_for_a_constant_offset():
  a = np.zeros((2, 16, 16, 1), np.float32)
  b = a + np.array([0.1, 0.5], np.float32)[:, None, None, None]
  np.testing.assert_allclose(np.asarray(similarity.psnr(a, b)), 10 * np.log10(4 / np.array([0.01, 0.25])), rtol=1e-5)
  assert float(similarity.psnr(a, a)[0]) == similarity.MAX_PSNR


def test_losses_are_differentiable_and_finite():
  a, b = _pair((2, 32, 32, 1), 0.3, seed=2)
  for fn in (similarity.ssim, similarity.ms_ssim, similarity.psnr):
    g = jax.grad(lambda x: jnp.sum(fn(x, jnp.asarray(a))))(jnp.asarray(b))
    assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0
  # finite difference of SSIM along a random direction
  d = np.random.default_rng(3).normal(size=b.shape).astype(np.float32)
  f = lambda x: float(jnp.sum(similarity.ssim(x, jnp.asarray(a))))
  g = jax.grad(lambda x: jnp.sum(similarity.ssim(x, jnp.asarray(a))))(jnp.asarray(b))
  eps = 1e-2
  fd = (f(jnp.asarray(b + eps * d)) - f(jnp.asarray(b - eps * d))) / (2 * eps)
  np.testing.assert_allclose(float(jnp.sum(g * d)), fd, rtol=2e-2)


def test_bad_shapes_fail_clearly():
  with pytest.raises(ValueError, match='same shape'):
    similarity.ssim(np.zeros((1, 16, 16, 1)), np.zeros((1, 16, 16, 3)))
  with pytest.raises(ValueError, match='smaller than'):
    similarity.ssim(np.zeros((1, 8, 8, 1)), np.zeros((1, 8, 8, 1)))


def test_ssim_benchmark_times_both_forms_and_they_agree(capsys):
  from benchmarks import ssim as ssim_benchmark
  a, b = _pair((2, 24, 20, 3), 0.3, seed=4)
  np.testing.assert_allclose(np.asarray(ssim_benchmark.depthwise_ssim(jnp.asarray(a), jnp.asarray(b))), _ref_ssim(a, b),
                             atol=1e-5)
  ssim_benchmark.main(['--shapes', '2x16x16x1', '--repeats', '1'])
  lines = [l for l in capsys.readouterr().out.splitlines() if not l.startswith('#')]
  assert [l.split()[0] for l in lines
         ] == ['ssim_value_and_grad_ms_banded_2x16x16x1', 'ssim_value_and_grad_ms_depthwise_2x16x16x1']
  assert all(float(l.split()[1]) > 0 for l in lines)
  with pytest.raises(ValueError, match='BxHxWxC'):
    ssim_benchmark.parse_shape('16x8x8x1')
