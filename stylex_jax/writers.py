"""Metrics and image logging for every stage: the only logging I/O of the package.

``MetricWriter(<workdir>/<stage>)`` writes

* ``metrics.jsonl``: one strict-JSON object per ``write_scalars`` call, ``{"step": 100, "loss": 0.69,
  "confusion": [[5, 1], [0, 6]]}``.  Non-finite numbers (NaN, +-Inf) are written as ``null`` so every
  line parses with any JSON reader (TensorBoard keeps the true non-finite value).
* ``tensorboard/events.out.tfevents.*``: TensorBoard event files written without TensorFlow or
  the tensorboard package: a TFRecord stream of ``tensorflow.Event`` protobufs (scalars as
  ``simple_value``, images as PNG ``Summary.Image``), encoded and framed by ``stylex_jax.tfrecord``.
* ``samples/<name>_<step:08d>.png``: image grids.

Only the chief process (``jax.process_index() == 0``) writes; the others validate and do nothing.
The directory may be local or on an object store (``gs://bucket/kl/gan``): every file goes through
``stylex_jax.storage`` (etils.epath). metrics.jsonl and the event file are appended to and flushed after each
write; on a local disk that is a plain append, on an object store (no append there) ``storage.AppendFile`` keeps
the content and re-uploads the whole object at most every 10 s and at ``close``.
Also here: ``image_grid`` / ``to_uint8`` / ``save_png`` for PNGs at the package's edges, ``read_metrics``
and a console ``Progress`` line for training loops.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import socket
import sys
import time
from typing import Any, Callable, TextIO

import jax
import numpy as np
from PIL import Image

from stylex_jax import storage, tfrecord

_log = logging.getLogger(__name__)

_MAX_LIST_ELEMENTS = 65536  # larger arrays belong in an image or a separate file, not in metrics.jsonl


class _EventFile:
  """Append-only TensorBoard event file."""

  _counter = 0

  def __init__(self, logdir: str):
    storage.makedirs(logdir)
    _EventFile._counter += 1
    name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
            f'{os.getpid()}.{_EventFile._counter}')
    self.path = os.path.join(logdir, name)
    self._file = storage.AppendFile(self.path, 'ab')
    self.write(tfrecord.event(time.time(), file_version='brain.Event:2'))
    self._file.flush()

  def write(self, event: bytes) -> None:
    self._file.write(tfrecord.frame_record(event))

  def flush(self, force: bool = False) -> None:
    self._file.flush(force)

  def close(self) -> None:
    if not self._file.closed:
      self._file.flush()
      self._file.close()


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


def to_uint8(images: Any) -> np.ndarray:
  """float in [-1, 1] -> uint8 ``round((x + 1) * 127.5)`` clipped to [0, 255]; uint8 passes through.

    -1 -> 0, 0 -> 128 (round half to even), 1 -> 255; values outside [-1, 1] are clipped, NaN -> 0.
    Any shape; jax arrays and bfloat16/float16/float64 accepted.  Other dtypes -> ValueError.
    """
  x = np.asarray(images)
  if x.dtype == np.uint8:
    return x
  if not jax.dtypes.issubdtype(x.dtype, np.floating):
    raise ValueError(f'images must be float in [-1, 1] or uint8, got dtype {x.dtype}; convert with '
                     'x.astype(np.float32) / 127.5 - 1 or x.astype(np.uint8)')
  x = np.nan_to_num(x.astype(np.float32), nan=-1.0, posinf=1.0, neginf=-1.0)
  return np.clip(np.rint((x + 1.0) * 127.5), 0, 255).astype(np.uint8)


def _check_hwc(image: np.ndarray, what: str) -> None:
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or 0 in image.shape:
    raise ValueError(f'{what} must be [H, W, C] with C in {{1, 3, 4}}, got shape {image.shape}')


def image_grid(images: Any, cols: int | None = None, pad: int = 1, pad_value: int = 0) -> np.ndarray:
  """Tiles ``images`` row-major into one uint8 image.

    Args:
      images: [N, H, W, C] float in [-1, 1] or uint8, C in {1, 3, 4}.
      cols: images per row (default ceil(sqrt(N))); rows = ceil(N / cols), empty cells are padding.
      pad: pixels of ``pad_value`` (0..255) around and between the images.

    Returns:
      uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C].
    """
  x = to_uint8(images)
  if x.ndim != 4 or x.shape[-1] not in (1, 3, 4) or 0 in x.shape:
    raise ValueError(f'images must be [N, H, W, C] with N >= 1 and C in {{1, 3, 4}}, got shape {x.shape}')
  n, h, w, c = x.shape
  if cols is None:
    cols = math.ceil(math.sqrt(n))
  if isinstance(cols, bool) or not isinstance(cols, (int, np.integer)) or cols < 1:
    raise ValueError(f'cols={cols!r} must be a positive integer')
  if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
    raise ValueError(f'pad={pad!r} must be a non-negative integer')
  if not 0 <= pad_value <= 255:
    raise ValueError(f'pad_value={pad_value} must be in [0, 255]')
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), pad_value, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    top, left = pad + r * (h + pad), pad + q * (w + pad)
    grid[top:top + h, left:left + w] = x[i]
  return grid


def _encode_png(image: np.ndarray) -> bytes:
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise ValueError(f'PNG images must be uint8, got {image.dtype}; use to_uint8 first')
  _check_hwc(image, 'PNG image')
  # uint8 [H, W] -> mode L, [H, W, 3] -> RGB, [H, W, 4] -> RGBA
  pil = Image.fromarray(np.ascontiguousarray(image[..., 0] if image.shape[-1] == 1 else image))
  buffer = io.BytesIO()
  pil.save(buffer, format='PNG')
  return buffer.getvalue()


_write_atomic = storage.write_atomic


def save_png(path: str, image: np.ndarray) -> None:
  """Writes uint8 [H, W, C] (C in {1, 3, 4}) as a PNG; atomic (`storage.write_atomic`: temporary file + rename on
  a local disk, one object upload on an object store)."""
  _write_atomic(path, _encode_png(image))


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def _json_number(v: Any) -> Any:
  if isinstance(v, (bool, np.bool_)):
    return bool(v)
  if isinstance(v, (int, np.integer)):
    return int(v)
  v = float(v)
  return v if math.isfinite(v) else None


def _to_jsonable_array(name: str, x: np.ndarray) -> Any:
  if x.size > _MAX_LIST_ELEMENTS:
    raise ValueError(f"metric '{name}' has {x.size} elements (> {_MAX_LIST_ELEMENTS}); log a summary "
                     '(mean, histogram) or write_images instead of the raw array')
  if x.dtype.kind in 'iub':
    return x.tolist()
  if x.dtype.kind != 'f':
    x = x.astype(np.float64)
  as_list = x.astype(np.float64).tolist()

  def clean(v):
    if isinstance(v, list):
      return [clean(e) for e in v]
    return v if math.isfinite(v) else None

  return clean(as_list)


def _prepare_scalars(scalars: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
  """Validates ``scalars`` -> (JSON fields, TensorBoard scalars)."""
  if not isinstance(scalars, dict):
    raise ValueError(f'scalars must be a dict name -> value, got {type(scalars).__name__}')
  json_fields: dict[str, Any] = {}
  tb: dict[str, float] = {}
  for name, value in scalars.items():
    if not isinstance(name, str) or not name:
      raise ValueError(f'metric names must be non-empty strings, got {name!r}')
    if name == 'step':
      raise ValueError("'step' is reserved for the step argument; rename the metric")
    if isinstance(value, str):
      json_fields[name] = value
      continue
    try:
      x = np.asarray(value)
    except Exception as e:  # noqa: BLE001 - anything numpy cannot read is a caller error
      raise ValueError(f"metric '{name}' is a {type(value).__name__}, not a number or array") from e
    if x.dtype.kind not in 'biuf' and not jax.dtypes.issubdtype(x.dtype, np.floating):
      raise ValueError(f"metric '{name}' has dtype {x.dtype}; give numbers, numeric arrays or strings")
    if x.ndim == 0:
      item = x.item() if x.dtype.kind in 'biuf' else float(x.astype(np.float32))
      json_fields[name] = _json_number(item)
      tb[name] = float(item)
    else:
      json_fields[name] = _to_jsonable_array(name, x)
  return json_fields, tb


def write_json(path: str, obj: dict, *, is_chief: bool | None = None) -> dict:
  """Writes a stage summary (or any JSON object) atomically; NaN/Inf become null so it stays strict JSON.

    Nested dicts/lists are cleaned recursively; only the chief process (jax.process_index() == 0) writes.
    Returns the cleaned object (what a later json.load of the file gives back).
    """
  if is_chief is None:
    import jax
    is_chief = jax.process_index() == 0

  def clean(v):
    if isinstance(v, dict):
      return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
      return [clean(x) for x in v]
    if isinstance(v, (bool, np.bool_, int, np.integer, float, np.floating)):
      return _json_number(v)
    if isinstance(v, np.ndarray):
      return clean(v.tolist())
    return v

  cleaned = clean(obj)
  if is_chief:
    _write_atomic(path, (json.dumps(cleaned, indent=1, allow_nan=False) + '\n').encode())
  return cleaned


def read_metrics(path: str) -> list[dict]:
  """Parses a ``metrics.jsonl`` into a list of dicts (non-finite values read back as None).

    A truncated last line (the process died mid-write) is skipped with a warning; a malformed line
    elsewhere raises ValueError naming the line.
    """
  lines = storage.read_text(path).split('\n')
  records = []
  nonempty = [(i, line) for i, line in enumerate(lines, 1) if line.strip()]
  for k, (lineno, line) in enumerate(nonempty):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if k == len(nonempty) - 1:
        _log.warning('%s:%d is truncated; skipping it', path, lineno)
        break
      raise ValueError(f'{path}:{lineno} is not valid JSON ({e}); the file is corrupt') from e
    if not isinstance(record, dict):
      raise ValueError(f'{path}:{lineno} is not a JSON object')
    records.append(record)
  return records


def truncate_metrics(path: str, last_step: int) -> int:
  """Drops the rows of a ``metrics.jsonl`` with ``step > last_step`` (and a truncated last line); returns how
    many were dropped. The file is rewritten atomically only when something is dropped, so a crash meanwhile
    leaves either the old or the new file: a temporary file + rename on a local disk, one object upload on an
    object store (gs://; no rename there, see `storage.write_atomic`). A missing file is left missing."""
  if not storage.exists(path):
    return 0
  lines = storage.read_text(path).split('\n')
  kept, dropped = [], 0
  for line in lines:
    if not line.strip():
      continue
    try:
      step = json.loads(line).get('step')
    except (json.JSONDecodeError, AttributeError):
      dropped += 1  # a line cut by the crash (or not an object): never a row of the resumed run
      continue
    if isinstance(step, (int, float)) and step > last_step:
      dropped += 1
    else:
      kept.append(line)
  if dropped:
    _log.info('%s: dropping %d rows after step %d (written after the last checkpoint)', path, dropped, last_step)
    _write_atomic(path, ''.join(line + '\n' for line in kept).encode('utf-8'))
  return dropped


def _safe_filename(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', name).strip('._') or 'image'


class MetricWriter:
  """Writes metrics.jsonl, TensorBoard events and sample grids under one stage directory."""

  def __init__(self, directory: str, *, tensorboard: bool = True, is_chief: bool | None = None,
               resume_step: int | None = None):
    """
        Args:
          directory: ``<workdir>/<stage>``; created on the chief.
          tensorboard: also write TensorBoard event files under ``<directory>/tensorboard/``.
          is_chief: whether this process writes; default ``jax.process_index() == 0``.
          resume_step: the step training resumes from (0 for a fresh start): rows of metrics.jsonl with a
            larger step, written by an interrupted run after its last checkpoint, are dropped first (the file
            is rewritten atomically), so each step appears once. None keeps the file as it is. TensorBoard
            event files are not rewritten: a resumed run's events repeat those steps in a new file.
        """
    self.directory = str(directory)
    self.is_chief = (jax.process_index() == 0) if is_chief is None else bool(is_chief)
    self._tensorboard = bool(tensorboard)
    self._events: _EventFile | None = None
    self._jsonl = None
    self.metrics_path = os.path.join(self.directory, 'metrics.jsonl')
    self.samples_dir = os.path.join(self.directory, 'samples')
    if self.is_chief:
      storage.makedirs(self.directory)
      if resume_step is not None:
        truncate_metrics(self.metrics_path, self._check_step(resume_step))
      self._jsonl = storage.AppendFile(self.metrics_path, 'a')

  def _event_file(self) -> _EventFile | None:
    if not (self.is_chief and self._tensorboard):
      return None
    if self._events is None:
      self._events = _EventFile(os.path.join(self.directory, 'tensorboard'))
    return self._events

  @staticmethod
  def _check_step(step: Any) -> int:
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f'step={step!r} must be a non-negative integer')
    return int(step)

  def write_scalars(self, step: int, scalars: dict[str, Any]) -> None:
    """Appends ``{"step": step, **scalars}`` to metrics.jsonl; numbers also go to TensorBoard.

        Args:
          step: non-negative int.
          scalars: name -> python/numpy/jax number (JSON number; NaN/Inf -> null), string (JSON
            only), or a small numeric array / nested list such as a confusion matrix (JSON list only,
            at most 65536 elements).
        """
    step = self._check_step(step)
    json_fields, tb = _prepare_scalars(scalars)
    if not self.is_chief or self._jsonl is None:
      return
    line = json.dumps({'step': step, **json_fields}, allow_nan=False)
    self._jsonl.write(line + '\n')
    self._jsonl.flush()
    events = self._event_file()
    if events is not None and tb:
      values = [tfrecord.scalar_value(k, v) for k, v in tb.items()]
      events.write(tfrecord.event(time.time(), step, values=values))
      events.flush()  # TensorBoard reads the file live

  def write_images(self, step: int, images: dict[str, Any]) -> list[str]:
    """Saves each ``[N, H, W, C]`` (float in [-1, 1] or uint8) as one PNG grid and a TensorBoard image.

        Returns the PNG paths ``<directory>/samples/<name>_<step:08d>.png`` (empty on non-chiefs).
        """
    step = self._check_step(step)
    if not isinstance(images, dict):
      raise ValueError(f'images must be a dict name -> [N, H, W, C] array, got {type(images).__name__}')
    grids = {}
    for name, value in images.items():
      if not isinstance(name, str) or not name:
        raise ValueError(f'image names must be non-empty strings, got {name!r}')
      try:
        grids[name] = image_grid(value)
      except ValueError as e:
        raise ValueError(f"image '{name}': {e}") from e
    if not self.is_chief:
      return []
    paths, values = [], []
    for name, grid in grids.items():
      png = _encode_png(grid)
      path = os.path.join(self.samples_dir, f'{_safe_filename(name)}_{step:08d}.png')
      _write_atomic(path, png)
      paths.append(path)
      values.append(tfrecord.image_value(name, png, grid.shape[0], grid.shape[1], grid.shape[2]))
    events = self._event_file()
    if events is not None and values:
      events.write(tfrecord.event(time.time(), step, values=values))
      events.flush()
    return paths

  def flush(self) -> None:
    """Pushes buffered metrics and events to disk (on an object store: uploads them now)."""
    if self._jsonl is not None:
      self._jsonl.flush(force=True)
    if self._events is not None:
      self._events.flush(force=True)

  def close(self) -> None:
    """Flushes and closes the files; the writer must not be used afterwards."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._events is not None:
      self._events.close()
      self._events = None

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ---------------------------------------------------------------------------------------------
# Console progress
# ---------------------------------------------------------------------------------------------


def format_duration(seconds: float) -> str:
  """Seconds -> 'H:MM:SS' (hours unbounded; '?' when not finite): the ETA of every progress line."""
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(max(seconds, 0.0)))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}:{m:02d}:{s:02d}'


class Progress:
  """Console progress line for training loops: step, images/s, ETA (chief process only).

    Rates are measured over the steps since the previous printed line (the first line includes
    compilation time), and the ETA extrapolates that recent rate to ``total_steps``.
    """

  def __init__(self, total_steps: int, start_step: int, global_batch_size: int, every: int = 10, name: str = '', *,
               file: TextIO | None = None, clock: Callable[[],
                                                           float] = time.perf_counter, is_chief: bool | None = None):
    for label, value, low in (('total_steps', total_steps, 0), ('start_step', start_step, 0),
                              ('global_batch_size', global_batch_size, 1), ('every', every, 1)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f'{label}={value!r} must be an integer >= {low}')
    self.total_steps, self.every, self.name = int(total_steps), int(every), name
    self.global_batch_size = int(global_batch_size)
    self._file, self._clock = file, clock
    self.is_chief = (jax.process_index() == 0) if is_chief is None else bool(is_chief)
    self._last_step, self._last_time = int(start_step), clock()

  def update(self, step: int, extra: dict[str, float] | None = None) -> None:
    """Prints a line when ``step % every == 0`` or ``step >= total_steps``; ``extra`` values appended."""
    step = int(step)
    if not self.is_chief or (step % self.every and step < self.total_steps):
      return
    now = self._clock()
    steps, elapsed = step - self._last_step, now - self._last_time
    if steps <= 0:
      return
    steps_per_s = steps / elapsed if elapsed > 0 else float('inf')
    eta = (self.total_steps - step) / steps_per_s if steps_per_s > 0 else float('inf')
    width = len(str(self.total_steps))
    parts = [
        f"{self.name + ' ' if self.name else ''}step {step:>{width}d}/{self.total_steps}"
        f' ({100.0 * step / max(self.total_steps, 1):5.1f}%)', f'{steps_per_s * self.global_batch_size:.1f} img/s',
        f'{steps_per_s:.2f} step/s', f'ETA {format_duration(eta)}'
    ]
    if extra:
      parts.append(' '.join(f'{k}={float(np.asarray(v)):.4g}' for k, v in extra.items()))
    print(' | '.join(parts), file=self._file or sys.stdout, flush=True)
    self._last_step, self._last_time = step, now
