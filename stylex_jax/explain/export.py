"""Batch export of explanations: sharded TFRecords + schema.json, PNG strips, GIFs and one HTML report.

Written without TensorFlow (the records are `tf.train.Example` protobufs encoded and framed by
`stylex_jax.tfrecord`), so exporting works on accelerator machines where TF is not installed.

Layout of an export directory (e.g. `<workdir>/explain/`):

  tfrecords/explanations-00000-of-0000N.tfrecord   one tf.train.Example per explained image (schema below)
  schema.json     shapes, dtypes, class names, feature keys and meanings, shard files, number of examples,
                  the config, the target description, summary metrics, and `tf_feature_spec` (the parsing spec)
  index.jsonl     one JSON line per image: id, safe_id, shard, label, target class, probabilities, metrics
  strips/<safe_id>.png   original | reconstruction | series (p(target) under each frame) | GradCAM | difference
  gifs/<safe_id>.gif     the series as an endless animation with shift and p(target) under each frame
  report.html     self-contained (base64 images, inline CSS/JS, no external URL): opens offline

TFRecord features (DESIGN.md "Explanation TFRecord schema"); S = series length, K = classes:

  id              bytes          source id (utf-8)
  image           bytes (PNG)    original, uint8 = round((x + 1) * 127.5) clipped (`writers.to_uint8`)
  reconstruction  bytes (PNG)    G(invert(image)), same encoding
  series          bytes_list [S] PNG each, ordered by `alphas`
  alphas          float_list [S]       shift of each series image
  probs           float_list [S * K]   classifier probabilities, [S, K] row-major
  original_probs  float_list [K]       classifier probabilities on the original image
  latent          float_list [num_ws * w_dim]  inverted latent, [num_ws, w_dim] row-major
  gradcam         bytes (PNG)    GradCAM heatmap [H, W] of the original, 1-channel uint8 = round(255 * heat)
  label           int64          ground-truth label, -1 when unknown

Parsing with plain tf.data (no stylex_jax needed; copy-paste):

  import glob, json, os, tensorflow as tf
  export = '<workdir>/explain'
  schema = json.load(open(os.path.join(export, 'schema.json')))
  spec = {k: tf.io.FixedLenFeature(v['shape'], getattr(tf, v['dtype']))
          for k, v in schema['tf_feature_spec'].items()}
  files = [os.path.join(export, f) for f in schema['shards']]
  def parse(record):
    ex = tf.io.parse_single_example(record, spec)
    S, K = schema['num_series'], schema['num_classes']
    return {'id': ex['id'],
            'image': tf.io.decode_png(ex['image']),                       # uint8 [H, W, C]
            'reconstruction': tf.io.decode_png(ex['reconstruction']),
            'series': tf.map_fn(tf.io.decode_png, ex['series'], fn_output_signature=tf.uint8),  # [S, H, W, C]
            'alphas': ex['alphas'],                                       # float32 [S]
            'probs': tf.reshape(ex['probs'], [S, K]),
            'original_probs': ex['original_probs'],                       # float32 [K]
            'latent': tf.reshape(ex['latent'], [schema['num_ws'], schema['w_dim']]),
            'gradcam': tf.io.decode_png(ex['gradcam'])[..., 0],           # uint8 [H, W]; / 255 -> [0, 1]
            'label': ex['label']}
  ds = tf.data.TFRecordDataset(files).map(parse)

Without TensorFlow: `read_explanations(export)` yields the same as numpy dicts (CRCs verified).

Overwrite semantics (crash safety): an export is always written into a fresh staging directory
`<directory>/.export-tmp-<pid>-<hex>/` and only swapped in at `close()`, by renames on the same file
system: the previous export's entries (the names listed above) are moved aside (schema.json first), the
new ones moved in (schema.json last), then the old ones are deleted. An exception (or a kill) before
`close()` therefore never damages the previous export; `abort()` (called by the context manager on an
exception) removes the staging directory, and a killed run leaves a `.export-tmp-*` directory that may be
deleted. Files in `directory` that are not export entries are never touched. With `overwrite=True` the
previous export's entries are deleted up front (frees the disk space, but a crash then leaves no export).
A complete export always has a schema.json; a directory without one holds no finished export.
"""
from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
import os
import re
import shutil
import uuid
from typing import Any, Iterator, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stylex_jax import tfrecord, writers
from stylex_jax.explain import gradcam as gradcam_lib

SCHEMA_FORMAT = 'stylex_jax.explanations'
SCHEMA_VERSION = 1
SHARD_DIR = 'tfrecords'
SHARD_PREFIX = 'explanations'
# Everything an export owns inside its directory (moved/replaced as a unit; nothing else is touched).
EXPORT_ENTRIES = ('schema.json', SHARD_DIR, 'strips', 'gifs', 'index.jsonl', 'report.html')

FEATURE_MEANINGS = {
  'id': 'source id (file name or TFDS key), utf-8',
  'image': 'original image, PNG, uint8 = round((x + 1) * 127.5) clipped to [0, 255]',
  'reconstruction': 'G(invert(image)), PNG, same encoding as image',
  'series': 'images along the direction, one PNG each, ordered by alphas',
  'alphas': 'shift of each series image along the direction',
  'probs': 'classifier probabilities of each series image, [num_series, num_classes] row-major',
  'original_probs': 'classifier probabilities on the original image',
  'latent': 'inverted latent (W+), [num_ws, w_dim] row-major',
  'gradcam': 'GradCAM heatmap of the original, 1-channel PNG, uint8 = round(255 * heat), heat in [0, 1]',
  'label': 'ground-truth label where known, else -1',
}
FEATURE_KEYS = tuple(FEATURE_MEANINGS)
_OPTIONAL_KEYS = ('reconstruction_probs', 'metrics', 'target')

