"""The `classifier` stage: trains the model the project explains (ResNet family, binary or multi-class).

State, `create_state`, the pure step functions (`train_step`, `eval_step`) and `train_and_evaluate`, which
runs the sharded, jitted loop with resumable orbax checkpoints and writes
`<workdir>/classifier/metrics.jsonl` (train loss/accuracy/learning rate/images per second every `log_every`
steps; `accuracy`, `auc`, `qwk`, `confusion_matrix`, `log_loss`, ... on the eval split every `eval_every` steps and
at the end; `test_*` on the test split at the end) and `<workdir>/classifier/summary.json`.

The steps are written over the global batch: under `jax.jit` with `NamedSharding` the batch axis is split over
the mesh's 'data' axis and XLA inserts the cross-device reductions (BatchNorm statistics, gradient means).
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from stylex_jax import checkpointing, sharding, writers
from stylex_jax.evaluate import metrics as metrics_lib
from stylex_jax.models import classifier as classifier_lib
from stylex_jax.train import stages

STAGE = 'classifier'


@flax.struct.dataclass
class ClassifierState:
  """Everything a resume needs: the data position is `step` (batches are a pure function of it)."""
  step: jax.Array          # int32 scalar: number of optimizer steps taken
  params: Any
  batch_stats: Any         # {} for models without BatchNorm
  opt_state: Any


def build_model(config: ml_collections.ConfigDict) -> classifier_lib.ResNet:
  """The classifier of `config` (`config.classifier.model` kwargs, `config.data.num_classes` outputs)."""
  return classifier_lib.create_classifier(**dict(config.classifier.model),
                                          num_classes=config.data.num_classes)


def build_optimizer(opt_config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warmup then cosine decay; weight decay only on kernels (ndim > 1)."""
  schedule = learning_rate_schedule(opt_config, num_steps)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  chain = []
  if opt_config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
  chain.append(optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2,
                           weight_decay=opt_config.weight_decay, mask=decay_mask))
  return optax.chain(*chain)


def learning_rate_schedule(opt_config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  warmup = min(int(opt_config.warmup_steps), max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=opt_config.learning_rate, warmup_steps=warmup,
      decay_steps=max(num_steps, warmup + 1),
      end_value=opt_config.learning_rate * opt_config.end_learning_rate_factor)


def create_state(model, tx: optax.GradientTransformation, image_shape: tuple[int, int, int],
                 key: jax.Array) -> ClassifierState:
  """Initial state. image_shape: (H, W, C). Pure; jit it with out_shardings to create it sharded."""
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables['params']
  return ClassifierState(step=jnp.zeros((), jnp.int32), params=params,
                         batch_stats=variables.get('batch_stats', {}), opt_state=tx.init(params))


def _loss(logits, labels, class_weights, label_smoothing):
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) \
      if label_smoothing > 0 else jax.nn.one_hot(labels, num_classes)
  per_example = optax.softmax_cross_entropy(logits, targets)
  weights = class_weights[labels]
  return jnp.sum(per_example * weights) / jnp.sum(weights)


