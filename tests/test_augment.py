"""Tests of stylex_jax.train.augment (ADA): every op against an independent numpy/scipy reference
or an analytic value, the probability semantics, determinism, differentiability, no recompiles
when p changes, and the p controller. CPU, tiny shapes; most calls run eagerly to avoid compiles."""
import functools

import numpy as np
import pytest
import scipy.ndimage

import jax
import jax.numpy as jnp

from stylex_jax.train import augment as A

SYM6 = np.array([
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633, 0.4910559419267466,
    0.787641141030194, 0.3379294217276218, -0.07263752278646252, -0.021060292512300564, 0.04472490177066578,
    0.0017677118642428036, -0.007800708325034148
])


def _images(b, h, w, c, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (b, h, w, c)).astype(np.float32)


def _only(*ops, **kw):
  return A.AugmentConfig.from_preset('none', **{op: 1. for op in ops}, **kw)


def _rot(theta, scale=1., tx=0., ty=0.):
  """Inverse matrix src = S^-1 R(theta) (out - t) in centred pixel coordinates."""
  c, s = np.cos(theta), np.sin(theta)
  m = np.array([[c, -s, 0.], [s, c, 0.], [0., 0., 1.]]) @ np.diag([1 / scale, 1 / scale, 1.])
  return m @ np.array([[1., 0., -tx], [0., 1., -ty], [0., 0., 1.]])


# ------------------------------------------------------------------------------------------ refs


def np_translate_reflect(img, tx, ty):
  """img [H, W, C]; content moves right by tx, down by ty; reflect padding (numpy 'reflect')."""
  h, w = img.shape[:2]
  pad = max(h, w)
  padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode='reflect')
  return padded[pad - ty:pad - ty + h, pad - tx:pad - tx + w]


def np_affine_antialias(img, g_inv):
  """Independent float64 version of the antialiased resampling: np.pad(reflect) by 2N, zero
    insertion + np.convolve with the sym6 low-pass, scipy bilinear sampling, correlate + decimate.
    img [H, W]; g_inv [3, 3] (output centred coords -> input centred coords)."""
  h_, w_ = img.shape
  f = SYM6 / SYM6.sum()
  tau = float(np.sum(np.arange(12) * f))  # DC group delay of the filter
  o = int(round(tau))
  delta = tau - o  # up index k <-> input coordinate (k - delta) / 2
  pad = 2 * max(h_, w_)
  x = np.pad(img.astype(np.float64), pad, mode='reflect')

  def up(a, axis):
    a = np.moveaxis(a, axis, -1)
    n = a.shape[-1]
    z = np.zeros(a.shape[:-1] + (2 * n,))
    z[..., ::2] = a
    full = np.apply_along_axis(lambda r: np.convolve(r, 2 * f), -1, z)
    return np.moveaxis(full[..., o:o + 2 * n], -1, axis)

  u = up(up(x, 0), 1)
  vy = (np.arange(2 * h_ + 10) - o - delta) / 2
  vx = (np.arange(2 * w_ + 10) - o - delta) / 2
  ux, uy = np.meshgrid(vx - (w_ - 1) / 2, vy - (h_ - 1) / 2)
  sx = g_inv[0, 0] * ux + g_inv[0, 1] * uy + g_inv[0, 2] + (w_ - 1) / 2
  sy = g_inv[1, 0] * ux + g_inv[1, 1] * uy + g_inv[1, 2] + (h_ - 1) / 2
  y = scipy.ndimage.map_coordinates(u, [2 * (sy + pad) + delta, 2 * (sx + pad) + delta], order=1)

  def down(a, axis, n):
    a = np.moveaxis(a, axis, -1)
    out = sum(f[m] * a[..., m:m + 2 * n - 1:2] for m in range(12))
    return np.moveaxis(out, -1, axis)

  return down(down(y, 0, h_), 1, w_)


# Most calls run eagerly on a few standard shapes, so the per-op kernels compile once for the file.
N = 512
X1 = _images(N, 8, 8, 1, seed=1)
X3 = _images(N, 8, 8, 3, seed=2)