_CLASS_COLOURS = ('#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
                  '#bcbd22', '#17becf')
_MIN_TILE = 128           # strip/GIF tiles are upscaled (nearest) to at least this many pixels
_DIFF_MIN_SCALE = 1 / 127.5  # one grey level: differences below it are not blown up to full colour


# ---------------------------------------------------------------------------------------------
# Directory checks
# ---------------------------------------------------------------------------------------------

def check_writable(directory) -> None:
  """Creates `directory` if needed and proves it writable (writes and removes a probe file).

  Call before any computation. Raises ValueError with one line
  'cannot write explanations to X: <reason>; choose another --workdir / export dir'.
  """
  path = os.path.abspath(os.fspath(directory))

  def fail(reason: str):
    raise ValueError(f'cannot write explanations to {path}: {reason}; choose another --workdir / export dir')

  if os.path.exists(path) and not os.path.isdir(path):
    fail('it exists and is not a directory')
  probe = os.path.join(path, f'.write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}')
  try:
    os.makedirs(path, exist_ok=True)
    with open(probe, 'wb') as f:
      f.write(b'probe')
    os.remove(probe)
  except OSError as e:
    reason = e.strerror or str(e)
    if e.filename and os.path.abspath(str(e.filename)) not in (path, probe):
      reason += f' ({e.filename})'
    fail(reason)


def _find_schema(path: str) -> str:
  candidates = [path] if os.path.isdir(path) else []
  candidates += [os.path.dirname(path), os.path.dirname(os.path.dirname(path))]
  for c in candidates:
    p = os.path.join(c, 'schema.json')
    if os.path.isfile(p):
      return p
  raise FileNotFoundError(f'no schema.json found for {path} (looked in {", ".join(dict.fromkeys(candidates))}); '
                          'pass the export directory written by ExplanationWriter')


def read_schema(path_or_dir) -> dict:
  """The schema.json of an export (given the export directory, its tfrecords/ directory or a shard file)."""
  path = os.path.abspath(os.fspath(path_or_dir))
  if path.endswith('.json') and os.path.isfile(path):
    schema_path = path
  else:
    schema_path = _find_schema(path)
  with open(schema_path, encoding='utf-8') as f:
    schema = json.load(f)
  if schema.get('format') != SCHEMA_FORMAT:
    raise ValueError(f'{schema_path} is not a stylex_jax explanation schema (format={schema.get("format")!r})')
  schema['_directory'] = os.path.dirname(schema_path)
  return schema


def feature_spec(schema: Mapping | str) -> dict[str, dict]:
  """Parsing spec of the records as plain data: key -> {'kind': 'FixedLenFeature', 'shape': [...], 'dtype': ...}.

  dtype is 'string', 'float32' or 'int64' (names of tf dtypes). With TF:
  `{k: tf.io.FixedLenFeature(v['shape'], getattr(tf, v['dtype'])) for k, v in feature_spec(schema).items()}`.
  schema: the dict from schema.json (or a path accepted by `read_schema`).
  """
  if not isinstance(schema, Mapping):
    schema = read_schema(schema)
  s, k = int(schema['num_series']), int(schema['num_classes'])
  flat_latent = int(schema['num_ws']) * int(schema['w_dim'])
  shapes = {'id': ([], 'string'), 'image': ([], 'string'), 'reconstruction': ([], 'string'),
            'series': ([s], 'string'), 'alphas': ([s], 'float32'), 'probs': ([s * k], 'float32'),
            'original_probs': ([k], 'float32'), 'latent': ([flat_latent], 'float32'),
            'gradcam': ([], 'string'), 'label': ([], 'int64')}
  return {key: {'kind': 'FixedLenFeature', 'shape': shape, 'dtype': dtype} for key, (shape, dtype) in shapes.items()}


def decode_png(data: bytes) -> np.ndarray:
  """PNG bytes -> uint8 [H, W, C] (grey -> C = 1), like tf.io.decode_png."""
  with Image.open(io.BytesIO(data)) as im:
    x = np.asarray(im)
  return x[..., None] if x.ndim == 2 else x


def read_explanations(path_or_dir, *, decode_images: bool = True) -> Iterator[dict[str, Any]]:
  """Reads an export back without TensorFlow, one dict per image, in the order written.

  path_or_dir: the export directory, its tfrecords/ directory, or one shard file (schema.json is found
  beside or above it). Yields {'id': str, 'image'/'reconstruction': uint8 [H, W, C], 'series': uint8
  [S, H, W, C], 'alphas': float32 [S], 'probs': float32 [S, K], 'original_probs': float32 [K],
  'latent': float32 [num_ws, w_dim], 'gradcam': uint8 [H, W] (/ 255 -> [0, 1]), 'label': int}; with
  decode_images=False the image entries stay PNG bytes. Corrupt or truncated shards -> ValueError.
  """
  path = os.path.abspath(os.fspath(path_or_dir))
  schema = read_schema(path)
  if os.path.isfile(path) and not path.endswith('.json'):
    files = [path]
  else:
    files = [os.path.join(schema['_directory'], f) for f in schema['shards']]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
      raise FileNotFoundError(f'shard(s) listed in schema.json are missing: {missing}; the export is incomplete')
  s, k = int(schema['num_series']), int(schema['num_classes'])
  shapes = {'alphas': (s,), 'probs': (s, k), 'original_probs': (k,),
            'latent': (int(schema['num_ws']), int(schema['w_dim']))}
  for file in files:
    for payload in tfrecord.read_records(file):
      raw = tfrecord.decode_example(payload)
      missing = [key for key in FEATURE_KEYS if key not in raw]
      if missing:
        raise ValueError(f'{file}: a record lacks feature(s) {missing}; not an explanation record')
      out: dict[str, Any] = {'id': raw['id'][1][0].decode('utf-8')}
      for key in ('image', 'reconstruction', 'gradcam'):
        data = raw[key][1][0]
        out[key] = decode_png(data) if decode_images else data
      if decode_images:
        out['gradcam'] = out['gradcam'][..., 0]
        out['series'] = np.stack([decode_png(b) for b in raw['series'][1]])
      else:
        out['series'] = list(raw['series'][1])
      for key, shape in shapes.items():
        out[key] = raw[key][1].reshape(shape)
      out['label'] = int(raw['label'][1][0])
      yield out


