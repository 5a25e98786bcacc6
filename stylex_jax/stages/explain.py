"""The `explain` stage: explanations of real images, end to end, exported for engineers and clinicians.

For each image x (a split of the configured dataset, or the user's own files):
  1. invert:   w = invert(x) in W+ (encoder + optimisation, `explain/invert.py`), reconstruction G(w), and the
               classifier's probabilities on x and on G(w);
  2. direct:   the latent direction(s) that move the classifier's target (`explain/direction.py`): a global
               direction fitted once on latents of the mapping network (as Schutte et al. 2021), or one local
               direction per image; by jax.grad through G (gradient mode) or a linear probe on the
               classifier's predictions (black-box mode, no gradients);
  3. series:   G(w + alpha d) with the probabilities along the way, the shift range chosen per image so the
               series runs from the image's own prediction across the decision boundary (`explain/series.py`);
  4. compare:  GradCAM of the original for the class the series moves towards (`explain/gradcam.py`);
  5. export:   TFRecords + schema.json + PNG strips + GIFs + report.html (`explain/export.py`) and summary
               metrics: inversion quality, flip rate, monotonicity, proximity, and — on the phantom datasets —
               how the measured attributes change along the series (`evaluate/explanations.py`,
               `data/measure.py`).

Outputs: `<workdir>/explain/` (or `output_dir`): report.html, schema.json, tfrecords/, strips/, gifs/,
index.jsonl, directions.npz (the global direction(s) and their fit) and summary.json. The export directory is
checked for writability before anything is computed; a previous export is replaced only when the new one is
complete. schema.json and summary.json record what was explained ('source': {'kind': 'split', 'split',
'num_images'} or {'kind': 'images', 'patterns'}); the stage of launch/train.py takes an export as its own only
when that source is config.explain's split and num_images. Users' files (image_patterns) are listed and their
headers checked before anything is computed or created (no match, an empty folder, no file with a usable header:
one error, no folder left behind), then decoded batch by batch (`image_files.ImageFiles`): memory holds one batch
of images, series and metrics (plus a few scalars per image), whatever the number of files. They never go into
`<workdir>/explain/` (refused: give output_dir), so they are never taken for the split's export.
schema.json and summary.json also record the checkpoint steps of the classifier, GAN and encoder used
(`provenance`: the stage re-exports when they change). One progress line per batch: images done / total, img/s,
ETA.

Interruption and resume: SIGTERM / Ctrl-C stop the run between batches (`common.Preempted`); a previous export
stays as it was. The unfinished export lives in `<out>/.export-partial/` with a manifest of its finished TFRecord
shards, committed between batches whenever no shard is open (every lcm(batch_size, examples_per_shard) images);
rerunning the same command (same config, files or split, checkpoints) keeps those shards with their index lines,
strips, GIFs and report rows, reuses the saved direction(s) and latent scale, and explains only the remaining
images, so the result equals an uninterrupted run (the batches are the same, so the TFRecords are byte-identical).
A kill (crash, OOM) leaves the same state, locally or on an object store (all of it goes through
`stylex_jax.storage`). Anything else changed: the partial export is discarded, with a line.

Shift units: config.explain.step_size and max_shift are multiples of the latent scale, the median
||w - w_avg|| of the latents the direction is fitted on (so configs carry over between generators).
"""
from __future__ import annotations

import contextlib
import io
import os
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stylex_jax import preemption, sharding, storage, writers
from stylex_jax.data import pipeline as pipeline_lib
from stylex_jax.evaluate import explanations as quality
from stylex_jax.explain import direction as direction_lib
from stylex_jax.explain import export as export_lib
from stylex_jax.explain import gradcam as gradcam_lib
from stylex_jax.explain import image_files
from stylex_jax.explain import invert
from stylex_jax.explain import series as series_lib
from stylex_jax.stages import common
from stylex_jax.stages import encoder as encoder_stage
from stylex_jax.stages import evaluate as evaluate_stage

STAGE = 'explain'
MODES = ('gradient', 'blackbox')
SCOPES = ('global', 'local')
UPSTREAM = ('classifier', 'gan', 'encoder')  # the checkpoints an export is made from (its provenance)


