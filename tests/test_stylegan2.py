"""Tests for stylex_jax.models.stylegan2: numpy re-implementations of the reference networks, truncation and
w_avg arithmetic, shapes, determinism, grad/vmap purity, parameter counts derived from NVIDIA's networks.py."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from references import F4, np_corr_same, np_corr_valid, np_lrelu, np_modconv, np_upfirdn2d
from stylex_jax.models.stylegan2 import (Discriminator, Generator, MappingNetwork, SynthesisNetwork, style_mix)

SQRT2 = math.sqrt(2.0)

# ------------------------------------------------------------------------------------------------------------------
# numpy reference (float64), written from the reference's definitions


def np_dense(x, p, lr=1.0, act='linear'):
  y = x @ (np.asarray(p['weight'], np.float64) * lr / math.sqrt(x.shape[-1]))
  if 'bias' in p:
    y = y + np.asarray(p['bias'], np.float64) * lr
  return np_lrelu(y) if act == 'lrelu' else y


def np_normalize(x):
  return x / np.sqrt(np.mean(x**2, axis=1, keepdims=True) + 1e-8)


def np_mapping(p, z, num_layers, lr=0.01, c=None):
  parts = [] if z is None else [np_normalize(z)]
  if c is not None:
    parts.append(np_normalize(np_dense(c, p['embed'])))
  x = np.concatenate(parts, axis=1)
  for i in range(num_layers):
    x = np_dense(x, p[f'fc{i}'], lr=lr, act='lrelu')
  return x


def np_synth_layer(x, w, p, up=1):
  styles = np_dense(w, p['modconv']['affine'])
  return np_lrelu(np_modconv(x, np.asarray(p['modconv']['weight'], np.float64), styles, up=up) + p['bias'])


def np_torgb(x, w, p):
  styles = np_dense(w, p['modconv']['affine']) / math.sqrt(x.shape[-1])
  return np_modconv(x, np.asarray(p['modconv']['weight'], np.float64), styles, demodulate=False) + p['bias']


def np_synthesis(p, ws, resolution):
  """Skip generator; block r consumes ws[idx], ws[idx+1] (convs) and ws[idx+2] (ToRGB), idx advancing by 2."""
  b4 = p['b4']
  x = np.broadcast_to(np.asarray(b4['const'], np.float64)[None], (ws.shape[0],) + b4['const'].shape)
  x = np_synth_layer(x, ws[:, 0], b4['conv1'])
  img = np_torgb(x, ws[:, 1], b4['torgb'])
  idx, r = 1, 8
  while r <= resolution:
    blk = p[f'b{r}']
    x = np_synth_layer(x, ws[:, idx], blk['conv0'], up=2)
    x = np_synth_layer(x, ws[:, idx + 1], blk['conv1'])
    img = np_upfirdn2d(img, F4, up=2, pad=(2, 1, 2, 1), gain=4.0) + np_torgb(x, ws[:, idx + 2], blk['torgb'])
    idx, r = idx + 2, r * 2
  return img


def np_conv(x, p, act='linear', down=1, gain=1.0):
  w = np.asarray(p['weight'], np.float64)
  k = w.shape[0]
  w = w / math.sqrt(x.shape[-1] * k * k)
  if down == 1:
    y = np_corr_same(x, w)
  elif k == 1:
    y = np_upfirdn2d(x, F4, down=2, pad=(1, 1, 1, 1)) @ w[0, 0]
  else:  # conv at full resolution (padded by 2), then FIR + subsample
    y = np_upfirdn2d(np_corr_valid(np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0))), w), F4, down=2)
  if 'bias' in p:
    y = y + p['bias']
  return np_lrelu(y, SQRT2 * gain) if act == 'lrelu' else y * gain


def np_mbstd(x, g):
  n = x.shape[0]
  g = min(g, n)
  feat = np.zeros(x.shape[:3] + (1,))
  for j in range(n // g):
    feat[j * g:(j + 1) * g] = np.sqrt(x[j * g:(j + 1) * g].var(axis=0) + 1e-8).mean()
  return np.concatenate([x, feat], axis=-1)


def np_discriminator(p, img, resolution, group, c=None, mapping_layers=2):
  x, r, s = img.astype(np.float64), resolution, math.sqrt(0.5)
  while r > 4:
    blk = p[f'b{r}']
    if r == resolution:
      x = np_conv(x, blk['fromrgb'], 'lrelu')
    y = np_conv(x, blk['skip'], down=2, gain=s)
    x = np_conv(np_conv(x, blk['conv0'], 'lrelu'), blk['conv1'], 'lrelu', down=2, gain=s)
    x, r = x + y, r // 2
  e = p['b4']
  x = np_conv(np_mbstd(x, group), e['conv'], 'lrelu')
  x = np_dense(x.reshape(x.shape[0], -1), e['fc'], act='lrelu')
  x = np_dense(x, e['out'])
  if c is not None:
    cmap = np_mapping(p['mapping'], None, mapping_layers, c=c)
    x = np.sum(x * cmap, axis=1, keepdims=True) / math.sqrt(cmap.shape[1])
  return x


def random_params(module, *args, seed=0, **kwargs):
  """Parameters with the module's exact tree (from eval_shape, no init compile): weights/const ~ N(0, 1),
    biases ~ 0.1 N(0, 1) (+1 for style affines), noise strengths ~ 0.1 N(0, 1)."""
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
  rng = np.random.default_rng(seed)

  def make(path, s):
    names = [getattr(k, 'key', str(k)) for k in path]
    x = rng.standard_normal(s.shape).astype(np.float32)
    if names[-1] in ('weight', 'const'):
      return jnp.asarray(x)
    return jnp.asarray(0.1 * x + (1.0 if names[-1] == 'bias' and 'affine' in names else 0.0))

  variables = dict(shapes)
  variables['params'] = jax.tree_util.tree_map_with_path(make, shapes['params'])
  if 'stats' in variables:
    variables['stats'] = jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), jnp.float32), shapes['stats'])
  return variables


def to64(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


SMALL_G = dict(z_dim=16, w_dim=16, resolution=16, channels=3, channel_base=128, channel_max=16, mapping_layers=2)


class SmallG:
  """A 16x16 RGB generator with random (non-trivial) parameters and jitted entry points shared by the tests,
    so each (function, noise mode, shape) compiles once."""

  def __init__(self):
    self.g = Generator(**SMALL_G)
    self.z = jax.random.normal(jax.random.key(1), (8, 16))
    self.v = random_params(self.g, self.z, noise_mode='const', seed=5)
    g = self.g
    self.mapping = jax.jit(lambda v, z: g.apply(v, z, method='mapping'))
    self.synth = jax.jit(
        lambda v, ws, key, mode: g.apply(v, ws, noise_mode=mode, method='synthesis', rngs=None
                                         if key is None else {'noise': key}), static_argnums=3)


@pytest.fixture(scope='module')
def small_g():
  return SmallG()


# ------------------------------------------------------------------------------------------------------------------
# mapping network


def test_mapping_matches_numpy_and_normalises_z():
  m = MappingNetwork(z_dim=8, w_dim=6, num_ws=4, num_layers=3)
  z = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
  v = random_params(m, jnp.asarray(z), seed=1)
  ws = np.asarray(m.apply(v, jnp.asarray(z)))
  ref = np_mapping(to64(v['params']), z.astype(np.float64), 3)
  assert ws.shape == (5, 4, 6)
  for i in range(4):
    np.testing.assert_allclose(ws[:, i], ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(m.apply(v, jnp.asarray(7.0 * z))), ws, rtol=1e-4, atol=1e-5)


def test_truncation_psi_and_cutoff():
  m = MappingNetwork(z_dim=8, w_dim=6, num_ws=5, num_layers=2)
  z = jnp.asarray(np.random.default_rng(1).standard_normal((3, 8)), jnp.float32)
  v = random_params(m, z, seed=2)
  w_avg = v['stats']['w_avg']
  ws = np.asarray(m.apply(v, z))
  np.testing.assert_array_equal(np.asarray(m.apply(v, z, truncation_psi=1.0)), ws)
  np.testing.assert_allclose(np.asarray(m.apply(v, z, truncation_psi=0.0)),
                             np.broadcast_to(np.asarray(w_avg), ws.shape), rtol=1e-6)
  got = np.asarray(m.apply(v, z, truncation_psi=0.7, truncation_cutoff=2))
  wa = np.asarray(w_avg)
  np.testing.assert_allclose(got[:, :2], wa + 0.7 * (ws[:, :2] - wa), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[:, 2:], ws[:, 2:])
  # psi as a traced value (e.g. swept under jit)
  traced = jax.jit(lambda psi: m.apply(v, z, truncation_psi=psi))(0.5)
  np.testing.assert_allclose(np.asarray(traced), wa + 0.5 * (ws - wa), rtol=1e-5, atol=1e-6)


def test_w_avg_update_arithmetic_and_errors():
  m = MappingNetwork(z_dim=8, w_dim=6, num_ws=3, num_layers=2, w_avg_beta=0.9)
  z = jnp.asarray(np.random.default_rng(3).standard_normal((4, 8)), jnp.float32)
  v = random_params(m, z, seed=4)
  old = np.asarray(v['stats']['w_avg'])
  ws, upd = m.apply(v, z, update_w_avg=True, mutable=['stats'])
  mean = np_mapping(to64(v['params']), np.asarray(z, np.float64), 2).mean(0)
  np.testing.assert_allclose(np.asarray(upd['stats']['w_avg']), mean + 0.9 * (old - mean), rtol=1e-5, atol=1e-6)
  _, same = m.apply(v, z, mutable=['stats'])  # no update unless asked
  np.testing.assert_array_equal(np.asarray(same['stats']['w_avg']), old)
  with pytest.raises(ValueError, match='mutable'):
    m.apply(v, z, update_w_avg=True)
  np.testing.assert_array_equal(np.asarray(m.apply({'params': v['params']}, z)), np.asarray(ws))  # psi=1: no stats
  with pytest.raises(ValueError, match="'stats' collection"):
    m.apply({'params': v['params']}, z, truncation_psi=0.5)
  with pytest.raises(ValueError, match=r'z must be \[B, 8\]'):
    m.apply(v, jnp.zeros((4, 9)))


def test_style_mix():
  a, b = jnp.zeros((2, 6, 3)), jnp.ones((2, 6, 3))
  mixed = np.asarray(style_mix(a, b, 2))
  np.testing.assert_array_equal(mixed[:, :2], 0.0)
  np.testing.assert_array_equal(mixed[:, 2:], 1.0)
  np.testing.assert_array_equal(np.asarray(jax.jit(style_mix)(a, b, jnp.asarray(6))), 0.0)


# ------------------------------------------------------------------------------------------------------------------
# generator


def test_synthesis_matches_numpy_reference_fused_and_nonfused(small_g):
  g, v = small_g.g, small_g.v
  ws = small_g.mapping(v, small_g.z[:4])
  assert ws.shape == (4, g.num_ws, 16) and g.num_ws == 6
  ref = np_synthesis(to64(v['params']['synthesis_network']), np.asarray(ws, np.float64), 16)
  scale = np.abs(ref).max()
  fused = np.asarray(small_g.synth(v, ws, None, 'none'))
  gn = Generator(**SMALL_G, fused_modconv=False)
  nonfused = np.asarray(jax.jit(lambda vv, w: gn.apply(vv, w, noise_mode='none', method='synthesis'))(v, ws))
  for img in (fused, nonfused):
    assert img.shape == (4, 16, 16, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img, ref, rtol=1e-3, atol=1e-4 * scale)


def test_init_values_and_determinism():
  m = MappingNetwork(z_dim=8, w_dim=64, num_ws=3, num_layers=1)
  z = jnp.ones((2, 8))
  init = jax.jit(lambda key: m.init(key, z))
  a, b, c = init(jax.random.key(0)), init(jax.random.key(0)), init(jax.random.key(1))
  np.testing.assert_array_equal(np.asarray(a['params']['fc0']['weight']), np.asarray(b['params']['fc0']['weight']))
  assert not np.allclose(np.asarray(a['params']['fc0']['weight']), np.asarray(c['params']['fc0']['weight']))
  assert abs(np.asarray(a['params']['fc0']['weight']).std() * 0.01 - 1.0) < 0.1  # N(0, 1) / lr_multiplier
  np.testing.assert_array_equal(np.asarray(a['stats']['w_avg']), 0.0)
  from stylex_jax.models.stylegan2 import SynthesisLayer
  layer = SynthesisLayer(8, up=2)
  p = jax.jit(lambda key: layer.init(key, jnp.ones((2, 4, 4, 8)), jnp.ones((2, 64)), 'const'))(jax.random.key(0))
  p = p['params']
  np.testing.assert_array_equal(np.asarray(p['modconv']['affine']['bias']), 1.0)  # styles start at 1
  np.testing.assert_array_equal(np.asarray(p['noise']['noise_strength']), 0.0)
  np.testing.assert_array_equal(np.asarray(p['bias']), 0.0)
  assert p['modconv']['weight'].shape == (3, 3, 8, 8)


def test_generator_noise_modes_are_deterministic(small_g):
  v, synth = small_g.v, small_g.synth
  ws = small_g.mapping(v, small_g.z[:4])
  a, b = synth(v, ws, jax.random.key(7), 'random'), synth(v, ws, jax.random.key(7), 'random')
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.allclose(np.asarray(a), np.asarray(synth(v, ws, jax.random.key(8), 'random')))
  c1, c2 = synth(v, ws, None, 'const'), synth(v, ws, None, 'const')  # no rng needed
  np.testing.assert_array_equal(np.asarray(c1), np.asarray(c2))
  assert not np.allclose(np.asarray(c1), np.asarray(synth(v, ws, None, 'none')))  # noise strengths are non-zero
  assert not np.allclose(np.asarray(a), np.asarray(c1))
  g = small_g.g
  with pytest.raises(ValueError, match="'noise' rng"):
    jax.eval_shape(lambda vv: g.apply(vv, small_g.z), v)


def test_synthesis_is_pure_under_grad_and_vmap(small_g):
  g, v = small_g.g, small_g.v
  params_only = {'params': v['params']}  # 'const' synthesis needs nothing but params
  ws = jax.random.normal(jax.random.key(3), (4, g.num_ws, 16))
  gimg = jax.random.normal(jax.random.key(4), (16, 16, 3))

  def f_single(w):  # w [num_ws, w_dim] -> scalar
    return jnp.sum(g.apply(params_only, w[None], noise_mode='const', method='synthesis')[0] * gimg)

  per_sample = jax.jit(jax.vmap(jax.value_and_grad(f_single)))
  vals, grads = per_sample(ws)
  batch_vals = jnp.sum(small_g.synth(params_only, ws, None, 'const') * gimg, axis=(1, 2, 3))
  np.testing.assert_allclose(np.asarray(vals), np.asarray(batch_vals), rtol=1e-4, atol=1e-4)
  # central finite differences along random directions (same compiled function, batch of 4)
  d = jax.random.normal(jax.random.key(5), ws[:2].shape)
  eps = 3e-4  # the map is strongly curved (lrelu kinks, demodulation): FD converges to the gradient below ~1e-3
  fvals, _ = per_sample(jnp.concatenate([ws[:2] + eps * d, ws[:2] - eps * d]))
  for i in range(2):
    fd = (float(fvals[i]) - float(fvals[i + 2])) / (2 * eps)
    an = float(jnp.sum(grads[i] * d[i]))
    assert abs(fd - an) <= 1e-2 * abs(an), (i, fd, an)


def test_generator_and_discriminator_sharded_batch_match_unsharded(small_g):
  g, v, z = small_g.g, small_g.v, small_g.z
  d = Discriminator(resolution=16, channels=3, channel_base=128, channel_max=16, mbstd_group_size=2)
  dv = random_params(d, jnp.zeros((8, 16, 16, 3)), seed=2)
  gen = jax.jit(lambda vv, zq: g.apply(vv, zq, noise_mode='const'))
  dis = jax.jit(lambda vv, im: d.apply(vv, im))
  mesh = jax.make_mesh(
      (4,),
      ('data',),
      axis_types=(jax.sharding.AxisType.Auto,),  # as stylex_jax.sharding
      devices=jax.devices()[:4])
  img_s = gen(v, jax.device_put(z, NamedSharding(mesh, P('data'))))  # 2 samples per device = one mbstd group
  img = small_g.synth(v, small_g.mapping(v, z), None, 'const')
  np.testing.assert_allclose(np.asarray(img_s), np.asarray(img), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(dis(dv, img_s)), np.asarray(dis(dv, img)), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# discriminator


@pytest.mark.parametrize('c_dim', [0, 3])
def test_discriminator_matches_numpy_reference(c_dim):
  d = Discriminator(resolution=16, channels=3, c_dim=c_dim, channel_base=128, channel_max=16, mbstd_group_size=2,
                    mapping_layers=2)
  rng = np.random.default_rng(11)
  img = np.tanh(rng.standard_normal((4, 16, 16, 3))).astype(np.float32)
  c = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]] if c_dim else None
  cc = None if c is None else jnp.asarray(c)
  p = random_params(d, jnp.asarray(img), cc, seed=3)['params']
  out = np.asarray(jax.jit(lambda pp, im, cq: d.apply({'params': pp}, im, cq))(p, jnp.asarray(img), cc))
  ref = np_discriminator(to64(p), img, 16, 2, c=None if c is None else c.astype(np.float64))
  assert out.shape == (4, 1) and out.dtype == np.float32
  np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())
  if c_dim:
    assert 'mapping' in p and 'embed' in p['mapping']
    with pytest.raises(ValueError, match='conditional'):
      jax.eval_shape(lambda: d.apply({'params': p}, jnp.asarray(img)))


def test_bf16_compute_matches_fp32(small_g):
  v, ws = small_g.v, small_g.mapping(small_g.v, small_g.z[:4])
  g16 = Generator(**SMALL_G, dtype=jnp.bfloat16)
  img16 = jax.jit(lambda vv, w: g16.apply(vv, w, noise_mode='const', method='synthesis'))(v, ws)
  img32 = small_g.synth(v, ws, None, 'const')
  assert img16.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(img16)))
  assert float(jnp.linalg.norm(img16 - img32) / jnp.linalg.norm(img32)) < 5e-2
  kw = dict(resolution=16, channels=3, channel_base=128, channel_max=16, mbstd_group_size=2)
  d32, d16 = Discriminator(**kw), Discriminator(**kw, dtype=jnp.bfloat16)
  dv = random_params(d32, img32, seed=4)
  l32 = jax.jit(lambda vv, im: d32.apply(vv, im))(dv, img32)
  l16 = jax.jit(lambda vv, im: d16.apply(vv, im))(dv, img32)
  assert l16.dtype == jnp.float32
  assert float(jnp.linalg.norm(l16 - l32) / jnp.linalg.norm(l32)) < 5e-2


# ------------------------------------------------------------------------------------------------------------------
# shapes, validation, parameter counts


@pytest.mark.parametrize('resolution', [16, 32])
@pytest.mark.parametrize('channels', [1, 3])
def test_output_shapes_and_num_ws(resolution, channels):
  kw = dict(resolution=resolution, channels=channels, channel_base=256, channel_max=16)
  g = Generator(z_dim=8, w_dim=8, mapping_layers=1, **kw)
  assert g.num_ws == 2 * int(math.log2(resolution)) - 2
  assert SynthesisNetwork(w_dim=8, **kw).num_ws == g.num_ws
  z = jnp.zeros((2, 8))
  v = jax.eval_shape(lambda: g.init(jax.random.key(0), z, noise_mode='const'))
  assert jax.eval_shape(lambda vv: g.apply(vv, z, noise_mode='const'), v).shape == (2, resolution, resolution, channels)
  assert jax.eval_shape(lambda vv: g.apply(vv, z, method='mapping'), v).shape == (2, g.num_ws, 8)
  d = Discriminator(**kw)
  x = jnp.zeros((4, resolution, resolution, channels))
  dv = jax.eval_shape(lambda: d.init(jax.random.key(0), x))
  assert jax.eval_shape(lambda vv: d.apply(vv, x), dv).shape == (4, 1)


@pytest.mark.parametrize('kwargs', [
    dict(resolution=48),
    dict(resolution=8),
    dict(resolution=2048),
    dict(resolution=64.0),
    dict(channels=2),
    dict(channels=4)
])
def test_bad_resolution_or_channels_fail_at_construction(kwargs):
  for cls in (Generator, SynthesisNetwork, Discriminator):
    args = dict(resolution=64, channels=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match='resolution|channels'):
      cls(**args)


def test_wrong_input_shapes_fail_clearly(small_g):
  g, v = small_g.g, small_g.v
  with pytest.raises(ValueError, match=r'ws must be \[B, 6, 16\]'):
    g.apply(v, jnp.zeros((2, 5, 16)), noise_mode='const', method='synthesis')
  d = Discriminator(resolution=16, channels=3, channel_base=128, channel_max=16)
  with pytest.raises(ValueError, match=r'images must be \[B, 16, 16, 3\]'):
    jax.eval_shape(lambda: d.init(jax.random.key(0), jnp.zeros((2, 16, 16, 1))))


def reference_param_counts(res, img_ch, base, cmax, z_dim, w_dim, map_layers):
  """Parameter counts of NVIDIA's stylegan2-ada-pytorch networks.py (buffers such as w_avg / noise_const /
    resample_filter excluded), derived layer by layer from its constructors."""
  ch = lambda r: min(base // r, cmax)  # noqa: E731
  fc = lambda i, o: i * o + o  # noqa: E731
  mapping = fc(z_dim, w_dim) + (map_layers - 1) * fc(w_dim, w_dim)
  layer = lambda i, o, k: fc(w_dim, i) + o * i * k * k + 1 + o  # affine, weight, noise_strength, bias  # noqa
  torgb = lambda i: fc(w_dim, i) + img_ch * i + img_ch  # noqa: E731
  synth = ch(4) * 16 + layer(ch(4), ch(4), 3) + torgb(ch(4))
  r = 8
  while r <= res:
    synth += layer(ch(r // 2), ch(r), 3) + layer(ch(r), ch(r), 3) + torgb(ch(r))
    r *= 2
  conv = lambda i, o, k, bias=True: o * i * k * k + (o if bias else 0)  # noqa: E731
  disc, r = 0, res
  while r > 4:
    tmp, out = ch(r), ch(r // 2)
    if r == res:
      disc += conv(img_ch, tmp, 1)
    disc += conv(tmp, tmp, 3) + conv(tmp, out, 3) + conv(tmp, out, 1, bias=False)
    r //= 2
  disc += conv(ch(4) + 1, ch(4), 3) + fc(ch(4) * 16, ch(4)) + fc(ch(4), 1)
  return mapping + synth, disc


def test_param_counts_match_reference_at_64():
  kw = dict(resolution=64, channels=1, channel_base=4096, channel_max=256)
  g = Generator(z_dim=512, w_dim=512, mapping_layers=2, **kw)
  d = Discriminator(**kw)
  gv = jax.eval_shape(lambda: g.init(jax.random.key(0), jnp.zeros((2, 512)), noise_mode='const'))
  dv = jax.eval_shape(lambda: d.init(jax.random.key(0), jnp.zeros((2, 64, 64, 1))))
  count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))  # noqa: E731
  ref_g, ref_d = reference_param_counts(64, 1, 4096, 256, 512, 512, 2)
  assert (ref_g, ref_d) == (5_478_734, 4_727_489)
  assert count(gv['params']) == ref_g
  assert count(dv['params']) == ref_d
  assert set(gv) == {'params', 'stats'} and gv['stats']['mapping_network']['w_avg'].shape == (512,)
