"""The `gan` stage: one full iteration (all four steps) agrees on 1 and 8 devices, ADA p moves as the rule
says, a resumed run equals the uninterrupted one, outputs are written, and bad configs fail before compiling."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from stylex_jax import sharding
from stylex_jax.stages import gan as gan_stage
from stylex_jax.train import gan


def _tiny_config(data_dir=None, **overrides):
  config = demo.get_config('smoke')
  config.data.image_size = 16
  if data_dir is not None:
    config.data.data_dir = str(data_dir)
  g = config.gan
  g.generator = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)
  g.discriminator = dict(channel_base=128, channel_max=16, mbstd_group_size=2)
  g.batch_size = 16
  g.num_steps = 4
  g.log_every = 2
  g.sample_every = 2
  g.eval_every = 4
  g.eval_images = 16
  g.checkpoint_every = 2
  g.ada_interval = 2
  g.r1_interval = 2
  g.pl_interval = 2
  for key, value in overrides.items():
    g[key] = value
  return config


def _setup(num_devices):
  config = _tiny_config()
  mesh = sharding.make_mesh(num_devices)
  models = gan.build_models(config, mesh)
  rep = sharding.replicated(mesh)
  state = sharding.jit_init(functools.partial(gan.create_state, models, initial_p=0.3), rep)(jax.random.key(0))
  return mesh, gan.StepFunctions(config, models, mesh), state


@pytest.fixture(scope='module')
def one_device():
  return _setup(1)


def _iterate(setup, reals, step):
  mesh, steps, state = setup
  state = jax.tree.map(jnp.copy, state)  # the steps donate their input state
  reals = sharding.shard_batch({'image': reals}, mesh)['image']
  state, metrics = steps.iteration(state, reals, jax.random.key(1), step)
  return jax.device_get(state), jax.device_get(metrics)


def test_full_iteration_on_1_and_8_devices_agree(one_device):
  reals = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32)
  s1, m1 = _iterate(one_device, reals, step=2)  # step 2: G main + path length + D main + R1
  s8, m8 = _iterate(_setup(8), reals, step=2)
  assert {'g_loss', 'pl_penalty', 'd_loss', 'r1_penalty'} <= set(m1)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-3, atol=1e-5, err_msg=k)
  for name in ('g_params', 'g_ema', 'd_params', 'g_stats'):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=2e-5), getattr(s1, name),
                 getattr(s8, name))
  assert int(s1.step) == 1 and float(s1.pl_mean) != 0.0


def test_ada_p_follows_the_sign_rule(one_device):
  mesh, steps, state = one_device
  state = jax.tree.map(jnp.copy, state)
  reals = np.random.default_rng(1).uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32)
  signs = []
  for _ in range(2):  # the tiny config adapts p every 2 steps
    state, m = steps.d_main(state, reals, jax.random.key(2))
    signs.append(float(m['rt']))
    if not signs[1:]:
      assert float(state.ada_p) == pytest.approx(0.3) and float(state.ada_count) == 16
  rt = np.mean(signs)
  g = _tiny_config().gan
  expected = np.clip(0.3 + np.sign(rt - g.ada_target) * 16 * 2 / (g.ada_kimg * 1000), 0, 1)
  np.testing.assert_allclose(float(state.ada_p), expected, rtol=1e-6)
  assert float(state.ada_count) == 0.0 and float(state.ada_sum) == 0.0


def test_without_ada_d_sees_the_images_unchanged_and_p_stays():
  """configs/demo.py trains without ADA (augment 'none', ada_target 0): D's logits in the step are D applied to
  the unaugmented reals, and p and its accumulators never adapt."""
  assert (demo.get_config().gan.augment, demo.get_config().gan.ada_target) == ('none', 0.0)
  config = _tiny_config(augment='none', ada_target=0.0, ada_interval=1)
  mesh = sharding.make_mesh(1)
  models = gan.build_models(config, mesh)
  assert models.augment is None
  state = sharding.jit_init(functools.partial(gan.create_state, models, initial_p=0.0),
                            sharding.replicated(mesh))(jax.random.key(0))
  reals = np.random.default_rng(3).uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32)
  direct = models.discriminator.apply({'params': state.d_params}, reals).reshape(16)
  steps = gan.StepFunctions(config, models, mesh)
  for i in range(2):
    state, m = steps.d_main(state, reals, jax.random.key(4))
    if i == 0:
      np.testing.assert_allclose(float(m['real_logits']), float(np.mean(direct)), rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(float(m['rt']), float(np.mean(np.sign(direct))))
  assert float(state.ada_p) == 0.0


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def test_stage_outputs_and_resume_equals_uninterrupted(data_dir, tmp_path):
  config = _tiny_config(data_dir)
  config.num_devices = 2  # 1 vs 8 devices is checked above; here the stage's bookkeeping
  full = gan_stage.train_and_evaluate(config, str(tmp_path / 'full'))
  part = gan_stage.train_and_evaluate(config, str(tmp_path / 'split'), max_steps_this_run=2)
  assert part['complete'] is False and part['step'] == 2
  resumed = gan_stage.train_and_evaluate(config, str(tmp_path / 'split'))
  assert full['step'] == resumed['step'] == 4
  rows = lambda d: [json.loads(l) for l in open(tmp_path / d / 'gan' / 'metrics.jsonl')]
  last_full = [r for r in rows('full') if 'g_loss' in r][-1]
  last_split = [r for r in rows('split') if 'g_loss' in r][-1]
  for k in ('g_loss', 'd_loss', 'ada_p', 'pl_mean'):
    np.testing.assert_allclose(last_full[k], last_split[k], rtol=1e-4, err_msg=k)
  samples = sorted(os.listdir(tmp_path / 'full' / 'gan' / 'samples'))
  assert samples and samples == sorted(os.listdir(tmp_path / 'split' / 'gan' / 'samples'))
  a = open(tmp_path / 'full' / 'gan' / 'samples' / samples[-1], 'rb').read()
  b = open(tmp_path / 'split' / 'gan' / 'samples' / samples[-1], 'rb').read()
  assert a == b
  assert 'fid_classifier' not in full  # no classifier checkpoint in this workdir
  again = gan_stage.train_and_evaluate(config, str(tmp_path / 'full'))
  assert again == full
  _check_generate_cli(config, tmp_path / 'full')


def _check_generate_cli(config, workdir):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = [
      sys.executable,
      os.path.join(root, 'launch', 'generate.py'), '--config',
      os.path.join(root, 'configs', 'demo.py:smoke'), '--config.data.image_size=16', '--config.num_devices=2',
      f'--config.data.data_dir={config.data.data_dir}', '--workdir',
      str(workdir), '--seeds', '0-2', '--truncation', '0.7', '--mix_rows', '0-1', '--mix_cols', '2-3', '--mix_layers',
      '0-1'
  ]
  for k in ('generator', 'discriminator'):
    for name, value in config.gan[k].items():
      args.append(f'--config.gan.{k}.{name}={value}')
  proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr[-2000:]
  names = sorted(os.listdir(workdir / 'generate'))
  assert names == ['seed0000.png', 'seed0001.png', 'seed0002.png', 'seeds.png', 'style_mixing.png']


@pytest.mark.parametrize('field,value,match', [
    ('image_size', 24, 'power of two'),
    ('batch_size', 12, 'divisible'),
])
def test_bad_configs_fail_before_compiling(field, value, match):
  config = _tiny_config()
  if field == 'image_size':
    config.data.image_size = value
  else:
    config.gan[field] = value
  with pytest.raises(ValueError, match=match):
    gan.check_config(config, sharding.make_mesh(8))


def test_knee_oracle_metrics_on_real_phantoms():
  from stylex_jax.data import phantoms
  from stylex_jax.evaluate import realism
  imgs = np.stack([phantoms.knee_radiograph(s, 64)[0] for s in range(12)]).astype(np.float32) / 127.5 - 1
  same = realism.knee_oracle_metrics(imgs[:6], imgs[6:])
  assert same['joint_found_rate'] == 1.0 and same['real_joint_found_rate'] == 1.0
  assert same['jsw_wasserstein'] < 2.0
  blank = realism.knee_oracle_metrics(imgs[:6], np.full_like(imgs[6:], -1.0))
  assert blank['joint_found_rate'] == 0.0 and np.isnan(blank['jsw_wasserstein'])


def _random_generator():
  config = _tiny_config()
  models = gan.build_models(config)
  state = gan.create_state(models, jax.random.key(5))
  # give w_avg a non-zero value so truncation is visible
  stats = jax.tree.map(lambda w: w + 0.5, state.g_stats)
  return models, state.g_ema, stats


def test_images_from_seeds_are_per_seed_and_truncate_to_w_avg():
  models, g_ema, stats = _random_generator()
  a = gan_stage.images_from_seeds(models.generator, g_ema, stats, [3, 7, 11], batch_size=2)
  b = gan_stage.images_from_seeds(models.generator, g_ema, stats, [11, 3], batch_size=8)
  np.testing.assert_allclose(a[0], b[1], atol=1e-5)
  np.testing.assert_allclose(a[2], b[0], atol=1e-5)
  assert a.shape == (3, 16, 16, 1) and np.all(np.abs(a) <= 1)
  psi0 = gan_stage.images_from_seeds(models.generator, g_ema, stats, [1, 2], truncation_psi=0.0)
  np.testing.assert_allclose(psi0[0], psi0[1], atol=1e-5)  # every latent collapses to w_avg


def test_style_mixing_grid_layout():
  models, g_ema, stats = _random_generator()
  num_ws = models.generator.num_ws
  plain = gan_stage.images_from_seeds(models.generator, g_ema, stats, [1, 2, 5, 6, 7])
  grid = gan_stage.style_mixing_grid(models.generator, g_ema, stats, [1, 2], [5, 6, 7], range(num_ws))
  assert grid.shape == (3, 4, 16, 16, 1)
  np.testing.assert_array_equal(grid[0, 0], -1.0)
  np.testing.assert_allclose(grid[0, 1:], plain[2:], atol=1e-5)
  np.testing.assert_allclose(grid[1:, 0], plain[:2], atol=1e-5)
  np.testing.assert_allclose(grid[1, 2], plain[3], atol=1e-5)  # all layers from the column seed
  partial = gan_stage.style_mixing_grid(models.generator, g_ema, stats, [1], [5], [0])
  assert not np.allclose(partial[1, 1], plain[0], atol=1e-5) and not np.allclose(partial[1, 1], plain[2], atol=1e-5)
  with pytest.raises(ValueError, match='mix_layers'):
    gan_stage.style_mixing_grid(models.generator, g_ema, stats, [1], [2], [num_ws])


def test_load_generator_without_checkpoint_names_the_stage(tmp_path):
  with pytest.raises(FileNotFoundError, match='run the gan stage'):
    gan_stage.load_generator(str(tmp_path), _tiny_config())


def test_all_four_steps_agree_with_native_and_im2col_convolutions(one_device):
  """config.gan.reg_convolutions / main_convolutions change how the steps are computed, never what: G main,
  path length, D main and R1 give the same losses, penalties and updates with XLA's convolution and with im2col."""
  mesh, _, state = one_device
  reals = sharding.shard_batch({'image': np.random.default_rng(2).uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32)},
                               mesh)['image']
  results = {}
  for mode in ('native', 'im2col'):
    config = _tiny_config(reg_convolutions=mode, main_convolutions=mode)
    assert gan.uses_im2col(config) == gan.uses_im2col(config, 'main_convolutions') == (mode == 'im2col')
    steps = gan.StepFunctions(config, gan.build_models(config, mesh), mesh)
    s, m_g = steps.g_main(jax.tree.map(jnp.copy, state), jax.random.key(3))
    s, m_pl = steps.g_reg(s, jax.random.key(3))
    s, m_d = steps.d_main(s, reals, jax.random.key(3))
    s, m_r1 = steps.d_reg(s, reals, jax.random.key(3))
    results[mode] = jax.device_get((s, {**m_g, **m_pl, **m_d, **m_r1}))
  (s_n, m_n), (s_i, m_i) = results['native'], results['im2col']
  assert {'pl_penalty', 'r1_penalty', 'g_loss', 'd_loss'} <= set(m_n)
  for k in m_n:
    np.testing.assert_allclose(m_i[k], m_n[k], rtol=1e-4, atol=1e-6, err_msg=k)
  for name in ('g_params', 'd_params'):
    # Adam's first update is lr * g / (|g| + eps): where |g| ~ eps, float rounding moves it by up to ~1e-5
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5), getattr(s_i, name),
                 getattr(s_n, name))
  with pytest.raises(ValueError, match='main_convolutions'):
    gan.check_config(_tiny_config(main_convolutions='fast'), mesh)