def check_config(config: ml_collections.ConfigDict) -> None:
  """One clear error for a bad config.explain (or config.invert, or a target the classes cannot have) before
  anything is loaded or computed; cheap (no data, no compile), so `stages.run` calls it before the first stage."""
  ec = config.explain
  invert.check_invert_config(config.invert)
  problems = []
  if ec.mode not in MODES:
    problems.append(f'mode={ec.mode!r} must be one of {MODES}')
  if ec.scope not in SCOPES:
    problems.append(f'scope={ec.scope!r} must be one of {SCOPES}')
  if ec.mode == 'blackbox' and ec.scope == 'local':
    problems.append("scope='local' needs mode='gradient' (the black-box probe fits one direction per dataset)")
  if ec.space not in direction_lib.SPACES:
    problems.append(f'space={ec.space!r} must be one of {direction_lib.SPACES}')
  if ec.num_directions < 1:
    problems.append(f'num_directions={ec.num_directions} must be >= 1')
  if ec.num_directions > 1 and ec.scope == 'local':
    problems.append('num_directions > 1 needs scope=global')
  if ec.num_frames < 2:
    problems.append(f'num_frames={ec.num_frames} must be >= 2')
  if ec.batch_size < 1 or ec.num_images < 0:
    problems.append(f'batch_size={ec.batch_size} must be >= 1 and num_images={ec.num_images} >= 0 (0 = all)')
  if not ec.max_shift > 0 or not ec.step_size > 0:
    problems.append(f'max_shift={ec.max_shift} and step_size={ec.step_size} must be > 0 (multiples of the '
                    'latent scale)')
  if min(ec.chunk_size, ec.examples_per_shard, ec.direction_latents) < 1 or ec.report_max_images < 0:
    problems.append(f'chunk_size={ec.chunk_size}, examples_per_shard={ec.examples_per_shard} and direction_latents='
                    f'{ec.direction_latents} must be >= 1, report_max_images={ec.report_max_images} >= 0')
  k = config.data.num_classes
  if ec.class_names and len(ec.class_names) != k:
    problems.append(f'class_names has {len(ec.class_names)} names but config.data.num_classes={k}')
  try:
    direction_lib.make_target(ec.target, k, None if ec.class_index < 0 else int(ec.class_index))
  except ValueError as e:
    problems.append(f'target={ec.target!r}, class_index={ec.class_index}: {e}')
  if problems:
    raise ValueError('config.explain: ' + '; '.join(problems))


