"""The projector (explain.invert) and its losses (explain.reconstruction): a generated image is recovered, one
compile per batch shape, bad input, and every loss term against an independent numpy reference."""
import functools
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.special

from configs import demo
from stylex_jax import sharding
from stylex_jax.explain import invert, reconstruction
from stylex_jax.models import encoder as encoder_lib
from stylex_jax.stages import classifier as classifier_stage
from stylex_jax.train import gan


def _config():
  config = demo.get_config('smoke')
  config.data.image_size = 16
  config.gan.generator = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)
  config.gan.discriminator = dict(channel_base=128, channel_max=16, mbstd_group_size=2)
  ic = config.invert
  ic.start, ic.space, ic.steps, ic.lr, ic.lr_schedule = 'w_avg', 'w+', 200, 0.1, 'constant'
  ic.optimize_noise = False
  ic.loss = dict(mse=1.0, ssim=2.0, kl=0.01)
  ic.batch_size = 4
  return config


@pytest.fixture(scope='module')
def pieces():
  config = _config()
  models = gan.build_models(config)
  state = sharding.jit_init(functools.partial(gan.create_state, models), None)(jax.random.key(0))
  # a random G's w_avg is 0 and its outputs are faint: give w_avg a value and the images contrast
  g_stats = {'mapping_network': {'w_avg': jax.random.normal(jax.random.key(1), (16,)) * 0.5}}
  model = classifier_stage.build_model(config)
  variables = model.init(jax.random.key(2), jnp.zeros((1, 16, 16, 1)), train=False)
  return config, models.generator, state.g_ema, g_stats, model, variables


def _inverter(pieces, **overrides):
  config, g, g_params, g_stats, model, variables = pieces
  ic = ml_collections.ConfigDict(config.invert.to_dict())
  ic.update(overrides)
  return invert.Inverter(g, g_params, g_stats, model, variables, ic)


def _targets(inv, n=3):
  w = inv.w_avg + jax.random.normal(jax.random.key(5), (n, 1, inv.w_dim))  # an image of G: one w for all layers
  ws = jnp.broadcast_to(w, (n, inv.num_ws, inv.w_dim))
  return np.asarray(inv.synthesize(ws)), ws


def test_inverting_a_generated_image_recovers_it_and_compiles_once(pieces):
  inv = _inverter(pieces)
  images, _ = _targets(inv)
  start = _inverter(pieces, steps=0)(images)
  inv.warmup()
  assert inv.trace_count == 3  # start, step, report: once each
  out = inv(images, ids=['a', 'b', 'c'])
  assert out['ws'].shape == (3, inv.num_ws, inv.w_dim) and out['reconstructions'].shape == images.shape
  assert out['original_probs'].shape == (3, 2) and out['agree'].dtype == bool
  assert (start['ssim'] < 0.8).all(), start['ssim']  # w_avg alone is not the image ...
  assert (out['ssim'] >= 0.95).all(), out['ssim']  # ... the optimisation recovers it
  np.testing.assert_allclose(out['mse'], np.mean((out['reconstructions'] - images)**2, axis=(1, 2, 3)), rtol=1e-4)
  np.testing.assert_allclose(out['prob_delta'],
                             np.abs(out['original_probs'] - out['reconstruction_probs'])[:, 1], rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(out['w_distance'], np.linalg.norm(out['ws'].mean(1) - np.asarray(inv.w_avg), axis=-1),
                             rtol=1e-4)
  traces = inv.trace_count
  assert traces == 3  # inverting compiled nothing new
  inv(images[:2])  # another image count: padded to the same chunk shape
  inv(np.concatenate([images, images]))  # two chunks
  assert inv.trace_count == traces


def test_warmup_on_a_mesh_compiles_what_the_calls_use(pieces):
  """With a mesh the chunks are sharded over 'data': warmup must place its blank chunk the same way, or the first
  real call compiles every function again."""
  config, g, g_params, g_stats, model, variables = pieces
  ic = ml_collections.ConfigDict({**config.invert.to_dict(), 'steps': 2, 'batch_size': 8})
  inv = invert.Inverter(g, g_params, g_stats, model, variables, ic, mesh=sharding.make_mesh())
  assert inv.mesh.devices.size == 8
  inv.warmup()
  assert inv.trace_count == 3
  out = inv(np.zeros((3, 16, 16, 1), np.float32))
  assert out['ws'].shape == (3, inv.num_ws, inv.w_dim) and inv.trace_count == 3


def test_w_space_noise_and_nvidia_recipe_run(pieces):
  inv = _inverter(pieces)
  images, _ = _targets(inv, 2)
  recipe = invert.nvidia_recipe(inv.config, steps=3)
  nv = _inverter(pieces, **recipe.to_dict())
  out = nv(images)
  assert out['ws'].shape == (2, inv.num_ws, inv.w_dim)
  np.testing.assert_allclose(out['ws'], np.broadcast_to(out['ws'][:, :1], out['ws'].shape))  # one w
  noise = jax.tree.leaves(out['noise'])
  assert noise and all(n.shape[0] == 2 for n in noise)
  for n in noise:  # re-normalised every step
    np.testing.assert_allclose(n.reshape(2, -1).std(axis=1), 1.0, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(nv.synthesize(jnp.asarray(out['ws']), out['noise'])), out['reconstructions'],
                             atol=1e-5)


def test_bad_input(pieces):
  inv = _inverter(pieces, steps=0)
  images = np.zeros((2, 16, 16, 1), np.float32)
  images[1, 3, 4, 0] = np.nan
  with pytest.raises(ValueError, match="'knee_2'.*NaN"):
    inv(images, ids=['knee_1', 'knee_2'])
  with pytest.raises(ValueError, match=r'\[-1, 1\]'):
    inv(np.full((1, 16, 16, 1), 255.0))
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    out = inv(np.zeros((2, 32, 32, 3), np.float32))
  assert out['reconstructions'].shape == (2, 16, 16, 1)
  messages = ' '.join(str(w.message) for w in caught)
  assert 'resized' in messages and 'channel' in messages
  with pytest.raises(ValueError, match='space'):
    _inverter(pieces, space='z')


def test_encoder_layout_and_start(pieces):
  config, g, *_ = pieces
  enc = encoder_lib.Encoder(num_ws=g.num_ws, w_dim=g.w_dim, width=8, channel_max=16, hidden=32)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 1)), jnp.float32)
  params = enc.init(jax.random.key(0), x)['params']
  out = enc.apply({'params': params}, x)
  assert out.shape == (3, g.num_ws, g.w_dim)
  np.testing.assert_array_equal(np.asarray(out), 0.0)  # untrained: w_avg
  params = jax.tree.map(lambda p: p + 0.1, params)
  offsets, (base, deltas) = enc.apply({'params': params}, x, return_parts=True)
  np.testing.assert_allclose(np.asarray(offsets), np.asarray(base[:, None] + deltas), atol=1e-6)
  inv = _inverter(pieces, start='encoder', steps=0)
  assert inv.start == 'w_avg'  # no encoder given
  with pytest.raises(ValueError, match='square'):
    enc.apply({'params': params}, jnp.zeros((1, 16, 8, 1)))


