"""Classical attribution baselines shown beside the StyleGAN explanations: GradCAM and integrated gradients.

Both work on any Flax module whose `apply(variables, images)` returns logits [B, K] in evaluation mode
(e.g. `stylex_jax.models.classifier.ResNet`). GradCAM additionally needs the explained layer to be
exposed under one name both via `self.sow('intermediates', name, x)` (the activation A) and via
`x = self.perturb(name, x)` (so d logit / dA is the gradient w.r.t. a zero 'perturbations' variable).
ResNet exposes 'stem' and 'stage1'..'stageN'. Nested modules give '/'-joined names ('block/conv').

All functions are pure functions of arrays: `jax.jit(gradcam, static_argnums=(0,), static_argnames=('layer',))`
works, and one forward + one backward pass serves the whole batch. Images are independent in evaluation
mode (BatchNorm uses running statistics), so the gradient of the batch sum of the selected logits equals the
per-image gradients.

`overlay` is numpy-only (no matplotlib) and turns a heatmap into a uint8 RGB picture for export.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

_STATE_COLLECTIONS = ('perturbations', 'intermediates')


def _model_variables(variables: Mapping[str, Any]) -> dict:
  """Drops stale 'perturbations'/'intermediates' (e.g. from a full `init`) so only ours are used."""
  if not isinstance(variables, Mapping) or 'params' not in variables:
    raise ValueError("variables must be a Flax variable dict with a 'params' entry "
                     "(e.g. {'params': ..., 'batch_stats': ...}); got "
                     f"{type(variables).__name__} with keys {list(getattr(variables, 'keys', lambda: [])())}.")
  return {k: v for k, v in variables.items() if k not in _STATE_COLLECTIONS}


def _check_images(images) -> jax.Array:
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f'images must be [B, H, W, C] (NHWC, float in [-1, 1]); got shape {tuple(images.shape)}. '
                     'Add a batch axis with images[None] for a single image.')
  return images.astype(jnp.float32)


def _flatten(tree, prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': x}} -> {'a/b': x}; stops at non-dict leaves (arrays, tuples of sown values)."""
  out = {}
  for k, v in tree.items():
    name = f'{prefix}{k}'
    if isinstance(v, Mapping):
      out.update(_flatten(v, name + '/'))
    else:
      out[name] = v
  return out


def _unflatten_set(tree, name: str, value):
  """Returns a copy of nested dict `tree` with the leaf at '/'-path `name` replaced by `value`."""
  head, _, rest = name.partition('/')
  new = dict(tree)
  new[head] = _unflatten_set(tree[head], rest, value) if rest else value
  return new


def _targets(targets, batch: int, num_classes: int) -> jax.Array:
  """targets: int or int array [B] -> int32 [B]; range-checked when concrete (not under jit)."""
  if isinstance(targets, jax.core.Tracer):
    t = targets
  else:
    t_np = np.asarray(targets)
    if not np.issubdtype(t_np.dtype, np.integer):
      raise ValueError(f'targets must be an int or an int array [B] of class indices; got dtype {t_np.dtype}.')
    if t_np.size and (t_np.min() < 0 or t_np.max() >= num_classes):
      raise ValueError(f'targets must be class indices in [0, {num_classes - 1}]; got values in '
                       f'[{t_np.min()}, {t_np.max()}].')
    t = jnp.asarray(t_np)
  if not jnp.issubdtype(t.dtype, jnp.integer):
    raise ValueError(f'targets must be an int or an int array [B] of class indices; got dtype {t.dtype}.')
  if t.ndim == 0:
    t = jnp.broadcast_to(t, (batch,))
  if t.shape != (batch,):
    raise ValueError(f'targets must be an int or an int array of shape [{batch}] (one per image); '
                     f'got shape {tuple(t.shape)}.')
  return t.astype(jnp.int32)


def _logits_shape(model, variables, images) -> tuple[int, ...]:
  out = jax.eval_shape(lambda v, x: model.apply(v, x), variables, images)
  if not hasattr(out, 'shape') or len(out.shape) != 2 or out.shape[0] != images.shape[0]:
    raise ValueError('model.apply(variables, images) must return logits [B, K]; got '
                     f'{jax.tree.map(lambda s: tuple(s.shape), out)}.')
  return tuple(out.shape)