class Explainer:
  """Everything needed to explain batches of images with one trained classifier + GAN (+ encoder).

  Built once (loads checkpoints, fits the global direction, jits the series renderer); `explain_batch` is then
  called per batch of images of one shape, so every jitted function is traced once.
  """

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, inverter=None, classifier=None, mesh=None):
    ec = config.explain
    check_config(config)
    self.config, self.ec = config, ec
    self.mesh = mesh or sharding.make_mesh(config.num_devices or None)
    if inverter is None:
      inverter = encoder_stage.load_inverter(workdir, config, self.mesh)
    self.inverter = inverter
    # the inverter already holds the classifier it checks reconstructions with: no second restore
    self.model, self.variables = classifier or (inverter.classifier, inverter.classifier_vars)
    self.num_classes = config.data.num_classes
    class_index = None if ec.class_index < 0 else int(ec.class_index)
    self.target = direction_lib.make_target(ec.target, self.num_classes, class_index)
    self.synthesize = inverter.synthesize
    self.classify = inverter.classify
    self.renderer = series_lib.SeriesRenderer(self.synthesize, self.classify, chunk_size=ec.chunk_size,
                                              num_classes=self.num_classes, mesh=self.mesh)
    self._gradcam = jax.jit(lambda v, x, t: gradcam_lib.gradcam(self.model, v, x, t, layer=ec.gradcam_layer))
    self._mapping = jax.jit(lambda z: inverter.generator.apply({
        'params': inverter.g_params,
        'stats': inverter.g_stats
    }, z, method='mapping'))
    self._classify_jit = jax.jit(self.classify)
    self.directions = None  # [k, num_ws, w_dim] global directions
    self.direction_info: dict[str, Any] = {}
    self.scale = None
    self._local = None

  # ------------------------------------------------------------------------------------------ directions

  def _sample_latents(self, n: int, seed: int) -> jax.Array:
    """ws [n, num_ws, w_dim] from the mapping network of standard-normal z (seeded), truncation psi = 1."""
    z = jax.random.normal(jax.random.key(seed), (n, self.inverter.generator.z_dim), jnp.float32)
    return self._mapping(z)

  def _predict_numpy(self, images: np.ndarray) -> np.ndarray:
    """Black-box view of the classifier: numpy images -> numpy probabilities (no gradients)."""
    return np.asarray(series_lib.probabilities(self._classify_jit(jnp.asarray(images))))

  def fit_global_directions(self) -> np.ndarray:
    """Fits config.explain.num_directions orthonormal global directions [k, num_ws, w_dim] (and the scale)."""
    ec = self.ec
    t0 = time.perf_counter()
    ws = self._sample_latents(ec.direction_latents, self.config.seed + 1)
    self.scale = direction_lib.latent_scale(ws, self.inverter.w_avg)
    key = jax.random.key(self.config.seed + 2)
    if ec.mode == 'gradient':
      fitter = direction_lib.GradientDirection(self.synthesize, self.classify, self.target, space=ec.space, local=False,
                                               step_size=ec.step_size * self.scale,
                                               proximity_weight=ec.proximity_weight, steps=ec.direction_steps,
                                               learning_rate=ec.direction_lr, chunk_size=ec.chunk_size)
    else:
      fitter = direction_lib.LinearProbe(self.synthesize, self._predict_numpy, self.target, space=ec.space,
                                         l2=ec.probe_l2, batch_size=ec.chunk_size)
      ws = self._sample_latents(ec.probe_samples, self.config.seed + 4)  # labelled by the black box
    if ec.num_directions == 1:
      fit = fitter(ws, key=key)
      directions = np.asarray(fit.direction)[None]
      if ec.mode == 'gradient':
        self.direction_info = dict(gain=float(fit.gain), initial_gain=float(fit.initial_gain),
                                   proximity=float(fit.proximity))
      else:
        self.direction_info = dict(probe_model=fit.model, probe_score=float(fit.score))
    else:
      directions = np.asarray(direction_lib.top_k_directions(fitter, ws, ec.num_directions, key=key))
    self.direction_info.update(mode=ec.mode, space=ec.space, latents=int(ws.shape[0]), latent_scale=float(self.scale),
                               seconds=time.perf_counter() - t0)
    self.directions = directions
    return directions

  def _local_directions(self, ws: jax.Array) -> np.ndarray:
    if self._local is None:
      ec = self.ec
      self._local = direction_lib.GradientDirection(self.synthesize, self.classify, self.target, space=ec.space,
                                                    local=True, step_size=ec.step_size * self.scale,
                                                    proximity_weight=ec.proximity_weight, steps=ec.direction_steps,
                                                    learning_rate=ec.direction_lr, chunk_size=ec.chunk_size)
    return np.asarray(self._local(ws, key=jax.random.key(self.config.seed + 3)).direction)

  # ------------------------------------------------------------------------------------------- explaining

  def gradcam_classes(self, probs: np.ndarray) -> np.ndarray:
    """[B] the class GradCAM explains: the target's class for binary/one-class targets, else the prediction."""
    if self.target.kind in ('logit', 'log_odds') and self.target.class_index is not None:
      return np.full(len(probs), self.target.class_index, np.int32)
    return probs.argmax(-1).astype(np.int32)

  def explain_batch(self, images: np.ndarray, ids: Sequence[str], labels: np.ndarray) -> dict[str, Any]:
    """images [B, H, W, C] in [-1, 1] -> the exporter's batch dict (plus per-image metrics).

    A batch smaller than config.explain.batch_size (the last one) is padded with copies of its last image and the
    padding dropped from the result: every image is explained on its own, so the figures are the same, and the
    batch runs the programs every earlier batch compiled instead of compiling new shapes at the end of the run."""
    labels, n, pad = np.asarray(labels), len(images), self.ec.batch_size - len(images)
    if pad <= 0:
      return self._explain_batch(images, ids, labels)
    padded = self._explain_batch(np.concatenate([images, np.repeat(images[-1:], pad, axis=0)]),
                                 list(ids) + [ids[-1]] * pad, np.concatenate([labels,
                                                                              np.repeat(labels[-1:], pad)]))
    return {k: ({m: v[:n] for m, v in value.items()} if k == 'metrics' else value[:n]) for k, value in padded.items()}

  def _explain_batch(self, images: np.ndarray, ids: Sequence[str], labels: np.ndarray) -> dict[str, Any]:
    ec = self.ec
    if self.directions is None and ec.scope == 'global':
      self.fit_global_directions()
    inv = self.inverter(images, ids=list(ids))
    ws = jnp.asarray(inv['ws'])
    noise = inv.get('noise')  # optimised noise maps: the series keeps the image's fine detail
    if ec.scope == 'local':
      if self.scale is None:
        self.scale = direction_lib.latent_scale(self._sample_latents(ec.direction_latents, self.config.seed + 1),
                                                self.inverter.w_avg)
      directions = self._local_directions(ws)
    else:
      directions = self.directions[0]
    max_alpha = ec.max_shift * self.scale
    if ec.auto_range:
      auto = self.renderer.auto_alphas(ws, directions, self.target, num_frames=ec.num_frames, max_alpha=max_alpha,
                                       margin=ec.margin, extras=noise)
      alphas, crossed = auto.alphas, auto.crossed
    else:
      alphas = series_lib.fixed_alphas(max_alpha, ec.num_frames, batch=len(images))
      crossed = None
    frames, probs = self.renderer(ws, directions, alphas, extras=noise)
    original_probs = np.asarray(inv['original_probs'], np.float32)
    heat = np.asarray(
        self._gradcam(self.variables, jnp.asarray(images), jnp.asarray(self.gradcam_classes(original_probs))))
    target_values = np.asarray(self.target(jnp.asarray(np.log(np.clip(probs, 1e-12, 1)).reshape(
        -1, probs.shape[-1])))).reshape(probs.shape[:2])
    flips = quality.flipped(probs, alphas)
    metrics = dict(ssim=inv['ssim'], psnr=inv['psnr'], mse=inv['mse'], agree=inv['agree'].astype(np.float32),
                   prob_delta=inv['prob_delta'], w_distance=inv['w_distance'], flipped=flips.astype(np.float32),
                   monotonicity=quality.monotonicity(target_values, alphas),
                   proximity=quality.proximity(frames, inv['reconstructions'], probs, alphas))
    if crossed is not None:
      metrics['crossed'] = crossed.astype(np.float32)
    metrics.update(self._attribute_trends(frames, alphas))
    return dict(id=np.asarray(list(ids), dtype=object), image=np.asarray(images, np.float32),
                reconstruction=np.asarray(inv['reconstructions'],
                                          np.float32), series=frames, alphas=np.asarray(alphas,
                                                                                        np.float32), probs=probs,
                original_probs=original_probs, reconstruction_probs=np.asarray(inv['reconstruction_probs'], np.float32),
                latent=np.asarray(inv['ws'], np.float32), gradcam=heat.astype(np.float32),
                label=np.asarray(labels, np.int64), target=self.gradcam_classes(original_probs), metrics={
                    k: np.asarray(v, np.float32) for k, v in metrics.items()
                })

  def _attribute_trends(self, frames: np.ndarray, alphas: np.ndarray) -> dict[str, np.ndarray]:
    """On the knee phantoms: Spearman(alpha, attribute) along each series for the measured attributes."""
    if self.config.data.dataset != 'synthetic_knee' or frames.shape[2] < 32 or frames.shape[-1] != 1:
      return {}
    from stylex_jax.data import measure  # pylint: disable=g-import-not-at-top  (numpy/scipy only)
    b, s = frames.shape[:2]
    m = measure.measure_knee_batch(frames.reshape(b * s, *frames.shape[2:]))
    valid = np.asarray(m['joint_found']).reshape(b, s) > 0
    attrs = {
        f'trend_{k}': np.asarray(m[k], np.float64).reshape(b, s)
        for k in ('joint_space_width', 'osteophyte_area', 'sclerosis')
    }
    return quality.attribute_trends(attrs, alphas, valid)