# ---------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------

def _png(image: np.ndarray) -> bytes:
  """uint8 [H, W] / [H, W, 1] (grey) or [H, W, 3] -> PNG bytes."""
  x = np.ascontiguousarray(image)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(x).save(buffer, format='PNG')
  return buffer.getvalue()


def _heat_uint8(heat: np.ndarray) -> np.ndarray:
  """Heatmap float in [0, 1] -> uint8 round(255 * heat) clipped; uint8 passes through."""
  if heat.dtype == np.uint8:
    return heat
  return np.clip(np.rint(heat.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def _as_float_image(x: np.ndarray) -> np.ndarray:
  """Image float (any range) or uint8 -> float32 in [-1, 1]."""
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 127.5 - 1.0
  return np.clip(x.astype(np.float32), -1.0, 1.0)


def _rgb(u8: np.ndarray) -> np.ndarray:
  """uint8 [H, W, C] with C in {1, 3, 4} -> uint8 [H, W, 3]."""
  if u8.shape[-1] == 1:
    return np.repeat(u8, 3, axis=-1)
  return u8[..., :3]


def diff_map(last: np.ndarray, reconstruction: np.ndarray) -> tuple[np.ndarray, float]:
  """Signed difference (last frame - reconstruction) as a blue-white-red picture.

  last, reconstruction: [H, W, C] float in [-1, 1] (or uint8). The channel mean d [H, W] is divided by
  scale = max(max |d|, 1/127.5): -scale -> blue (0, 0, 255), 0 -> white, +scale -> red (255, 0, 0).
  Returns (uint8 [H, W, 3], scale).
  """
  d = np.mean(_as_float_image(last) - _as_float_image(reconstruction), axis=-1)
  scale = float(max(np.max(np.abs(d)) if d.size else 0.0, _DIFF_MIN_SCALE))
  t = np.clip(d / scale, -1.0, 1.0)
  neg, pos = np.clip(-t, 0, 1), np.clip(t, 0, 1)
  rgb = np.stack([1.0 - neg, 1.0 - neg - pos, 1.0 - pos], axis=-1)
  return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), scale


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, AttributeError, OSError):  # Pillow without FreeType: the bitmap font
    return ImageFont.load_default()


_FONTS: dict[int, Any] = {}


def _get_font(size: int):
  if size not in _FONTS:
    _FONTS[size] = _font(size)
  return _FONTS[size]


def _grey_palette() -> Image.Image:
  """GIF palette for grey images: 252 grey levels + the caption colours (no per-frame colour quantisation)."""
  colours = [(i * 255 // 251,) * 3 for i in range(252)] + [(214, 39, 40), (235, 235, 235), (120, 120, 120),
                                                            (0, 0, 0)]
  palette = Image.new('P', (1, 1))
  palette.putpalette([v for rgb in colours for v in rgb])
  return palette


_GREY_PALETTE = _grey_palette()


def _upscale(rgb: np.ndarray, factor: int) -> Image.Image:
  im = Image.fromarray(rgb)
  if factor > 1:
    im = im.resize((rgb.shape[1] * factor, rgb.shape[0] * factor), Image.NEAREST)
  return im


def _captioned(rgb: np.ndarray, factor: int, lines: list[str], bar: float | None) -> Image.Image:
  """A tile: the upscaled image with a white caption band (two text lines and an optional p-bar) below."""
  im = _upscale(rgb, factor)
  w, h = im.size
  font = _get_font(12)
  band = 44
  tile = Image.new('RGB', (w, h + band), 'white')
  tile.paste(im, (0, 0))
  draw = ImageDraw.Draw(tile)
  for i, line in enumerate(lines[:2]):
    draw.text((3, h + 2 + 14 * i), line, fill=(0, 0, 0), font=font)
  if bar is not None and math.isfinite(bar):
    y0 = h + band - 10
    draw.rectangle([3, y0, w - 4, y0 + 6], outline=(120, 120, 120), fill=(235, 235, 235))
    filled = 3 + int(round((w - 7) * min(max(bar, 0.0), 1.0)))
    if filled > 3:
      draw.rectangle([3, y0, filled, y0 + 6], fill=(214, 39, 40))
    mid = 3 + (w - 7) // 2
    draw.line([mid, y0 - 1, mid, y0 + 7], fill=(0, 0, 0))
  return tile


def _strip_image(tiles: list[Image.Image], title: str) -> Image.Image:
  gap, head = 4, 18
  width = sum(t.size[0] for t in tiles) + gap * (len(tiles) + 1)
  height = max(t.size[1] for t in tiles) + head + gap
  strip = Image.new('RGB', (width, height), 'white')
  ImageDraw.Draw(strip).text((gap, 2), title, fill=(0, 0, 0), font=_get_font(12))
  x = gap
  for t in tiles:
    strip.paste(t, (x, head))
    x += t.size[0] + gap
  return strip


def _data_uri(png: bytes) -> str:
  return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


def _json_for_script(obj) -> str:
  """JSON safe inside an HTML <script> element."""
  return (json.dumps(obj, allow_nan=False).replace('<', '\\u003c').replace('>', '\\u003e')
          .replace('&', '\\u0026'))


def _fmt(v) -> str:
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v))
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  try:
    f = float(v)
  except (TypeError, ValueError):
    return str(v)
  return 'n/a' if not math.isfinite(f) else f'{f:.4g}'


