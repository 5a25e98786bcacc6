"""TFDS builder `synthetic_knee`: procedural knee radiographs (`phantoms.knee_radiograph`) graded KL0–KL4.

Generated locally (no download). Every example carries the ground-truth attributes that produced it
(joint-space width, osteophytes, sclerosis, pose, exposure, noise, flip, spurious marker, scanner and its
blur), so an explanation can be checked against the truth.

Shortcut configs: `64_marker` ties a LOCAL artefact (the corner "R" tag) to KL >= 2 with strength 0.9;
`64_scanner` ties a GLOBAL one -- "scanner B", a slightly blurred and noisier acquisition of the whole image
(`phantoms.knee_radiograph(scanner_strength=...)`) -- to KL >= 2 with strength 0.9, which no heatmap can
localise. `tiny_marker` / `tiny_scanner` are the same at the size of `tiny` (32 px, 48/16/16: the smoke runs of
the shortcut experiment). The other configs are all scanner A (`scanner` 0, `blur_sigma` 0).

    import stylex_jax.data.builders  # registers the builders
    builder = tfds.builder('synthetic_knee/64', data_dir=...)
    builder.download_and_prepare(file_format='array_record')   # random access for the pipeline
    # or a config of your own (its name is its identity in data_dir: use a new name for new parameters):
    tfds.builder('synthetic_knee', config=SyntheticKneeConfig(name='custom', resolution=48, num_train=100))

Features: `image` uint8 (R, R, 1) PNG; `label` ClassLabel(KL0..KL4) (the phantom's own grade prior);
`id` Text '<split>/<index:06d>'; one float32 Scalar per name in `phantoms.KNEE_ATTRIBUTES`.
Splits train/validation/test. Example `i` of split `s` (0 train, 1 validation, 2 test) is rendered
from phantom seed `(config.seed * 3 + s) * 2**32 + i`, so the splits never share a phantom and
any example can be regenerated from its id. Examples are stored in index order (no TFDS shuffling).

Generation fans out over worker processes (the `spawn` start method: safe after TensorFlow/JAX
have started threads; at most `GENERATION_WORKERS`, default all CPUs) when a split has at least
`MIN_EXAMPLES_FOR_WORKERS` examples, and falls back to this process if workers cannot start. PNG
encoding happens in the workers too. Results do not depend on the number of workers.

This module also holds the machinery shared with `synthetic_histology` (`PhantomConfig`,
`PhantomBuilder`).
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import multiprocessing
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from stylex_jax.data import histology_phantoms, phantoms

SPLIT_INDEX = {'train': 0, 'validation': 1, 'test': 2}
GENERATION_WORKERS: int | None = None  # None: every CPU this process may use
MIN_EXAMPLES_FOR_WORKERS = 256  # below this, starting workers costs more than it saves
_MAX_BASE_SEED = 2**29  # keeps (seed * 3 + 2) * 2**32 + i below 2**63


@dataclasses.dataclass(eq=False)
class PhantomConfig(tfds.core.BuilderConfig):
  """Parameters of a generated phantom dataset. Its `name` is its identity in data_dir: reusing a name
  with other parameters silently reuses the data already prepared under that name.

  resolution: image side in pixels (phantoms.MIN_RESOLUTION..MAX_RESOLUTION, i.e. 32..512).
  num_train/num_validation/num_test: examples per split (>= 1).
  marker_strength: in [0, 1], how strongly the spurious corner marker is tied to the label
    (`phantoms.marker_probability`: 0 -> present at random, 1 -> present iff the case is positive).
  seed: >= 0, base of the phantom seeds (see the module docstring).
  """
  resolution: int = 64
  num_train: int = 4000
  num_validation: int = 500
  num_test: int = 500
  marker_strength: float = 0.0
  seed: int = 0

  def __post_init__(self):
    problems = []
    lo, hi = getattr(phantoms, 'MIN_RESOLUTION', 32), getattr(phantoms, 'MAX_RESOLUTION', 512)
    if not (isinstance(self.resolution, int) and lo <= self.resolution <= hi):
      problems.append(f'resolution={self.resolution!r} must be an int in [{lo}, {hi}]')
    for field in ('num_train', 'num_validation', 'num_test'):
      value = getattr(self, field)
      if not (isinstance(value, int) and 1 <= value < 2**32):
        problems.append(f'{field}={value!r} must be an int >= 1')
    if not 0.0 <= float(self.marker_strength) <= 1.0:
      problems.append(f'marker_strength={self.marker_strength!r} must be in [0, 1]')
    if not (isinstance(self.seed, int) and 0 <= self.seed < _MAX_BASE_SEED):
      problems.append(f'seed={self.seed!r} must be an int in [0, 2**29)')
    if problems:
      raise ValueError(f'{type(self).__name__}(name={self.name!r}): ' + '; '.join(problems))

  def split_sizes(self) -> dict[str, int]:
    return {'train': self.num_train, 'validation': self.num_validation, 'test': self.num_test}


def example_seed(base_seed: int, split: str, index: int) -> int:
  """The phantom seed of example `index` of `split` (disjoint across splits and base seeds)."""
  return (base_seed * 3 + SPLIT_INDEX[split]) * 2**32 + index


_RENDERERS = {'knee': phantoms.knee_radiograph, 'histology': histology_phantoms.histology_tile}


def _render(job: tuple) -> tuple[bytes, int, dict[str, float]]:
  """Renders one phantom and PNG-encodes it (runs in worker processes; module-level so it pickles).

  job: (kind, seed, resolution, marker_strength, channels, attributes[, extra keyword arguments of the renderer]).
  """
  kind, seed, resolution, marker_strength, channels, attributes, *extra = job
  kwargs = dict(extra[0]) if extra else {}
  render = _RENDERERS[kind]
  name = f'{render.__module__}.{render.__name__}'
  image, label, attrs = render(seed, resolution=resolution, marker_strength=marker_strength, **kwargs)
  image = np.asarray(image)
  if image.shape != (resolution, resolution, channels) or image.dtype != np.uint8:
    raise ValueError(f'{name}(seed={seed}) returned {image.dtype} {image.shape}, expected uint8 '
                     f'{(resolution, resolution, channels)}')
  missing = [a for a in attributes if a not in attrs]
  if missing:
    raise ValueError(f'{name} returned no value for attributes {missing}')
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if channels == 1 else image).save(buffer, format='PNG', compress_level=3)
  return buffer.getvalue(), int(label), {a: float(attrs[a]) for a in attributes}


def _num_workers() -> int:
  if GENERATION_WORKERS is not None:
    return max(1, int(GENERATION_WORKERS))
  try:
    return max(1, len(os.sched_getaffinity(0)))
  except AttributeError:
    return max(1, os.cpu_count() or 1)


def _render_all(jobs: list[tuple]) -> Iterator[tuple[bytes, int, dict[str, float]]]:
  """`_render` over `jobs`, in order; on worker processes when it pays, else (or if they fail to start) here."""
  workers = min(_num_workers(), len(jobs))
  done = 0
  if workers > 1 and len(jobs) >= MIN_EXAMPLES_FOR_WORKERS:
    try:
      with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn')) as pool:
        for result in pool.map(_render, jobs, chunksize=max(1, len(jobs) // (workers * 8))):
          yield result
          done += 1
      return
    except concurrent.futures.process.BrokenProcessPool as e:
      logging.warning('phantom generation workers failed (%s); continuing in this process from example %d', e, done)
  for job in jobs[done:]:
    yield _render(job)


class PhantomBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared body of the phantom builders. Subclasses set KIND, CHANNELS, ATTRIBUTES, CLASS_NAMES."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  # What TFDS would derive itself; set here because TFDS's derivation needs the optional
  # `importlib_resources` package (etils[epath] extra), which some installs lack.
  code_path = epath.Path(__file__)
  KIND: str = ''
  CHANNELS: int = 1
  ATTRIBUTES: tuple[str, ...] = ()
  CLASS_NAMES: tuple[str, ...] = ()

  def _info(self) -> tfds.core.DatasetInfo:
    r = self.builder_config.resolution
    features = {
        'image': tfds.features.Image(shape=(r, r, self.CHANNELS), dtype=np.uint8, encoding_format='png'),
        'label': tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
        'id': tfds.features.Text(),
    }
    features.update({a: tfds.features.Scalar(dtype=np.float32, doc=f'ground-truth {a}') for a in self.ATTRIBUTES})
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict(features),
        supervised_keys=('image', 'label'),
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # generated locally
    return {split: self._generate_examples(split, n) for split, n in self.builder_config.split_sizes().items()}

  def _render_kwargs(self) -> dict:
    """Extra keyword arguments of the phantom renderer for this config (none by default)."""
    return {}

  def _generate_examples(self, split: str, num_examples: int):
    c = self.builder_config
    extra = self._render_kwargs()
    jobs = [(self.KIND, example_seed(c.seed, split,
                                     i), c.resolution, float(c.marker_strength), self.CHANNELS, self.ATTRIBUTES, extra)
            for i in range(num_examples)]
    for i, (png, label, attrs) in enumerate(_render_all(jobs)):
      key = f'{split}/{i:06d}'
      yield key, {'image': png, 'label': label, 'id': key, **{a: np.float32(v) for a, v in attrs.items()}}


@dataclasses.dataclass(eq=False)
class SyntheticKneeConfig(PhantomConfig):
  """`PhantomConfig` for `synthetic_knee` (see `PhantomConfig` for the other fields).

  scanner_strength: None (every image from scanner A, the default) or in [0, 1], how strongly "scanner B"
    (global blur + stronger noise) is tied to KL >= 2 (`phantoms.marker_probability`: 0 -> a 50/50 mix of the
    scanners independent of the grade, 1 -> scanner B iff KL >= 2).
  """
  scanner_strength: float | None = None

  def __post_init__(self):
    super().__post_init__()
    s = self.scanner_strength
    if s is not None and not (isinstance(s, (int, float)) and not isinstance(s, bool) and 0.0 <= float(s) <= 1.0):
      raise ValueError(f'{type(self).__name__}(name={self.name!r}): scanner_strength={s!r} must be None or in [0, 1]')


def _knee_config(name: str, resolution: int, num_train=4000, num_validation=500, num_test=500, marker_strength=0.0,
                 scanner_strength=None, seed=0) -> SyntheticKneeConfig:
  marker = f', spurious marker tied to the label with strength {marker_strength}' if marker_strength else ''
  scanner = ('' if scanner_strength is None else f', scanner B (whole image slightly blurred and noisier: a global '
             f'shortcut) tied to the label with strength {scanner_strength}')
  return SyntheticKneeConfig(
      name=name, resolution=resolution, num_train=num_train, num_validation=num_validation, num_test=num_test,
      marker_strength=marker_strength, scanner_strength=scanner_strength, seed=seed,
      description=f'{resolution}x{resolution} knee phantoms, {num_train}/{num_validation}/{num_test} '
      f'train/validation/test{marker}{scanner}.')


class SyntheticKnee(PhantomBuilder):
  """Procedural knee radiographs graded KL0-KL4, with the ground-truth attributes that generated them."""

  KIND = 'knee'
  CHANNELS = 1
  ATTRIBUTES = tuple(phantoms.KNEE_ATTRIBUTES)
  CLASS_NAMES = tuple(phantoms.KL_GRADE_NAMES)
  BUILDER_CONFIGS = [
      _knee_config('64', 64),
      _knee_config('32', 32),
      _knee_config('128', 128),
      _knee_config('256', 256),
      _knee_config('64_marker', 64, marker_strength=0.9),
      _knee_config('64_scanner', 64, scanner_strength=0.9),
      _knee_config('tiny', 32, num_train=48, num_validation=16, num_test=16),
      _knee_config('tiny_marker', 32, num_train=48, num_validation=16, num_test=16, marker_strength=0.9),
      _knee_config('tiny_scanner', 32, num_train=48, num_validation=16, num_test=16, scanner_strength=0.9),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = '64'

  def _render_kwargs(self) -> dict:
    s = self.builder_config.scanner_strength
    return {} if s is None else {'scanner_strength': float(s)}