@functools.lru_cache(maxsize=None)
def _affine(antialias):
  return jax.jit(lambda x, g: A.apply_affine(x, g, antialias))


def affine16(img, g, antialias):
  """img [16, 16] numpy, g [3, 3] -> [16, 16] (one compiled program per path)."""
  assert img.shape == (16, 16)
  out = _affine(antialias)(jnp.asarray(img[None, :, :, None], jnp.float32), jnp.asarray(g[None], jnp.float32))
  return np.asarray(out)[0, :, :, 0]


def _changed(out, x):
  return np.array([not np.array_equal(out[i], x[i]) for i in range(len(x))])


# ------------------------------------------------------------------------------------ identity


@pytest.mark.parametrize('antialias', [True, False])
def test_p_zero_is_exact_identity(antialias):
  for x in (X1, X3):
    out = A.augment(jnp.asarray(x), jax.random.key(3), 0.0, A.AugmentConfig(antialias=antialias))
    assert out.shape == x.shape and out.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(out), x)


def test_full_strength_keeps_shape_dtype_is_finite_and_augments_every_image():
  for x in (X1, X3):
    out = np.asarray(A.augment(jnp.asarray(x), jax.random.key(0), 1.0))
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and _changed(out, x).all()
    assert np.abs(out).max() < 30  # colour ops are bounded multiplicative/additive changes


def test_bf16_input_dtype_kept():
  out = A.augment(jnp.asarray(X1, jnp.bfloat16), jax.random.key(0), 0.5, A.AugmentConfig.from_preset('c'))
  assert out.dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------- blit


def test_apply_blit_matches_numpy_flip_rot90_translate():
  x = X3[0]
  cases = [(f, k, tx, ty) for f in (0, 1) for k in range(4) for tx, ty in [(0, 0), (-2, 3), (1, -1)]]
  flips, ks, txs, tys = (np.array(v) for v in zip(*cases))
  out = np.asarray(A.apply_blit(jnp.asarray(np.repeat(x[None], len(cases), 0)), flips, ks, txs, tys))
  for i, (f, k, tx, ty) in enumerate(cases):
    ref = np.flip(x, axis=1) if f else x
    ref = np.rot90(ref, k, axes=(0, 1))
    ref = np_translate_reflect(ref, tx, ty)
    np.testing.assert_array_equal(out[i], ref, err_msg=str(cases[i]))


def test_blit_matrix_through_bilinear_affine_equals_apply_blit():
  # augment composes the blit into the geometric matrix for images that also get a geometric op
  x = _images(1, 16, 16, 1, seed=3)[0, :, :, 0]
  for f, k, tx, ty in [(0, 1, 0, 1), (1, 0, 1, 0), (0, 2, -1, -2), (1, 3, 2, 1), (1, 2, 0, 0)]:
    g = np.asarray(A.blit_matrix(jnp.array([f]), jnp.array([k]), jnp.array([tx]), jnp.array([ty])))[0]
    ref = np_translate_reflect(np.rot90(np.flip(x, 1) if f else x, k)[:, :, None], tx, ty)[:, :, 0]
    np.testing.assert_array_equal(affine16(x, g, False), ref)


def test_augment_single_blit_ops_produce_numpy_candidates():
  x = X1[:64]
  key = jax.random.key(7)
  flipped = np.asarray(A.augment(jnp.asarray(X1), key, 1.0, _only('xflip')))[:64]
  is_flip = np.array([np.array_equal(flipped[i], np.flip(x[i], 1)) for i in range(len(x))])
  assert (is_flip | ~_changed(flipped, x)).all() and is_flip.any() and not is_flip.all()

  rotated = np.asarray(A.augment(jnp.asarray(X1), key, 1.0, _only('rotate90')))[:64]
  which = np.array([[np.array_equal(rotated[i], np.rot90(x[i], k)) for k in range(4)] for i in range(len(x))])
  assert which.any(1).all() and which.any(0).all()

  shifted = np.asarray(A.augment(jnp.asarray(X1), key, 1.0, _only('xint')))[:64]
  tmax = int(round(0.125 * 8))  # |t| <= round(xint_max * size)
  cands = [(tx, ty) for tx in range(-tmax, tmax + 1) for ty in range(-tmax, tmax + 1)]
  for i in range(len(x)):
    assert any(np.array_equal(shifted[i], np_translate_reflect(x[i], tx, ty)) for tx, ty in cands)
  assert _changed(shifted, x).any()


