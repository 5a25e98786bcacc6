"""Input pipeline: a TFDS dataset (or an image folder) -> this process's numpy batches, deterministic in (seed, step).

    data = Pipeline(config.data, 'train', global_batch_size=64, seed=0, train=True)
    for step, batch in zip(range(start, num_steps), data.iterate(start)):   # resumes exactly at `start`
      batch['image']  # float32 [local_B, S, S, C] in [-1, 1];  batch['label']  # int32 [local_B]
    for batch in Pipeline(config.data, 'validation', ..., train=False).eval_batches():
      batch['mask']   # float32 [local_B], 1 real / 0 padding;  batch['id']  # str [local_B]

`config.data` (ml_collections.ConfigDict or mapping) has exactly the keys in `CONFIG_FIELDS` (plus the
optional `num_classes`, which is then checked against the data):
  dataset          TFDS name (our registered builders or the TFDS catalog, e.g. 'patch_camelyon'), or
                   'image_folder' (users' own root/<class_name>/*.png; see builders/image_folder.py)
  builder_config   TFDS config name ('' = the builder's default; ignored for image folders)
  data_dir         TFDS data_dir ('' = TFDS default)
  manual_dir       manual-download folder (kl_xray) / the image folder's root (image_folder)
  image_size       S: every image is centre-cropped to a square (the shorter side) and resized to S x S with
                   an antialiased bilinear (triangle) filter — Pillow's BILINEAR, which for downsampling widens
                   the kernel by the scale factor like tf.image.resize(antialias=True) / jax.image.resize.
                   Reading, intensity scaling and conforming are `stylex_jax.data.images` (shared with
                   explain/image_files.py, so a file reaches the classifier identically in both).
  channels         1 or 3. Grayscale data with channels=3 is replicated to RGB. RGB data with channels=1 is
                   an ERROR (colour carries the stain in histology; there is no silent RGB->gray).
  label_threshold  -1 keeps the labels; t in [1, num_classes-1] gives binary labels (label >= t) with
                   class names ('<NAME_t', '>=NAME_t'), e.g. ('<KL2', '>=KL2').
  hflip            random horizontal flips in training batches.
  train_split, eval_split, test_split   split specs (TFDS slicing works: 'train[:90%]'). An image folder with
                   train/ but no validation/ folder gets 'validation' carved from train/ (10% of each class,
                   seeded) whenever one of these specs names 'validation' (builders/image_folder.py).

Reading. Datasets are prepared (if needed) with `file_format='array_record'` and read with random access
through `builder.as_data_source(split)`. If the split, resized to S x S x C uint8, fits in
`IN_MEMORY_CACHE_MAX_BYTES` (1 GiB; e.g. 5k phantoms, 8k KL radiographs at 256²), it is decoded and resized
once into an in-memory uint8 cache (float32 for image folders holding 16-bit/float files) and batches are
gathered from it (thousands of batches/s). Larger
splits (PatchCamelyon: 262k 96² RGB tiles, 7 GB) are read per batch from the data source, decoded and
resized on a thread pool. A dataset already prepared as TFRecords (no random access) is read once through
tf.data into the cache if it fits, and otherwise fails with the `tfds convert_format` command to run.
Multi-process runs on one host take a file lock around preparation; on several hosts sharing a data_dir,
prepare once before launching.

Order and randomness. Epoch e visits the examples in a permutation drawn from numpy's SeedSequence([seed,
0, e]); the global batch of `step` is positions [step*B, (step+1)*B) of the concatenated epochs, and flips
are drawn from SeedSequence([seed, 1, step]). Host-side numpy streams (not jax.random) on purpose: they
never touch an accelerator, are platform-independent, and depend on nothing but (seed, step). The global
batch does not depend on the number of processes; process p gets rows [p*B/P, (p+1)*B/P). So the batch
of a step is a pure function of (seed, step, process_index): a resumed run continues exactly, with no
replay and nothing to checkpoint but the step. Eval batches cover the split in order, ceil(N/B) batches
on every process (so collective eval steps stay in lock-step), the tail padded with zeros and mask 0.

Iterators prefetch `PREFETCH_BATCHES` batches on a background thread.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import math
import os
import queue
import tempfile
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from stylex_jax.data.images import channels_error, conform_levels, resize_square, to_float  # noqa: F401  (re-exported)

CONFIG_FIELDS = ('dataset', 'builder_config', 'data_dir', 'manual_dir', 'image_size', 'channels', 'label_threshold',
                 'hflip', 'train_split', 'eval_split', 'test_split')
OPTIONAL_CONFIG_FIELDS = ('num_classes',)
IMAGE_FOLDER = 'image_folder'
IN_MEMORY_CACHE_MAX_BYTES = 1 << 30
PREFETCH_BATCHES = 2
_READ_CHUNK = 256

# ----------------------------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The validated `config.data` group (see the module docstring for the meaning of each field)."""
  dataset: str
  builder_config: str
  data_dir: str
  manual_dir: str
  image_size: int
  channels: int
  label_threshold: int
  hflip: bool
  train_split: str
  eval_split: str
  test_split: str
  num_classes: int | None = None