def train_step(state: ClassifierState, batch: dict, class_weights: jax.Array, *, model, tx,
               label_smoothing: float = 0.0) -> tuple[ClassifierState, dict]:
  """One optimizer step on the global batch.

  batch: 'image' [B, H, W, C] float32 in [-1, 1], 'label' [B] int32. class_weights: [K] float32 (ones for the
  plain loss). Returns the new state and scalar metrics (train_loss, train_accuracy, grad_norm).
  """
  has_bn = bool(jax.tree.leaves(state.batch_stats))

  def loss_fn(params):
    variables = {'params': params}
    if has_bn:
      variables['batch_stats'] = state.batch_stats
      logits, updates = model.apply(variables, batch['image'], train=True, mutable=['batch_stats'])
      new_stats = updates['batch_stats']
    else:
      logits, new_stats = model.apply(variables, batch['image'], train=True), state.batch_stats
    return _loss(logits, batch['label'], class_weights, label_smoothing), (logits, new_stats)

  (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(train_loss=loss,
                 train_accuracy=jnp.mean(jnp.argmax(logits, -1) == batch['label']),
                 grad_norm=optax.tree.norm(grads))
  return state.replace(step=state.step + 1, params=params, batch_stats=new_stats,
                       opt_state=opt_state), metrics


def eval_step(state: ClassifierState, batch: dict, *, model) -> dict:
  """Probabilities on the global batch (inference mode). Returns 'probs' [B, K], 'label' [B], 'mask' [B]."""
  variables = {'params': state.params}
  if jax.tree.leaves(state.batch_stats):
    variables['batch_stats'] = state.batch_stats
  logits = model.apply(variables, batch['image'], train=False)
  return dict(probs=jax.nn.softmax(logits.astype(jnp.float32), -1), label=batch['label'],
              mask=batch['mask'])


def config_fingerprint(config: ml_collections.ConfigDict) -> dict:
  """The effective model fields that fix the checkpoint's arrays (a preset and its spelled-out fields match)."""
  model = build_model(config)
  return dict(model={k: getattr(model, k) for k in ('num_classes', 'stage_sizes', 'block', 'width', 'stem', 'norm')},
              channels=int(config.data.channels),
              grad_clip=bool(config.classifier.optimizer.grad_clip_norm > 0))


def _class_weights(pipeline, num_classes: int, balanced: bool) -> np.ndarray:
  if not balanced:
    return np.ones([num_classes], np.float32)
  counts = np.bincount(np.asarray(pipeline.labels), minlength=num_classes).astype(np.float64)
  if np.any(counts == 0):
    raise ValueError(f'class_balanced=True but the train split has no examples of classes '
                     f'{np.flatnonzero(counts == 0).tolist()}; set --config.classifier.class_balanced=False '
                     'or check config.data.num_classes / label_threshold')
  return (counts.sum() / (num_classes * counts)).astype(np.float32)


def evaluate(state, pipeline, eval_fn, mesh) -> dict:
  """Runs `eval_fn` over every example of `pipeline` once; returns `metrics.classification_metrics`."""
  probs, labels, masks = [], [], []
  for batch in pipeline.eval_batches():
    out = eval_fn(state, sharding.shard_batch({k: batch[k] for k in ('image', 'label', 'mask')}, mesh))
    out = jax.device_get(out)
    probs.append(out['probs']), labels.append(out['label']), masks.append(out['mask'])
  probs, labels, masks = np.concatenate(probs), np.concatenate(labels), np.concatenate(masks)
  return metrics_lib.classification_metrics(labels, probs, mask=masks)


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
  """
  from stylex_jax.data import pipeline as pipeline_lib  # TF lives in data/; imported only when training

  cc = config.classifier
  mesh = sharding.make_mesh(config.num_devices or None)
  sharding.check_global_batch(cc.batch_size, mesh)
  stage = stages.open_stage(STAGE, workdir, cc, config_fingerprint(config))
  if stage.completed is not None:
    return stage.completed
  stage_dir, summary_path, ckpt = stage.directory, stage.summary_path, stage.ckpt

  train_data = pipeline_lib.Pipeline(config.data, config.data.train_split, global_batch_size=cc.batch_size,
                                     seed=config.seed, train=True)
  _check_data(config, train_data)
  eval_data = pipeline_lib.Pipeline(config.data, config.data.eval_split, global_batch_size=cc.batch_size,
                                    seed=config.seed, train=False)

  model = build_model(config)
  tx = build_optimizer(cc.optimizer, cc.num_steps)
  schedule = learning_rate_schedule(cc.optimizer, cc.num_steps)
  replicated = sharding.replicated(mesh)
  init_fn = jax.jit(functools.partial(create_state, model, tx, train_data.image_shape),
                    out_shardings=replicated)
  state = stage.restore_or_init(init_fn, jax.random.key(config.seed), replicated)

  class_weights = jax.device_put(_class_weights(train_data, config.data.num_classes, cc.class_balanced),
                                 replicated)
  batch_sharding = sharding.data_sharding(mesh)
  step_fn = jax.jit(functools.partial(train_step, model=model, tx=tx, label_smoothing=cc.label_smoothing),
                    in_shardings=(replicated, batch_sharding, replicated),
                    out_shardings=(replicated, replicated), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, model=model), in_shardings=(replicated, batch_sharding),
                    out_shardings=replicated)

  writer = writers.MetricWriter(stage_dir)
  checkpointing.install_preemption_handler()
  start = int(state.step)
  stop = cc.num_steps if max_steps_this_run is None else min(cc.num_steps, start + max_steps_this_run)
  progress = writers.Progress(cc.num_steps, start, cc.batch_size, every=cc.log_every, name=STAGE)
  last_eval = None
  t_log, n_log = time.perf_counter(), 0
  for step, batch in zip(range(start + 1, stop + 1), train_data.iterate(start)):
    state, train_metrics = step_fn(state, sharding.shard_batch(batch, mesh), class_weights)
    n_log += 1
    if step % cc.log_every == 0 or step == stop:
      scalars = {k: float(v) for k, v in jax.device_get(train_metrics).items()}
      dt = time.perf_counter() - t_log
      scalars.update(learning_rate=float(schedule(step - 1)), images_per_sec=n_log * cc.batch_size / dt)
      writer.write_scalars(step, scalars)
      progress.update(step, dict(loss=scalars['train_loss'], acc=scalars['train_accuracy']))
      t_log, n_log = time.perf_counter(), 0
    if step % cc.eval_every == 0 or step == cc.num_steps:
      last_eval = evaluate(state, eval_data, eval_fn, mesh)
      writer.write_scalars(step, last_eval)
      logging.info('[classifier] step %d eval %s', step, last_eval)
    if stage.save(step, state, last=step == stop):
      break
  ckpt.wait_until_finished()

  step = int(state.step)
  summary = None
  if step >= cc.num_steps:
    test_data = pipeline_lib.Pipeline(config.data, config.data.test_split, global_batch_size=cc.batch_size,
                                      seed=config.seed, train=False)
    test = {f'test_{k}': v for k, v in evaluate(state, test_data, eval_fn, mesh).items()}
    writer.write_scalars(step, test)
    summary = dict(stage=STAGE, step=step, **(last_eval or evaluate(state, eval_data, eval_fn, mesh)), **test,
                   checkpoints=ckpt.directory, metrics=os.path.join(stage_dir, 'metrics.jsonl'))
    summary = writers.write_json(summary_path, summary)
    print(f'[classifier] done at step {step}: accuracy={summary["accuracy"]:.3f} auc={summary["auc"]:.3f} '
          f'test_accuracy={summary["test_accuracy"]:.3f}\n  metrics: {summary["metrics"]}\n'
          f'  checkpoints: {ckpt.directory}\n  summary: {summary_path}')
  writer.close()
  ckpt.close()
  return summary or dict(stage=STAGE, step=step, complete=False)


def load_classifier(config: ml_collections.ConfigDict, workdir: str, mesh=None):
  """Restores the latest classifier of `<workdir>/classifier/checkpoints`.

  Returns (model, variables) with variables = {'params', ['batch_stats']}, replicated on `mesh`, ready for
  `model.apply(variables, images, train=False)` (images [B, H, W, C] in [-1, 1]). No checkpoint ->
  FileNotFoundError naming the stage to run first.
  """
  mesh = mesh or sharding.make_mesh(config.num_devices or None)
  model = build_model(config)
  tx = build_optimizer(config.classifier.optimizer, config.classifier.num_steps)
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  abstract = jax.eval_shape(functools.partial(create_state, model, tx, shape), jax.random.key(0))
  state = stages.restore_latest(STAGE, workdir, config_fingerprint(config),
                                checkpointing.abstract_like(abstract, sharding.replicated(mesh)),
                                'with the same --workdir')
  variables = {'params': state.params}
  if jax.tree.leaves(state.batch_stats):
    variables['batch_stats'] = state.batch_stats
  return model, variables