# ----------------------------------------------------------------------------------- geometric


@pytest.mark.parametrize('antialias', [True, False])
def test_identity_affine_leaves_image_unchanged(antialias):
  x = _images(1, 16, 16, 1, seed=4)[0, :, :, 0]
  out = affine16(x, np.eye(3), antialias)
  if antialias:
    np.testing.assert_allclose(out, x, atol=1e-6)
  else:
    np.testing.assert_array_equal(out, x)


def _smooth(n):
  yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
  return (np.exp(-((xx - 2)**2 + (yy + 1)**2) / 18.) - 0.5 * np.exp(-((xx + 3)**2 + (yy - 3)**2) / 8.) +
          0.02 * xx).astype(np.float32)


@pytest.mark.parametrize('antialias,atol', [(False, 1e-6), (True, 0.02)])
def test_affine_rotation_by_90_matches_np_rot90(antialias, atol):
  img = _smooth(16)
  g = _rot(np.pi / 2)
  np.testing.assert_allclose(affine16(img, g, antialias), np.rot90(img), atol=atol)  # sym6 is asymmetric


@pytest.mark.parametrize('antialias', [True, False])
def test_affine_on_linear_ramp_matches_analytic_transform(antialias):
  # Both paths reproduce linear functions exactly (bilinear; sym6 has vanishing moments), so in
  # the interior (away from the mirrored border) the output is the ramp at the source position.
  n = 16
  g = _rot(np.deg2rad(23.), scale=1.15, tx=0.6, ty=-0.3)
  yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
  ramp = 0.05 * xx - 0.03 * yy + 0.1
  out = affine16(ramp, g, antialias)
  sx = g[0, 0] * xx + g[0, 1] * yy + g[0, 2]
  sy = g[1, 0] * xx + g[1, 1] * yy + g[1, 2]
  ref = 0.05 * sx - 0.03 * sy + 0.1
  inner = slice(5, n - 5)
  np.testing.assert_allclose(out[inner, inner], ref[inner, inner], atol=2e-5)


@pytest.mark.parametrize('g', [_rot(0., tx=0.7, ty=-0.4), _rot(0., scale=1.08), _rot(np.deg2rad(4.))])
def test_antialiased_affine_matches_independent_numpy_pipeline(g):
  # Small transforms: every sample stays inside the exactly reflect-padded margin -> whole image.
  img = _images(1, 16, 16, 1, seed=5)[0, :, :, 0]
  np.testing.assert_allclose(affine16(img, g, True), np_affine_antialias(img, g), atol=2e-5)


def test_antialiased_affine_large_rotation_interior_matches_numpy_pipeline():
  img = _images(1, 16, 16, 1, seed=6)[0, :, :, 0]
  g = _rot(np.deg2rad(37.), scale=0.9, tx=1.5, ty=0.5)
  out, ref = affine16(img, g, True), np_affine_antialias(img, g)
  np.testing.assert_allclose(out[5:-5, 5:-5], ref[5:-5, 5:-5], atol=2e-5)
  assert np.isfinite(out).all() and np.abs(out - ref).max() < 0.5  # border: mirrored, not black


def test_bilinear_half_pixel_translation_is_neighbour_average():
  x = _images(1, 16, 16, 1, seed=2)[0, :, :, 0]
  out = affine16(x, _rot(0., tx=0.5), False)  # out(j) = in(j - 0.5)
  np.testing.assert_allclose(out[:, 1:], 0.5 * (x[:, :-1] + x[:, 1:]), atol=1e-6)
  np.testing.assert_allclose(out[:, 0], 0.5 * (x[:, 0] + x[:, 1]), atol=1e-6)  # mirrored at the edge


