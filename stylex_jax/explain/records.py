"""The explanation records: the TFRecord feature table, the schema.json reader and a TensorFlow-free record
reader (`read_explanations`) for exports written by `export.ExplanationWriter`.

The export may be local or on an object store (`gs://...`; read through `stylex_jax.storage` / etils.epath).
Bad input fails with one line naming the file: a directory without schema.json, a schema of another format,
a shard listed in schema.json that is missing, a truncated or corrupt shard (CRC), or a record whose shapes do
not match the schema (e.g. a shard copied in from another export).
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Mapping

import numpy as np

from stylex_jax import storage, tfrecord
from stylex_jax.explain import media

SCHEMA_FORMAT = 'stylex_jax.explanations'
SCHEMA_VERSION = 1
SHARD_DIR = 'tfrecords'
SHARD_PREFIX = 'explanations'
# Everything an export owns inside its directory (moved/replaced as a unit; nothing else is touched).
EXPORT_ENTRIES = ('schema.json', SHARD_DIR, 'strips', 'gifs', 'index.jsonl', 'report.html')

# key -> (type in the record, meaning); S = series length, K = classes (DESIGN.md "Explanation TFRecord schema").
FEATURES = {
    'id': ('bytes', 'source id (file name or TFDS key), utf-8'),
    'image': ('bytes (PNG)', 'original image, PNG, uint8 = round((x + 1) * 127.5) clipped to [0, 255]'),
    'reconstruction': ('bytes (PNG)', 'G(invert(image)), PNG, same encoding as image'),
    'series': ('bytes_list (PNG each)', 'images along the direction, one PNG each, ordered by alphas'),
    'alphas': ('float_list', 'shift of each series image along the direction'),
    'probs': ('float_list', 'classifier probabilities of each series image, [num_series, num_classes] row-major'),
    'original_probs': ('float_list', 'classifier probabilities on the original image'),
    'latent': ('float_list', 'inverted latent (W+), [num_ws, w_dim] row-major'),
    'gradcam':
        ('bytes (PNG)', 'GradCAM heatmap of the original, 1-channel PNG, uint8 = round(255 * heat), heat in [0, 1]'),
    'label': ('int64', 'ground-truth label where known, else -1'),
}
FEATURE_MEANINGS = {key: meaning for key, (_, meaning) in FEATURES.items()}
FEATURE_KEYS = tuple(FEATURE_MEANINGS)


def _find_schema(path: str) -> str:
  candidates = [path] if storage.isdir(path) else []
  candidates += [os.path.dirname(path), os.path.dirname(os.path.dirname(path))]
  for c in candidates:
    p = os.path.join(c, 'schema.json')
    if storage.isfile(p):
      return p
  raise FileNotFoundError(f'no schema.json found for {path} (looked in {", ".join(dict.fromkeys(candidates))}); '
                          'pass the export directory written by ExplanationWriter')


def read_schema(path_or_dir) -> dict:
  """The schema.json of an export (given the export directory, its tfrecords/ directory or a shard file)."""
  path = storage.absolute(path_or_dir)
  if path.endswith('.json') and storage.isfile(path):
    schema_path = path
  else:
    schema_path = _find_schema(path)
  schema = json.loads(storage.read_text(schema_path))
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
  shapes = {
      'id': ([], 'string'),
      'image': ([], 'string'),
      'reconstruction': ([], 'string'),
      'series': ([s], 'string'),
      'alphas': ([s], 'float32'),
      'probs': ([s * k], 'float32'),
      'original_probs': ([k], 'float32'),
      'latent': ([flat_latent], 'float32'),
      'gradcam': ([], 'string'),
      'label': ([], 'int64')
  }
  return {key: {'kind': 'FixedLenFeature', 'shape': shape, 'dtype': dtype} for key, (shape, dtype) in shapes.items()}


def read_explanations(path_or_dir, *, decode_images: bool = True) -> Iterator[dict[str, Any]]:
  """Reads an export back without TensorFlow, one dict per image, in the order written.

  path_or_dir: the export directory, its tfrecords/ directory, or one shard file (schema.json is found
  beside or above it). Yields {'id': str, 'image'/'reconstruction': uint8 [H, W, C], 'series': uint8
  [S, H, W, C], 'alphas': float32 [S], 'probs': float32 [S, K], 'original_probs': float32 [K],
  'latent': float32 [num_ws, w_dim], 'gradcam': uint8 [H, W] (/ 255 -> [0, 1]), 'label': int}; with
  decode_images=False the image entries stay PNG bytes. Corrupt or truncated shards -> ValueError.
  """
  path = storage.absolute(path_or_dir)
  schema = read_schema(path)
  if storage.isfile(path) and not path.endswith('.json'):
    files = [path]
  else:
    files = [os.path.join(schema['_directory'], f) for f in schema['shards']]
    missing = [f for f in files if not storage.isfile(f)]
    if missing:
      raise FileNotFoundError(f'shard(s) listed in schema.json are missing: {missing}; the export is incomplete')
  s, k = int(schema['num_series']), int(schema['num_classes'])
  shapes = {
      'alphas': (s,),
      'probs': (s, k),
      'original_probs': (k,),
      'latent': (int(schema['num_ws']), int(schema['w_dim']))
  }
  for file in files:
    for payload in tfrecord.read_records(file):
      raw = tfrecord.decode_example(payload)
      missing = [key for key in FEATURE_KEYS if key not in raw]
      if missing:
        raise ValueError(f'{file}: a record lacks feature(s) {missing}; not an explanation record')
      out: dict[str, Any] = {'id': raw['id'][1][0].decode('utf-8')}
      for key in ('image', 'reconstruction', 'gradcam'):
        data = raw[key][1][0]
        out[key] = media.decode_png(data) if decode_images else data
      if decode_images:
        out['gradcam'] = out['gradcam'][..., 0]
        out['series'] = np.stack([media.decode_png(b) for b in raw['series'][1]])
      else:
        out['series'] = list(raw['series'][1])
      for key, shape in shapes.items():
        values = raw[key][1]
        if values.size != int(np.prod(shape)) or (decode_images and len(out['series']) != s):
          raise ValueError(f'{file}: record {out["id"]!r} has {key} of {values.size} values (series of '
                           f'{len(out["series"])} frames) but schema.json describes {shape} ({s} frames): a shard of '
                           'another export? Re-export, or point at the directory it came from')
        out[key] = values.reshape(shape)
      out['label'] = int(raw['label'][1][0])
      yield out
