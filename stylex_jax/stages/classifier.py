"""The `classifier` stage: trains the model the project explains (ResNet family, binary or multi-class).

`train_and_evaluate` runs the sharded, jitted loop of `train/classifier.py`'s pure steps with resumable orbax
checkpoints and writes `<workdir>/classifier/metrics.jsonl` (train loss/accuracy/learning rate/images per second
every `log_every` steps; `accuracy`, `auc`, `qwk`, `confusion_matrix`, `log_loss`, ... on the eval split every
`eval_every` steps and at the end; `test_*` on the test split at the end; `nonfinite_steps`, the running count of
updates skipped for a NaN/Inf loss or gradient, see `stages/nonfinite.py`) and `<workdir>/classifier/summary.json`.
`load_classifier` gives a later stage the trained model.
"""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from stylex_jax import checkpointing, preemption, sharding, writers
from stylex_jax.models import classifier as classifier_lib
from stylex_jax.stages import checks, common, nonfinite
from stylex_jax.train import classifier as classifier_train

STAGE = 'classifier'
LR_FIELDS = ('optimizer.learning_rate',)  # what config.classifier.on_nonfinite='restore' lowers


def build_model(config: ml_collections.ConfigDict) -> classifier_lib.ResNet:
  """The classifier of `config` (`config.classifier.model` kwargs, `config.data.num_classes` outputs)."""
  return classifier_lib.create_classifier(**dict(config.classifier.model), num_classes=config.data.num_classes)


def config_fingerprint(config: ml_collections.ConfigDict) -> dict:
  """The effective model fields that fix the checkpoint's arrays (a preset and its spelled-out fields match)."""
  model = build_model(config)
  return dict(model={k: getattr(model, k) for k in ('num_classes', 'stage_sizes', 'block', 'width', 'stem', 'norm')},
              channels=int(config.data.channels), grad_clip=bool(config.classifier.optimizer.grad_clip_norm > 0))


def check_config(config: ml_collections.ConfigDict) -> None:
  """One clear error for what the classifier stage would refuse late (batch split, model preset, loop intervals);
  cheap (no data, no compile), so `stages.run` calls it before the first stage."""
  cc = config.classifier
  checks.check_batch('classifier', cc.batch_size, config)
  build_model(config)  # an unknown preset or override, or an invalid field, is a ValueError naming the choices
  checks.check_positive('config.classifier', cc,
                        ('num_steps', 'log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints'))