_IMAGE_SUFFIX = re.compile(r'\.(png|jpe?g|tiff?|bmp|gif|dcm|dicom|nii(\.gz)?)$', re.IGNORECASE)


def _safe_stem(name: str) -> str:
  """File-system-safe stem of an id: image suffix dropped, runs of other characters -> '_', <= 96 chars."""
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', _IMAGE_SUFFIX.sub('', name)).strip('._')[:96] or 'image'


# ---------------------------------------------------------------------------------------------
# Writer
# ---------------------------------------------------------------------------------------------

class ExplanationWriter:
  """Writes explanations batch by batch: TFRecord shards, strips, GIFs, index; schema.json + report at close.

  Usage (chief process only):
    check_writable(export_dir)                        # before any computation
    with ExplanationWriter(export_dir, num_classes=2, class_names=['healthy', 'OA'], image_shape=(64, 64, 1),
                           num_ws=10, w_dim=256, config=config.to_dict()) as writer:
      for batch in batches:
        writer.add(batch)
      paths = writer.close({'flip_rate': 0.9})
  See the module docstring for the layout and the crash-safe replacement of a previous export.
  """

  def __init__(self, directory, *, num_classes: int, class_names, image_shape, num_ws: int, w_dim: int,
               config: Mapping | None = None, examples_per_shard: int = 256, target_description: str = '',
               overwrite: bool = False, report_max_images: int = 100, report_max_mib: float = 64.0,
               title: str = 'StyleX explanations'):
    """
    Args:
      directory: the export directory (created; must be writable).
      num_classes: K >= 1; class_names: K strings.
      image_shape: (H, W, C) with C in {1, 3}.
      num_ws, w_dim: latent shape [num_ws, w_dim].
      config: JSON-able dict stored in schema.json (e.g. config.to_dict()).
      examples_per_shard: records per TFRecord shard.
      target_description: what the direction targets (shown in the report, stored in schema.json).
      overwrite: delete the previous export's entries now (default: keep it until close() swaps).
      report_max_images, report_max_mib: report.html holds the first images up to this many rows and about this
        many MiB (one row is ~70 KiB at 64 px, ~0.8 MiB at 256 px with S = 9); the rest are in the
        TFRecords/strips/GIFs, and the report says so.
    """
    def positive_int(name, v):
      if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f'{name}={v!r} must be a positive integer')
      return int(v)

    self.num_classes = positive_int('num_classes', num_classes)
    self.class_names = [str(c) for c in class_names]
    if len(self.class_names) != self.num_classes:
      raise ValueError(f'class_names has {len(self.class_names)} names but num_classes={num_classes}; '
                       'give one name per class')
    image_shape = tuple(image_shape)
    if len(image_shape) != 3 or image_shape[-1] not in (1, 3):
      raise ValueError(f'image_shape must be (H, W, C) with C in {{1, 3}}, got {image_shape}')
    self.image_shape = tuple(positive_int('image_shape', v) for v in image_shape)
    self.num_ws = positive_int('num_ws', num_ws)
    self.w_dim = positive_int('w_dim', w_dim)
    self.examples_per_shard = positive_int('examples_per_shard', examples_per_shard)
    self.report_max_images = positive_int('report_max_images', report_max_images)
    if not report_max_mib > 0:
      raise ValueError(f'report_max_mib={report_max_mib!r} must be > 0')
    self._report_budget = int(report_max_mib * 2 ** 20)
    self._report_rows = 0
    self._report_full = False
    self.target_description = str(target_description)
    self.title = str(title)
    try:
      self.config = json.loads(json.dumps(dict(config or {}), default=str))
    except (TypeError, ValueError) as e:
      raise ValueError(f'config must be a JSON-able dict (e.g. config.to_dict()): {e}') from None

    self.directory = os.path.abspath(os.fspath(directory))
    check_writable(self.directory)
    if overwrite:
      for entry in EXPORT_ENTRIES:
        _remove(os.path.join(self.directory, entry))
    self._staging = os.path.join(self.directory, f'.export-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}')
    for sub in (SHARD_DIR, 'strips', 'gifs'):
      os.makedirs(os.path.join(self._staging, sub))
    self._index = open(os.path.join(self._staging, 'index.jsonl'), 'w', encoding='utf-8')
    self._rows = open(os.path.join(self._staging, '.report_rows.html'), 'w', encoding='utf-8')
    self._shard_file = None
    self._shard_counts: list[int] = []
    self._num_series: int | None = None
    self._metric_names: list[str] | None = None
    self._metric_values: dict[str, list[float]] = {}
    self._used_names: set[str] = set()
    self._n = 0
    self._closed = False

  # -- validation ------------------------------------------------------------------------------

  def _validate(self, batch: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(batch, Mapping):
      raise ValueError(f'batch must be a dict of arrays, got {type(batch).__name__}')
    unknown = sorted(set(batch) - set(FEATURE_KEYS) - set(_OPTIONAL_KEYS))
    if unknown:
      raise ValueError(f'batch has unknown key(s) {unknown}; expected {list(FEATURE_KEYS)} '
                       f'plus optional {list(_OPTIONAL_KEYS)}')
    missing = [k for k in FEATURE_KEYS if k not in batch]
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
    h, w, c = self.image_shape
    k = self.num_classes
    s = self._num_series
    if s is None:
      series_shape = np.shape(batch['series'])
      s = series_shape[1] if len(series_shape) == 5 and series_shape[1] >= 1 else -1
    expected = {'image': (b, h, w, c), 'reconstruction': (b, h, w, c), 'series': (b, s, h, w, c),
                'alphas': (b, s), 'probs': (b, s, k), 'original_probs': (b, k),
                'latent': (b, self.num_ws, self.w_dim), 'gradcam': (b, h, w), 'label': (b,),
                'reconstruction_probs': (b, k), 'target': (b,)}
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
                         f'num_ws={self.num_ws}, w_dim={self.w_dim})')
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
    if self._metric_names is not None and sorted(clean) != self._metric_names:
      raise ValueError(f"batch['metrics'] has names {sorted(clean)} but earlier batches had {self._metric_names}; "
                       'give the same metrics in every batch')
    out['metrics'] = clean
    return out

  # -- writing ---------------------------------------------------------------------------------

  def _unique_name(self, id_: str) -> str:
    stem = _safe_stem(id_)
    name, n = stem, 1
    while name.lower() in self._used_names:  # case-insensitive: safe on macOS/Windows file systems
      n += 1
      name = f'{stem}-{n}'
    self._used_names.add(name.lower())
    return name

  def _write_record(self, payload: bytes) -> int:
    if self._shard_file is None:
      index = len(self._shard_counts)
      self._shard_file = open(os.path.join(self._staging, SHARD_DIR, f'.shard-{index:05d}.tmp'), 'wb')
      self._shard_counts.append(0)
    self._shard_file.write(tfrecord.frame_record(payload))
    self._shard_counts[-1] += 1
    shard = len(self._shard_counts) - 1
    if self._shard_counts[-1] >= self.examples_per_shard:
      self._shard_file.close()
      self._shard_file = None
    return shard

  def add(self, batch: Mapping[str, Any]) -> None:
    """Writes one batch of B explained images (numpy or jax arrays; validated first, nothing written on error).

    Keys: id [B] str; image, reconstruction [B, H, W, C] float in [-1, 1] (or uint8); series [B, S, H, W, C]
    float in [-1, 1] (or uint8), ordered by alphas; alphas [B, S]; probs [B, S, K] in [0, 1];
    original_probs [B, K]; latent [B, num_ws, w_dim]; gradcam [B, H, W] in [0, 1]; label [B] int (-1 unknown).
    Optional: reconstruction_probs [B, K]; metrics {name: [B] numbers} (e.g. ssim, psnr, crossed);
    target [B] int, the class whose probability the strip/GIF/report shows (default: the class whose
    probability rises most from the first to the last frame). S is fixed by the first batch.
    """
    if self._closed:
      raise ValueError('ExplanationWriter is closed; create a new one')
    x = self._validate(batch)
    if self._num_series is None:
      self._num_series = int(x['series'].shape[1])
      self._metric_names = sorted(x['metrics'])
      self._metric_values = {n: [] for n in self._metric_names}
    for i, id_ in enumerate(x['id']):
      self._add_one(i, id_, x)

  def _add_one(self, i: int, id_: str, x: dict) -> None:
    k = self.num_classes
    image_u8 = writers.to_uint8(x['image'][i])
    recon_u8 = writers.to_uint8(x['reconstruction'][i])
    series_u8 = writers.to_uint8(x['series'][i])
    heat_u8 = _heat_uint8(x['gradcam'][i])
    alphas, probs = x['alphas'][i], x['probs'][i]
    label = int(x['label'][i])
    pngs = {'image': _png(image_u8), 'reconstruction': _png(recon_u8), 'gradcam': _png(heat_u8)}
    series_pngs = [_png(f) for f in series_u8]
    features = {
      'id': tfrecord.bytes_feature([id_.encode('utf-8')]),
      'image': tfrecord.bytes_feature([pngs['image']]),
      'reconstruction': tfrecord.bytes_feature([pngs['reconstruction']]),
      'series': tfrecord.bytes_feature(series_pngs),
      'alphas': tfrecord.float_feature(alphas),
      'probs': tfrecord.float_feature(probs.reshape(-1)),
      'original_probs': tfrecord.float_feature(x['original_probs'][i]),
      'latent': tfrecord.float_feature(x['latent'][i].reshape(-1)),
      'gradcam': tfrecord.bytes_feature([pngs['gradcam']]),
      'label': tfrecord.int64_feature([label]),
    }
    shard = self._write_record(tfrecord.encode_example(features))

    if 'target' in x:
      target = int(x['target'][i])
    else:
      target = int(np.argmax(probs[-1] - probs[0])) if k > 1 else 0
    name = self._unique_name(id_)
    image_f = _as_float_image(x['image'][i])
    heat_f = heat_u8.astype(np.float32) / 255.0 if x['gradcam'].dtype == np.uint8 else x['gradcam'][i]
    cam_rgb = gradcam_lib.overlay(image_f, np.clip(heat_f, 0.0, 1.0))
    far = int(np.argmax(np.abs(x['alphas'][i])))   # the end of the series away from alpha = 0 (either side)
    diff_rgb, diff_scale = diff_map(x['series'][i][far], x['reconstruction'][i])
    recon_probs = x['reconstruction_probs'][i] if 'reconstruction_probs' in x else None
    metrics = {n: float(v[i]) for n, v in x['metrics'].items()}
    for n, v in metrics.items():
      self._metric_values[n].append(v)
    cname = self.class_names[target]

    # strip + GIF
    h, w, _ = self.image_shape
    factor = max(1, math.ceil(_MIN_TILE / max(h, w)))
    label_text = 'unknown' if label < 0 else self.class_names[label]
    tiles = [_captioned(_rgb(image_u8), factor, ['original', f'p={x["original_probs"][i][target]:.3f}'],
                        float(x['original_probs'][i][target])),
             _captioned(_rgb(recon_u8), factor,
                        ['reconstruction', '' if recon_probs is None else f'p={recon_probs[target]:.3f}'],
                        None if recon_probs is None else float(recon_probs[target]))]
    frames = []
    for j in range(series_u8.shape[0]):
      tiles.append(_captioned(_rgb(series_u8[j]), factor, [f'shift {alphas[j]:+.2f}', f'p={probs[j, target]:.3f}'],
                              float(probs[j, target])))
      frames.append(_captioned(_rgb(series_u8[j]), factor,
                               [f'shift {alphas[j]:+.2f}', f'p({cname})={probs[j, target]:.3f}'],
                               float(probs[j, target])))
    tiles.append(_captioned(cam_rgb, factor, ['GradCAM', ''], None))
    tiles.append(_captioned(diff_rgb, factor, ['end - recon', f'blue/red = -/+{diff_scale:.2f}'], None))
    strip = _strip_image(tiles, f'{id_}   label: {label_text}   p({cname}) along the series')
    strip_path = os.path.join(self._staging, 'strips', name + '.png')
    strip.save(strip_path, format='PNG')
    gif_path = os.path.join(self._staging, 'gifs', name + '.gif')
    if self.image_shape[-1] == 1:  # ~10x faster than PIL's adaptive palette per frame
      frames = [f.quantize(palette=_GREY_PALETTE, dither=Image.Dither.NONE) for f in frames]
    frames[0].save(gif_path, format='GIF', save_all=True, append_images=frames[1:], duration=400, loop=0)

    entry = {'id': id_, 'safe_id': name, 'shard': shard, 'label': label, 'target': target,
             'original_probs': x['original_probs'][i].tolist(),
             'reconstruction_probs': None if recon_probs is None else recon_probs.tolist(),
             'final_probs': probs[-1].tolist(), 'metrics': metrics,
             'strip': f'strips/{name}.png', 'gif': f'gifs/{name}.gif'}
    self._index.write(json.dumps(_jsonable(entry), allow_nan=False) + '\n')

    if not self._report_full:
      row = self._report_row(id_, name, label_text, target, pngs, series_pngs, alphas, probs,
                             x['original_probs'][i], recon_probs, _png(cam_rgb), _png(diff_rgb), diff_scale, metrics)
      self._report_budget -= len(row)
      if self._report_rows >= self.report_max_images or (self._report_budget < 0 and self._report_rows > 0):
        self._report_full = True  # rows stay the first N images
      else:
        self._rows.write(row)
        self._report_rows += 1
    self._n += 1

  # -- report ----------------------------------------------------------------------------------

  def _plot_svg(self, alphas: np.ndarray, probs: np.ndarray, target: int) -> tuple[str, list[list[float]]]:
    """Inline SVG of p(class) vs alpha; returns (svg, [[x, y] of the target curve per frame])."""
    width, height, left, right, top, bottom = 240, 150, 30, 8, 8, 22
    lo, hi = float(np.min(alphas)), float(np.max(alphas))
    if hi - lo < 1e-9:
      lo, hi = lo - 1.0, hi + 1.0
    sx = lambda a: left + (a - lo) / (hi - lo) * (width - left - right)
    sy = lambda p: top + (1.0 - p) * (height - top - bottom)
    parts = [f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
             'fill="#fafafa" stroke="#999"/>',
             f'<line x1="{left}" y1="{sy(0.5):.1f}" x2="{width - right}" y2="{sy(0.5):.1f}" stroke="#888" '
             'stroke-dasharray="4 3"/>']
    for p in (0.0, 0.5, 1.0):
      parts.append(f'<text x="{left - 3}" y="{sy(p) + 4:.1f}" font-size="10" text-anchor="end">{p:g}</text>')
    parts.append(f'<text x="{left}" y="{height - 6}" font-size="10">{lo:+.2f}</text>')
    parts.append(f'<text x="{width - right}" y="{height - 6}" font-size="10" text-anchor="end">{hi:+.2f}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.1f}" y="{height - 6}" font-size="10" '
                 'text-anchor="middle">shift</text>')
    if lo <= 0.0 <= hi:
      parts.append(f'<line x1="{sx(0.0):.1f}" y1="{top}" x2="{sx(0.0):.1f}" y2="{height - bottom}" stroke="#444" '
                   'stroke-dasharray="2 2"><title>shift 0 (the inverted image)</title></line>')
      p0 = float(np.interp(0.0, alphas, probs[:, target])) if np.all(np.diff(alphas) > 0) else None
      if p0 is not None:
        parts.append(f'<rect x="{sx(0.0) - 3:.1f}" y="{sy(p0) - 3:.1f}" width="6" height="6" fill="#444"/>')
    order = [c for c in range(self.num_classes) if c != target] + [target]
    for c in order:
      pts = ' '.join(f'{sx(a):.1f},{sy(p):.1f}' for a, p in zip(alphas, probs[:, c]))
      colour = _CLASS_COLOURS[c % len(_CLASS_COLOURS)]
      width_px = 2.5 if c == target else 1.2
      parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="{width_px}">'
                   f'<title>p({html.escape(self.class_names[c])})</title></polyline>')
    cur = [[round(sx(float(a)), 1), round(sy(float(p)), 1)] for a, p in zip(alphas, probs[:, target])]
    parts.append(f'<circle class="cur" cx="{cur[0][0]}" cy="{cur[0][1]}" r="4" fill="none" stroke="#000" '
                 'stroke-width="2"/>')
    parts.append('</svg>')
    return ''.join(parts), cur

  def _probs_text(self, probs) -> str:
    return ', '.join(f'{html.escape(n)} {p:.3f}' for n, p in zip(self.class_names, probs))

  def _report_row(self, id_, name, label_text, target, pngs, series_pngs, alphas, probs, original_probs,
                  recon_probs, cam_png, diff_png, diff_scale, metrics) -> str:
    svg, cur = self._plot_svg(alphas, probs, target)
    start = int(np.argmin(np.abs(alphas)))
    data = {'frames': [_data_uri(p) for p in series_pngs], 'alphas': [float(a) for a in alphas],
            'probs': [[round(float(p), 4) for p in row] for row in probs], 'cur': cur,
            'classes': self.class_names}
    esc = html.escape
    recon_caption = f'reconstruction<br>{self._probs_text(recon_probs)}' if recon_probs is not None \
        else 'reconstruction'
    metric_text = ' · '.join(f'{esc(n)} {_fmt(v)}' for n, v in metrics.items())
    return f"""
<div class="row" id="{esc(name)}">
 <div class="head"><b>{esc(id_)}</b> · label: {esc(label_text)} · shown: p({esc(self.class_names[target])})
  {(' · ' + metric_text) if metric_text else ''}
  · <a href="strips/{esc(name)}.png">strip</a> · <a href="gifs/{esc(name)}.gif">gif</a></div>
 <div class="cells">
  <figure><img src="{_data_uri(pngs['image'])}" alt="original"><figcaption>original<br>
   {self._probs_text(original_probs)}</figcaption></figure>
  <figure><img src="{_data_uri(pngs['reconstruction'])}" alt="reconstruction"><figcaption>{recon_caption}
   </figcaption></figure>
  <figure class="series"><img class="frame" alt="series frame" src="{data['frames'][start]}">
   <figcaption><input class="scrub" type="range" min="0" max="{len(series_pngs) - 1}" value="{start}">
   <div class="frameinfo"></div></figcaption></figure>
  <figure>{svg}<figcaption>p(class) vs shift; bold: {esc(self.class_names[target])}; dashed: 0.5 and
   shift 0</figcaption></figure>
  <figure><img src="{_data_uri(cam_png)}" alt="GradCAM"><figcaption>GradCAM of the original</figcaption></figure>
  <figure><img src="{_data_uri(diff_png)}" alt="difference"><figcaption>series end (largest |shift|) − reconstruction<br>
   blue −{diff_scale:.2f} … red +{diff_scale:.2f}</figcaption></figure>
 </div>
 <script type="application/json" class="rowdata">{_json_for_script(data)}</script>
</div>
"""

  def _write_report(self, path: str, summary: dict, metric_means: dict, rows_path: str) -> None:
    esc = html.escape
    legend = ' '.join(f'<span style="color:{_CLASS_COLOURS[c % len(_CLASS_COLOURS)]}">&#9632; {esc(n)}</span>'
                      for c, n in enumerate(self.class_names))
    summary_rows = ''.join(f'<tr><td>{esc(str(k))}</td><td>{esc(_fmt(v))}</td></tr>' for k, v in summary.items())
    mean_rows = ''.join(f'<tr><td>mean {esc(k)}</td><td>{esc(_fmt(v))}</td></tr>' for k, v in metric_means.items())
    shown = self._report_rows
    more = '' if shown == self._n else (f'<p><b>Showing the first {shown} of {self._n} images</b>; all are in '
                                        'tfrecords/, strips/ and gifs/.</p>')
    config = esc(json.dumps(self.config, indent=1, default=str))
    head = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(self.title)}</title>
