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

TFRecord features: `records.FEATURES` (type in the record, meaning); schema.json repeats them with the decoded
shapes and dtypes, and `feature_spec` gives the parsing spec. Parsing with plain tf.data (copy-paste):

  import json, os, tensorflow as tf
  export = '<workdir>/explain'
  schema = json.load(tf.io.gfile.GFile(os.path.join(export, 'schema.json')))   # local or gs://
  spec = {k: tf.io.FixedLenFeature(v['shape'], getattr(tf, v['dtype']))
          for k, v in schema['tf_feature_spec'].items()}
  files = [os.path.join(export, f) for f in schema['shards']]
  png = tf.io.decode_png                      # -> uint8 [H, W, C]; id, alphas, original_probs, label as parsed
  def parse(record):
    ex = tf.io.parse_single_example(record, spec)
    return {**ex, 'image': png(ex['image']), 'reconstruction': png(ex['reconstruction']),
            'series': tf.map_fn(png, ex['series'], fn_output_signature=tf.uint8),        # [S, H, W, C]
            'probs': tf.reshape(ex['probs'], [schema['num_series'], schema['num_classes']]),
            'latent': tf.reshape(ex['latent'], [schema['num_ws'], schema['w_dim']]),
            'gradcam': png(ex['gradcam'])[..., 0]}                 # uint8 [H, W]; / 255 -> heat in [0, 1]
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

On an object store (`gs://bucket/kl/explain`, any path etils.epath knows; all I/O goes through
`stylex_jax.storage`) the same steps run, but a rename there is a copy of every object followed by a delete
(gs/s3 have no rename), so the swap is not atomic: a crash in the middle can leave entries half moved and a
`.export-old-*` / `.export-tmp-*` prefix behind. What still holds is the marker: schema.json is moved away first
and moved in last, and each object appears only once fully uploaded, so a directory with a schema.json holds a
complete export, and one without it holds none (rerun the explain stage). The staging prefix is inside the
export directory on the store too (server-side copies, no download).

Resuming (`resume_key=`, used by the explain stage): the staging directory is then `<directory>/.export-partial/`
and `commit(state)` (called between batches) records the finished shards in `.export-partial/manifest.json`
(`storage.write_atomic(sync=True)`: locally a synced .tmp file renamed over it, on a store one object upload; a
kill at any moment leaves the previous manifest or the new one). A commit happens only when no shard is open, i.e.
every `lcm(batch, examples_per_shard)` images, and first makes index.jsonl and the report rows durable (fsync
locally; on a store those two objects are re-uploaded whole, the shards, strips and GIFs are already objects). A
new writer with the same resume_key (JSON-equal: config, source, inputs, provenance) continues from the last
commit: the finished shards, their index.jsonl lines, report rows, strips and GIFs are kept, everything written
after the commit is cut off (`storage.truncate`) or deleted, and `resumed_state` returns the caller's state (e.g.
the input position) so the caller explains only the remaining images. A different key (or a damaged partial state)
discards the partial export and starts afresh. An exception keeps the committed part (the same command resumes); a
previous complete export is still only replaced at `close()`. One writer per directory at a time.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import re
import uuid
from typing import Any, Mapping

import numpy as np
from stylex_jax import storage, tfrecord, writers
from stylex_jax.explain import batch as batch_lib
from stylex_jax.explain import gradcam as gradcam_lib
from stylex_jax.explain import media
from stylex_jax.explain import report as report_lib
# the record schema and its reader (records.py); read_explanations / read_schema / feature_spec stay importable
# from here, the module users write with
from stylex_jax.explain.records import (  # noqa: F401
    EXPORT_ENTRIES, FEATURE_KEYS, FEATURE_MEANINGS, FEATURES, SCHEMA_FORMAT, SCHEMA_VERSION, SHARD_DIR, SHARD_PREFIX,
    feature_spec, read_explanations, read_schema)

PARTIAL_DIR = '.export-partial'  # the staging directory of a resumable export
MANIFEST = 'manifest.json'  # its committed state
_TMP_SHARD = re.compile(r'^\.shard-(\d{5})\.tmp$')

# ---------------------------------------------------------------------------------------------
# Directory checks
# ---------------------------------------------------------------------------------------------