def parse_data_config(data_config: Any) -> DataConfig:
  """Validates `config.data` (a ConfigDict or mapping with exactly `CONFIG_FIELDS` [+ `num_classes`])."""
  if hasattr(data_config, 'to_dict'):
    values = data_config.to_dict()
  elif isinstance(data_config, Mapping):
    values = dict(data_config)
  else:
    raise TypeError(f'config.data must be an ml_collections.ConfigDict or a mapping, got {type(data_config).__name__}')
  unknown = sorted(set(values) - set(CONFIG_FIELDS) - set(OPTIONAL_CONFIG_FIELDS))
  missing = [k for k in CONFIG_FIELDS if k not in values]
  if unknown or missing:
    raise ValueError(f'config.data: unknown keys {unknown}, missing keys {missing}; expected exactly '
                     f'{list(CONFIG_FIELDS)} (+ optional {list(OPTIONAL_CONFIG_FIELDS)})')
  problems = []
  for key in ('dataset', 'builder_config', 'data_dir', 'manual_dir', 'train_split', 'eval_split', 'test_split'):
    if not isinstance(values[key], str):
      problems.append(f'{key}={values[key]!r} must be a string')
  for key in ('dataset', 'train_split', 'eval_split', 'test_split'):
    if isinstance(values[key], str) and not values[key].strip():
      problems.append(f'{key} must not be empty')

  def is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

  if not (is_int(values['image_size']) and values['image_size'] >= 4):
    problems.append(f'image_size={values["image_size"]!r} must be an int >= 4')
  if values['channels'] not in (1, 3) or isinstance(values['channels'], bool):
    problems.append(f'channels={values["channels"]!r} must be 1 (grayscale) or 3 (RGB)')
  if not (is_int(values['label_threshold']) and values['label_threshold'] >= -1):
    problems.append(f'label_threshold={values["label_threshold"]!r} must be -1 (keep labels) or an int >= 1')
  if not isinstance(values['hflip'], (bool, np.bool_)):
    problems.append(f'hflip={values["hflip"]!r} must be True or False')
  num_classes = values.get('num_classes')
  if num_classes is not None and not (is_int(num_classes) and num_classes >= 1):
    problems.append(f'num_classes={num_classes!r} must be an int >= 1')
  if problems:
    raise ValueError('config.data: ' + '; '.join(problems))
  return DataConfig(**{k: values[k] for k in CONFIG_FIELDS},
                    num_classes=None if num_classes is None else int(num_classes))


# ------------------------------------------------------------------------------------------------ images


def _to_batch_float(images: np.ndarray) -> np.ndarray:
  """Cached/decoded images -> float32 [..., C] in [-1, 1]: uint8 levels via `to_float`; float32 are already there."""
  return to_float(images) if images.dtype == np.uint8 else np.array(images, np.float32)


# ----------------------------------------------------------------------------------------------- sources


@dataclasses.dataclass
class _Source:
  """A split with random access: records[i] -> {'image': uint8 [H, W, C], 'label': int, 'id': str|bytes}."""
  description: str
  records: Sequence[Any]
  class_names: tuple[str, ...]
  data_channels: int | None
  labels_fn: Callable[[], np.ndarray]  # every label of the split, in order, without decoding images
  has_ids: bool = True
  eight_bit: bool = True  # every image is uint8 (cached as uint8 levels); else cached as float32 in [-1, 1]