<style>
body {{ font-family: sans-serif; margin: 16px; color: #222; }}
table {{ border-collapse: collapse; }} td {{ border: 1px solid #ccc; padding: 2px 8px; }}
.row {{ border-top: 1px solid #bbb; padding: 8px 0; }}
.cells {{ display: flex; flex-wrap: wrap; gap: 10px; align-items: flex-start; }}
figure {{ margin: 0; text-align: center; font-size: 12px; max-width: 260px; }}
figure img {{ width: 160px; height: 160px; object-fit: contain; image-rendering: pixelated; display: block;
  margin: 0 auto; background: #000; }}
input.scrub {{ width: 160px; }}
</style></head><body>
<h1>{esc(self.title)}</h1>
<p>Target: {esc(self.target_description) or 'n/a'}<br>Classes: {legend}<br>Images: {self._n}</p>
{more}
<table><tr><th colspan="2">summary</th></tr>{summary_rows}{mean_rows}</table>
<details><summary>config</summary><pre>{config}</pre></details>
"""
    tail = """
<script>
document.querySelectorAll('.row').forEach(function (row) {
  var d = JSON.parse(row.querySelector('script.rowdata').textContent);
  var scrub = row.querySelector('input.scrub'), img = row.querySelector('img.frame');
  var info = row.querySelector('.frameinfo'), dot = row.querySelector('circle.cur');
  function show(i) {
    img.src = d.frames[i];
    var a = d.alphas[i];
    info.textContent = 'shift ' + (a >= 0 ? '+' : '') + a.toFixed(2) + ' | ' +
      d.probs[i].map(function (p, c) { return d.classes[c] + ' ' + p.toFixed(3); }).join(', ');
    dot.setAttribute('cx', d.cur[i][0]); dot.setAttribute('cy', d.cur[i][1]);
  }
  scrub.addEventListener('input', function () { show(+scrub.value); });
  show(+scrub.value);
});
</script>
</body></html>
"""
    tmp = path + '.tmp'
    with open(tmp, 'w', encoding='utf-8') as out:
      out.write(head)
      with open(rows_path, encoding='utf-8') as rows:
        shutil.copyfileobj(rows, out)
      out.write(tail)
    os.replace(tmp, path)

  # -- close / abort ---------------------------------------------------------------------------

  def close(self, summary_metrics: Mapping[str, Any] | None = None) -> dict:
    """Finishes the export and swaps it into `directory`; returns the output paths.

    summary_metrics: name -> number (or string), shown at the top of the report and stored in schema.json
    (e.g. mean SSIM, agreement, flip rate). Raises ValueError (and keeps any previous export) if no image
    was added. Returns {'directory', 'schema', 'report', 'index', 'tfrecords': [paths], 'strips', 'gifs'}.
    """
    if self._closed:
      raise ValueError('ExplanationWriter is already closed')
    if self._n == 0:
      self.abort()
      raise ValueError('no explanations were added; nothing exported (a previous export, if any, is unchanged)')
    summary = dict(summary_metrics or {})
    if self._shard_file is not None:
      self._shard_file.close()
      self._shard_file = None
    self._index.close()
    self._rows.close()
    num_shards = len(self._shard_counts)
    shard_dir = os.path.join(self._staging, SHARD_DIR)
    shards = []
    for index in range(num_shards):
      final = f'{SHARD_PREFIX}-{index:05d}-of-{num_shards:05d}.tfrecord'
      os.replace(os.path.join(shard_dir, f'.shard-{index:05d}.tmp'), os.path.join(shard_dir, final))
      shards.append(f'{SHARD_DIR}/{final}')
    metric_stats = {n: {'mean': float(np.mean(v)), 'min': float(np.min(v)), 'max': float(np.max(v))}
                    for n, v in self._metric_values.items() if v}
    h, w, c = self.image_shape
    s, k = self._num_series, self.num_classes
    decoded = {'id': ([], 'str'), 'image': ([h, w, c], 'uint8'), 'reconstruction': ([h, w, c], 'uint8'),
               'series': ([s, h, w, c], 'uint8'), 'alphas': ([s], 'float32'), 'probs': ([s, k], 'float32'),
               'original_probs': ([k], 'float32'), 'latent': ([self.num_ws, self.w_dim], 'float32'),
               'gradcam': ([h, w], 'uint8'), 'label': ([], 'int64')}
    kinds = {'id': 'bytes', 'image': 'bytes (PNG)', 'reconstruction': 'bytes (PNG)', 'series': 'bytes_list (PNG each)',
             'alphas': 'float_list', 'probs': 'float_list', 'original_probs': 'float_list', 'latent': 'float_list',
             'gradcam': 'bytes (PNG)', 'label': 'int64'}
    spec = {'num_series': s, 'num_classes': k, 'num_ws': self.num_ws, 'w_dim': self.w_dim}
    schema = {
      'format': SCHEMA_FORMAT, 'version': SCHEMA_VERSION,
      'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'num_examples': self._n, 'num_classes': k, 'class_names': self.class_names,
      'image_shape': [h, w, c], 'num_series': s, 'num_ws': self.num_ws, 'w_dim': self.w_dim,
      'features': {key: {'type': kinds[key], 'meaning': FEATURE_MEANINGS[key],
                         'decoded_shape': decoded[key][0], 'decoded_dtype': decoded[key][1]}
                   for key in FEATURE_KEYS},
      'tf_feature_spec': {key: {'shape': v['shape'], 'dtype': v['dtype']}
                          for key, v in feature_spec(spec).items()},
      'shards': shards, 'shard_counts': list(self._shard_counts),
      'target_description': self.target_description,
      'summary_metrics': summary, 'per_image_metrics': metric_stats,
      'files': {'index': 'index.jsonl', 'report': 'report.html', 'strips': 'strips/<safe_id>.png',
                'gifs': 'gifs/<safe_id>.gif'},
      'config': self.config,
    }
    writers.write_json(os.path.join(self._staging, 'schema.json'), schema, is_chief=True)
    rows_path = os.path.join(self._staging, '.report_rows.html')
    self._write_report(os.path.join(self._staging, 'report.html'), summary,
                       {n: v['mean'] for n, v in metric_stats.items()}, rows_path)
    os.remove(rows_path)
    self._swap_in()
    self._closed = True
    d = self.directory
    return {'directory': d, 'schema': os.path.join(d, 'schema.json'), 'report': os.path.join(d, 'report.html'),
            'index': os.path.join(d, 'index.jsonl'), 'tfrecords': [os.path.join(d, p) for p in shards],
            'strips': os.path.join(d, 'strips'), 'gifs': os.path.join(d, 'gifs')}

  def _swap_in(self) -> None:
    old = os.path.join(self.directory, f'.export-old-{os.getpid()}-{uuid.uuid4().hex[:8]}')
    os.makedirs(old)
    for entry in EXPORT_ENTRIES:  # schema.json first: a half-swapped directory never looks complete
      src = os.path.join(self.directory, entry)
      if os.path.lexists(src):
        os.replace(src, os.path.join(old, entry))
    for entry in reversed(EXPORT_ENTRIES):  # schema.json last
      os.replace(os.path.join(self._staging, entry), os.path.join(self.directory, entry))
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(self._staging, ignore_errors=True)

  def abort(self) -> None:
    """Drops the unfinished export (the staging directory); any previous export is left as it was."""
    if self._closed:
      return
    for f in (self._shard_file, self._index, self._rows):
      if f is not None and not f.closed:
        f.close()
    self._shard_file = None
    shutil.rmtree(self._staging, ignore_errors=True)
    self._closed = True

  @property
  def num_examples(self) -> int:
    return self._n

  def __enter__(self) -> 'ExplanationWriter':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None:
      self.abort()
    elif not self._closed:
      self.close()


def _jsonable(v):
  """Strict-JSON copy: non-finite floats -> None."""
  if isinstance(v, dict):
    return {str(k): _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)