def test_rotation_split_gives_probability_p_of_any_rotation():
  p = 0.5
  out = np.asarray(A.augment(jnp.asarray(X1), jax.random.key(9), p, _only('rotate', antialias=False)))
  assert abs(_changed(out, X1).mean() - p) < 4 * np.sqrt(p * (1 - p) / N)


# -------------------------------------------------------------------------------------- colour


def test_apply_colour_matches_numpy_matmul():
  rng = np.random.default_rng(3)
  x3, x1 = X3[:3], X1[:3]
  m = rng.normal(size=(3, 4, 4)).astype(np.float32)
  ref3 = np.einsum('bck,bhwk->bhwc', m[:, :3, :3], x3) + m[:, None, None, :3, 3]
  np.testing.assert_allclose(np.asarray(A.apply_colour(jnp.asarray(x3), m)), ref3, atol=1e-5)
  mean_rows = m[:, :3, :].mean(1)
  ref1 = x1 * mean_rows[:, :3].sum(-1)[:, None, None, None] + mean_rows[:, 3][:, None, None, None]
  np.testing.assert_allclose(np.asarray(A.apply_colour(jnp.asarray(x1), m)), ref1, atol=1e-5)


@pytest.mark.parametrize('x', [X1, X3], ids=['grey', 'rgb'])
def test_brightness_adds_constant_and_contrast_scales_about_zero(x):
  key = jax.random.key(11)
  out = np.asarray(A.augment(jnp.asarray(x), key, 1.0, _only('brightness')))
  diff = (out - x).reshape(len(x), -1)
  np.testing.assert_allclose(diff, diff[:, :1].repeat(diff.shape[1], 1), atol=1e-6)
  assert abs(diff[:, 0].std() - 0.2) < 0.025 and abs(diff[:, 0].mean()) < 0.035  # N(0, 0.2)

  out = np.asarray(A.augment(jnp.asarray(x), key, 1.0, _only('contrast')))
  ratio = (out / x).reshape(len(x), -1)  # reference: scaling about 0 (mid-grey of [-1, 1])
  np.testing.assert_allclose(ratio, ratio[:, :1].repeat(ratio.shape[1], 1), rtol=1e-5)
  assert abs(np.log2(ratio[:, 0]).std() - 0.5) < 0.06  # 2 ** N(0, 0.5)


def test_lumaflip_single_channel_negates_and_rgb_reflects_luma():
  out1 = np.asarray(A.augment(jnp.asarray(X1), jax.random.key(2), 1.0, _only('lumaflip')))
  neg = np.array([np.array_equal(out1[i], -X1[i]) for i in range(N)])
  assert (neg | ~_changed(out1, X1)).all() and 0.4 < neg.mean() < 0.6  # P = p / 2

  out3 = np.asarray(A.augment(jnp.asarray(X3), jax.random.key(2), 1.0, _only('lumaflip')))
  householder = X3 - 2 * X3.mean(-1, keepdims=True)  # (I - 2 v v^T) x, v = (1, 1, 1) / sqrt 3
  flipped = np.array([np.allclose(out3[i], householder[i], atol=1e-6) for i in range(N)])
  assert (flipped | ~_changed(out3, X3)).all() and flipped.any()


def test_hue_rotates_about_luma_axis_and_saturation_scales_chroma():
  x = X3
  luma = x.mean(-1, keepdims=True)
  chroma = x - luma
  out = np.asarray(A.augment(jnp.asarray(x), jax.random.key(4), 1.0, _only('hue')))
  np.testing.assert_allclose(out.mean(-1, keepdims=True), luma, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(out - out.mean(-1, keepdims=True), axis=-1),
                             np.linalg.norm(chroma, axis=-1), atol=1e-5)
  for i in range(5):  # the fitted per-image linear map is a proper rotation fixing (1, 1, 1)
    m = np.linalg.lstsq(x[i].reshape(-1, 3), out[i].reshape(-1, 3), rcond=None)[0].T
    np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-4)
    assert abs(np.linalg.det(m) - 1) < 1e-4 and np.allclose(m @ np.ones(3), np.ones(3), atol=1e-4)

  out = np.asarray(A.augment(jnp.asarray(x), jax.random.key(4), 1.0, _only('saturation')))
  np.testing.assert_allclose(out.mean(-1, keepdims=True), luma, atol=1e-5)
  out_chroma = (out - out.mean(-1, keepdims=True)).reshape(N, -1)
  s = (out_chroma * chroma.reshape(N, -1)).sum(1) / (chroma.reshape(N, -1)**2).sum(1)
  np.testing.assert_allclose(out_chroma, s[:, None] * chroma.reshape(N, -1), atol=1e-5)
  assert abs(np.log2(s).std() - 1.0) < 0.1  # 2 ** N(0, 1)


