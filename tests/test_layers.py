"""Tests for stylex_jax.models.layers against independent numpy/scipy references (NHWC, float32, CPU)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal
from jax.sharding import NamedSharding, PartitionSpec as P

from references import F4, np_corr_same, np_corr_valid, np_lrelu, np_modconv, np_upfirdn2d
from stylex_jax.models import layers as L

# ------------------------------------------------------------------------------------------------------------------
# numpy / scipy references (written from the reference's definitions, not from the JAX code)


def np_upfirdn_1d_sep(x, h, up, down, p0, p1, gain):
  """Separable reference built from scipy.signal.upfirdn (full conv of the zero-inserted signal) along H and W."""
  k = len(h)
  h = np.asarray(h, np.float64) * math.sqrt(gain)

  def along(a, axis):
    full = scipy.signal.upfirdn(h, a, up=up, down=1, axis=axis)
    n = a.shape[axis]
    start = k - 1 - p0
    length = n * up + p0 + p1 - k + 1
    idx = np.arange(start, start + length)
    return np.take(full, idx, axis=axis).take(np.arange(0, length, down), axis=axis)

  return along(along(x, 1), 2)


def rnd(seed, *shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------------------------
# FIR resampling


@pytest.mark.parametrize('up,down,pad,gain,flip', [
    (2, 1, (2, 1, 1, 2), 1.0, False),
    (1, 2, (1, 2, 0, 1), 1.0, False),
    (3, 2, (1, 1, 2, 2), 2.5, False),
    (2, 1, (-1, 2, 0, -2), 1.0, True),
    (1, 1, (0, 3, 2, 0), 1.0, False),
])
def test_upfirdn2d_matches_scipy_with_asymmetric_filter(up, down, pad, gain, flip):
  x = rnd(0, 2, 7, 6, 3)
  f = np.abs(rnd(1, 3, 4)) + 0.1  # non-symmetric, non-square: catches axis / flip mistakes
  got = np.asarray(L.upfirdn2d(jnp.asarray(x), f, up=up, down=down, padding=pad, gain=gain, flip_filter=flip))
  ref = np_upfirdn2d(x, f, up=up, down=down, pad=pad, gain=gain, flip_filter=flip)
  assert got.shape == ref.shape
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_upfirdn2d_separable_equals_2d_and_scipy_upfirdn():
  x = rnd(2, 1, 8, 8, 2)
  taps = np.array([1.0, 2.0, 5.0, 1.0]) / 9.0
  sep = np.asarray(L.upfirdn2d(jnp.asarray(x), taps.astype(np.float32), up=2, down=1, padding=(2, 1, 2, 1)))
  full = np.asarray(L.upfirdn2d(jnp.asarray(x), np.outer(taps, taps).astype(np.float32), up=2, padding=(2, 1, 2, 1)))
  ref = np_upfirdn_1d_sep(x, taps, up=2, down=1, p0=2, p1=1, gain=1.0)
  np.testing.assert_allclose(sep, ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(full, ref, rtol=1e-5, atol=1e-6)


def test_upsample2d_downsample2d_vs_scipy_upfirdn_padding_and_gain():
  x = rnd(3, 2, 8, 8, 3)
  taps = np.array([1.0, 3.0, 3.0, 1.0])
  h1 = taps / taps.sum()
  up = np.asarray(L.upsample2d(jnp.asarray(x)))
  # reference padding: ((fw+up-1)//2, (fw-up)//2) = (2, 1), gain up**2 = 4
  np.testing.assert_allclose(up, np_upfirdn_1d_sep(x, h1, up=2, down=1, p0=2, p1=1, gain=4.0), rtol=1e-5, atol=1e-5)
  assert up.shape == (2, 16, 16, 3)
  dn = np.asarray(L.downsample2d(jnp.asarray(x)))
  # reference padding: ((fw-down+1)//2, (fw-down)//2) = (1, 1), gain 1
  np.testing.assert_allclose(dn, np_upfirdn_1d_sep(x, h1, up=1, down=2, p0=1, p1=1, gain=1.0), rtol=1e-5, atol=1e-5)
  assert dn.shape == (2, 4, 4, 3)
  # extra padding and gain compose as in the reference
  up2 = np.asarray(L.upsample2d(jnp.asarray(x), padding=1, gain=0.5))
  np.testing.assert_allclose(up2, np_upfirdn_1d_sep(x, h1, up=2, down=1, p0=3, p1=2, gain=2.0), rtol=1e-5, atol=1e-5)


def test_resampling_preserves_constant_away_from_borders():
  x = jnp.full((1, 8, 8, 1), 0.7)
  up = np.asarray(L.upsample2d(x))[0, 2:-2, 2:-2, 0]
  dn = np.asarray(L.downsample2d(x))[0, 1:-1, 1:-1, 0]
  np.testing.assert_allclose(up, 0.7, rtol=1e-6)
  np.testing.assert_allclose(dn, 0.7, rtol=1e-6)


def test_setup_filter_and_bad_input():
  np.testing.assert_allclose(L.setup_filter([1, 3, 3, 1]), F4, rtol=1e-7)
  np.testing.assert_allclose(L.setup_filter([1, 3, 3, 1], separable=True), np.array([1, 3, 3, 1]) / 8, rtol=1e-7)
  with pytest.raises(ValueError, match='NHWC'):
    L.upfirdn2d(jnp.zeros((4, 4, 1)), F4)
  with pytest.raises(ValueError, match='up must be'):
    L.upfirdn2d(jnp.zeros((1, 4, 4, 1)), F4, up=0)


@pytest.mark.parametrize('dot', [False, True])
@pytest.mark.parametrize('k,up,groups', [(3, 2, 1), (4, 3, 2), (1, 2, 1)])
def test_transposed_conv2d_vs_numpy_scatter(k, up, groups, dot):
  x, w = rnd(90, 2, 3, 4, 4), rnd(91, k, k, 4 // groups, 3 * groups)
  with L.dot_transposed_convolutions(dot):
    got = np.asarray(L.transposed_conv2d(jnp.asarray(x), jnp.asarray(w), up, groups=groups))
  ig, og = 4 // groups, 3
  ref = np.zeros((2, 2 * up + k, 3 * up + k, 3 * groups))
  for b in range(2):
    for i in range(3):
      for j in range(4):
        for g in range(groups):  # y[n] += x[i] * w[n - up * i]
          ref[b, i * up:i * up + k, j * up:j * up + k,
              g * og:(g + 1) * og] += np.einsum('c,hwco->hwo', x[b, i, j, g * ig:(g + 1) * ig], w[:, :, :,
                                                                                                  g * og:(g + 1) * og])
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('groups, dot', [(1, True), (1, False), (2, False)])
def test_transposed_conv2d_gradients_vs_numpy(groups, dot):
  """Both derivatives of the dot + overlap-add form and the polyphase form (ungrouped and grouped) against numpy:
  y[b, i*up + a, j*up + c, o] += x[b, i, j, :] . w[a, c, :, o], so dL/dx[b, i, j] = sum_{a,c,o} u[...] w[a, c, :, o]
  and dL/dw[a, c] = sum_{b,i,j} x[b, i, j] (outer) u[b, i*up + a, j*up + c] for L = sum(y * u)."""
  up, k, ig, og = 2, 3, 4 // groups, 2
  x, w = rnd(94, 2, 3, 3, 4), rnd(95, k, k, ig, og * groups)
  u = rnd(96, 2, 2 * up + k, 2 * up + k, og * groups)
  with L.dot_transposed_convolutions(dot):
    gx, gw = jax.grad(lambda a, b: jnp.sum(L.transposed_conv2d(a, b, up, groups=groups) * u),
                      argnums=(0, 1))(jnp.asarray(x), jnp.asarray(w))
  rx, rw = np.zeros_like(x), np.zeros_like(w)
  for b in range(2):
    for i in range(3):
      for j in range(3):
        for g in range(groups):
          ci, co = slice(g * ig, (g + 1) * ig), slice(g * og, (g + 1) * og)
          win = u[b, i * up:i * up + k, j * up:j * up + k, co]  # [k, k, og]
          rx[b, i, j, ci] = np.einsum('hwo,hwco->c', win, w[:, :, :, co])
          rw[:, :, :, co] += np.einsum('c,hwo->hwco', x[b, i, j, ci], win)
  np.testing.assert_allclose(np.asarray(gx), rx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(gw), rw, rtol=1e-5, atol=1e-5)


def test_upfirdn2d_traced_filter_and_bf16():
  x = rnd(92, 1, 6, 6, 2)
  f = np.abs(rnd(93, 3, 3)) + 0.1
  ref = np_upfirdn2d(x, f, up=2, pad=(1, 1, 1, 1))
  traced = jax.jit(lambda a, ff: L.upfirdn2d(a, ff, up=2, padding=1))(jnp.asarray(x), jnp.asarray(f))
  np.testing.assert_allclose(np.asarray(traced), ref, rtol=1e-5, atol=1e-5)
  y16 = L.upsample2d(jnp.asarray(x, jnp.bfloat16))
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), np.asarray(L.upsample2d(jnp.asarray(x))), atol=3e-2)


# ------------------------------------------------------------------------------------------------------------------
# bias_act, equalized learning rate


def test_bias_act_lrelu_gain_and_clamp():
  x, b = rnd(4, 3, 5), rnd(5, 5)
  got = np.asarray(L.bias_act(jnp.asarray(x), jnp.asarray(b), act='lrelu', clamp=0.8))
  np.testing.assert_allclose(got, np.clip(np_lrelu(x + b), -0.8, 0.8), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(L.bias_act(jnp.asarray(x), act='linear', gain=3.0)), 3 * x, rtol=1e-6)
  with pytest.raises(ValueError, match='activation'):
    L.bias_act(jnp.asarray(x), act='gelu')


def test_equal_dense_runtime_scale_init_and_gradient_scaling():
  lr, fan_in, feats = 0.01, 64, 8
  layer = L.EqualDense(feats, lr_multiplier=lr, bias_init=0.5)
  x = rnd(6, 4, fan_in)
  params = layer.init(jax.random.key(0), jnp.asarray(x))['params']
  np.testing.assert_allclose(np.asarray(params['bias']), 0.5)
  # stored weights ~ N(0, 1) / lr
  big = L.EqualDense(512, lr_multiplier=lr).init(jax.random.key(1), jnp.zeros((1, 512)))['params']['weight']
  assert abs(float(jnp.std(big)) * lr - 1.0) < 0.01
  wt, bs = rnd(7, fan_in, feats), rnd(8, feats)
  p = {'weight': jnp.asarray(wt), 'bias': jnp.asarray(bs)}
  y = np.asarray(layer.apply({'params': p}, jnp.asarray(x)))
  np.testing.assert_allclose(y, x @ (wt * lr / math.sqrt(fan_in)) + bs * lr, rtol=1e-5, atol=1e-6)
  # d loss / d stored weight = lr / sqrt(fan_in) * x^T g ; d loss / d stored bias = lr * sum g
  g = rnd(9, 4, feats)
  grads = jax.grad(lambda q: jnp.sum(layer.apply({'params': q}, jnp.asarray(x)) * g))(p)
  np.testing.assert_allclose(np.asarray(grads['weight']), lr / math.sqrt(fan_in) * x.T @ g, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(grads['bias']), lr * g.sum(0), rtol=1e-5)
  # lrelu activation carries gain sqrt(2)
  y2 = L.EqualDense(feats, activation='lrelu').apply({'params': p}, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(y2), np_lrelu(x @ (wt / 8.0) + bs), rtol=1e-5, atol=1e-6)


def test_equal_conv2d_plain_down_and_skip_vs_numpy():
  x = rnd(10, 2, 8, 8, 3)
  w3, b = rnd(11, 3, 3, 3, 4), rnd(12, 4)
  g3 = 1 / math.sqrt(3 * 9)
  conv = L.EqualConv2d(4, kernel_size=3, activation='lrelu')
  p = {'weight': jnp.asarray(w3), 'bias': jnp.asarray(b)}
  got = np.asarray(conv.apply({'params': p}, jnp.asarray(x)))
  np.testing.assert_allclose(got, np_lrelu(np_corr_same(x, w3 * g3) + b), rtol=1e-5, atol=1e-5)
  # down=2, gain and clamp: reference generic order = conv (padded by 2) first, then FIR + subsample
  conv_d = L.EqualConv2d(4, kernel_size=3, activation='lrelu', down=2, conv_clamp=0.5)
  gain = math.sqrt(0.5)
  got = np.asarray(conv_d.apply({'params': p}, jnp.asarray(x), gain=gain))
  y = np_corr_valid(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), w3 * g3)
  y = np_upfirdn2d(y, F4, down=2)
  ref = np.clip(np_lrelu(y + b, math.sqrt(2) * gain), -0.5 * gain, 0.5 * gain)
  assert got.shape == (2, 4, 4, 4)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
  # 1x1 skip: FIR downsample then 1x1 conv, no bias
  w1 = rnd(13, 1, 1, 3, 4)
  skip = L.EqualConv2d(4, kernel_size=1, use_bias=False, down=2)
  got = np.asarray(skip.apply({'params': {'weight': jnp.asarray(w1)}}, jnp.asarray(x), gain=gain))
  ref = np_upfirdn2d(x, F4, down=2, pad=(1, 1, 1, 1)) @ (w1[0, 0] / math.sqrt(3)) * gain
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# modulated convolution


@pytest.mark.parametrize('up', [1, 2])
@pytest.mark.parametrize('demodulate', [True, False])
def test_modulated_conv2d_fused_and_nonfused_vs_numpy(up, demodulate):
  x, weight = rnd(20, 3, 5, 5, 4), rnd(21, 3, 3, 4, 6)
  styles = rnd(22, 3, 4) + 1.0
  ref = np_modconv(x, weight, styles, up=up, demodulate=demodulate)
  outs = {}
  for fused in (True, False):
    outs[fused] = np.asarray(
        L.modulated_conv2d(jnp.asarray(x), jnp.asarray(weight), jnp.asarray(styles), up=up, padding=1,
                           resample_filter=F4.astype(np.float32), demodulate=demodulate, fused=fused))
    assert outs[fused].shape == (3, 5 * up, 5 * up, 6)
    np.testing.assert_allclose(outs[fused], ref, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(outs[True], outs[False], rtol=1e-5, atol=1e-5)


def test_modulated_conv2d_gradients_fused_equal_nonfused():
  x, weight, styles = rnd(23, 2, 4, 4, 3), rnd(24, 3, 3, 3, 5), rnd(25, 2, 3) + 1
  g = rnd(26, 2, 8, 8, 5)

  def loss(args, fused):
    xx, ww, ss = args
    return jnp.sum(L.modulated_conv2d(xx, ww, ss, up=2, padding=1, fused=fused) * g)

  args = (jnp.asarray(x), jnp.asarray(weight), jnp.asarray(styles))
  ga, gb = jax.grad(lambda a: loss(a, True))(args), jax.grad(lambda a: loss(a, False))(args)
  for a, b in zip(ga, gb):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_demodulation_gives_unit_output_variance():
  x = jnp.asarray(rnd(30, 4, 14, 14, 64))
  weight = jnp.asarray(rnd(31, 3, 3, 64, 32))
  styles = jnp.asarray(3.0 * np.abs(rnd(32, 4, 64)) + 0.5)
  y = L.modulated_conv2d(x, weight, styles, padding=1, demodulate=True)
  interior = np.asarray(y)[:, 1:-1, 1:-1, :]  # away from zero padding
  assert abs(interior.std() - 1.0) < 0.05
  y_raw = L.modulated_conv2d(x, weight, styles, padding=1, demodulate=False)
  assert float(jnp.std(y_raw)) > 20.0  # without demodulation the scale is arbitrary


def test_modulated_conv2d_module_affine_and_torgb_gain():
  w_dim, cin, cout = 8, 4, 3
  xs, ws = rnd(40, 2, 4, 4, cin), rnd(41, 2, w_dim)
  for demod, k in ((True, 3), (False, 1)):
    mod = L.ModulatedConv2d(cout, kernel_size=k, demodulate=demod)
    params = mod.init(jax.random.key(0), jnp.asarray(xs), jnp.asarray(ws))['params']
    np.testing.assert_allclose(np.asarray(params['affine']['bias']), 1.0)  # style bias init 1
    aw, ab, wt = rnd(42, w_dim, cin), rnd(43, cin), rnd(44, k, k, cin, cout)
    p = {'affine': {'weight': jnp.asarray(aw), 'bias': jnp.asarray(ab)}, 'weight': jnp.asarray(wt)}
    got = np.asarray(mod.apply({'params': p}, jnp.asarray(xs), jnp.asarray(ws)))
    styles = ws @ (aw / math.sqrt(w_dim)) + ab
    if not demod:
      styles = styles / math.sqrt(cin * k * k)
    np.testing.assert_allclose(got, np_modconv(xs, wt, styles, demodulate=demod), rtol=1e-4, atol=1e-5)


def test_bf16_compute_keeps_fp32_params_and_matches_fp32():
  xs, ws = jnp.asarray(rnd(50, 2, 8, 8, 16)), jnp.asarray(rnd(51, 2, 8))
  m32 = L.ModulatedConv2d(16, up=2)
  m16 = L.ModulatedConv2d(16, up=2, dtype=jnp.bfloat16)
  params = m16.init(jax.random.key(0), xs, ws)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  y16 = m16.apply(params, xs, ws)
  y32 = m32.apply(params, xs, ws)
  assert y16.dtype == jnp.bfloat16
  rel = float(jnp.linalg.norm(y16.astype(jnp.float32) - y32) / jnp.linalg.norm(y32))
  assert rel < 2e-2


# ------------------------------------------------------------------------------------------------------------------
# noise, minibatch stddev, ToRGB


def test_noise_injection_modes():
  x = jnp.asarray(rnd(60, 2, 6, 6, 3))
  mod = L.NoiseInjection()
  params = mod.init(jax.random.key(0), x, 'const')
  assert float(params['params']['noise_strength']) == 0.0
  p = {'params': {'noise_strength': jnp.asarray(0.5)}}
  np.testing.assert_array_equal(np.asarray(mod.apply(p, x, 'none')), np.asarray(x))
  c1, c2 = mod.apply(p, x, 'const'), mod.apply(p, x, 'const')
  np.testing.assert_array_equal(np.asarray(c1), np.asarray(c2))  # deterministic, no rng
  n = np.asarray(c1 - x) / 0.5
  np.testing.assert_allclose(n[..., 0], n[..., 2], atol=1e-5)  # shared over channels
  np.testing.assert_allclose(n[0], n[1], atol=1e-5)  # const noise is the same for every sample
  r1 = np.asarray(mod.apply(p, x, 'random', rngs={'noise': jax.random.key(1)}) - x) / 0.5
  r1b = np.asarray(mod.apply(p, x, 'random', rngs={'noise': jax.random.key(1)}) - x) / 0.5
  r2 = np.asarray(mod.apply(p, x, 'random', rngs={'noise': jax.random.key(2)}) - x) / 0.5
  np.testing.assert_array_equal(r1, r1b)
  assert not np.allclose(r1, r2)
  assert not np.allclose(r1[0], r1[1])  # random noise differs per sample
  big = np.asarray(mod.apply(p, jnp.zeros((64, 16, 16, 1)), 'random', rngs={'noise': jax.random.key(3)})) / 0.5
  assert abs(big.mean()) < 0.03 and abs(big.std() - 1) < 0.03
  with pytest.raises(ValueError, match="'noise' rng"):
    mod.apply(p, x, 'random')
  with pytest.raises(ValueError, match='noise_mode'):
    mod.apply(p, x, 'fixed')


def np_mbstd(x, group, nf):
  n, h, w, c = x.shape
  g = min(group, n)
  out = np.zeros((n, h, w, nf))
  for j in range(n // g):
    grp = x[j * g:(j + 1) * g].astype(np.float64)
    for f in range(nf):
      sub = grp[..., f * (c // nf):(f + 1) * (c // nf)]
      std = np.sqrt(sub.var(axis=0) + 1e-8)  # population variance over the group
      out[j * g:(j + 1) * g, :, :, f] = std.mean()
  return np.concatenate([x, out], axis=-1)


@pytest.mark.parametrize('n,group,nf', [(8, 4, 1), (6, 2, 2), (3, 4, 1)])
def test_minibatch_stddev_vs_numpy(n, group, nf):
  x = rnd(70, n, 4, 4, 6)
  got = np.asarray(L.MinibatchStdDev(group, nf).apply({}, jnp.asarray(x)))
  np.testing.assert_allclose(got, np_mbstd(x, group, nf), rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_groups_are_consecutive_and_shard_safe():
  x = rnd(71, 32, 4, 4, 8)
  mod = L.MinibatchStdDev(4)
  base = np.asarray(mod.apply({}, jnp.asarray(x)))[..., -1]
  x2 = x.copy()
  x2[5] += 3.0
  pert = np.asarray(mod.apply({}, jnp.asarray(x2)))[..., -1]
  np.testing.assert_array_equal(base[:4], pert[:4])  # other groups untouched
  np.testing.assert_array_equal(base[8:], pert[8:])
  assert not np.allclose(base[4:8], pert[4:8])
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))  # as stylex_jax.sharding
  xs = jax.device_put(jnp.asarray(x), NamedSharding(mesh, P('data')))  # 4 samples per device = one group
  sharded = jax.jit(lambda a: mod.apply({}, a))(xs)
  np.testing.assert_allclose(np.asarray(sharded)[..., -1], base, rtol=1e-6)
  with pytest.raises(ValueError, match='not divisible by group size'):
    mod.apply({}, jnp.zeros((6, 4, 4, 8)))


def test_torgb_no_demod_bias_clamp():
  x, w = rnd(80, 2, 4, 4, 5), rnd(81, 2, 6)
  mod = L.ToRGB(3, conv_clamp=0.3)
  params = mod.init(jax.random.key(0), jnp.asarray(x), jnp.asarray(w))['params']
  aw, ab, wt, b = rnd(82, 6, 5), rnd(83, 5), rnd(84, 1, 1, 5, 3), rnd(85, 3)
  p = {'modconv': {'affine': {'weight': aw, 'bias': ab}, 'weight': wt}, 'bias': b}
  assert jax.tree.structure(p) == jax.tree.structure(jax.tree.map(np.asarray, params))
  got = np.asarray(mod.apply({'params': jax.tree.map(jnp.asarray, p)}, jnp.asarray(x), jnp.asarray(w)))
  styles = (w @ (aw / math.sqrt(6)) + ab) / math.sqrt(5)
  ref = np.einsum('bhwi,bi,io->bhwo', x, styles, wt[0, 0]) + b
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, np.clip(ref, -0.3, 0.3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('stride,padding,k', [(1, ((1, 1), (1, 1)), 3), (2, ((0, 1), (2, 0)), 3),
                                              (1, ((0, 0), (0, 0)), 1)])
def test_im2col_conv2d_matches_native_conv_to_second_order(stride, padding, k):
  """conv2d inside im2col_convolutions() computes the same correlation as lax.conv_general_dilated: values,
    input gradients, and the gradient of an input-gradient penalty (the R1 pattern)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 7, 6, 3)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)

  def native(x, w):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  def im2col(x, w):
    with L.im2col_convolutions():
      return L.conv2d(x, w, stride=stride, padding=padding)

  np.testing.assert_allclose(im2col(x, w), native(x, w), rtol=1e-5, atol=1e-5)
  with L.im2col_convolutions(False):  # the switch off: the native path
    np.testing.assert_allclose(L.conv2d(x, w, stride=stride, padding=padding), native(x, w), rtol=1e-6)

  def r1(conv):

    def penalty(w):
      g = jax.grad(lambda x: jnp.sum(jnp.tanh(conv(x, w))))(x)
      return jnp.sum(g * g)

    return jax.grad(penalty)

  np.testing.assert_allclose(jax.jit(r1(im2col))(w), jax.jit(r1(native))(w), rtol=1e-4, atol=1e-4)
