"""The classifier stage: sharded step equivalence (1 vs 8 devices), loss against numpy, end-to-end smoke run
with metrics, resume without retraining, resume continuing exactly, and clear errors on config/data mismatch."""
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import demo
from stylex_jax import sharding
from stylex_jax.models import classifier as classifier_lib
from stylex_jax.stages import classifier as stage
from stylex_jax.train import classifier as classifier_train


def _smoke_config(data_dir, **overrides):
  config = demo.get_config('smoke')
  config.data.data_dir = str(data_dir)
  for key, value in overrides.items():
    group, name = key.split('.')
    config[group][name] = value
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('tfds')


def _one_step(num_devices, batch):
  config = demo.get_config('smoke')
  model = stage.build_model(config)
  # plain SGD: Adam turns float-noise-sized gradients (e.g. of zero-initialised scales) into +-lr steps, which
  # would hide real sharding differences behind optimizer amplification
  tx = optax.sgd(0.05)
  mesh = sharding.make_mesh(num_devices)
  rep = sharding.replicated(mesh)
  state = sharding.jit_init(functools.partial(classifier_train.create_state, model, tx, (32, 32, 1)),
                            rep)(jax.random.key(0))
  step = jax.jit(functools.partial(classifier_train.train_step, model=model, tx=tx),
                 in_shardings=(rep, sharding.data_sharding(mesh), rep), out_shardings=(rep, rep))
  weights = jnp.ones([2], jnp.float32)
  for _ in range(2):
    state, metrics = step(state, sharding.shard_batch(batch, mesh), weights)
  return jax.device_get(state.params), jax.device_get(state.batch_stats), jax.device_get(metrics)


def test_step_on_1_and_8_devices_agree():
  rng = np.random.default_rng(0)
  batch = dict(image=rng.uniform(-1, 1, (16, 32, 32, 1)).astype(np.float32), label=rng.integers(0, 2,
                                                                                                16).astype(np.int32))
  p1, s1, m1 = _one_step(1, batch)
  p8, s8, m8 = _one_step(8, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), p1, p8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5), s1, s8)
  np.testing.assert_allclose(m1['train_loss'], m8['train_loss'], rtol=1e-5)


def test_weighted_smoothed_loss_matches_numpy():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(7, 3)).astype(np.float32)
  labels = rng.integers(0, 3, 7)
  weights = np.array([0.5, 2.0, 1.0], np.float32)
  eps = 0.1
  targets = np.eye(3)[labels] * (1 - eps) + eps / 3
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  per = -(targets * logp).sum(-1)
  expected = (per * weights[labels]).sum() / weights[labels].sum()
  got = classifier_train._loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights), eps)
  np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_class_weights_are_inverse_frequency():

  class FakePipeline:
    labels = np.array([0, 0, 0, 1])

  w = classifier_train.class_weights(FakePipeline, 2, True)
  np.testing.assert_allclose(w, [4 / (2 * 3), 4 / (2 * 1)], rtol=1e-6)
  np.testing.assert_array_equal(classifier_train.class_weights(FakePipeline, 2, False), [1, 1])
  with pytest.raises(ValueError, match='no examples of classes'):
    classifier_train.class_weights(FakePipeline, 3, True)