def _split_images(data, total: int, batch_size: int, seed: int, start: int = 0):
  """Yields (images [b, H, W, C] in [-1, 1], ids, labels, position) for `total` (<= data.num_examples) examples of
  the split that the evaluation Pipeline `data` reads: the whole split in order, or a seeded class-balanced sample
  of it (so the explanations describe both directions of the decision, whatever order the split is stored in),
  from the `start`-th of them (a resumed export); position: how many of the `total` are read after this batch."""
  indices = (np.arange(data.num_examples) if total >= data.num_examples else pipeline_lib.class_balanced_indices(
      data.labels, total, seed))
  for i in range(start, len(indices), batch_size):
    batch = data.examples(indices[i:i + batch_size])
    yield batch['image'], [str(x) for x in batch['id']], batch['label'], min(i + batch_size, len(indices))


MAX_NOTE_LINES = 20  # conversion notes printed per run (thousands of resized files would flood the log)


def _file_batches(files: image_files.ImageFiles, batch_size: int, start: int):
  """Yields (images, ids, labels -1, position) of the user's files from paths[start:], decoded batch by batch,
  printing what was converted (the first MAX_NOTE_LINES files) and every rejected file as it is met."""
  shown = 0
  for batch in files.batches(batch_size, start):
    for line in batch.notes:
      shown += 1
      if shown <= MAX_NOTE_LINES:
        print(f'[explain] converted {line}')
      elif shown == MAX_NOTE_LINES + 1:
        print('[explain] (further conversion notes not shown: every file is conformed by the same rule)')
    for line in batch.rejected:
      print(f'[explain] rejected {line}', flush=True)
    if len(batch.ids):
      yield batch.images, batch.ids, batch.labels, batch.position