def _probe(model, variables, images):
  """Shape-only pass: (logits shape [B, K], {'perturbations': ..., 'intermediates': ...} shapes)."""
  logits, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=list(_STATE_COLLECTIONS)), variables, images)
  if not hasattr(logits, 'shape') or len(logits.shape) != 2 or logits.shape[0] != images.shape[0]:
    raise ValueError('model.apply(variables, images) must return logits [B, K]; got '
                     f'{jax.tree.map(lambda s: tuple(s.shape), logits)}.')
  return tuple(logits.shape), state


def _spatial_layers(state) -> tuple[str, ...]:
  perts = _flatten(state.get('perturbations', {}))
  inter = _flatten(state.get('intermediates', {}))
  return tuple(sorted(n for n, s in perts.items() if n in inter and len(s.shape) == 4))


def available_layers(model, variables, images) -> tuple[str, ...]:
  """Names of the spatial layers GradCAM can explain: sown in 'intermediates' AND perturbed, 4-D [B, h, w, c].

    images: [B, H, W, C] (only the shape is used; nothing is computed).
    """
  _, state = _probe(model, _model_variables(variables), _check_images(images))
  return _spatial_layers(state)


def gradcam(model, variables, images, targets, layer: str = 'stage4') -> jax.Array:
  """GradCAM (Selvaraju et al. 2017) heatmaps of `layer` for the logit of class `targets`.

    images:  [B, H, W, C] float32 in [-1, 1].
    targets: int or int array [B], the class whose logit is explained.
    Returns heatmaps [B, H, W] float32 in [0, 1]:
      cam = ReLU(sum_c alpha_c A_c), alpha_c = spatial mean of d logit_target / d A_c  (A: [B, h, w, c]),
      bilinearly upsampled (half-pixel centres) to H x W and divided per image by its maximum;
      an all-zero map (no positive evidence) stays all zero.
    Unknown `layer` -> ValueError listing the available layer names.
    """
  variables = _model_variables(variables)
  images = _check_images(images)
  b, h, w, _ = images.shape
  (_, num_classes), state = _probe(model, variables, images)
  t = _targets(targets, b, num_classes)
  pert_shapes = state.get('perturbations', {})
  layers = _spatial_layers(state)
  if layer not in layers:
    raise ValueError(f'Unknown GradCAM layer {layer!r}; available layers are {list(layers)} '
                     "(a layer must be both sown into 'intermediates' and perturbed under that name).")

  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), pert_shapes)
  layer_zero = _flatten(zeros)[layer]

  def selected_logit_sum(delta):
    perts = _unflatten_set(zeros, layer, delta)  # only `layer` is differentiated; the others stay constant
    logits, st = model.apply({**variables, 'perturbations': perts}, images, mutable=['intermediates'])
    chosen = jnp.take_along_axis(logits.astype(jnp.float32), t[:, None], axis=1)
    return jnp.sum(chosen), st['intermediates']

  grads, inter = jax.grad(selected_logit_sum, has_aux=True)(layer_zero)
  acts = _flatten(inter)[layer]
  acts = acts[-1] if isinstance(acts, (tuple, list)) else acts  # sow stores a tuple of values
  acts = acts.astype(jnp.float32)
  grads = grads.astype(jnp.float32)

  alpha = jnp.mean(grads, axis=(1, 2), keepdims=True)  # [B, 1, 1, c]
  cam = jax.nn.relu(jnp.sum(alpha * acts, axis=-1))  # [B, h, w]
  cam = jax.image.resize(cam, (b, h, w), method='bilinear')  # upsampling: non-negative weights
  cam = jnp.maximum(cam, 0.0)
  peak = jnp.max(cam, axis=(1, 2), keepdims=True)
  cam = jnp.where(peak > 0, cam / jnp.where(peak > 0, peak, 1.0), 0.0)
  return jnp.clip(cam, 0.0, 1.0)