def _normalized(n):
  n = n - n.mean(axis=(1, 2, 3), keepdims=True)
  return n / np.sqrt(np.mean(n**2, axis=(1, 2, 3), keepdims=True))


def test_encoder_noise_maps_start_the_projector(pieces):
  """An encoder with noise=True: its residuals land on the generator's maps block by block (numpy reference), an
  untrained one leaves the constant maps, the projector starts from them (normalised per map) and, without
  optimize_noise, holds them fixed while it moves w."""
  config, g, *_ = pieces
  enc = encoder_lib.Encoder(num_ws=g.num_ws, w_dim=g.w_dim, width=8, channel_max=16, hidden=32, noise=True)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 1)), jnp.float32)
  params = enc.init(jax.random.key(0), x)['params']
  inv0 = _inverter(pieces, steps=0)
  template = inv0.noise_template()
  _, residuals = enc.apply({'params': params}, x, return_noise=True)
  assert sorted(residuals) == [4, 8, 16] and all(residuals[r].shape == (3, r, r, 2) for r in residuals)
  untrained = encoder_lib.noise_inputs(template, residuals)
  jax.tree.map(lambda a, t: np.testing.assert_array_equal(np.asarray(a), np.broadcast_to(t, a.shape)), untrained,
               template)
  params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)
  _, residuals = enc.apply({'params': params}, x, return_noise=True)
  maps = encoder_lib.noise_inputs(template, residuals)
  for block, convs in template['synthesis_network'].items():
    r = int(block[1:])
    for conv, leaf in convs.items():
      k = int(conv[-1])
      want = np.asarray(leaf['noise']['noise']) + np.asarray(residuals[r])[..., k:k + 1]
      np.testing.assert_allclose(np.asarray(maps['synthesis_network'][block][conv]['noise']['noise']), want, rtol=1e-6)
  with pytest.raises(ValueError, match='16 px block'):
    encoder_lib.noise_inputs(template, {4: residuals[4], 8: residuals[8]})
  with pytest.raises(ValueError, match='noise=True'):
    encoder_lib.Encoder(num_ws=g.num_ws, w_dim=g.w_dim, width=8, channel_max=16, hidden=32).apply({'params': params}, x,
                                                                                                  return_noise=True)

  _, g_, g_params, g_stats, model, variables = pieces
  # an untrained G ignores its noise (strength 0): give the maps a say
  g_params = jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.5 if 'noise_strength' in jax.tree_util.keystr(path) else p, g_params)
  images = np.asarray(x)
  make = lambda **kw: invert.Inverter(g_, g_params, g_stats, model, variables,
                                      ml_collections.ConfigDict({
                                          **config.invert.to_dict(), 'start': 'encoder',
                                          **kw
                                      }), encoder=enc, encoder_params=params)
  start = make(steps=0)(images)
  offsets = np.asarray(enc.apply({'params': params}, x))
  np.testing.assert_allclose(start['ws'], np.asarray(inv0.w_avg) + offsets, rtol=1e-6, atol=1e-6)
  want_noise = jax.tree.map(lambda n: _normalized(np.asarray(n, np.float64)), maps)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), start['noise'], want_noise)
  direct = make(steps=0).synthesize(jnp.asarray(start['ws']), jax.tree.map(jnp.asarray, start['noise']))
  assert np.abs(np.asarray(direct) - np.asarray(make(steps=0).synthesize(jnp.asarray(start['ws'])))).max() > 1e-3
  np.testing.assert_allclose(start['reconstructions'], np.asarray(direct), atol=1e-5)
  held = make(steps=3, optimize_noise=False)(images)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), held['noise'], start['noise'])
  assert np.abs(held['ws'] - start['ws']).max() > 1e-3  # w moved
  moved = make(steps=3, optimize_noise=True)(images)
  assert max(
      np.abs(a - b).max() for a, b in zip(jax.tree.leaves(moved['noise']), jax.tree.leaves(start['noise']))) > 1e-3


