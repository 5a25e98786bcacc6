"""Tests for stylex_jax.explain.gradcam: GradCAM against analytic maps of hand-built models (and the CAM
identity of a global-average-pooled ResNet), batch/vmap consistency, integrated-gradients exactness and
completeness, and the numpy overlay."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stylex_jax.explain.gradcam import (available_layers, colormap_jet, gradcam, integrated_gradients, overlay)
from stylex_jax.models.classifier import create_classifier


class PoolNet(nn.Module):
  """x [B,H,W,C] -> 'feat' = x (identity) -> 'pooled' = 2x2 mean pool -> logits_k = sum p * W[..., k].

    Known answers: d logit_k / d pooled = W[..., k]; d logit_k / d feat[h, w, c] = W[h//2, w//2, c, k] / 4.
    """

  @nn.compact
  def __call__(self, x):
    self.sow('intermediates', 'feat', x)
    a = self.perturb('feat', x)
    p = nn.avg_pool(a, (2, 2), strides=(2, 2))
    self.sow('intermediates', 'pooled', p)
    p = self.perturb('pooled', p)
    self.sow('intermediates', 'vector', p.reshape(p.shape[0], -1))  # not spatial: not a GradCAM layer
    w = self.param('w', nn.initializers.normal(1.0), p.shape[1:] + (3,))
    return jnp.einsum('bhwc,hwck->bk', p, w)


class SmoothNet(nn.Module):
  """Small smooth nonlinear classifier (conv + tanh + dense) for integrated-gradients completeness."""

  @nn.compact
  def __call__(self, x):
    h = jnp.tanh(nn.Conv(4, (3, 3))(x))
    h = jnp.tanh(nn.Conv(4, (3, 3), strides=(2, 2))(h))
    return nn.Dense(3)(h.reshape(h.shape[0], -1))


class LinearNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    w = self.param('w', nn.initializers.normal(1.0), x.shape[1:] + (2,))
    b = self.param('b', nn.initializers.normal(1.0), (2,))
    return jnp.einsum('bhwc,hwck->bk', x, w) + b


def _bilinear_numpy(a, out_h, out_w):
  """Independent half-pixel-centre bilinear upsampling with edge clamping. a [h, w] -> [out_h, out_w]."""
  h, w = a.shape
  ys = np.clip((np.arange(out_h) + 0.5) * h / out_h - 0.5, 0, h - 1)
  xs = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
  y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
  y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
  wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
  top = (1 - wx) * a[y0][:, x0] + wx * a[y0][:, x1]
  bot = (1 - wx) * a[y1][:, x0] + wx * a[y1][:, x1]
  return (1 - wy) * top + wy * bot


def _normalise(cam):
  peak = cam.max()
  return cam / peak if peak > 0 else np.zeros_like(cam)


@pytest.fixture(scope='module')
def poolnet():
  model = PoolNet()
  x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 2), minval=-1, maxval=1)
  variables = model.init(jax.random.key(1), x)
  return model, variables, x


def test_available_layers_requires_sown_perturbed_spatial(poolnet):
  model, variables, x = poolnet
  assert available_layers(model, variables, x) == ('feat', 'pooled')
  with pytest.raises(ValueError, match=r"available layers are \['feat', 'pooled'\]"):
    gradcam(model, variables, x, 0, layer='vector')


@pytest.mark.parametrize('layer', ['feat', 'pooled'])
def test_gradcam_matches_analytic_map(poolnet, layer):
  model, variables, x = poolnet
  w = np.asarray(variables['params']['w'], np.float64)  # [4, 4, 2, 3]
  xn = np.asarray(x, np.float64)
  pooled = xn.reshape(3, 4, 2, 4, 2, 2).mean(axis=(2, 4))  # independent 2x2 mean pool
  targets = np.array([0, 2, 1])
  got = np.asarray(gradcam(model, variables, x, targets, layer=layer))
  assert got.shape == (3, 8, 8) and got.dtype == np.float32
  for b, k in enumerate(targets):
    if layer == 'pooled':
      alpha = w[..., k].mean(axis=(0, 1))  # [C]
      ref = _bilinear_numpy(np.maximum(pooled[b] @ alpha, 0), 8, 8)
    else:
      alpha = w[..., k].mean(axis=(0, 1)) / 4.0
      ref = np.maximum(xn[b] @ alpha, 0)
    np.testing.assert_allclose(got[b], _normalise(ref), atol=2e-5)


def test_all_negative_evidence_gives_zero_map():
  model = PoolNet()
  x = jnp.abs(jax.random.normal(jax.random.key(2), (2, 8, 8, 2))) * 0.5  # positive activations
  w = jnp.zeros((4, 4, 2, 3)).at[..., 1].set(-1.0).at[..., 0].set(1.0)  # class 1: only negative evidence
  variables = {'params': {'w': w}}
  np.testing.assert_array_equal(np.asarray(gradcam(model, variables, x, 1, layer='pooled')), 0.0)
  pos = np.asarray(gradcam(model, variables, x, 0, layer='pooled'))
  assert pos.max() == pytest.approx(1.0) and pos.min() >= 0.0


def test_target_handling(poolnet):
  model, variables, x = poolnet
  as_int = gradcam(model, variables, x, 2, layer='pooled')
  as_arr = gradcam(model, variables, x, jnp.array([2, 2, 2]), layer='pooled')
  np.testing.assert_array_equal(np.asarray(as_int), np.asarray(as_arr))
  assert not np.allclose(np.asarray(gradcam(model, variables, x, 0, layer='pooled')), np.asarray(as_int))
  with pytest.raises(ValueError, match=r'class indices in \[0, 2\]'):
    gradcam(model, variables, x, 3, layer='pooled')
  with pytest.raises(ValueError, match='shape'):
    gradcam(model, variables, x, np.array([0, 1]), layer='pooled')
  with pytest.raises(ValueError, match='int'):
    gradcam(model, variables, x, 0.5, layer='pooled')
  with pytest.raises(ValueError, match=r'\[B, H, W, C\]'):
    gradcam(model, variables, x[0], 0, layer='pooled')


def test_batched_equals_per_image_and_vmap_and_jit(poolnet):
  model, variables, x = poolnet
  targets = jnp.array([1, 0, 2])
  batched = np.asarray(gradcam(model, variables, x, targets, layer='pooled'))
  singles = np.stack(
      [np.asarray(gradcam(model, variables, x[i:i + 1], int(targets[i]), layer='pooled'))[0] for i in range(3)])
  np.testing.assert_allclose(batched, singles, atol=1e-6)
  vmapped = jax.vmap(lambda im, t: gradcam(model, variables, im[None], t, layer='pooled')[0])(x, targets)
  np.testing.assert_allclose(np.asarray(vmapped), batched, atol=1e-6)
  jitted = jax.jit(gradcam, static_argnums=(0,), static_argnames=('layer',))(model, variables, x, targets,
                                                                             layer='pooled')
  np.testing.assert_allclose(np.asarray(jitted), batched, atol=1e-6)


@pytest.fixture(scope='module')
def resnet():
  model = create_classifier('demo', num_classes=3)
  x = jax.random.uniform(jax.random.key(3), (2, 16, 16, 1), minval=-1, maxval=1)
  variables = jax.jit(model.init)(jax.random.key(4), x)
  # perturb the zero-initialised residual scales and the running stats so the net is not near-identity
  rng = np.random.default_rng(5)

  def jitter(path, a):
    name = path[-1].key
    noise = rng.standard_normal(a.shape).astype(np.float32)
    if name == 'scale':
      return 1.0 + 0.2 * noise  # also un-zeroes the residual branches' last norm
    if name in ('bias', 'mean'):
      return np.asarray(a) + 0.1 * noise
    if name == 'var':
      return 1.0 + 0.5 * np.abs(noise)
    return np.asarray(a)

  variables = jax.tree_util.tree_map_with_path(jitter, variables)
  variables = jax.tree.map(jnp.asarray, variables)
  return model, variables, x


def test_resnet_stage4_gradcam_equals_class_activation_map(resnet):
  """Last stage -> global average pool -> dense: alpha_c = W[c, k] / (h w), so GradCAM = CAM (Zhou 2016)."""
  model, variables, x = resnet
  targets = np.array([2, 0])
  cam_fn = jax.jit(gradcam, static_argnums=(0,), static_argnames=('layer',))
  got = np.asarray(cam_fn(model, variables, x, targets, layer='stage4'))
  _, state = jax.jit(lambda v, im: model.apply(v, im, mutable=['intermediates']))(variables, x)
  acts = np.asarray(state['intermediates']['stage4'][0], np.float64)  # [2, 2, 2, 128]
  w = np.asarray(variables['params']['head']['kernel'], np.float64)  # [128, 3]
  for b, k in enumerate(targets):
    ref = _bilinear_numpy(np.maximum(acts[b] @ w[:, k], 0), 16, 16)
    np.testing.assert_allclose(got[b], _normalise(ref), atol=1e-4)
  single = np.asarray(cam_fn(model, variables, x[1:], targets[1:], layer='stage4'))
  np.testing.assert_allclose(single[0], got[1], atol=1e-5)
  assert got.min() >= 0.0 and got.max() <= 1.0


def test_integrated_gradients_exact_for_linear_model():
  model = LinearNet()
  x = jax.random.uniform(jax.random.key(6), (2, 4, 4, 3), minval=-1, maxval=1)
  variables = model.init(jax.random.key(7), x)
  w = np.asarray(variables['params']['w'])
  targets = np.array([1, 0])
  attr = np.asarray(integrated_gradients(model, variables, x, targets, steps=2))
  for b, k in enumerate(targets):
    np.testing.assert_allclose(attr[b], (np.asarray(x[b]) + 1.0) * w[..., k], rtol=1e-5, atol=1e-6)
  base = jnp.full((4, 4, 3), 0.25)
  attr = np.asarray(integrated_gradients(model, variables, x, 1, baseline=base, steps=5))
  np.testing.assert_allclose(attr, (np.asarray(x) - 0.25) * w[None, ..., 1], rtol=1e-5, atol=1e-6)


def test_integrated_gradients_completeness_and_convergence():
  model = SmoothNet()
  x = jax.random.uniform(jax.random.key(8), (2, 8, 8, 1), minval=-1, maxval=1)
  variables = model.init(jax.random.key(9), x)
  f = lambda im: np.asarray(model.apply(variables, im))
  baseline = -jnp.ones_like(x)
  delta = f(x)[:, 2] - f(baseline)[:, 2]
  err = {}
  for steps in (3, 48):
    attr = integrated_gradients(model, variables, x, 2, steps=steps)
    assert attr.shape == x.shape and attr.dtype == jnp.float32
    err[steps] = np.abs(np.asarray(attr).sum(axis=(1, 2, 3)) - delta)
  assert np.all(err[48] < 2e-3 * np.abs(delta).max() + 1e-5)
  assert np.all(err[48] < err[3])


def test_integrated_gradients_completeness_on_resnet(resnet):
  model, variables, x = resnet
  attr = integrated_gradients(model, variables, x, jnp.array([0, 1]), steps=64)
  logits = np.asarray(model.apply(variables, x))
  base = np.asarray(model.apply(variables, -jnp.ones_like(x)))
  delta = np.array([logits[0, 0] - base[0, 0], logits[1, 1] - base[1, 1]])
  np.testing.assert_allclose(np.asarray(attr).sum(axis=(1, 2, 3)), delta, rtol=0.03, atol=0.03 * np.abs(delta).max())


def test_integrated_gradients_bad_input(poolnet):
  model, variables, x = poolnet
  with pytest.raises(ValueError, match='steps'):
    integrated_gradients(model, variables, x, 0, steps=1)
  with pytest.raises(ValueError, match='broadcast'):
    integrated_gradients(model, variables, x, 0, baseline=jnp.zeros((5, 5, 2)))


def test_colormap_anchor_values_match_jet():
  rgb = colormap_jet(np.array([0.0, 0.125, 0.375, 0.5, 0.625, 0.875, 1.0]))
  expected = [[0, 0, 0.5], [0, 0, 1], [0, 1, 1], [0.5, 1, 0.5], [1, 1, 0], [1, 0, 0], [0.5, 0, 0]]
  np.testing.assert_allclose(rgb, expected, atol=1e-6)


def test_overlay_shape_dtype_range_and_blend():
  rng = np.random.default_rng(0)
  gray = rng.uniform(-1, 1, (6, 5, 1)).astype(np.float32)
  rgb = rng.uniform(-1, 1, (6, 5, 3)).astype(np.float32)
  heat = rng.uniform(0, 1, (6, 5)).astype(np.float32)
  for img in (gray, rgb):
    out = overlay(img, heat)
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
  # alpha = 0: just the image; alpha = 1: just the colour map
  np.testing.assert_array_equal(overlay(gray, heat, alpha=0.0),
                                np.repeat(np.round((gray + 1) / 2 * 255), 3, axis=-1).astype(np.uint8))
  np.testing.assert_array_equal(overlay(rgb, heat, alpha=1.0), np.round(colormap_jet(heat) * 255).astype(np.uint8))
  blend = overlay(rgb, heat, alpha=0.45).astype(np.float64)
  ref = 0.55 * (rgb + 1) / 2 * 255 + 0.45 * colormap_jet(heat) * 255
  assert np.abs(blend - ref).max() <= 0.5 + 1e-6
  with pytest.raises(ValueError, match='heatmap must be'):
    overlay(rgb, heat[:5])
  with pytest.raises(ValueError, match=r'\[-1, 1\]'):
    overlay(rgb * 200, heat)
  with pytest.raises(ValueError, match='C = 1 or 3'):
    overlay(rgb[..., :2], heat)