def _check_data(config, train_data) -> None:
  h, w, c = train_data.image_shape
  if c != config.data.channels:
    raise ValueError(f'the data has {c} channels but config.data.channels={config.data.channels}; '
                     f'set --config.data.channels={c}')
  if train_data.num_classes != config.data.num_classes:
    raise ValueError(f'the data has {train_data.num_classes} classes {tuple(train_data.class_names)} but '
                     f'config.data.num_classes={config.data.num_classes}; set '
                     f'--config.data.num_classes={train_data.num_classes} (or change label_threshold)')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       max_steps_this_run: int | None = None) -> dict:
  """Trains (or resumes) the classifier stage in `<workdir>/classifier/` and returns its summary.

  A stage whose latest checkpoint is at `num_steps` is not retrained: its summary is returned as saved.
  max_steps_this_run: stop (with a checkpoint) after this many steps in this call — for tests and for
  splitting long jobs; a later call continues exactly where this one stopped.
  More than `config.classifier.nonfinite_patience` NaN/Inf steps in a row: `on_nonfinite` ('stop' raises
  `checkpointing.NonFiniteError`, 'restore' resumes from the last checkpoint at a lower learning rate).
  """
  return nonfinite.train_with_restores(STAGE, config, LR_FIELDS,
                                       lambda c: _train_and_evaluate(c, workdir, max_steps_this_run))


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, max_steps_this_run: int | None) -> dict:
  from stylex_jax.data import pipeline as pipeline_lib  # TF lives in data/; imported only when training

  cc = config.classifier
  check_config(config)
  mesh = sharding.make_mesh(config.num_devices or None)
  stage = common.open_stage(STAGE, workdir, cc, config_fingerprint(config))
  if stage.completed is not None:
    return stage.completed
  stage_dir, summary_path, ckpt = stage.directory, stage.summary_path, stage.ckpt

  train_data = pipeline_lib.Pipeline(config.data, config.data.train_split, global_batch_size=cc.batch_size,
                                     seed=config.seed, train=True)
  _check_data(config, train_data)
  eval_data = pipeline_lib.Pipeline(config.data, config.data.eval_split, global_batch_size=cc.batch_size,
                                    seed=config.seed, train=False)

  model = build_model(config)
  tx = classifier_train.build_optimizer(cc.optimizer, cc.num_steps)
  schedule = classifier_train.learning_rate_schedule(cc.optimizer, cc.num_steps)
  replicated = sharding.replicated(mesh)
  init_fn = sharding.jit_init(functools.partial(classifier_train.create_state, model, tx, train_data.image_shape),
                              replicated)
  state = stage.restore_or_init(init_fn, jax.random.key(config.seed), replicated)

  class_weights = jax.device_put(classifier_train.class_weights(train_data, config.data.num_classes, cc.class_balanced),
                                 replicated)
  batch_sharding = sharding.data_sharding(mesh)
  step_fn = jax.jit(
      functools.partial(classifier_train.train_step, model=model, tx=tx, label_smoothing=cc.label_smoothing),
      in_shardings=(replicated, batch_sharding, replicated), out_shardings=(replicated, replicated), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(classifier_train.eval_step, model=model),
                    in_shardings=(replicated, batch_sharding), out_shardings=replicated)

  preemption.install_handler()
  start = int(state.step)
  writer = writers.MetricWriter(stage_dir, resume_step=start)  # drops rows an interrupted run wrote after `start`
  stop = cc.num_steps if max_steps_this_run is None else min(cc.num_steps, start + max_steps_this_run)
  progress = writers.Progress(cc.num_steps, start, cc.batch_size, every=cc.log_every, name=STAGE)
  last_eval = None
  guard = nonfinite.Monitor(stage, cc, LR_FIELDS, closing=(writer, ckpt))
  t_log, n_log = time.perf_counter(), 0
  for step, batch in zip(range(start + 1, stop + 1), train_data.iterate(start)):
    state, train_metrics = step_fn(state, sharding.shard_batch(batch, mesh), class_weights)
    guard.observe(step, train_metrics['nonfinite'])
    n_log += 1
    if step % cc.log_every == 0 or step == stop:
      guard.flush()
      scalars = {k: float(v) for k, v in jax.device_get(train_metrics).items()}
      dt = time.perf_counter() - t_log
      scalars.update(learning_rate=float(schedule(step - 1)), images_per_sec=n_log * cc.batch_size / dt,
                     nonfinite_steps=guard.total)
      writer.write_scalars(step, scalars)
      progress.update(step, dict(loss=scalars['train_loss'], acc=scalars['train_accuracy']))
      t_log, n_log = time.perf_counter(), 0
    if step % cc.eval_every == 0 or step == cc.num_steps:
      last_eval = classifier_train.evaluate(state, eval_data, eval_fn, mesh)
      writer.write_scalars(step, last_eval)
      logging.info('[classifier] step %d eval %s', step, last_eval)
    if stage.save(step, state, last=step == stop):
      break
  guard.flush()
  ckpt.wait_until_finished()

  step = int(state.step)
  if stage.preempted and step < cc.num_steps:
    writer.close()
    ckpt.close()
    stage.raise_if_preempted(step, cc.num_steps)
  summary = None
  if step >= cc.num_steps:
    test_data = pipeline_lib.Pipeline(config.data, config.data.test_split, global_batch_size=cc.batch_size,
                                      seed=config.seed, train=False)
    test = {f'test_{k}': v for k, v in classifier_train.evaluate(state, test_data, eval_fn, mesh).items()}
    writer.write_scalars(step, test)
    summary = dict(stage=STAGE, step=step, **(last_eval or classifier_train.evaluate(state, eval_data, eval_fn, mesh)),
                   **test, checkpoints=ckpt.directory, metrics=os.path.join(stage_dir, 'metrics.jsonl'))
    summary = writers.write_json(summary_path, summary)
    number = lambda k: 'n/a' if summary.get(k) is None else f'{summary[k]:.3f}'  # NaN (one class) is null in JSON
    print(f'[classifier] done at step {step}: accuracy={number("accuracy")} auc={number("auc")} '
          f'test_accuracy={number("test_accuracy")}\n  metrics: {summary["metrics"]}\n'
          f'  checkpoints: {ckpt.directory}\n  summary: {summary_path}')
  writer.close()
  ckpt.close()
  return summary or dict(stage=STAGE, step=step, complete=False)


def load_classifier(workdir: str, config: ml_collections.ConfigDict, mesh=None):
  """Restores the latest classifier of `<workdir>/classifier/checkpoints`: only its parameters and BatchNorm
  statistics (partial restore; the optimiser state is never read).

  Returns (model, variables) with variables = {'params', ['batch_stats']}, replicated on `mesh`, ready for
  `model.apply(variables, images, train=False)` (images [B, H, W, C] in [-1, 1]). No checkpoint ->
  FileNotFoundError naming the stage to run first.
  """
  mesh = mesh or sharding.make_mesh(config.num_devices or None)
  model = build_model(config)
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  variables = jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, *shape), jnp.float32), train=False),
                             jax.random.key(0))
  abstract = checkpointing.abstract_like(
      {
          'params': variables['params'],
          'batch_stats': variables.get('batch_stats', {})
      }, sharding.replicated(mesh))
  if not jax.tree.leaves(abstract['batch_stats']):
    del abstract['batch_stats']
  return model, common.restore_latest(STAGE, workdir, config_fingerprint(config), abstract, 'with the same --workdir')