def integrated_gradients(model, variables, images, targets, baseline=None, steps: int = 32) -> jax.Array:
  """Integrated gradients (Sundararajan et al. 2017) of the target logit w.r.t. the input pixels.

    images:   [B, H, W, C] float32 in [-1, 1].
    targets:  int or int array [B].
    baseline: None (-1 everywhere = black), a scalar, or an array broadcastable to images.
    steps:    >= 2 points alpha_i = i / (steps - 1) on the straight path baseline -> image; the path integral
              is the trapezoid rule over them (exact for a model linear in its input).
    Returns attributions [B, H, W, C] float32 with sum(attr[b]) ~= logit(x_b) - logit(baseline_b)
    (completeness; the error shrinks as O(1/steps^2) for smooth models). Memory: one batch at a time
    (the path is scanned, not vmapped).
    """
  if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 2:
    raise ValueError(f'steps must be an int >= 2 (points on the path, both ends included); got {steps!r}.')
  variables = _model_variables(variables)
  images = _check_images(images)
  b = images.shape[0]
  _, num_classes = _logits_shape(model, variables, images)
  t = _targets(targets, b, num_classes)
  if baseline is None:
    baseline = -jnp.ones_like(images)
  else:
    baseline = jnp.asarray(baseline, jnp.float32)
    try:
      baseline = jnp.broadcast_to(baseline, images.shape)
    except ValueError:
      raise ValueError(f'baseline of shape {tuple(baseline.shape)} does not broadcast to images of shape '
                       f'{tuple(images.shape)}; pass a scalar, [H, W, C] or [B, H, W, C].') from None

  def logit_sum(x):
    logits = model.apply(variables, x).astype(jnp.float32)
    return jnp.sum(jnp.take_along_axis(logits, t[:, None], axis=1))

  grad_fn = jax.grad(logit_sum)
  alphas = jnp.linspace(0.0, 1.0, steps, dtype=jnp.float32)
  weights = jnp.full((steps,), 1.0 / (steps - 1), jnp.float32).at[jnp.array([0, steps - 1])].mul(0.5)
  delta = images - baseline

  def body(acc, aw):
    a, wgt = aw
    return acc + wgt * grad_fn(baseline + a * delta).astype(jnp.float32), None

  avg_grad, _ = jax.lax.scan(body, jnp.zeros_like(images), (alphas, weights))
  return delta * avg_grad


def colormap_jet(values) -> np.ndarray:
  """Jet-like colormap: values [...] in [0, 1] -> RGB [..., 3] float32 in [0, 1] (blue -> cyan -> yellow -> red)."""
  v = np.clip(np.asarray(values, np.float32), 0.0, 1.0)[..., None]
  centres = np.array([0.75, 0.5, 0.25], np.float32)  # r, g, b peak positions
  return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0).astype(np.float32)


def overlay(image, heatmap, alpha: float = 0.45) -> np.ndarray:
  """Blends a heatmap over an image for display.

    image:   [H, W, C] float in [-1, 1], C in {1, 3} (grey images are replicated to RGB).
    heatmap: [H, W] float in [0, 1] (e.g. one row of `gradcam`).
    alpha:   weight of the colour-mapped heatmap, in [0, 1].
    Returns uint8 [H, W, 3]: round(255 * ((1 - alpha) * (image + 1) / 2 + alpha * jet(heatmap))).
    """
  img = np.asarray(image, np.float32)
  heat = np.asarray(heatmap, np.float32)
  if img.ndim != 3 or img.shape[-1] not in (1, 3):
    raise ValueError(f'overlay: image must be [H, W, C] with C = 1 or 3; got shape {img.shape}.')
  if heat.shape != img.shape[:2]:
    raise ValueError(f'overlay: heatmap must be [H, W] = {img.shape[:2]} to match the image; got {heat.shape}. '
                     'Upsample it first (gradcam already returns image-sized maps).')
  if not (0.0 <= float(alpha) <= 1.0):
    raise ValueError(f'overlay: alpha must be in [0, 1]; got {alpha}.')
  if not (np.all(np.isfinite(img)) and np.all(np.isfinite(heat))):
    raise ValueError('overlay: image and heatmap must be finite (found NaN/inf).')
  tol = 1e-3
  if img.min() < -1 - tol or img.max() > 1 + tol:
    raise ValueError(f'overlay: image must be in [-1, 1]; got values in [{img.min():.3g}, {img.max():.3g}]. '
                     'Convert uint8 with x / 127.5 - 1.')
  if heat.min() < -tol or heat.max() > 1 + tol:
    raise ValueError(f'overlay: heatmap must be in [0, 1]; got values in [{heat.min():.3g}, {heat.max():.3g}].')
  rgb = np.broadcast_to((np.clip(img, -1.0, 1.0) + 1.0) / 2.0, img.shape[:2] + (3,))
  out = (1.0 - alpha) * rgb + alpha * colormap_jet(heat)
  return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)