def test_auto_main_convolutions_use_im2col_only_for_wide_models_at_batch_16_on_cpu():
  """'auto' picks im2col for the main steps where it was measured to pay (256 channels, batch 16), and keeps the
  native convolution for the demo (64 channels, batch 4: im2col is slower there, and the demo's GAN stays the
  same computation); the regularisers' 'auto' is im2col on CPU whatever the width."""
  assert jax.default_backend() == 'cpu'
  config = demo.get_config('')
  assert config.gan.main_convolutions == 'auto'
  assert not gan.uses_im2col(config, 'main_convolutions') and gan.uses_im2col(config)
  wide = _tiny_config(main_convolutions='auto', batch_size=16)
  for net in (wide.gan.generator, wide.gan.discriminator):
    net.channel_base, net.channel_max = 4096, 256  # the benchmark's architecture: widest layer 256
  assert gan.uses_im2col(wide, 'main_convolutions')
  wide.gan.batch_size = 8
  assert not gan.uses_im2col(wide, 'main_convolutions')
  wide.gan.batch_size = 16
  wide.gan.discriminator.channel_max = 128  # both networks must be wide
  assert not gan.uses_im2col(wide, 'main_convolutions')
  wide.gan.discriminator.channel_max = 256
  wide.gan.generator.channel_base = 512  # 512 / 4 = 128 channels at 4x4
  assert not gan.uses_im2col(wide, 'main_convolutions')
  wide.gan.main_convolutions = 'native'
  wide.gan.generator.channel_base = 4096
  assert not gan.uses_im2col(wide, 'main_convolutions')


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_nan_reals_skip_the_d_steps_exactly_and_g_goes_on(one_device):
  """An iteration on reals with one NaN pixel: D main and lazy R1 skip their updates (D, its Adam state and the
  ADA accumulators bit for bit as before), G main and path length update as on clean data, the step advances and
  `nonfinite` is 1; the next clean D step equals the clean D step from the state the NaN never touched. A NaN in D
  makes G's loss NaN: G main skips too (G, G_ema, w_avg and G's Adam state unchanged)."""
  mesh, steps, state = one_device
  copy = lambda s: jax.tree.map(jnp.copy, s)  # the steps donate their input state
  rng = np.random.default_rng(3)
  clean = rng.uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32)
  poisoned = clean.copy()
  poisoned[4, 2, 9, 0] = np.nan
  shard = lambda x: sharding.shard_batch({'image': x}, mesh)['image']
  key = jax.random.key(1)
  skipped, m = steps.iteration(copy(state), shard(poisoned), key, 2)  # step 2: all four steps run
  m = jax.device_get(m)
  assert (m['nonfinite'], m['nonfinite_g'], m['nonfinite_pl'], m['nonfinite_d'], m['nonfinite_r1']) == (1, 0, 0, 1, 1)
  g_only, _ = steps.g_reg(*steps.g_main(copy(state), key)[:1], key)  # the same G updates, no D step
  reference = g_only.replace(step=g_only.step + 1)
  _assert_trees_equal(skipped, reference)
  changed = lambda a, b: any(not np.array_equal(x, y) for x, y in zip(*map(jax.tree.leaves, jax.device_get((a, b)))))
  assert changed(skipped.g_params, state.g_params)
  after, m_after = steps.d_main(copy(skipped), shard(clean), key)
  expected, m_expected = steps.d_main(reference, shard(clean), key)
  assert int(m_after['nonfinite_d']) == 0 and float(m_after['d_loss']) == float(m_expected['d_loss'])
  _assert_trees_equal(after, expected)
  assert changed(after.d_params, skipped.d_params)
  broken_d = copy(state).replace(d_params=jax.tree.map(lambda p: p * jnp.nan, state.d_params))
  g_skipped, m_g = steps.g_main(copy(broken_d), key)
  assert int(m_g['nonfinite_g']) == 1
  _assert_trees_equal(g_skipped, broken_d)
