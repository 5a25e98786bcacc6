"""Tests for stylex_jax.models.classifier: shapes, torchvision parameter counts, BatchNorm/GroupNorm semantics
(checked against numpy), named layers, sharded global-batch statistics and error messages."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from stylex_jax.models.classifier import PRESETS, ResNet, create_classifier, layer_names


def _images(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


def _init(model, x, seed=0):
  return model.init(jax.random.key(seed), x)


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize('preset,expected', [('resnet18', 11_689_512), ('resnet34', 21_797_672),
                                             ('resnet50', 25_557_032)])
def test_param_counts_match_torchvision(preset, expected):
  model = create_classifier(preset, num_classes=1000)
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  assert _count(shapes['params']) == expected
  assert set(shapes) == {'params', 'batch_stats'}  # init holds no intermediates/perturbations


@pytest.mark.parametrize('preset', sorted(PRESETS))
@pytest.mark.parametrize('size', [32, 64])
@pytest.mark.parametrize('channels', [1, 3])
def test_output_and_feature_shapes_all_presets(preset, size, channels):
  model = create_classifier(preset, num_classes=5)
  x = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.key(0), x)
  logits, feats = jax.eval_shape(lambda v, im: model.apply(v, im, return_features=True), variables, x)
  cfg = PRESETS[preset]
  expansion = 4 if cfg['block'] == 'bottleneck' else 1
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  assert feats.shape == (2, cfg['width'] * 2**(len(cfg['stage_sizes']) - 1) * expansion)


@pytest.fixture(scope='module')
def demo():
  """One demo ResNet (batch 8, 32x32x1) with jitted eval/train applies, shared to keep compiles few."""
  model = create_classifier('demo', num_classes=3)
  x = _images((8, 32, 32, 1), seed=1)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  apply_eval = jax.jit(lambda v, im: model.apply(v, im))
  apply_train = jax.jit(lambda v, im: model.apply(v, im, train=True, mutable=['batch_stats']))
  return dict(model=model, x=x, variables=variables, eval=apply_eval, train=apply_train)


def test_demo_forward_is_finite_deterministic_and_per_example(demo):
  x, v = demo['x'], demo['variables']
  a, b = demo['eval'](v, x), demo['eval'](v, x)
  assert a.shape == (8, 3) and a.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(a)))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # eval mode (running statistics): an image's logits do not depend on the rest of the batch
  v_shift = {**v, 'batch_stats': jax.tree.map(lambda s: s + 0.3, v['batch_stats'])}
  x2 = x.at[1:].set(_images((7, 32, 32, 1), seed=9))
  np.testing.assert_allclose(np.asarray(demo['eval'](v_shift, x2)[0]), np.asarray(demo['eval'](v_shift, x)[0]),
                             rtol=1e-5, atol=1e-6)


def test_resnet50_real_forward_at_32():
  model = create_classifier('resnet50', num_classes=3)
  x = _images((2, 32, 32, 1))
  out = jax.jit(model.apply)(model.init(jax.random.key(0), x), x)
  assert out.shape == (2, 3) and bool(jnp.all(jnp.isfinite(out)))


def _conv3x3_numpy(x, kernel):
  """Reference 3x3 stride-1 zero-padded cross-correlation. x [B,H,W,Ci], kernel [3,3,Ci,Co]."""
  b, h, w, _ = x.shape
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = np.zeros((b, h, w, kernel.shape[-1]))
  for dy in range(3):
    for dx in range(3):
      out += np.einsum('bhwi,io->bhwo', xp[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
  return out


def test_batchnorm_train_mode_updates_running_stats_like_numpy(demo):
  x, variables = demo['x'], demo['variables']
  logits, updates = demo['train'](variables, x)
  assert logits.shape == (8, 3)
  kernel = np.asarray(variables['params']['stem_conv']['kernel'], np.float64)
  y = _conv3x3_numpy(np.asarray(x, np.float64), kernel)
  mean, var = y.mean(axis=(0, 1, 2)), y.var(axis=(0, 1, 2))  # biased batch variance
  stats = updates['batch_stats']['stem_norm']['norm']
  np.testing.assert_allclose(np.asarray(stats['mean']), 0.1 * mean, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(stats['var']), 0.9 + 0.1 * var, rtol=1e-4, atol=1e-6)
  # every BatchNorm moved; eval mode with the old stats differs from train mode
  old = jax.tree.leaves(variables['batch_stats'])
  new = jax.tree.leaves(updates['batch_stats'])
  assert len(old) == len(new) > 0 and all(not np.allclose(o, n) for o, n in zip(old, new))
  assert not np.allclose(np.asarray(demo['eval'](variables, x)), np.asarray(logits))


def test_batchnorm_uses_global_batch_when_sharded(demo):
  model, x, variables = demo['model'], demo['x'], demo['variables']
  ref_logits, ref_updates = demo['train'](variables, x)
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Explicit,))
  xs = jax.device_put(x, NamedSharding(mesh, P('data')))
  vs = jax.device_put(variables, NamedSharding(mesh, P()))
  logits, updates = jax.jit(lambda v, im: model.apply(v, im, train=True, mutable=['batch_stats']))(vs, xs)
  assert len(logits.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(ref_updates)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_groupnorm_variant_is_stateless_and_per_example():
  model = create_classifier('demo', num_classes=3, norm='group')
  x = _images((4, 16, 16, 3), seed=3)
  variables = jax.jit(model.init)(jax.random.key(0), x)
  assert set(variables) == {'params'}
  fwd = jax.jit(lambda v, im: model.apply(v, im, train=True))  # no mutable state needed in train mode
  a = fwd(variables, x)
  b = fwd(variables, x.at[1:].set(-x[1:]))
  assert a.shape == (4, 3) and bool(jnp.all(jnp.isfinite(a)))
  np.testing.assert_allclose(np.asarray(b[0]), np.asarray(a[0]), rtol=1e-5, atol=1e-6)


def test_last_norm_of_each_block_is_zero_initialised(demo):
  params = jax.eval_shape(
      create_classifier('resnet50', num_classes=2).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))['params']
  assert len([k for k in params if k.startswith('stage')]) == sum(PRESETS['resnet50']['stage_sizes'])
  assert all('norm3' in params[k] for k in params if k.startswith('stage'))
  params = demo['variables']['params']
  blocks = [k for k in params if k.startswith('stage')]
  assert len(blocks) == sum(PRESETS['demo']['stage_sizes'])
  for k in blocks:
    assert np.all(np.asarray(params[k]['norm2']['norm']['scale']) == 0.0)
    assert np.all(np.asarray(params[k]['norm1']['norm']['scale']) == 1.0)


def test_named_layers_are_sown_and_perturbable_with_analytic_head_gradient(demo):
  model, x, variables = demo['model'], demo['x'], demo['variables']
  names = layer_names(PRESETS['demo']['stage_sizes'])
  assert names == ('stem', 'stage1', 'stage2', 'stage3', 'stage4')
  state_shapes = jax.eval_shape(lambda v, im: model.apply(v, im, mutable=['intermediates', 'perturbations']), variables,
                                x)[1]
  assert set(state_shapes['intermediates']) == set(names) == set(state_shapes['perturbations'])
  expected = {
      'stem': (8, 32, 32, 16),
      'stage1': (8, 32, 32, 16),
      'stage2': (8, 16, 16, 32),
      'stage3': (8, 8, 8, 64),
      'stage4': (8, 4, 4, 128)
  }
  for n, shp in expected.items():
    assert state_shapes['intermediates'][n][0].shape == shp
    assert state_shapes['perturbations'][n].shape == shp
  # logit_k = mean_hw(stage4) @ W[:, k] + b_k  =>  d logit_k / d stage4[b,h,w,c] = W[c, k] / (h*w)
  perts = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), state_shapes['perturbations'])

  @jax.jit
  def logits_and_grad(p):
    f = lambda q: model.apply({**variables, 'perturbations': q}, x)[:, 1].sum()
    return model.apply({**variables, 'perturbations': p}, x), jax.grad(f)(p)['stage4']

  logits, g = logits_and_grad(perts)
  w = np.asarray(variables['params']['head']['kernel'])[:, 1]
  np.testing.assert_allclose(np.asarray(g), np.broadcast_to(w / 16.0, g.shape), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(demo['eval'](variables, x)), rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits(demo):
  m16 = create_classifier('demo', num_classes=3, dtype=jnp.bfloat16)
  x, variables = demo['x'], demo['variables']
  shapes = jax.eval_shape(m16.init, jax.random.key(0), x)
  assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(shapes))
  out16, out32 = jax.jit(m16.apply)(variables, x), demo['eval'](variables, x)
  assert out16.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out16), np.asarray(out32), atol=0.05 * float(jnp.abs(out32).max()) + 1e-2)


def test_errors_are_clear():
  with pytest.raises(ValueError, match='valid presets are.*demo.*resnet18'):
    create_classifier('resnet101', num_classes=2)
  with pytest.raises(ValueError, match='valid overrides are'):
    create_classifier('demo', num_classes=2, depth=3)
  with pytest.raises(ValueError, match='valid blocks are'):
    create_classifier('demo', num_classes=2, block='wide')
  with pytest.raises(ValueError, match='num_classes'):
    create_classifier('demo', num_classes=0)
  model = ResNet(num_classes=2, stage_sizes=(1,), width=8, stem='small', norm='instance')
  with pytest.raises(ValueError, match='valid norms are'):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  model = create_classifier('demo', num_classes=2)
  with pytest.raises(ValueError, match='C = 1 or 3'):
    model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 4)))