def test_hue_and_saturation_skipped_for_single_channel():
  out = A.augment(jnp.asarray(X1), jax.random.key(0), 1.0, _only('hue', 'saturation'))
  np.testing.assert_array_equal(np.asarray(out), X1)


# ------------------------------------------------------------------------------- probabilities


def test_fraction_of_augmented_images_matches_p():
  p = 0.3
  out = np.asarray(A.augment(jnp.asarray(X1), jax.random.key(5), p, _only('brightness')))
  assert abs(_changed(out, X1).mean() - p) < 4 * np.sqrt(p * (1 - p) / N)
  # x-flip draws flip / no-flip when gated: P(flipped) = p / 2 (as the reference)
  out = np.asarray(A.augment(jnp.asarray(X1), jax.random.key(6), 0.6, _only('xflip')))
  assert abs(_changed(out, X1).mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / N)


# ------------------------------------------------------------------ determinism, grads, compiles


def test_same_key_same_output_different_key_differs():
  x = jnp.asarray(X3)
  a = A.augment(x, jax.random.key(1), 0.7)
  b = A.augment(x, jax.random.key(1), 0.7)
  c = A.augment(x, jax.random.key(2), 0.7)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert _changed(np.asarray(a), np.asarray(c)).mean() > 0.9


@pytest.mark.parametrize('antialias', [True, False])
def test_gradient_finite_and_backward_is_adjoint_of_finite_differences(antialias):
  cfg = A.AugmentConfig(antialias=antialias)
  x = jnp.asarray(_images(3, 8, 8, 1, seed=12))
  key = jax.random.key(13)
  f = jax.jit(lambda im: A.augment(im, key, 0.9, cfg))
  rng = np.random.default_rng(0)
  d = rng.normal(size=x.shape).astype(np.float32)
  c = rng.normal(size=x.shape)
  out, vjp = jax.vjp(f, x)
  grad_c = np.asarray(vjp(jnp.asarray(c, jnp.float32))[0], np.float64)
  grad_1 = np.asarray(vjp(jnp.ones_like(out))[0])  # = jax.grad(lambda x: f(x).sum())
  assert np.isfinite(grad_1).all() and np.abs(grad_1).sum() > 0
  # augment is affine in the images for a fixed key: central differences give J d exactly
  # (up to rounding), and <J d, c> must equal <d, J^T c> from the backward pass.
  eps = 1e-2
  jd = (np.asarray(f(x + eps * d), np.float64) - np.asarray(f(x - eps * d), np.float64)) / (2 * eps)
  lhs, rhs = float(np.vdot(jd, c)), float(np.vdot(d, grad_c))
  assert abs(lhs - rhs) < 1e-3 * max(1., abs(lhs))


def test_changing_p_does_not_retrace():
  traces = []
  cfg = A.AugmentConfig.from_preset('bgc', antialias=False)

  @jax.jit
  def f(x, key, p):
    traces.append(1)
    return A.augment(x, key, p, cfg)

  x = jnp.asarray(X1[:2])
  # p as it lives in a train state: a float32 array (a Python float is weakly typed and would
  # trace once more, once).
  outs = [f(x, jax.random.key(0), jnp.asarray(p, jnp.float32)) for p in (0.0, 0.25, 0.5, 1.0)]
  assert len(traces) == 1
  np.testing.assert_array_equal(np.asarray(outs[0]), np.asarray(x))
  assert _changed(np.asarray(outs[3]), np.asarray(x)).all()


