"""Validation of the batches given to `explain.export.ExplanationWriter.add`: keys, shapes, dtypes and ranges.

Checked before anything is written, so a bad batch leaves the export unchanged; every error is one line
naming the key (e.g. "batch['probs'] has shape [2, 5, 2], expected [2, 5, 3] (B=2, S=5, ...)").
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

OPTIONAL_KEYS = ('reconstruction_probs', 'metrics', 'target')


def check_batch(batch: Mapping[str, Any], *, required: Sequence[str], image_shape: tuple[int, int,
                                                                                         int], num_classes: int,
                num_ws: int, w_dim: int, num_series: int | None, metric_names: list[str] | None) -> dict[str, Any]:
  """Checks one batch of B explained images and returns it as numpy arrays.

  Args:
    batch: the dict given to `ExplanationWriter.add` (its docstring lists the keys and shapes).
    required: the keys every batch has (the record's features); OPTIONAL_KEYS may be present too.
    image_shape: (H, W, C); num_classes: K; num_ws, w_dim: the latent shape.
    num_series: S fixed by an earlier batch, or None for the first batch (then any S >= 1).
    metric_names: sorted metric names of earlier batches, or None for the first batch.

  Returns:
    {'id': [B] str, image/reconstruction/series/gradcam: float32 (or uint8 as given), other arrays float32,
    label/target int64, 'metrics': {name: float64 [B]}}. Raises ValueError naming the key on any mismatch.
  """
  if not isinstance(batch, Mapping):
    raise ValueError(f'batch must be a dict of arrays, got {type(batch).__name__}')
  unknown = sorted(set(batch) - set(required) - set(OPTIONAL_KEYS))
  if unknown:
    raise ValueError(f'batch has unknown key(s) {unknown}; expected {list(required)} '
                     f'plus optional {list(OPTIONAL_KEYS)}')
  missing = [k for k in required if k not in batch]
  if missing:
    raise ValueError(f'batch lacks key(s) {missing}')
  ids = batch['id']
  ids = [i.decode('utf-8') if isinstance(i, (bytes, np.bytes_)) else i for i in np.asarray(ids).tolist()] \
      if np.ndim(ids) == 1 else None
  if ids is None or not all(isinstance(i, str) for i in ids):
    raise ValueError(f"batch['id'] must be a 1-D sequence of str (or bytes), got {np.shape(batch['id'])} "
                     f"{np.asarray(batch['id']).dtype}")
  b = len(ids)
  if b == 0:
    raise ValueError("batch['id'] is empty; add batches of at least one image")
  h, w, c = image_shape
  k = num_classes
  s = num_series
  if s is None:
    series_shape = np.shape(batch['series'])
    s = series_shape[1] if len(series_shape) == 5 and series_shape[1] >= 1 else -1
  expected = {
      'image': (b, h, w, c),
      'reconstruction': (b, h, w, c),
      'series': (b, s, h, w, c),
      'alphas': (b, s),
      'probs': (b, s, k),
      'original_probs': (b, k),
      'latent': (b, num_ws, w_dim),
      'gradcam': (b, h, w),
      'label': (b,),
      'reconstruction_probs': (b, k),
      'target': (b,)
  }
  out: dict[str, Any] = {'id': ids}
  for key, shape in expected.items():
    if key not in batch or batch[key] is None:
      continue
    x = np.asarray(batch[key])
    if x.shape != shape:
      want = '[' + ', '.join('S>=1' if (key in ('series', 'alphas', 'probs') and i == 1 and d == -1) else str(d)
                             for i, d in enumerate(shape)) + ']'
      raise ValueError(f"batch['{key}'] has shape {list(x.shape)}, expected {want} "
                       f'(B={b}, S={"?" if s == -1 else s}, H, W, C={h, w, c}, K={k}, '
                       f'num_ws={num_ws}, w_dim={w_dim})')
    if key in ('label', 'target'):
      if x.dtype.kind not in 'iu':
        raise ValueError(f"batch['{key}'] must be integers, got dtype {x.dtype}")
      x = x.astype(np.int64)
      low = -1 if key == 'label' else 0
      if x.size and (x.min() < low or x.max() >= k):
        raise ValueError(f"batch['{key}'] must be in [{low}, {k - 1}], got values in [{x.min()}, {x.max()}]")
    elif key in ('image', 'reconstruction', 'series', 'gradcam') and x.dtype == np.uint8:
      pass
    else:
      if x.dtype.kind != 'f' and x.dtype.name != 'bfloat16':
        allowed = 'float or uint8' if key in ('image', 'reconstruction', 'series', 'gradcam') else 'float'
        raise ValueError(f"batch['{key}'] must be {allowed}, got dtype {x.dtype}")
      x = x.astype(np.float32)
      if not np.all(np.isfinite(x)):
        bad = [ids[i] for i in np.nonzero(~np.isfinite(x.reshape(b, -1)).all(axis=1))[0][:5]]
        raise ValueError(f"batch['{key}'] has non-finite values (NaN/Inf), e.g. for id(s) {bad}")
      if key in ('probs', 'original_probs', 'reconstruction_probs', 'gradcam') and x.size and \
          (x.min() < -1e-4 or x.max() > 1 + 1e-4):
        raise ValueError(f"batch['{key}'] must be in [0, 1], got values in [{x.min():.4g}, {x.max():.4g}]")
    out[key] = x
  metrics = batch.get('metrics') or {}
  if not isinstance(metrics, Mapping):
    raise ValueError(f"batch['metrics'] must be a dict name -> [B] numbers, got {type(metrics).__name__}")
  clean = {}
  for name, v in metrics.items():
    x = np.asarray(v)
    if x.shape != (b,) or x.dtype.kind not in 'biuf':
      raise ValueError(f"batch['metrics']['{name}'] must be [{b}] numbers, got shape {list(x.shape)} {x.dtype}")
    clean[str(name)] = x.astype(np.float64)
  if metric_names is not None and sorted(clean) != metric_names:
    raise ValueError(f"batch['metrics'] has names {sorted(clean)} but earlier batches had {metric_names}; "
                     'give the same metrics in every batch')
  out['metrics'] = clean
  return out