def _open_source(cfg: DataConfig, split: str, max_cache_bytes: int) -> _Source:
  if cfg.dataset == IMAGE_FOLDER:
    return _open_image_folder(cfg, split)
  return _open_tfds(cfg, split, max_cache_bytes)


def _open_image_folder(cfg: DataConfig, split: str) -> _Source:
  from stylex_jax.data.builders import image_folder  # pylint: disable=g-import-not-at-top

  if cfg.builder_config:
    logging.info('config.data.builder_config=%r is not used with dataset=image_folder', cfg.builder_config)
  folder = image_folder.open_image_folder(cfg.manual_dir)
  named = set().union(*(image_folder.split_names(s) for s in (cfg.train_split, cfg.eval_split, cfg.test_split, split)))
  records = folder.split(split, carve_validation='validation' in named)
  return _Source(description=f'image_folder:{folder.root}[{split}]', records=records, class_names=folder.class_names,
                 data_channels=folder.channels, labels_fn=lambda: np.asarray(records.labels),
                 eight_bit=folder.eight_bit)


@contextlib.contextmanager
def _prepare_lock(key: str):
  """Serialises dataset preparation between processes of one host (flock; a no-op where unsupported)."""
  try:
    import fcntl  # pylint: disable=g-import-not-at-top
  except ImportError:
    yield
    return
  path = os.path.join(tempfile.gettempdir(), f'stylex_jax_prepare_{hashlib.sha1(key.encode()).hexdigest()[:16]}.lock')
  with open(path, 'a') as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _make_builder(cfg: DataConfig):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  import stylex_jax.data.builders  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import  (registration)

  kwargs = {'config': cfg.builder_config} if cfg.builder_config else {}
  try:
    return tfds.builder(cfg.dataset, data_dir=cfg.data_dir or None, **kwargs)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f'unknown dataset {cfg.dataset!r}: not one of ours (synthetic_knee, synthetic_histology, '
                     "kl_xray) nor in the TFDS catalog; fix config.data.dataset, or use dataset='image_folder' "
                     'with manual_dir=<root of class folders>') from None
  except ValueError as e:
    if not cfg.builder_config or 'BuilderConfig' not in str(e):
      raise
    try:
      available = [c.name for c in tfds.builder_cls(cfg.dataset).BUILDER_CONFIGS]
    except Exception:  # pylint: disable=broad-except
      available = []
    raise ValueError(f'dataset {cfg.dataset!r} has no builder config {cfg.builder_config!r}; available: '
                     f"{available or '(none: set builder_config=)'}") from None