def test_loss_terms_against_numpy():
  rng = np.random.default_rng(0)
  lp, lq = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  p, q = scipy.special.softmax(lp, -1), scipy.special.softmax(lq, -1)
  np.testing.assert_allclose(np.asarray(reconstruction.kl_divergence(lp, lq)), np.sum(p * np.log(p / q), -1), rtol=1e-5)
  ws = rng.normal(size=(2, 5, 3))
  np.testing.assert_allclose(np.asarray(reconstruction.delta_penalty(ws)), [np.mean((w - w.mean(0))**2) for w in ws],
                             rtol=1e-5)
  fa, fb = rng.normal(size=(2, 4, 4, 6)), rng.normal(size=(2, 4, 4, 6))
  na = fa / np.linalg.norm(fa, axis=-1, keepdims=True)
  nb = fb / np.linalg.norm(fb, axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(reconstruction.normalized_feature_distance(fa, fb)),
                             ((na - nb)**2).sum(-1).mean((1, 2)), rtol=1e-4)
  noise = {'a': rng.normal(size=(2, 16, 16, 1)), 'b': rng.normal(size=(2, 8, 8, 1))}
  expected = np.zeros(2)
  for n in noise.values():
    n = n[..., 0]
    while True:  # NVIDIA's projector.py loop, per image
      for i in range(2):
        expected[i] += np.mean(n[i] * np.roll(n[i], 1, axis=1))**2 + np.mean(n[i] * np.roll(n[i], 1, axis=0))**2
      if n.shape[1] <= 8:
        break
      n = n.reshape(2, n.shape[1] // 2, 2, n.shape[2] // 2, 2).mean(axis=(2, 4))
  np.testing.assert_allclose(np.asarray(reconstruction.noise_regularization(noise)), expected, rtol=1e-5)
  normed = reconstruction.normalize_noise(noise)
  np.testing.assert_allclose(np.asarray(normed['a']).reshape(2, -1).std(1), 1.0, rtol=1e-5)
  x, y = rng.uniform(-1, 1, (2, 16, 16, 1)), rng.uniform(-1, 1, (2, 16, 16, 1))
  loss, terms = reconstruction.reconstruction_loss(x, y, jnp.asarray(ws), jnp.zeros(3),
                                                   dict(mse=2.0, l1=0.5, delta=1.0, w_l2=0.0))
  assert set(terms) == {'mse', 'l1', 'delta'}
  np.testing.assert_allclose(
      np.asarray(loss), 2 * ((x - y)**2).mean((1, 2, 3)) + 0.5 * np.abs(x - y).mean(
          (1, 2, 3)) + np.asarray(reconstruction.delta_penalty(ws)), rtol=1e-5)


def test_nvidia_learning_rate_schedule():
  # projector.py: lr_ramp = min(1, (1 - t) / 0.25); 0.5 - 0.5 cos(lr_ramp pi); * min(1, t / 0.05)
  for t in (0.01, 0.3, 0.9):
    ramp = min(1.0, (1 - t) / 0.25)
    ref = 0.1 * (0.5 - 0.5 * np.cos(ramp * np.pi)) * min(1.0, t / 0.05)
    np.testing.assert_allclose(float(invert.learning_rate(jnp.float32(t), 0.1, 'nvidia', 0.05, 0.25)), ref, rtol=1e-5)


def test_projector_schedule_settings():
  """benchmarks/projector_schedule.py parses steps:lr:schedule and refuses anything else with the fix."""
  from benchmarks import projector_schedule as ps
  assert ps.parse_setting('100:0.3:cosine') == (100, 0.3, 'cosine')
  assert ps.parse_setting('20:0.1:constant') == (20, 0.1, 'constant')
  for bad in ('100:0.3', '0:0.3:cosine', '10:-1:cosine', '10:0.1:linear', 'a:b:cosine', '1:0.1:cosine:x',
              '10:nan:cosine'):
    with pytest.raises(ValueError, match='--setting'):
      ps.parse_setting(bad)
