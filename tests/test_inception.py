"""Tests of stylex_jax.models.inception (FID InceptionV3) against independent references.

The reference architecture is written out here as a table of torch BasicConv2d layers (name, in, out, kernel,
stride, padding) from torchvision's Inception3 / pytorch-fid's FIDInception blocks; it is checked against
torchvision's published parameter count (27,161,264 for inception_v3 with aux head and 1000-way fc, from the
Inception_V3_Weights.IMAGENET1K_V1 docs), and drives a float64 numpy forward pass (explicit convs with unfolded
BatchNorm, TF-style pools) that the Flax model must reproduce at the smallest input size (75 x 75).
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from stylex_jax.models import inception as inc

EPS = 1e-3

# ------------------------------------------------------------------ reference architecture table (torch layout)


def _c(name, cin, cout, k=1, s=1, p=0):
  k = (k, k) if isinstance(k, int) else k
  p = (p, p) if isinstance(p, int) else p
  return (name, cin, cout, k[0], k[1], s, p[0], p[1])


def _block_a(n, cin, pf):
  return [
      _c(f'{n}.branch1x1', cin, 64),
      _c(f'{n}.branch5x5_1', cin, 48),
      _c(f'{n}.branch5x5_2', 48, 64, 5, p=2),
      _c(f'{n}.branch3x3dbl_1', cin, 64),
      _c(f'{n}.branch3x3dbl_2', 64, 96, 3, p=1),
      _c(f'{n}.branch3x3dbl_3', 96, 96, 3, p=1),
      _c(f'{n}.branch_pool', cin, pf)
  ]


def _block_b(n, cin):
  return [
      _c(f'{n}.branch3x3', cin, 384, 3, s=2),
      _c(f'{n}.branch3x3dbl_1', cin, 64),
      _c(f'{n}.branch3x3dbl_2', 64, 96, 3, p=1),
      _c(f'{n}.branch3x3dbl_3', 96, 96, 3, s=2)
  ]


def _block_c(n, cin, c7):
  return [
      _c(f'{n}.branch1x1', cin, 192),
      _c(f'{n}.branch7x7_1', cin, c7),
      _c(f'{n}.branch7x7_2', c7, c7, (1, 7), p=(0, 3)),
      _c(f'{n}.branch7x7_3', c7, 192, (7, 1), p=(3, 0)),
      _c(f'{n}.branch7x7dbl_1', cin, c7),
      _c(f'{n}.branch7x7dbl_2', c7, c7, (7, 1), p=(3, 0)),
      _c(f'{n}.branch7x7dbl_3', c7, c7, (1, 7), p=(0, 3)),
      _c(f'{n}.branch7x7dbl_4', c7, c7, (7, 1), p=(3, 0)),
      _c(f'{n}.branch7x7dbl_5', c7, 192, (1, 7), p=(0, 3)),
      _c(f'{n}.branch_pool', cin, 192)
  ]


def _block_d(n, cin):
  return [
      _c(f'{n}.branch3x3_1', cin, 192),
      _c(f'{n}.branch3x3_2', 192, 320, 3, s=2),
      _c(f'{n}.branch7x7x3_1', cin, 192),
      _c(f'{n}.branch7x7x3_2', 192, 192, (1, 7), p=(0, 3)),
      _c(f'{n}.branch7x7x3_3', 192, 192, (7, 1), p=(3, 0)),
      _c(f'{n}.branch7x7x3_4', 192, 192, 3, s=2)
  ]


def _block_e(n, cin):
  return [
      _c(f'{n}.branch1x1', cin, 320),
      _c(f'{n}.branch3x3_1', cin, 384),
      _c(f'{n}.branch3x3_2a', 384, 384, (1, 3), p=(0, 1)),
      _c(f'{n}.branch3x3_2b', 384, 384, (3, 1), p=(1, 0)),
      _c(f'{n}.branch3x3dbl_1', cin, 448),
      _c(f'{n}.branch3x3dbl_2', 448, 384, 3, p=1),
      _c(f'{n}.branch3x3dbl_3a', 384, 384, (1, 3), p=(0, 1)),
      _c(f'{n}.branch3x3dbl_3b', 384, 384, (3, 1), p=(1, 0)),
      _c(f'{n}.branch_pool', cin, 192)
  ]


TABLE = ([
    _c('Conv2d_1a_3x3', 3, 32, 3, s=2),
    _c('Conv2d_2a_3x3', 32, 32, 3),
    _c('Conv2d_2b_3x3', 32, 64, 3, p=1),
    _c('Conv2d_3b_1x1', 64, 80),
    _c('Conv2d_4a_3x3', 80, 192, 3)
] + _block_a('Mixed_5b', 192, 32) + _block_a('Mixed_5c', 256, 64) + _block_a('Mixed_5d', 288, 64) +
         _block_b('Mixed_6a', 288) + _block_c('Mixed_6b', 768, 128) + _block_c('Mixed_6c', 768, 160) +
         _block_c('Mixed_6d', 768, 160) + _block_c('Mixed_6e', 768, 192) + _block_d('Mixed_7a', 768) +
         _block_e('Mixed_7b', 1280) + _block_e('Mixed_7c', 2048))
LAYERS = {row[0]: row for row in TABLE}
TORCHVISION_INCEPTION_V3_PARAMS = 27_161_264  # torchvision docs, Inception_V3_Weights.IMAGENET1K_V1 num_params


def _torch_conv_bn_params(cin, cout, kh, kw):
  return cin * cout * kh * kw + 2 * cout  # conv (no bias) + BN gamma, beta


def _synthetic_state_dict(seed=0):
  rng = np.random.default_rng(seed)
  sd = {}
  for name, cin, cout, kh, kw, *_ in TABLE:
    fan_in = cin * kh * kw
    sd[f'{name}.conv.weight'] = (rng.standard_normal((cout, cin, kh, kw)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    sd[f'{name}.bn.weight'] = rng.uniform(0.5, 1.5, cout).astype(np.float32)
    sd[f'{name}.bn.bias'] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    sd[f'{name}.bn.running_mean'] = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    sd[f'{name}.bn.running_var'] = rng.uniform(0.5, 2.0, cout).astype(np.float32)
  return sd


# ------------------------------------------------------------------ float64 numpy reference forward


def _np_conv_bn_relu(x, sd, name):
  _, cin, cout, kh, kw, s, ph, pw = LAYERS[name]
  w = sd[f'{name}.conv.weight'].astype(np.float64)
  xp = np.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
  ho, wo = (xp.shape[1] - kh) // s + 1, (xp.shape[2] - kw) // s + 1
  y = np.zeros((x.shape[0], ho, wo, cout))
  for i in range(kh):
    for j in range(kw):
      y += np.einsum('bhwc,oc->bhwo', xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s], w[:, :, i, j])
  g, b, m, v = (sd[f'{name}.bn.{f}'].astype(np.float64) for f in ('weight', 'bias', 'running_mean', 'running_var'))
  return np.maximum((y - m) / np.sqrt(v + EPS) * g + b, 0.0)


def _np_pool(x, k, s, pad, mode):
  """mode 'max' (-inf padding) or 'avg' (mean over the real, unpadded pixels of each window)."""
  fill = -np.inf if mode == 'max' else 0.0
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
  ones = np.pad(np.ones(x.shape[1:3]), pad)
  ho, wo = (xp.shape[1] - k) // s + 1, (xp.shape[2] - k) // s + 1
  windows = [xp[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] for i in range(k) for j in range(k)]
  if mode == 'max':
    return np.max(windows, axis=0)
  counts = sum(ones[i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s] for i in range(k) for j in range(k))
  return np.sum(windows, axis=0) / counts[None, :, :, None]


def _np_forward(x, sd):
  """pool3 features of images [B, H, W, 3] in [-1, 1] (no resize) -> [B, 2048] float64."""
  f = lambda name, t: _np_conv_bn_relu(t, sd, name)  # noqa: E731
  x = np.asarray(x, np.float64)
  x = f('Conv2d_2b_3x3', f('Conv2d_2a_3x3', f('Conv2d_1a_3x3', x)))
  x = _np_pool(x, 3, 2, 0, 'max')
  x = _np_pool(f('Conv2d_4a_3x3', f('Conv2d_3b_1x1', x)), 3, 2, 0, 'max')
  for n in ('Mixed_5b', 'Mixed_5c', 'Mixed_5d'):
    b5 = f(f'{n}.branch5x5_2', f(f'{n}.branch5x5_1', x))
    b3 = f(f'{n}.branch3x3dbl_3', f(f'{n}.branch3x3dbl_2', f(f'{n}.branch3x3dbl_1', x)))
    bp = f(f'{n}.branch_pool', _np_pool(x, 3, 1, 1, 'avg'))
    x = np.concatenate([f(f'{n}.branch1x1', x), b5, b3, bp], -1)
  n = 'Mixed_6a'
  b3 = f(f'{n}.branch3x3dbl_3', f(f'{n}.branch3x3dbl_2', f(f'{n}.branch3x3dbl_1', x)))
  x = np.concatenate([f(f'{n}.branch3x3', x), b3, _np_pool(x, 3, 2, 0, 'max')], -1)
  for n in ('Mixed_6b', 'Mixed_6c', 'Mixed_6d', 'Mixed_6e'):
    b7 = f(f'{n}.branch7x7_3', f(f'{n}.branch7x7_2', f(f'{n}.branch7x7_1', x)))
    bd = x
    for i in range(1, 6):
      bd = f(f'{n}.branch7x7dbl_{i}', bd)
    bp = f(f'{n}.branch_pool', _np_pool(x, 3, 1, 1, 'avg'))
    x = np.concatenate([f(f'{n}.branch1x1', x), b7, bd, bp], -1)
  n = 'Mixed_7a'
  b3 = f(f'{n}.branch3x3_2', f(f'{n}.branch3x3_1', x))
  b7 = x
  for i in range(1, 5):
    b7 = f(f'{n}.branch7x7x3_{i}', b7)
  x = np.concatenate([b3, b7, _np_pool(x, 3, 2, 0, 'max')], -1)
  for n, pool in (('Mixed_7b', 'avg'), ('Mixed_7c', 'max')):
    b3 = f(f'{n}.branch3x3_1', x)
    bd = f(f'{n}.branch3x3dbl_2', f(f'{n}.branch3x3dbl_1', x))
    bp = f(f'{n}.branch_pool', _np_pool(x, 3, 1, 1, pool))
    x = np.concatenate([
        f(f'{n}.branch1x1', x),
        f(f'{n}.branch3x3_2a', b3),
        f(f'{n}.branch3x3_2b', b3),
        f(f'{n}.branch3x3dbl_3a', bd),
        f(f'{n}.branch3x3dbl_3b', bd), bp
    ], -1)
  return x.mean(axis=(1, 2))


def _np_resize_bilinear(x, size):
  """torch F.interpolate(mode='bilinear', align_corners=False, antialias=False) on NHWC."""

  def axis_weights(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m

  mh, mw = axis_weights(x.shape[1], size), axis_weights(x.shape[2], size)
  return np.einsum('oh,bhwc,pw->bopc', mh, np.asarray(x, np.float64), mw)


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope='module')
def state_dict():
  return _synthetic_state_dict()


@pytest.fixture(scope='module')
def weights_path(state_dict, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('inception') / 'fid_inception.npz')
  np.savez(path, **state_dict)
  return path


@pytest.fixture(scope='module')
def variables(weights_path):
  return inc.load_inception_params(weights_path)


@pytest.fixture(scope='module')
def apply75():
  return jax.jit(inc.InceptionV3(resize_to=None).apply)


def _images(seed, shape):
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def _save(tmp_path, sd, name='w.npz'):
  path = str(tmp_path / name)
  np.savez(path, **sd)
  return path


# ------------------------------------------------------------------ architecture


def test_reference_table_reproduces_torchvision_parameter_count():
  aux = _torch_conv_bn_params(768, 128, 1, 1) + _torch_conv_bn_params(128, 768, 5, 5) + 768 * 1000 + 1000
  fc = 2048 * 1000 + 1000
  total = sum(_torch_conv_bn_params(cin, cout, kh, kw) for _, cin, cout, kh, kw, *_ in TABLE) + aux + fc
  assert total == TORCHVISION_INCEPTION_V3_PARAMS


def test_full_size_model_param_count_and_output_shape():
  images = jax.ShapeDtypeStruct((2, inc.FID_SIZE, inc.FID_SIZE, 3), jnp.float32)
  abstract = jax.eval_shape(inc.InceptionV3().init, jax.random.key(0), images)
  count = sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(abstract))
  # folded BasicConv2d = conv weights + one bias per output channel (BN gamma/beta/mean/var -> kernel scale + bias)
  expected = sum(cin * cout * kh * kw + cout for _, cin, cout, kh, kw, *_ in TABLE)
  assert count == expected == 21_768_352
  # the FID graph's 23.8 M = these convs with unfolded BN (2 per channel) + the 1008-way fc head
  assert expected + sum(r[2] for r in TABLE) + 2048 * 1008 + 1008 == 23_850_960
  out = jax.eval_shape(inc.InceptionV3().apply, abstract, images)
  assert out.shape == (2, inc.FEATURE_DIM) and out.dtype == jnp.float32


def test_expected_torch_keys_match_reference_table():
  want = {}
  for name, cin, cout, kh, kw, *_ in TABLE:
    want[f'{name}.conv.weight'] = (cout, cin, kh, kw)
    for f in ('weight', 'bias', 'running_mean', 'running_var'):
      want[f'{name}.bn.{f}'] = (cout,)
  assert inc.expected_torch_shapes() == want


# ------------------------------------------------------------------ loading and numerics


def test_folded_batchnorm_equals_unfolded_conv_bn_relu(state_dict, variables):
  p = variables['params']['Conv2d_1a_3x3']
  assert p['kernel'].shape == (3, 3, 3, 32) and p['bias'].shape == (32,)
  x = _images(1, (1, 9, 9, 3))
  got = np.asarray(inc.BasicConv(32, 3, strides=2).apply({'params': p}, x))
  w = state_dict['Conv2d_1a_3x3.conv.weight'].astype(np.float64)  # OIHW
  conv = np.zeros((4, 4, 32))
  for o in range(32):
    for c in range(3):  # cross-correlation (torch conv2d), 'valid', stride 2
      conv[:, :, o] += scipy.signal.correlate2d(x[0, :, :, c].astype(np.float64), w[o, c], 'valid')[::2, ::2]
  g, b, m, v = (
      state_dict[f'Conv2d_1a_3x3.bn.{f}'].astype(np.float64) for f in ('weight', 'bias', 'running_mean', 'running_var'))
  ref = np.maximum(g * (conv - m) / np.sqrt(v + EPS) + b, 0.0)
  np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-5)


def test_forward_matches_numpy_reference(state_dict, variables):
  # 107 px is the smallest size where Mixed_7b/7c run on 2x2 maps, so their pool branches (avg excluding the
  # padding / max) differ from the identity; the 35x35 and 17x17 blocks run on 11x11 and 5x5 maps.
  x = _images(2, (2, 107, 107, 3))
  got = np.asarray(jax.jit(inc.InceptionV3(resize_to=None).apply)(variables, x))
  ref = _np_forward(x, state_dict)
  assert got.shape == (2, 2048) and np.all(ref >= 0) and ref.std() > 0
  np.testing.assert_allclose(got, ref, rtol=2e-4, atol=2e-4 * np.abs(ref).max())
  assert not np.allclose(got[0], got[1])


@pytest.mark.parametrize('size', [40, 96])  # upsampling and (non-antialiased) downsampling to 75
def test_resize_is_torch_bilinear_align_corners_false(variables, apply75, size):
  x = _images(3, (2, size, size, 3))
  got = np.asarray(jax.jit(inc.InceptionV3(resize_to=75).apply)(variables, x))
  ref = np.asarray(apply75(variables, _np_resize_bilinear(x, 75).astype(np.float32)))
  np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_grayscale_equals_repeated_rgb(variables, apply75):
  gray = _images(4, (2, 75, 75, 1))
  np.testing.assert_allclose(np.asarray(jax.jit(inc.InceptionV3(resize_to=None).apply)(variables, gray)),
                             np.asarray(apply75(variables, np.repeat(gray, 3, axis=-1))), rtol=1e-6, atol=1e-6)


def test_optional_keys_are_accepted(state_dict, variables, tmp_path):
  sd = dict(state_dict)
  sd['fc.weight'] = np.zeros((1008, 2048), np.float32)
  sd['fc.bias'] = np.zeros((1008,), np.float32)
  sd['Mixed_5b.branch1x1.bn.num_batches_tracked'] = np.array(0, np.int64)
  loaded = inc.load_inception_params(_save(tmp_path, sd))
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)


# ------------------------------------------------------------------ feature function


def test_feature_fn_batches_pads_and_returns_float64(weights_path, variables, apply75):
  x = _images(5, (3, 75, 75, 3))
  extract = inc.inception_feature_fn(weights_path, batch_size=2, resize_to=75)
  feats = extract(x)
  assert feats.shape == (3, 2048) and feats.dtype == np.float64
  np.testing.assert_allclose(feats, np.asarray(apply75(variables, x)), rtol=1e-5, atol=1e-6)
  assert extract(x[:0]).shape == (0, 2048)
  # unclamped generator outputs are clipped to [-1, 1]
  np.testing.assert_allclose(extract(x * 1.5)[:2], extract(np.clip(x * 1.5, -1, 1))[:2], rtol=1e-6, atol=1e-7)


def test_feature_fn_rejects_bad_images(weights_path):
  extract = inc.inception_feature_fn(weights_path, batch_size=2, resize_to=75)
  with pytest.raises(ValueError, match='C = 1 or 3'):
    extract(np.zeros((1, 75, 75, 2), np.float32))
  with pytest.raises(ValueError, match='x / 127.5 - 1'):
    extract(np.zeros((1, 75, 75, 3), np.uint8))
  with pytest.raises(ValueError, match=r'\[0, 255\]'):
    extract(np.full((1, 75, 75, 3), 200.0, np.float32))
  with pytest.raises(ValueError, match='NaN'):
    extract(np.full((1, 75, 75, 3), np.nan, np.float32))
  with pytest.raises(ValueError, match='batch_size'):
    inc.inception_feature_fn(weights_path, batch_size=0)


def test_model_rejects_small_or_bad_inputs(variables):
  with pytest.raises(ValueError, match='at least 75x75'):
    inc.InceptionV3(resize_to=None).apply(variables, jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match='resize_to'):
    inc.InceptionV3(resize_to=64).apply(variables, jnp.zeros((1, 64, 64, 3)))
  with pytest.raises(ValueError, match='C = 1 or 3'):
    inc.InceptionV3().apply(variables, jnp.zeros((1, 75, 75, 4)))


# ------------------------------------------------------------------ loader errors


def test_missing_key_is_named(state_dict, tmp_path):
  sd = dict(state_dict)
  del sd['Mixed_6c.branch7x7dbl_3.bn.running_var']
  with pytest.raises(ValueError, match=r'missing keys: Mixed_6c\.branch7x7dbl_3\.bn\.running_var.*numpy\.savez'):
    inc.load_inception_params(_save(tmp_path, sd))


def test_unexpected_key_is_named(state_dict, tmp_path):
  sd = dict(state_dict, **{'Mixed_8a.conv.weight': np.zeros((1,), np.float32)})
  with pytest.raises(ValueError, match=r'unexpected keys: Mixed_8a\.conv\.weight'):
    inc.load_inception_params(_save(tmp_path, sd))


def test_wrong_shape_is_named(state_dict, tmp_path):
  sd = dict(state_dict)
  sd['Mixed_7b.branch3x3_2a.conv.weight'] = np.zeros((384, 384, 3, 1), np.float32)  # (3, 1) instead of (1, 3)
  with pytest.raises(
      ValueError, match=r'shape mismatch.*Mixed_7b\.branch3x3_2a\.conv\.weight \(384, 384, 3, 1\) '
      r'!= \(384, 384, 1, 3\)'):
    inc.load_inception_params(_save(tmp_path, sd))


def test_torchvision_imagenet_weights_are_recognised(state_dict, tmp_path):
  sd = dict(
      state_dict, **{
          'AuxLogits.conv0.conv.weight': np.zeros((128, 768, 1, 1), np.float32),
          'fc.weight': np.zeros((1000, 2048), np.float32),
          'fc.bias': np.zeros(1000, np.float32)
      })
  with pytest.raises(ValueError, match='torchvision'):
    inc.load_inception_params(_save(tmp_path, sd))


def test_corrupt_values_and_files(state_dict, tmp_path):
  sd = dict(state_dict)
  sd['Conv2d_3b_1x1.bn.running_var'] = -np.ones(80, np.float32)
  with pytest.raises(ValueError, match=r'negative running_var: Conv2d_3b_1x1'):
    inc.load_inception_params(_save(tmp_path, sd))
  with pytest.raises(FileNotFoundError, match='no file'):
    inc.load_inception_params(str(tmp_path / 'absent.npz'))
  not_npz = tmp_path / 'weights.pth'
  not_npz.write_bytes(b'\x80\x02not a zip archive' * 10)
  with pytest.raises(ValueError, match='not a readable .npz'):
    inc.load_inception_params(str(not_npz))
  assert os.path.isfile(not_npz)