def _prepare(cfg: DataConfig, builder):
  """download_and_prepare (array_record) unless prepared; returns a fresh builder that sees the prepared files."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  if builder.is_prepared():
    return builder
  with _prepare_lock(os.fspath(builder.data_path)):
    download_config = tfds.download.DownloadConfig(manual_dir=cfg.manual_dir or None)
    try:
      builder.download_and_prepare(file_format='array_record', download_config=download_config)
    except AssertionError as e:
      if 'Manual directory' not in str(e) and 'manual' not in str(e).lower():
        raise
      raise FileNotFoundError(f'{cfg.dataset} needs manually downloaded data and none was found '
                              f'(manual_dir={cfg.manual_dir or "(TFDS default)"}): set --config.data.manual_dir. '
                              f'{str(e).splitlines()[0]}') from None
  return _make_builder(cfg)


def _check_split(cfg: DataConfig, builder, split: str) -> None:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  available = builder.info.splits
  if not available:  # unknown before preparation (e.g. mocked): let TFDS decide
    return
  try:
    tfds.core.ReadInstruction.from_spec(split).to_absolute(available)
  except (ValueError, KeyError, AssertionError) as e:
    raise ValueError(f'unknown split {split!r} for dataset {cfg.dataset!r}: available splits '
                     f'{sorted(available.keys())} (TFDS slices like "train[:90%]" also work). ({e})') from None


def _open_tfds(cfg: DataConfig, split: str, max_cache_bytes: int) -> _Source:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = _prepare(cfg, _make_builder(cfg))
  _check_split(cfg, builder, split)
  features = builder.info.features
  missing = [k for k in ('image', 'label') if k not in features]
  if missing:
    raise ValueError(f'dataset {cfg.dataset!r} has features {sorted(features.keys())}, without {missing}; the '
                     "pipeline needs an 'image' Image feature and a 'label' ClassLabel feature")
  if not isinstance(features['label'], tfds.features.ClassLabel):
    raise ValueError(f"dataset {cfg.dataset!r}: 'label' is {type(features['label']).__name__}, not a ClassLabel; "
                     'the pipeline needs class labels')
  class_names = tuple(features['label'].names)
  image_shape = features['image'].shape
  data_channels = image_shape[-1] if image_shape and image_shape[-1] is not None else None
  has_ids = 'id' in features
  description = f'{builder.info.full_name}[{split}]'

  try:
    records = builder.as_data_source(split=split)
  except (KeyError, ValueError) as e:
    raise ValueError(f'cannot read split {split!r} of dataset {cfg.dataset!r}: {e}; available splits: '
                     f'{sorted(builder.info.splits.keys()) or "(unknown)"}') from None
  except NotImplementedError:  # prepared without random access (TFRecords)
    records = _tf_dataset_records(cfg, builder, split, max_cache_bytes)
    return _Source(description, records, class_names, data_channels,
                   labels_fn=lambda: np.asarray([r['label'] for r in records], np.int64), has_ids=has_ids)

  def labels_fn():
    light = builder.as_data_source(split=split, decoders={'image': tfds.decode.SkipDecoding()})
    labels = np.empty([len(light)], np.int64)
    for start in range(0, len(light), 4096):
      chunk = _read_records(light, range(start, min(start + 4096, len(light))))
      labels[start:start + len(chunk)] = [r['label'] for r in chunk]
    return labels

  return _Source(description, records, class_names, data_channels, labels_fn, has_ids)


def _read_records(records: Sequence[Any], indices: Sequence[int]) -> list[Any]:
  """records[i] for i in indices, batched where the source supports it (ArrayRecord's parallel reads)."""
  indices = [int(i) for i in indices]
  if hasattr(records, '__getitems__'):
    return list(records.__getitems__(indices))
  return [records[i] for i in indices]


def _tf_dataset_records(cfg: DataConfig, builder, split: str, max_cache_bytes: int) -> list[dict]:
  """The whole split read once through tf.data (for datasets prepared as TFRecords), if it fits in memory."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  n = builder.info.splits[split].num_examples
  size = n * cfg.image_size**2 * cfg.channels
  if size > max_cache_bytes:
    raise ValueError(
        f'{builder.info.full_name} is prepared at {builder.data_dir} as {builder.info.file_format}, which has no '
        f'random access, and split {split!r} is too large to hold in memory ({size / 2**30:.1f} GiB at '
        f'{cfg.image_size}x{cfg.image_size}x{cfg.channels}); convert it once with `tfds convert_format '
        f'--dataset_version_dir={builder.data_dir} --out_file_format=array_record`, or delete it to re-prepare')
  logging.info('%s has no random-access files; reading %d examples through tf.data', builder.info.full_name, n)
  keep = ('image', 'label', 'id')
  return [{
      k: v for k, v in ex.items() if k in keep
  } for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))]


# ------------------------------------------------------------------------------------------------ prefetch


class _End:
  pass


@dataclasses.dataclass
class _Failure:
  error: BaseException


def _prefetch(items: Iterator[Any], depth: int) -> Iterator[Any]:
  """Runs `items` on a daemon thread, `depth` ahead (starting now); re-raises its errors in the consumer.

  The thread stops when the returned iterator is exhausted, closed or garbage-collected.
  """
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def produce():
    try:
      for item in items:
        if not put(item):
          return
      put(_End())
    except BaseException as e:  # pylint: disable=broad-except
      put(_Failure(e))

  def consume():
    try:
      while True:
        item = q.get()
        if isinstance(item, _End):
          return
        if isinstance(item, _Failure):
          raise item.error
        yield item
    finally:
      stop.set()

  thread = threading.Thread(target=produce, name='stylex_jax-prefetch', daemon=True)
  thread.start()
  consumer = consume()
  weakref.finalize(consumer, stop.set)
  return consumer


# ----------------------------------------------------------------------------------------------- pipeline


def class_balanced_indices(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
  """`n` (<= len(labels)) split indices, as equal a share of every class present as the split allows (classes
  with fewer examples give all they have, the rest is spread over the others), each class's examples drawn in
  a seeded random order; returned sorted (split order).

  labels: int [N]. The same (labels, n, seed) always gives the same indices.
  """
  labels = np.asarray(labels)
  n = int(n)
  if not 0 <= n <= len(labels):
    raise ValueError(f'cannot sample {n} of {len(labels)} examples')
  rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7]))
  pools = {c: list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)}
  chosen = []
  while len(chosen) < n:  # round robin over the classes that still have examples
    for c in sorted(pools):
      if pools[c] and len(chosen) < n:
        chosen.append(pools[c].pop(0))
  return np.sort(np.asarray(chosen, np.int64))


class Pipeline:
  """This process's batches of one split (see the module docstring).

  Attributes:
    num_examples: examples in the split. image_shape: (S, S, C) of every batch image.
    num_classes, class_names: after label_threshold. labels: int32 [num_examples], in split order.
    global_batch_size, local_batch_size (= global // process_count), process_index, process_count.
    cached: whether the split is held in memory (else read per batch from the data source).
    num_eval_batches: ceil(num_examples / global_batch_size).
  """

  def __init__(self, data_config, split: str, *, global_batch_size: int, seed: int, train: bool,
               process_index: int | None = None, process_count: int | None = None):
    self.config = cfg = parse_data_config(data_config)
    if not isinstance(split, str) or not split:
      raise ValueError(f'split must be a non-empty string, got {split!r}')
    if isinstance(global_batch_size, bool) or not isinstance(global_batch_size, (int, np.integer)) \
        or global_batch_size < 1:
      raise ValueError(f'global_batch_size={global_batch_size!r} must be a positive int')
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
      raise ValueError(f'seed={seed!r} must be an int >= 0')
    if process_index is None or process_count is None:
      import jax  # pylint: disable=g-import-not-at-top
      process_index = jax.process_index() if process_index is None else process_index
      process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
      raise ValueError(f'process_index={process_index} must be in [0, process_count={process_count})')
    if global_batch_size % process_count:
      raise ValueError(f'global_batch_size={global_batch_size} is not divisible by process_count={process_count}; '
                       f'use a multiple of {process_count}')
    self.split = split
    self.train = bool(train)
    self.seed = int(seed)
    self.global_batch_size = int(global_batch_size)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.local_batch_size = self.global_batch_size // self.process_count

    max_cache = IN_MEMORY_CACHE_MAX_BYTES
    source = _open_source(cfg, split, max_cache)
    self.description = source.description
    if source.data_channels is not None and source.data_channels != cfg.channels \
        and not (source.data_channels == 1 and cfg.channels == 3):
      raise ValueError(channels_error(f'dataset {cfg.dataset!r}', source.data_channels, cfg.channels))
    self._records = source.records
    self.num_examples = len(source.records)
    if self.num_examples == 0:
      raise ValueError(f'split {split!r} of {source.description} has no examples; choose another split')
    self.image_shape = (cfg.image_size, cfg.image_size, cfg.channels)
    self._has_ids = source.has_ids
    self._dtype = np.uint8 if source.eight_bit else np.float32

    t = cfg.label_threshold
    names = source.class_names
    self._num_source_classes = len(names)
    if t == -1:
      self.class_names = tuple(names)
    elif 1 <= t <= len(names) - 1:
      self.class_names = (f'<{names[t]}', f'>={names[t]}')
    else:
      raise ValueError(f'label_threshold={t} must be -1 (keep the {len(names)} classes) or in [1, {len(names) - 1}] '
                       f'for the classes {tuple(names)} of {source.description}; set --config.data.label_threshold=-1 '
                       'to keep these classes as they are')
    self.num_classes = len(self.class_names)
    if cfg.num_classes is not None and cfg.num_classes != self.num_classes:
      raise ValueError(f'config.data.num_classes={cfg.num_classes} but {source.description} has {self.num_classes} '
                       f'classes {self.class_names} (label_threshold={t}); set --config.data.num_classes='
                       f'{self.num_classes} or change label_threshold')
    self._labels_fn = source.labels_fn
    self._labels: np.ndarray | None = None
    self._pool = concurrent.futures.ThreadPoolExecutor(min(8,
                                                           os.cpu_count() or 1), thread_name_prefix='stylex_jax-decode')
    self._perm_cache: dict[int, np.ndarray] = {}
    self._perm_lock = threading.Lock()

    cache_bytes = self.num_examples * int(np.prod(self.image_shape)) * np.dtype(self._dtype).itemsize
    self.cached = cache_bytes <= max_cache
    if self.cached:
      self._images, labels, self._ids = self._read_all()
      self._labels = self._map_labels(labels)
      logging.info('pipeline %s: %d examples cached in memory (%.1f MiB), image %s, classes %s', self.description,
                   self.num_examples, cache_bytes / 2**20, self.image_shape, self.class_names)
    else:
      logging.info(
          'pipeline %s: %d examples read per batch from the data source (%.1f GiB at %s > cache '
          'limit), classes %s', self.description, self.num_examples, cache_bytes / 2**30, self.image_shape,
          self.class_names)

  # --------------------------------------------------------------------------- reading

  def _map_labels(self, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, np.int64)
    t = self.config.label_threshold
    n = self._num_source_classes
    if labels.size and (labels.min() < 0 or labels.max() >= n):
      raise ValueError(f'{self.description}: labels outside [0, {n}) (min {labels.min()}, max {labels.max()})')
    return (labels >= t).astype(np.int32) if t >= 0 else labels.astype(np.int32)

  def _decode(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Examples `indices` -> images [n, S, S, C] (uint8 levels, or float32 in [-1, 1] for 16-bit/float image
    folders), labels (source) int64 [n], ids."""
    records = _read_records(self._records, indices)
    s, _, c = self.image_shape
    images = np.empty((len(indices), s, s, c), self._dtype)
    labels = np.empty((len(indices),), np.int64)
    ids = []
    for j, (i, r) in enumerate(zip(indices, records)):
      levels, _ = conform_levels(r['image'], s, c, f'{self.description} example {i}')
      images[j] = levels if self._dtype == np.uint8 else to_float(levels)
      labels[j] = int(r['label'])
      raw_id = r.get('id', f'{self.split}/{i}') if self._has_ids else f'{self.split}/{i}'
      ids.append(raw_id.decode('utf-8') if isinstance(raw_id, bytes) else str(raw_id))
    return images, labels, ids

  def _decode_parallel(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    indices = list(indices)
    if not indices:
      s, _, c = self.image_shape
      return np.empty((0, s, s, c), self._dtype), np.empty((0,), np.int64), []
    chunk = max(1, min(_READ_CHUNK, math.ceil(len(indices) / self._pool._max_workers)))  # pylint: disable=protected-access
    parts = list(self._pool.map(self._decode, [indices[k:k + chunk] for k in range(0, len(indices), chunk)]))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [i for p in parts for i in p[2]])

  def _read_all(self):
    return self._decode_parallel(range(self.num_examples))

  @property
  def labels(self) -> np.ndarray:
    """int32 [num_examples]: every label of the split (after label_threshold), in split order."""
    if self._labels is None:
      self._labels = self._map_labels(self._labels_fn())
    return self._labels

  def _gather(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Images (see `_decode`), int32 labels and ids of split examples `indices`."""
    if self.cached:
      return self._images[indices], self._labels[indices], [self._ids[i] for i in indices]
    images, labels, ids = self._decode_parallel([int(i) for i in indices])
    return images, self._map_labels(labels), ids

  # ---------------------------------------------------------------------------- training

  def _permutation(self, epoch: int) -> np.ndarray:
    with self._perm_lock:
      perm = self._perm_cache.get(epoch)
      if perm is None:
        perm = np.random.default_rng(np.random.SeedSequence([self.seed, 0, epoch])).permutation(self.num_examples)
        if len(self._perm_cache) >= 3:
          self._perm_cache.pop(min(self._perm_cache))
        self._perm_cache[epoch] = perm
      return perm

  def global_indices(self, step: int) -> np.ndarray:
    """int64 [global_batch_size]: the split indices of the global training batch of `step`."""
    positions = int(step) * self.global_batch_size + np.arange(self.global_batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self.num_examples)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):
      sel = epochs == epoch
      indices[sel] = self._permutation(int(epoch))[offsets[sel]]
    return indices

  def batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global training batch of `step` (>= 0).

    Returns {'image': float32 [local_B, S, S, C] in [-1, 1], 'label': int32 [local_B]}.
    """
    return self._rows_of_batch(
        step, slice(self.process_index * self.local_batch_size, (self.process_index + 1) * self.local_batch_size))

  def global_batch(self, step: int) -> dict[str, np.ndarray]:
    """Every process's rows of the global training batch of `step`, the same on every process: for evaluations
    that each process computes alike, so their result does not depend on the number of processes (e.g. the GAN's
    realism reals). Returns {'image': float32 [global_B, S, S, C], 'label': int32 [global_B]}."""
    return self._rows_of_batch(step, slice(0, self.global_batch_size))

  def _rows_of_batch(self, step: int, rows: slice) -> dict[str, np.ndarray]:
    if not self.train:
      raise ValueError('batch() is for training pipelines (train=True); use eval_batches() for evaluation')
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f'step={step!r} must be an int >= 0')
    indices = self.global_indices(step)[rows]
    images, labels, _ = self._gather(indices)
    images = _to_batch_float(images)
    if self.config.hflip:
      flips = np.random.default_rng(np.random.SeedSequence([self.seed, 1,
                                                            int(step)])).random(self.global_batch_size)[rows] < 0.5
      images[flips] = images[flips, :, ::-1]
    return {'image': images, 'label': labels}

  def iterate(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """batch(start_step), batch(start_step + 1), ... forever, prefetched on a background thread."""
    if not self.train:
      raise ValueError('iterate() is for training pipelines (train=True); use eval_batches() for evaluation')
    if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) or start_step < 0:
      raise ValueError(f'start_step={start_step!r} must be an int >= 0')

    def batches():
      step = int(start_step)
      while True:
        yield self.batch(step)
        step += 1

    return _prefetch(batches(), PREFETCH_BATCHES)

  # --------------------------------------------------------------------------- evaluation

  @property
  def num_eval_batches(self) -> int:
    return math.ceil(self.num_examples / self.global_batch_size)

  def _eval_batch(self, b: int) -> dict[str, np.ndarray]:
    start = b * self.global_batch_size + self.process_index * self.local_batch_size
    indices = np.arange(start, min(start + self.local_batch_size, self.num_examples), dtype=np.int64)
    images, labels, ids = self._gather(indices)
    n, pad = len(indices), self.local_batch_size - len(indices)
    s, _, c = self.image_shape
    image = np.zeros((self.local_batch_size, s, s, c), np.float32)
    image[:n] = _to_batch_float(images)
    return {
        'image': image,
        'label': np.concatenate([labels, np.zeros([pad], np.int32)]),
        'mask': np.concatenate([np.ones([n], np.float32), np.zeros([pad], np.float32)]),
        'id': np.asarray(ids + [''] * pad, dtype=str),
    }

  def examples(self, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Split examples `indices` (any order, random access): {'image': float32 [n, S, S, C] in [-1, 1],
    'label': int32 [n], 'id': str [n]}."""
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= self.num_examples):
      raise ValueError(f'example indices must be in [0, {self.num_examples}) for {self.description}')
    images, labels, ids = self._gather(indices)
    return {'image': _to_batch_float(images), 'label': np.asarray(labels, np.int32), 'id': np.asarray(ids, dtype=str)}

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """Every example of the split once, in order: this process's rows of ceil(N / B) global batches.

    Yields {'image': float32 [local_B, S, S, C] in [-1, 1] (zeros for padding), 'label': int32 [local_B]
    (0 for padding), 'mask': float32 [local_B] (1 real, 0 padding), 'id': str [local_B] ('' for padding)}.
    Prefetched on a background thread.
    """
    if self.train:
      raise ValueError('eval_batches() is for evaluation pipelines (train=False); use iterate() for training')
    return _prefetch((self._eval_batch(b) for b in range(self.num_eval_batches)), PREFETCH_BATCHES)

  def __repr__(self) -> str:
    return (f'Pipeline({self.description}, N={self.num_examples}, image={self.image_shape}, classes='
            f'{self.class_names}, global_batch={self.global_batch_size}, process={self.process_index}/'
            f'{self.process_count}, train={self.train}, cached={self.cached})')