def split_source(split: str, num_images: int) -> dict:
  """What an export of a split holds, as recorded in its schema.json / summary.json ('source')."""
  return {'kind': 'split', 'split': str(split), 'num_images': int(num_images)}


def _check_images_output(out: str, workdir: str, split: str) -> None:
  """Users' files never go into <workdir>/explain/, the train command's export of config.explain.split (the
  explain stage would take them for it, or replace them)."""
  same = (os.path.realpath(out) == os.path.realpath(os.path.join(workdir, STAGE))
          if storage.is_local(out) else storage.absolute(out) == storage.absolute(os.path.join(workdir, STAGE)))
  if same:
    raise ValueError(
        f'--images would write into {out}, the export of split {split!r} that the train command\'s '
        f'explain stage keeps; give --output_dir, e.g. --output_dir={os.path.join(workdir, "explain_images")}')


def run(config: ml_collections.ConfigDict, workdir: str, *, split: str | None = None, num_images: int | None = None,
        image_patterns: str | Sequence[str] | None = None, output_dir: str | None = None,
        explainer: Explainer | None = None) -> dict:
  """Explains images and exports everything (see the module docstring). Returns the summary dict.

  split / num_images override config.explain.split / num_images; image_patterns (globs, a directory, or a
  comma-separated list) explains the user's files instead of a split.
  """
  ec = config.explain
  check_config(config)
  out = storage.absolute(output_dir or os.path.join(workdir, STAGE))
  preemption.install_handler()  # SIGTERM / Ctrl-C stop between batches, the previous export kept
  kept = f'the previous export in {out}, if any, is unchanged'
  provenance = common.checkpoint_steps(workdir, UPSTREAM)
  split = split or ec.split
  num_images = ec.num_images if num_images is None else int(num_images)
  if num_images < 0:
    raise ValueError(f'num_images={num_images} must be >= 0 (0 = the whole split)')
  if image_patterns:  # users' files are listed and their headers checked before any computation or output folder
    _check_images_output(out, workdir, ec.split)
    files = image_files.ImageFiles(image_patterns, config.data.image_size, config.data.channels)
    for line in files.rejected:
      print(f'[explain] rejected {line}')
    patterns = [image_patterns] if isinstance(image_patterns, str) else list(image_patterns)
    export_source = {'kind': 'images', 'patterns': patterns}
    inputs = {'files': len(files), 'fingerprint': files.fingerprint()}
  else:
    export_source = split_source(split, num_images)
    inputs = {}
  created = not storage.exists(out)
  export_lib.check_writable(out)  # before any computation
  t0 = time.perf_counter()
  try:
    explainer = explainer or Explainer(config, workdir)
  except BaseException:  # e.g. an earlier stage is missing: leave no empty output folder behind
    if created:
      with contextlib.suppress(OSError, ValueError):
        storage.remove_empty_dir(out)
    raise
  if image_patterns:
    total, what, class_names = len(files), f'files {image_patterns}', _class_names(config)
  else:
    data = pipeline_lib.Pipeline(config.data, split, global_batch_size=ec.batch_size, seed=config.seed, train=False)
    total = min(num_images, data.num_examples) if num_images else data.num_examples
    what, class_names = f'split {split!r}', _class_names(config, data.class_names)
  inv = explainer.inverter
  target_description = _describe_target(explainer.target, class_names, ec)
  # an interrupted run of the same job (config, what is explained, checkpoints) continues from its last commit
  resume_key = dict(config=config.to_dict(), source=export_source, inputs=inputs, provenance=provenance,
                    class_names=class_names)
  writer = export_lib.ExplanationWriter(
      out, num_classes=explainer.num_classes, class_names=class_names,
      image_shape=(config.data.image_size, config.data.image_size, config.data.channels), num_ws=inv.num_ws,
      w_dim=inv.w_dim, config=config.to_dict(), examples_per_shard=ec.examples_per_shard,
      target_description=target_description, report_max_images=ec.report_max_images, source=export_source,
      provenance=provenance, resume_key=resume_key)
  if writer.discarded_partial:
    print(f'[explain] the unfinished export in {writer.partial_directory} is not continued: '
          f'{writer.discarded_partial}; starting afresh')

  def kept_note() -> str:
    if writer.committed:
      return (f'{kept}; the {writer.committed} images explained so far are kept in {writer.partial_directory} '
              'and the same command continues from there')
    return kept

  with writer:  # an exception keeps only the committed shards (resumable), never touches a previous export
    resumed = writer.resumed_state or {}
    start = int(resumed.get('position', 0))
    _set_or_fit_directions(explainer, writer, resumed)
    common.stop_if_preempted(STAGE, 0, kept_note())
    if resumed:
      print(
          f'[explain] resuming: {writer.num_examples} images already explained (finished shards kept), '
          f'continuing from input {start} of {total}', flush=True)
    source = (_file_batches(files, ec.batch_size, start) if image_patterns else _split_images(
        data, total, ec.batch_size, config.seed, start))
    clock, first = (time.perf_counter(), writer.num_examples), True  # the rate is timed from the end of the
    for images, ids, labels, position in source:  # first batch (which includes compiling)
      batch = explainer.explain_batch(images, ids, labels)
      writer.add(batch)
      writer.commit({'position': position, **_direction_state(explainer)})  # whenever no shard is open
      done, now = writer.num_examples, time.perf_counter()
      print(_progress_line(done, done - clock[1], position, total, now - clock[0], what), flush=True)
      if first:
        clock, first = (now, done), False
      common.stop_if_preempted(STAGE, done, kept_note())
    done = writer.num_examples
    metrics = writer.metric_arrays()  # per-image scalars of every image, the resumed part included
    summary_metrics = _summary(metrics)
    summary_metrics['images'] = done
    summary_metrics['seconds'] = round(time.perf_counter() - t0, 2)
    renamed = {'flipped': 'flip_rate', 'agree': 'agreement'}
    scorecard = evaluate_stage.build_scorecard({renamed.get(k, k): v for k, v in metrics.items()})
    paths = writer.close(summary_metrics, scorecard=scorecard)
  if explainer.directions is not None:
    fit = {k: np.asarray(v) for k, v in explainer.direction_info.items() if isinstance(v, (int, float, str))}
    fit['latent_scale'] = np.float32(explainer.scale)
    buffer = io.BytesIO()
    np.savez(buffer, directions=explainer.directions, **fit)
    storage.write_atomic(os.path.join(out, 'directions.npz'), buffer.getvalue())
  summary = dict(stage=STAGE, complete=True, source=export_source, **summary_metrics,
                 direction=explainer.direction_info, report=paths['report'], tfrecords=paths['tfrecords'],
                 schema=paths['schema'], strips=paths['strips'], gifs=paths['gifs'], directory=out,
                 provenance=provenance)
  summary = writers.write_json(os.path.join(out, 'summary.json'), summary)
  print(f'[explain] {done} images in {summary_metrics["seconds"]:.0f} s: ' +
        ' '.join(f'{k}={summary_metrics[k]:.3g}' for k in ('ssim', 'agree', 'flip_rate', 'monotonicity')
                 if isinstance(summary_metrics.get(k), float)) +
        f'\n  open the report: {paths["report"]}\n  TFRecords: {os.path.dirname(paths["tfrecords"][0])}')
  return summary


