"""Training math of the classifier (the model the project explains): state, optimiser, pure steps.

`ClassifierState`, `build_optimizer` (AdamW, warm-up + cosine), `create_state`, the undecorated pure step
functions `train_step` / `eval_step` (jitted at the call site, `stages/classifier.py`), class weights and the
evaluation loop over a pipeline. No file I/O: the stage module owns checkpoints, metrics and summaries.

The steps are written over the global batch: under `jax.jit` with `NamedSharding` the batch axis is split over
the mesh's 'data' axis and XLA inserts the cross-device reductions (BatchNorm statistics, gradient means).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stylex_jax import sharding
from stylex_jax.evaluate import metrics as metrics_lib
from stylex_jax.train import nonfinite


@flax.struct.dataclass
class ClassifierState:
  """Everything a resume needs: the data position is `step` (batches are a pure function of it)."""
  step: jax.Array  # int32 scalar: number of optimizer steps taken
  params: Any
  batch_stats: Any  # {} for models without BatchNorm
  opt_state: Any


def build_optimizer(opt_config: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
  """AdamW with linear warmup then cosine decay; weight decay only on kernels (ndim > 1)."""
  schedule = learning_rate_schedule(opt_config, num_steps)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  chain = []
  if opt_config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(opt_config.grad_clip_norm))
  chain.append(
      optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2, weight_decay=opt_config.weight_decay, mask=decay_mask))
  return optax.chain(*chain)


def learning_rate_schedule(opt_config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  warmup = min(int(opt_config.warmup_steps), max(num_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(init_value=0.0, peak_value=opt_config.learning_rate, warmup_steps=warmup,
                                            decay_steps=max(num_steps, warmup + 1),
                                            end_value=opt_config.learning_rate * opt_config.end_learning_rate_factor)


def create_state(model, tx: optax.GradientTransformation, image_shape: tuple[int, int, int],
                 key: jax.Array) -> ClassifierState:
  """Initial state. image_shape: (H, W, C). Pure; jit it with out_shardings to create it sharded."""
  variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  params = variables['params']
  return ClassifierState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get('batch_stats', {}),
                         opt_state=tx.init(params))


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
  plain loss). Returns the new state and scalar metrics (train_loss, train_accuracy, grad_norm, nonfinite).
  A NaN/Inf loss or gradient skips the update (params, BatchNorm statistics and optimiser state stay as they
  were; the step counter, the data position, still advances) and sets `nonfinite` to 1.
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
  grad_norm = optax.tree.norm(grads)
  ok = nonfinite.finite(loss, grad_norm)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = dict(train_loss=loss, train_accuracy=jnp.mean(jnp.argmax(logits, -1) == batch['label']),
                 grad_norm=grad_norm, nonfinite=nonfinite.flag(ok))
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)
  return nonfinite.keep_if(ok, new_state, state.replace(step=new_state.step)), metrics


def eval_step(state: ClassifierState, batch: dict, *, model) -> dict:
  """Probabilities on the global batch (inference mode). Returns 'probs' [B, K], 'label' [B], 'mask' [B]."""
  variables = {'params': state.params}
  if jax.tree.leaves(state.batch_stats):
    variables['batch_stats'] = state.batch_stats
  logits = model.apply(variables, batch['image'], train=False)
  return dict(probs=jax.nn.softmax(logits.astype(jnp.float32), -1), label=batch['label'], mask=batch['mask'])


def class_weights(pipeline, num_classes: int, balanced: bool) -> np.ndarray:
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