def check_writable(directory) -> None:
  """Creates `directory` if needed and proves it writable (writes and removes a probe file).

  Call before any computation. Raises ValueError with one line
  'cannot write explanations to X: <reason>; choose another --workdir / export dir'.
  """
  path = storage.absolute(directory)

  def fail(reason: str):
    raise ValueError(f'cannot write explanations to {path}: {reason}; choose another --workdir / export dir')

  try:
    storage.check_writable(path)
  except OSError as e:
    reason = e.strerror or str(e)
    filename = str(e.filename or '')
    if filename and storage.absolute(filename) != path and not os.path.basename(filename).startswith('.write-probe-'):
      reason += f' ({e.filename})'
    fail(reason)


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
               title: str = 'StyleX explanations', source: Mapping | None = None, provenance: Mapping | None = None,
               resume_key: Mapping | None = None):
    """
    Args:
      directory: the export directory (created; must be writable).
      num_classes: K >= 1; class_names: K strings.
      image_shape: (H, W, C) with C in {1, 3}.
      num_ws, w_dim: latent shape [num_ws, w_dim].
      config: JSON-able dict stored in schema.json (e.g. config.to_dict()).
      provenance: JSON-able dict stored in schema.json: what the explanations were made from (e.g. the
        checkpoint step of each model), so a later run can tell whether the export is out of date.
      examples_per_shard: records per TFRecord shard.
      target_description: what the direction targets (shown in the report, stored in schema.json).
      overwrite: delete the previous export's entries now (default: keep it until close() swaps).
      report_max_images, report_max_mib: report.html holds the first images up to this many rows and about this
        many MiB (one row is ~70 KiB at 64 px, ~0.8 MiB at 256 px with S = 9); the rest are in the
        TFRecords/strips/GIFs, and the report says so.
      source: JSON-able description of what was explained, stored in schema.json as 'source' (e.g. {'kind':
        'split', 'split': 'validation', 'num_images': 64}); the explain stage compares it before reusing an export.
      resume_key: JSON-able identity of the job (e.g. config, source, input fingerprint, provenance): makes the
        export resumable in `<directory>/.export-partial/` (module docstring); None: a private staging directory,
        dropped on any exception.
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
    self.target_description = str(target_description)
    self.title = str(title)
    try:
      self.source = json.loads(json.dumps(dict(source or {}), default=str))
      self.config = json.loads(json.dumps(dict(config or {}), default=str))
    except (TypeError, ValueError) as e:
      raise ValueError(f'config must be a JSON-able dict (e.g. config.to_dict()): {e}') from None
    try:
      self.provenance = None if provenance is None else json.loads(json.dumps(dict(provenance)))
    except (TypeError, ValueError) as e:
      raise ValueError(f'provenance must be a JSON-able dict: {e}') from None

    self.directory = storage.absolute(directory)
    check_writable(self.directory)
    if overwrite:
      for entry in EXPORT_ENTRIES:
        storage.remove(os.path.join(self.directory, entry))
    self._shard_file = None
    self._shard_counts: list[int] = []
    self._shard_bytes: list[int] = []
    self._num_series: int | None = None
    self._metric_names: list[str] | None = None
    self._names = media.UniqueStems()
    self._n = 0
    self._closed = False
    self._committed = 0  # images in the last commit (resumable exports)
    self.resumed_state: dict | None = None  # the caller's state of the commit this writer continues from
    self.discarded_partial = ''  # why a partial export in the directory was not continued ('' if none was)
    report_args = dict(class_names=self.class_names, max_images=self.report_max_images,
                       max_bytes=int(report_max_mib * 2**20))
    if resume_key is None:
      self._resume_key = None
      self._staging = os.path.join(self.directory, f'.export-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}')
    else:
      try:
        self._resume_key = json.loads(json.dumps(dict(resume_key), sort_keys=True, default=str))
      except (TypeError, ValueError) as e:
        raise ValueError(f'resume_key must be a JSON-able dict: {e}') from None
      self._staging = os.path.join(self.directory, PARTIAL_DIR)
      manifest = self._read_manifest()
      if manifest is not None and self._restore(manifest, report_args):
        return
      storage.remove_quietly(self._staging)
    for sub in (SHARD_DIR, 'strips', 'gifs'):
      storage.makedirs(os.path.join(self._staging, sub))
    self._index = storage.AppendFile(os.path.join(self._staging, 'index.jsonl'), 'wb')
    self._report = report_lib.Report(os.path.join(self._staging, '.report_rows.html'), **report_args)

  # -- resuming --------------------------------------------------------------------------------

  def _read_manifest(self) -> dict | None:
    if not storage.isdir(self._staging):
      return None
    try:
      manifest = json.loads(storage.read_text(os.path.join(self._staging, MANIFEST)))
    except (OSError, ValueError):
      self.discarded_partial = 'it has no readable manifest (nothing was committed)'
      return None
    if not isinstance(manifest, dict) or manifest.get('key') != self._resume_key:
      self.discarded_partial = 'it was made with another config, input or checkpoints'
      return None
    return manifest

  def _restore(self, m: dict, report_args: dict) -> bool:
    """Continues the committed partial export `m` (the manifest); False (nothing changed) if it is damaged."""
    stage = self._staging
    shard_dir = os.path.join(stage, SHARD_DIR)
    index_path = os.path.join(stage, 'index.jsonl')
    rows_path = os.path.join(stage, '.report_rows.html')
    try:
      counts, sizes = [int(c) for c in m['shard_counts']], [int(b) for b in m['shard_bytes']]
      n, index_bytes = int(m['num_examples']), int(m['index_bytes'])
      for i, size in enumerate(sizes):
        if storage.size(os.path.join(shard_dir, f'.shard-{i:05d}.tmp')) < size:
          raise ValueError(f'shard {i} is shorter than committed')
      if storage.size(index_path) < index_bytes or storage.size(rows_path) < int(m['report']['bytes']):
        raise ValueError('index.jsonl or the report rows are shorter than committed')
      lines = storage.read_bytes(index_path)[:index_bytes].splitlines()
      names = [json.loads(line)['safe_id'] for line in lines]
      if len(names) != n or sum(counts) != n or len(counts) != len(sizes):
        raise ValueError('the manifest does not match index.jsonl')
    except (OSError, ValueError, KeyError, TypeError) as e:
      self.discarded_partial = f'its committed state is damaged ({e})'
      return False
    for f in storage.listdir(shard_dir):  # shards begun after the commit
      match = _TMP_SHARD.match(f)
      if not match or int(match.group(1)) >= len(counts):
        storage.remove(os.path.join(shard_dir, f))
    for i, size in enumerate(sizes):
      storage.truncate(os.path.join(shard_dir, f'.shard-{i:05d}.tmp'), size)
    keep = {name.lower() for name in names}
    for sub, ext in (('strips', '.png'), ('gifs', '.gif')):
      for f in storage.listdir(os.path.join(stage, sub)):
        if not (f.endswith(ext) and f[:-len(ext)].lower() in keep):
          storage.remove(os.path.join(stage, sub, f))
    for f in storage.listdir(stage):  # e.g. a half-written schema.json / report.html of a close() that was killed
      if f not in (SHARD_DIR, 'strips', 'gifs', 'index.jsonl', '.report_rows.html', MANIFEST) and \
          not f.startswith('caller-'):
        storage.remove(os.path.join(stage, f))
    storage.truncate(index_path, index_bytes)
    self._index = storage.AppendFile(index_path, 'ab')
    self._report = report_lib.Report(rows_path, resume=m['report'], **report_args)
    for name in names:
      self._names.reserve(name)
    self._shard_counts, self._shard_bytes = counts, sizes
    self._n = self._committed = n
    self._num_series = m['num_series']
    self._metric_names = m['metric_names']
    self.resumed_state = m.get('state')
    return True

  def commit(self, state: Mapping[str, Any] | None = None) -> bool:
    """Records the export so far as resumable, with the caller's JSON-able `state` (e.g. the input position).

    Call between batches. Only when no shard is open (every record so far is in a finished shard) and images were
    added since the last commit; returns whether it committed. A no-op (False) for a writer without resume_key.
    index.jsonl and the report rows are made durable first (`storage.AppendFile.sync`: fsync locally, a whole
    upload on an object store), then the manifest is replaced atomically.
    """
    if self._resume_key is None or self._closed or self._shard_file is not None or self._n == self._committed:
      return False
    self._index.sync()
    manifest = {
        'key': self._resume_key,
        'num_examples': self._n,
        'shard_counts': list(self._shard_counts),
        'shard_bytes': list(self._shard_bytes),
        'index_bytes': self._index.tell(),
        'report': self._report.state(),
        'num_series': self._num_series,
        'metric_names': self._metric_names,
        'state': json.loads(json.dumps(dict(state or {}))),
    }
    storage.write_atomic(os.path.join(self._staging, MANIFEST), json.dumps(manifest).encode('utf-8'), sync=True)
    self._committed = self._n
    return True

  @property
  def committed(self) -> int:
    """Images in the last commit (what a rerun with the same resume_key keeps)."""
    return self._committed

  @property
  def partial_directory(self) -> str:
    """The staging directory (`<directory>/.export-partial` when resumable): a caller may keep its own files
    there, named 'caller-*' (kept on resume, dropped with the staging directory)."""
    return self._staging

  def metric_arrays(self) -> dict[str, np.ndarray]:
    """The per-image metrics of every image added so far (including a resumed part), read back from index.jsonl:
    name -> float32 [N] (non-finite values as NaN), in the order the images were added."""
    self._index.flush(force=True)
    return _index_metrics(os.path.join(self._staging, 'index.jsonl'))

  # -- writing ---------------------------------------------------------------------------------

  def _write_record(self, payload: bytes) -> int:
    if self._shard_file is None:
      index = len(self._shard_counts)
      self._shard_file = storage.open_file(os.path.join(self._staging, SHARD_DIR, f'.shard-{index:05d}.tmp'), 'wb')
      self._shard_counts.append(0)
      self._shard_bytes.append(0)
    framed = tfrecord.frame_record(payload)
    self._shard_file.write(framed)
    self._shard_counts[-1] += 1
    self._shard_bytes[-1] += len(framed)
    shard = len(self._shard_counts) - 1
    if self._shard_counts[-1] >= self.examples_per_shard:
      self._finish_shard()
    return shard

  def _finish_shard(self) -> None:
    if self._resume_key is not None:
      storage.sync_file(self._shard_file)  # fsync locally; on a store the object is durable once closed
    self._shard_file.close()
    self._shard_file = None

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
    x = batch_lib.check_batch(batch, required=FEATURE_KEYS, image_shape=self.image_shape, num_classes=self.num_classes,
                              num_ws=self.num_ws, w_dim=self.w_dim, num_series=self._num_series,
                              metric_names=self._metric_names)
    if self._num_series is None:
      self._num_series = int(x['series'].shape[1])
      self._metric_names = sorted(x['metrics'])
    for i, id_ in enumerate(x['id']):
      self._add_one(i, id_, x)

  def _add_one(self, i: int, id_: str, x: dict) -> None:
    k = self.num_classes
    image_u8 = writers.to_uint8(x['image'][i])
    recon_u8 = writers.to_uint8(x['reconstruction'][i])
    series_u8 = writers.to_uint8(x['series'][i])
    heat_u8 = media.heat_uint8(x['gradcam'][i])
    alphas, probs = x['alphas'][i], x['probs'][i]
    label = int(x['label'][i])
    pngs = {
        'image': media.png_bytes(image_u8),
        'reconstruction': media.png_bytes(recon_u8),
        'gradcam': media.png_bytes(heat_u8)
    }
    series_pngs = [media.png_bytes(f) for f in series_u8]
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
    name = self._names(id_)
    heat_f = heat_u8.astype(np.float32) / 255.0 if x['gradcam'].dtype == np.uint8 else x['gradcam'][i]
    cam_rgb = gradcam_lib.overlay(media.as_float_image(x['image'][i]), np.clip(heat_f, 0.0, 1.0))
    far = int(np.argmax(np.abs(x['alphas'][i])))  # the end of the series away from alpha = 0 (either side)
    diff_rgb, diff_scale = media.diff_map(x['series'][i][far], x['reconstruction'][i])
    recon_probs = x['reconstruction_probs'][i] if 'reconstruction_probs' in x else None
    metrics = {n: float(v[i]) for n, v in x['metrics'].items()}
    cname = self.class_names[target]
    label_text = 'unknown' if label < 0 else self.class_names[label]
    media.save_strip(os.path.join(self._staging, 'strips',
                                  name + '.png'), f'{id_}   label: {label_text}   p({cname}) along the series',
                     image_u8, recon_u8, series_u8, alphas, probs[:, target], x['original_probs'][i][target],
                     None if recon_probs is None else recon_probs[target], cam_rgb, diff_rgb, diff_scale)
    media.save_gif(os.path.join(self._staging, 'gifs', name + '.gif'), series_u8, alphas, probs[:, target], cname)

    entry = {
        'id': id_,
        'safe_id': name,
        'shard': shard,
        'label': label,
        'target': target,
        'original_probs': x['original_probs'][i].tolist(),
        'reconstruction_probs': None if recon_probs is None else recon_probs.tolist(),
        'final_probs': probs[-1].tolist(),
        'metrics': metrics,
        'strip': f'strips/{name}.png',
        'gif': f'gifs/{name}.gif'
    }
    self._index.write((json.dumps(_jsonable(entry), allow_nan=False) + '\n').encode('utf-8'))

    self._report.add(id_, name, label_text, target, pngs, series_pngs, alphas, probs, x['original_probs'][i],
                     recon_probs, cam_rgb, diff_rgb, diff_scale, metrics)
    self._n += 1

  # -- close / abort ---------------------------------------------------------------------------

  def close(self, summary_metrics: Mapping[str, Any] | None = None,
            scorecard: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """Finishes the export and swaps it into `directory`; returns the output paths.

    summary_metrics: name -> number (or string), shown at the top of the report and stored in schema.json
    (e.g. mean SSIM, agreement, flip rate); scorecard: metric -> {value, low, high, goal, met, meaning}, the table
    at the top of the report (`report.scorecard_html`). Raises ValueError (and keeps any previous export) if no image
    was added. Returns {'directory', 'schema', 'report', 'index', 'tfrecords': [paths], 'strips', 'gifs'}.
    """
    if self._closed:
      raise ValueError('ExplanationWriter is already closed')
    if self._n == 0:
      self.abort()
      raise ValueError('no explanations were added; nothing exported (a previous export, if any, is unchanged)')
    summary = dict(summary_metrics or {})
    if self._shard_file is not None:
      self._finish_shard()
    self._index.close()
    num_shards = len(self._shard_counts)
    shard_dir = os.path.join(self._staging, SHARD_DIR)
    shards = []
    for index in range(num_shards):
      final = f'{SHARD_PREFIX}-{index:05d}-of-{num_shards:05d}.tfrecord'
      storage.replace(os.path.join(shard_dir, f'.shard-{index:05d}.tmp'), os.path.join(shard_dir, final))
      shards.append(f'{SHARD_DIR}/{final}')
    metric_stats = {
        n: {
            'mean': float(np.mean(v)),
            'min': float(np.min(v)),
            'max': float(np.max(v))
        } for n, v in _index_metrics(os.path.join(self._staging, 'index.jsonl'), np.float64).items() if len(v)
    }
    h, w, c = self.image_shape
    s, k = self._num_series, self.num_classes
    decoded = {
        'id': ([], 'str'),
        'image': ([h, w, c], 'uint8'),
        'reconstruction': ([h, w, c], 'uint8'),
        'series': ([s, h, w, c], 'uint8'),
        'alphas': ([s], 'float32'),
        'probs': ([s, k], 'float32'),
        'original_probs': ([k], 'float32'),
        'latent': ([self.num_ws, self.w_dim], 'float32'),
        'gradcam': ([h, w], 'uint8'),
        'label': ([], 'int64')
    }
    spec = {'num_series': s, 'num_classes': k, 'num_ws': self.num_ws, 'w_dim': self.w_dim}
    schema = {
        'format': SCHEMA_FORMAT,
        'version': SCHEMA_VERSION,
        'created': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'num_examples': self._n,
        'num_classes': k,
        'class_names': self.class_names,
        'image_shape': [h, w, c],
        'num_series': s,
        'num_ws': self.num_ws,
        'w_dim': self.w_dim,
        'features': {
            key: {
                'type': FEATURES[key][0],
                'meaning': FEATURES[key][1],
                'decoded_shape': decoded[key][0],
                'decoded_dtype': decoded[key][1]
            } for key in FEATURE_KEYS
        },
        'tf_feature_spec': {
            key: {
                'shape': v['shape'],
                'dtype': v['dtype']
            } for key, v in feature_spec(spec).items()
        },
        'shards': shards,
        'shard_counts': list(self._shard_counts),
        'target_description': self.target_description,
        'summary_metrics': summary,
        'per_image_metrics': metric_stats,
        'files': {
            'index': 'index.jsonl',
            'report': 'report.html',
            'strips': 'strips/<safe_id>.png',
            'gifs': 'gifs/<safe_id>.gif'
        },
        'source': self.source,
        'config': self.config,
        'provenance': self.provenance,
    }
    writers.write_json(os.path.join(self._staging, 'schema.json'), schema, is_chief=True)
    self._report.write(os.path.join(self._staging, 'report.html'), title=self.title,
                       target_description=self.target_description, num_images=self._n, summary=summary, metric_means={
                           n: v['mean'] for n, v in metric_stats.items()
                       }, config=self.config, scorecard=scorecard)
    self._swap_in()
    self._closed = True
    d = self.directory
    return {
        'directory': d,
        'schema': os.path.join(d, 'schema.json'),
        'report': os.path.join(d, 'report.html'),
        'index': os.path.join(d, 'index.jsonl'),
        'tfrecords': [os.path.join(d, p) for p in shards],
        'strips': os.path.join(d, 'strips'),
        'gifs': os.path.join(d, 'gifs')
    }

  def _swap_in(self) -> None:
    """Moves the previous export aside and the staged one in (module docstring: atomic renames on a local disk,
    copy + delete per object on an object store, where only the schema.json-last order protects readers)."""
    # from here on the staging directory is no resumable state (a kill before this line: the rerun resumes and
    # drops the half-written schema.json / report.html)
    storage.remove(os.path.join(self._staging, MANIFEST))
    old = os.path.join(self.directory, f'.export-old-{os.getpid()}-{uuid.uuid4().hex[:8]}')
    storage.makedirs(old)
    for entry in EXPORT_ENTRIES:  # schema.json first: a half-swapped directory never looks complete
      src = os.path.join(self.directory, entry)
      if storage.lexists(src):
        storage.replace(src, os.path.join(old, entry))
    for entry in reversed(EXPORT_ENTRIES):  # schema.json last
      storage.replace(os.path.join(self._staging, entry), os.path.join(self.directory, entry))
    storage.remove_quietly(old)
    storage.remove_quietly(self._staging)

  def abort(self, keep_committed: bool = False) -> None:
    """Drops the unfinished export (the staging directory); any previous export is left as it was.

    keep_committed: a resumable writer with a commit keeps `.export-partial/` (a writer with the same resume_key
    continues from the last commit); otherwise it is removed too."""
    if self._closed:
      return
    for f in (self._shard_file, self._index):
      if f is not None and not f.closed:
        f.close()
    self._report.close()
    self._shard_file = None
    if not (keep_committed and self._resume_key is not None and self._committed > 0):
      storage.remove_quietly(self._staging)
    self._closed = True

  @property
  def num_examples(self) -> int:
    return self._n

  def __enter__(self) -> 'ExplanationWriter':
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None:
      self.abort(keep_committed=True)
    elif not self._closed:
      self.close()


def _index_metrics(path: str, dtype=np.float32) -> dict[str, np.ndarray]:
  """index.jsonl -> {metric name: [N] values in line order} (null, i.e. non-finite, -> NaN)."""
  values: dict[str, list[float]] = {}
  with storage.open_file(path, 'r') as f:
    for line in f:
      for name, v in json.loads(line).get('metrics', {}).items():
        values.setdefault(name, []).append(np.nan if v is None else v)
  return {name: np.asarray(v, dtype) for name, v in values.items()}


def _jsonable(v):
  """Strict-JSON copy: non-finite floats -> None."""
  if isinstance(v, dict):
    return {str(k): _jsonable(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_jsonable(x) for x in v]
  if isinstance(v, float) and not math.isfinite(v):
    return None
  return v