def test_learning_rate_schedule_warmup_then_cosine():
  config = demo.get_config('')
  opt = config.classifier.optimizer
  sched = classifier_train.learning_rate_schedule(opt, 1000)
  w = opt.warmup_steps
  np.testing.assert_allclose(sched(w // 2), opt.learning_rate * (w // 2) / w, rtol=1e-5)
  np.testing.assert_allclose(sched(w), opt.learning_rate, rtol=1e-5)
  end = opt.learning_rate * opt.end_learning_rate_factor
  mid = w + (1000 - w) // 2
  np.testing.assert_allclose(sched(mid), end + (opt.learning_rate - end) * 0.5, rtol=1e-3)


def _read(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_stage_trains_writes_metrics_and_does_not_retrain(data_dir, tmp_path, capsys):
  config = _smoke_config(data_dir)
  summary = stage.train_and_evaluate(config, str(tmp_path))
  assert summary['step'] == config.classifier.num_steps
  rows = _read(tmp_path / 'classifier' / 'metrics.jsonl')
  evals = [r for r in rows if 'accuracy' in r]
  assert evals and all(set(r) >= {'accuracy', 'auc', 'qwk', 'confusion_matrix'} for r in evals)
  assert any('train_loss' in r and 'images_per_sec' in r for r in rows)
  assert any('test_accuracy' in r for r in rows)
  cm = np.asarray(evals[-1]['confusion_matrix'])
  assert cm.shape == (2, 2) and cm.sum() == evals[-1]['num_examples']
  n_rows = len(rows)
  again = stage.train_and_evaluate(config, str(tmp_path))
  assert 'not retraining' in capsys.readouterr().out
  assert again == json.loads((tmp_path / 'classifier' / 'summary.json').read_text())
  assert len(_read(tmp_path / 'classifier' / 'metrics.jsonl')) == n_rows


def test_resumed_run_continues_exactly(data_dir, tmp_path):
  config = _smoke_config(data_dir, **{'classifier.eval_every': 100})
  full = stage.train_and_evaluate(config, str(tmp_path / 'full'))
  part = stage.train_and_evaluate(config, str(tmp_path / 'split'), max_steps_this_run=3)
  assert part == dict(stage='classifier', step=3, complete=False)
  resumed = stage.train_and_evaluate(config, str(tmp_path / 'split'))
  last = lambda d: [r for r in _read(tmp_path / d / 'classifier' / 'metrics.jsonl') if 'train_loss' in r][-1]
  a, b = last('full'), last('split')
  assert a['step'] == b['step'] == config.classifier.num_steps
  np.testing.assert_allclose(a['train_loss'], b['train_loss'], rtol=1e-5)
  for key in ('accuracy', 'auc', 'log_loss', 'test_accuracy'):
    np.testing.assert_allclose(full[key], resumed[key], rtol=1e-5)


def test_rgb_data_with_one_channel_config_is_a_clear_error(data_dir, tmp_path):
  config = _smoke_config(data_dir, **{'data.dataset': 'synthetic_histology', 'data.label_threshold': -1})
  with pytest.raises(ValueError, match='channel'):
    stage.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / 'classifier' / 'checkpoints' / '0')


def test_checkpoint_from_another_config_is_refused(data_dir, tmp_path):
  stage.train_and_evaluate(_smoke_config(data_dir, **{'classifier.num_steps': 3}), str(tmp_path))
  before = sorted(os.listdir(tmp_path / 'classifier' / 'checkpoints'))
  other = _smoke_config(data_dir, **{'classifier.num_steps': 6})
  other.classifier.model = dict(preset='demo', width=8)
  with pytest.raises(ValueError, match='another config'):
    stage.train_and_evaluate(other, str(tmp_path))
  assert sorted(os.listdir(tmp_path / 'classifier' / 'checkpoints')) == before


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


def test_nan_batch_skips_the_update_and_the_next_clean_step_is_exact():
  """One NaN pixel (on one of 8 devices) poisons the loss of the whole global batch: the update is skipped
  (params, BatchNorm statistics and AdamW state bit for bit as before, the step counter advances), and the next
  clean step gives exactly what the clean step gives from the state the NaN batch never touched."""
  config = demo.get_config('smoke')
  model = classifier_lib.create_classifier('demo', num_classes=2, stage_sizes=(1,), width=4)  # compiles fast
  tx = classifier_train.build_optimizer(config.classifier.optimizer, 10)
  mesh = sharding.make_mesh(8)
  rep, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
  state = jax.jit(functools.partial(classifier_train.create_state, model, tx, (16, 16, 1)),
                  out_shardings=rep)(jax.random.key(0))
  step = jax.jit(functools.partial(classifier_train.train_step, model=model, tx=tx), in_shardings=(rep, data, rep),
                 out_shardings=(rep, rep))
  rng = np.random.default_rng(0)
  batch = lambda: dict(image=rng.uniform(-1, 1, (16, 16, 16, 1)).astype(np.float32), label=rng.integers(0, 2, 16).
                       astype(np.int32))
  weights = jnp.ones([2], jnp.float32)
  state, metrics = step(state, batch(), weights)  # past the first warm-up step (lr 0): non-trivial Adam moments
  assert int(metrics['nonfinite']) == 0
  poisoned, clean = batch(), batch()
  poisoned['image'][11, 5, 7, 0] = np.nan
  skipped, m_skip = step(state, poisoned, weights)
  assert int(m_skip['nonfinite']) == 1 and not np.isfinite(float(m_skip['train_loss']))
  assert int(skipped.step) == int(state.step) + 1
  _assert_trees_equal(skipped.replace(step=state.step), state)
  after, m_after = step(skipped, clean, weights)
  reference, m_ref = step(state, clean, weights)
  assert int(m_after['nonfinite']) == 0 and int(after.step) == int(reference.step) + 1
  _assert_trees_equal(after.replace(step=reference.step), reference)
  assert float(m_after['train_loss']) == float(m_ref['train_loss'])
  assert not np.array_equal(jax.device_get(after.params['head']['kernel']),
                            jax.device_get(state.params['head']['kernel']))


def test_a_run_of_nan_batches_restores_then_stops_with_a_clear_error(data_dir, tmp_path, monkeypatch, capsys):
  """Loop level: every batch from data position 2 on has NaN pixels. With patience 1, the second skipped step in
  a row restores the last checkpoint at half the learning rate (on_nonfinite='restore'); the replay meets the same
  batches and, restores exhausted, the stage stops with one clear ValueError. Checkpoints hold finite states only."""
  from stylex_jax import checkpointing
  from stylex_jax.data import pipeline as pipeline_lib
  with pytest.raises(ValueError, match='on_nonfinite'):
    stage.train_and_evaluate(_smoke_config(data_dir, **{'classifier.on_nonfinite': 'skip'}), str(tmp_path))
  config = _smoke_config(
      data_dir, **{
          'classifier.checkpoint_every': 2,
          'classifier.nonfinite_patience': 1,
          'classifier.on_nonfinite': 'restore',
          'classifier.nonfinite_max_restores': 1,
          'data.image_size': 16
      })
  config.classifier.model = dict(preset='demo', stage_sizes=(1,), width=4)  # compiles fast
  batch = pipeline_lib.Pipeline.batch

  def poisoned(self, step):
    out = batch(self, step)
    return {**out, 'image': np.full_like(out['image'], np.nan)} if step >= 2 else out

  monkeypatch.setattr(pipeline_lib.Pipeline, 'batch', poisoned)
  with pytest.raises(checkpointing.NonFiniteError) as error:
    stage.train_and_evaluate(config, str(tmp_path))
  message = str(error.value)
  assert isinstance(error.value, ValueError) and '\n' not in message
  assert message.startswith('[classifier] 2 training steps in a row had a NaN/Inf loss or gradient (steps 3-4')
  assert 'after 1 restore(s)' in message and '--config.classifier.optimizer.learning_rate=' in message
  assert 'restoring the last checkpoint with the learning rate x0.5' in capsys.readouterr().out
  rows = _read(tmp_path / 'classifier' / 'metrics.jsonl')
  assert [r['nonfinite_steps'] for r in rows if 'nonfinite_steps' in r] == [0]  # step 2; it stopped at step 4
  with checkpointing.Checkpointer(str(tmp_path / 'classifier' / 'checkpoints')) as ckpt:
    assert ckpt.all_steps() == [2]