DIRECTIONS_FILE = 'caller-directions.npy'  # the global direction(s) of a resumable export, in its partial folder


def _direction_state(explainer: Explainer) -> dict:
  """What a resumed export needs besides the saved directions: the latent scale (exactly, as a JSON float) and
  the fit's description."""
  info = {k: v for k, v in explainer.direction_info.items() if isinstance(v, (int, float, str))}
  return {'scale': None if explainer.scale is None else float(explainer.scale), 'direction_info': info}


def _set_or_fit_directions(explainer: Explainer, writer, resumed: dict) -> None:
  """The global direction(s): reused from the partial export being resumed (so its remaining images are explained
  along exactly the same direction), else fitted now and saved beside the partial export."""
  ec = explainer.ec
  path = os.path.join(writer.partial_directory, DIRECTIONS_FILE)
  if resumed.get('scale') is not None and (ec.scope != 'global' or storage.isfile(path)):
    explainer.scale = float(resumed['scale'])
    explainer.direction_info = dict(resumed.get('direction_info') or {})
    if ec.scope == 'global':
      explainer.directions = storage.load_array(path)
    print(f'[explain] direction(s) and latent scale reused from the unfinished export in {writer.partial_directory}')
    return
  if resumed.get('scale') is not None:
    print(f'[explain] the unfinished export in {writer.partial_directory} lost its saved direction '
          f'({DIRECTIONS_FILE}); fitting it again (seeded: the same direction on the same machine and software)')
  if explainer.directions is None and ec.scope == 'global':
    explainer.fit_global_directions()
    print(f'[explain] {ec.mode} direction in {ec.space.upper()} fitted on {explainer.direction_info["latents"]} '
          f'latents in {explainer.direction_info["seconds"]:.1f} s: ' +
          ', '.join(f'{k}={v:.3g}' for k, v in explainer.direction_info.items()
                    if isinstance(v, float) and k not in ('seconds',)))
  if explainer.directions is not None:
    storage.save_array(path, explainer.directions)  # atomic and synced, local or on an object store