# ------------------------------------------------------------------------------------ update_p


def test_update_p_matches_hand_computation_and_clips():
  step = 64 * 4 / (500 * 1000)
  assert float(A.update_p(0.5, 0.7, 64)) == pytest.approx(0.5 + step, abs=1e-7)
  assert float(A.update_p(0.5, 0.2, 64)) == pytest.approx(0.5 - step, abs=1e-7)
  assert float(A.update_p(0.5, 0.6, 64)) == pytest.approx(0.5, abs=1e-7)  # sign(0) = 0
  assert float(A.update_p(0.0, -1.0, 64)) == 0.0
  assert float(A.update_p(0.9999, 1.0, 64)) == 1.0
  assert float(A.update_p(0.3, 0.9, 32, interval=16, target=0.8,
                          speed_kimg=100.)) == pytest.approx(0.3 + 32 * 16 / 100e3, abs=1e-7)
  ctrl = A.AdaController(target=0.5, interval=2, speed_kimg=10.)
  jitted = jax.jit(lambda p, rt: ctrl.update(p, rt, 8))
  assert float(jitted(0.1, 0.9)) == pytest.approx(0.1 + 16 / 1e4, abs=1e-7)
  assert float(jitted(0.1, 0.1)) == pytest.approx(0.1 - 16 / 1e4, abs=1e-7)


# -------------------------------------------------------------------------------------- errors


def test_bad_inputs_fail_fast_with_clear_messages():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r'\[B, H, W, C\]'):
    A.augment(jnp.zeros((8, 8, 1)), key, 0.5)
  with pytest.raises(ValueError, match='channels'):
    A.augment(jnp.zeros((1, 8, 8, 2)), key, 0.5)
  with pytest.raises(ValueError, match='square'):
    A.augment(jnp.zeros((1, 8, 6, 1)), key, 0.5)
  with pytest.raises(ValueError, match='float'):
    A.augment(jnp.zeros((1, 8, 8, 1), jnp.uint8), key, 0.5)
  with pytest.raises(ValueError, match='scalar'):
    A.augment(jnp.zeros((1, 8, 8, 1)), key, jnp.ones(2))
  with pytest.raises(ValueError, match='preset'):
    A.AugmentConfig.from_preset('bgcfnc')
  with pytest.raises(ValueError, match='xflip'):
    A.AugmentConfig(xflip=-1.)
  with pytest.raises(ValueError, match='batch_size'):
    A.update_p(0.5, 0.5, 0)
  with pytest.raises(ValueError, match='interval'):
    A.AdaController(interval=0)
  # non-square images are fine without rot90
  out = A.augment(jnp.asarray(_images(2, 8, 6, 1)), key, 1.0, A.AugmentConfig(rotate90=0.))
  assert out.shape == (2, 8, 6, 1) and np.isfinite(np.asarray(out)).all()


def test_presets_enable_exactly_their_groups():
  bg = A.AugmentConfig.from_preset('bg')
  assert bg.uses('blit') and bg.uses('geom') and not bg.uses('colour')
  c = A.AugmentConfig.from_preset('c', contrast_std=0.25)
  assert not c.uses('blit') and not c.uses('geom') and c.uses('colour') and c.contrast_std == 0.25
  assert A.AugmentConfig.from_preset('bgc') == A.AugmentConfig()
  none = A.AugmentConfig.from_preset('none')
  assert not any(none.uses(g) for g in ('blit', 'geom', 'colour'))


def test_sym6_constants_are_an_orthonormal_lowpass():
  # independent check of the filter constants: sum sqrt(2), orthonormal to even shifts
  np.testing.assert_allclose(A._SYM6.sum(), np.sqrt(2), atol=1e-12)
  for k in range(6):
    np.testing.assert_allclose(np.dot(A._SYM6[:12 - 2 * k], A._SYM6[2 * k:]), float(k == 0), atol=1e-10)