def _progress_line(done: int, done_now: int, position: int, total: int, seconds: float, what: str) -> str:
  """One line per batch: images explained / total, the rate of this run (done_now images in `seconds`) and the ETA
  of the remaining inputs."""
  rate = done_now / max(seconds, 1e-9)
  eta = writers.format_duration(max(total - position, 0) / rate if rate > 0 else float('inf'))
  return (f'[explain] {done}/{total} images explained ({what}), {100 * position / max(total, 1):.1f}% of the '
          f'inputs read, {rate:.2f} img/s, ETA {eta}')


def _summary(metrics: dict[str, np.ndarray]) -> dict[str, float]:
  """Means over images of the per-image metrics, NaN-aware; 'flipped' -> 'flip_rate', 'agree' -> agreement."""
  out = {}
  for k, v in metrics.items():
    v = np.asarray(v, np.float64)
    name = {'flipped': 'flip_rate', 'crossed': 'crossed_rate'}.get(k, k)
    out[name] = float(np.nanmean(v)) if np.isfinite(v).any() else float('nan')
  return out


def _class_names(config, dataset_names: Sequence[str] | None = None) -> list[str]:
  """config.explain.class_names, else the opened dataset's `dataset_names`, else (users' files: no dataset is
  opened) the pipeline's naming for the known datasets (binary thresholded labels: '<NAME', '>=NAME'), else
  'class k'."""
  if config.explain.class_names:
    return list(config.explain.class_names)
  if dataset_names:
    return list(dataset_names)
  k, t = config.data.num_classes, config.data.label_threshold
  if config.data.dataset in ('synthetic_knee', 'kl_xray'):
    base = [f'KL{i}' for i in range(5)]
    return [f'<{base[t]}', f'>={base[t]}'] if t >= 0 else base[:k]
  return [f'class {i}' for i in range(k)]


def _describe_target(target, class_names, ec) -> str:
  if target.kind == 'expected_grade':
    return 'expected grade sum_k k p_k (ordinal classes)'
  name = class_names[target.class_index] if target.class_index is not None else '?'
  return f'{target.kind} of class {name!r}; {ec.mode} direction in {ec.space.upper()} ({ec.scope})'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage entry point for launch/train.py: explains config.explain.split unless a complete export of the same
  config exists (rerun with launch/explain.py to explain other images)."""
  stage = common.open_export_stage(STAGE, workdir, config, common.checkpoint_steps(workdir, UPSTREAM),
                                   source=split_source(config.explain.split, config.explain.num_images))
  if stage.completed is not None:
    return stage.completed
  return run(config, workdir)
