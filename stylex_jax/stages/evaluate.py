"""The `evaluate` stage: a fidelity scorecard of an explanation export (does it show what the classifier uses?).

Reads any export through its TFRecords and schema.json (`<workdir>/explain/` by default, or an export made
elsewhere), never modifying its records, and writes `<workdir>/evaluate/scorecard.json` (metric name -> {value,
low, high, goal, met, meaning}: the mean over series with a 95% bootstrap interval) and `scorecard.md`, then puts
the scorecard at the top of the export's report.html. scorecard.json records which export it scores (`source`:
its creation time, size and provenance, and the classifier step): the stage recomputes when the export changed,
and removes an old scorecard before it starts. SIGTERM / Ctrl-C stop it between chunks (`common.Preempted`).

Metrics per series (`evaluate/fidelity.py`), aggregated over the export:
  flip_rate              the prediction changes along the series (validity)
  monotonicity           Spearman of shift vs the explained target along the series
  proximity, proximity_ssim, sparsity   how little the flip frame differs from the reconstruction
  cout                   C3LT's COUT: revealing the changed pixels in order moves the prediction to the flip class
  frame_kid, reconstruction_kid, kid_ratio   realism of the frames near the flip vs real test images (classifier
                         features), beside that of the reconstructions
  frame_knn_distance, reconstruction_knn_distance, knn_distance_ratio   the same question by the distance to the
                         3rd-nearest real image (defined on the 16 images of a demo, where the KID ratio is not)
  on the phantom datasets (oracles in data/measure.py): causal_right_direction (the causal attributes move the
  way the labels imply), nuisance_change_max_std (the largest nuisance change at the flip frame, in dataset
  standard deviations), causal_share (share of the normalised change that falls on causal attributes).
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stylex_jax import storage, writers
from stylex_jax.data import measure
from stylex_jax.data import pipeline as pipeline_lib
from stylex_jax.evaluate import explanations as quality
from stylex_jax.evaluate import fidelity
from stylex_jax.explain import direction as direction_lib
from stylex_jax.explain import export as export_lib
from stylex_jax.explain import report as report_lib
from stylex_jax.stages import classifier as classifier_stage
from stylex_jax.stages import common

STAGE = 'evaluate'
CHUNK = 64  # explanations held in memory at once (bounded memory for large exports)

# the phantoms' attributes: what the label depends on, and what it must not
PHANTOM_ATTRIBUTES = {
    'synthetic_knee':
        dict(measure=measure.measure_knee_batch, valid='joint_found',
             causal=('joint_space_width', 'osteophyte_area', 'sclerosis'),
             nuisances=('marker', 'noise_level', 'sharpness', 'brightness', 'tilt')),
    'synthetic_histology':
        dict(measure=measure.measure_histology_batch, valid=None,
             causal=('nuclear_count', 'nuclear_mean_area', 'nuclear_darkness'), nuisances=('marker',)),
}

GOALS = {
    'ssim': (('>=', 0.85), 'SSIM of the reconstruction G(invert(x)) to the image (the explanation starts there)'),
    'agreement': (('>=', 0.95), 'share of reconstructions the classifier gives the class of the image'),
    'flip_rate': (('>=', 0.95), 'share of series whose prediction changes (validity)'),
    'monotonicity': (('>=', 0.95), 'Spearman of shift vs the explained target along a series'),
    'proximity': (None, 'mean |flip frame - reconstruction| in [-1, 1] units (smaller: a closer counterfactual)'),
    'proximity_ssim': (None, 'SSIM of the flip frame to the reconstruction'),
    'sparsity': (None, 'share of pixels changed by more than 0.1 at the flip frame'),
    'cout': (None, 'COUT (C3LT): p(flip class) - p(source class) as the changed pixels are revealed, area in '
             '[-1, 1]'),
    'frame_kid': (None, 'KID of frames near the flip vs real test images (classifier features)'),
    'reconstruction_kid': (None, 'KID of the reconstructions vs the same real images'),
    'kid_ratio': (('<=', 2.0), 'frame KID / reconstruction KID (series stay as realistic as the reconstructions)'),
    'frame_knn_distance': (None, 'median distance of frames near the flip to their 3rd-nearest real test image '
                           '(classifier features; 1 = a real image to its 3rd neighbour)'),
    'reconstruction_knn_distance': (None, 'the same for the reconstructions'),
    'knn_distance_ratio': (('<=', 2.0), 'frame / reconstruction k-NN distance (series stay as close to real images '
                           'as the reconstructions; defined on a few images, unlike kid_ratio)'),
    'causal_right_direction': (('>=', 0.9), 'share of series whose causal attributes move the way the labels '
                               'imply'),
    'nuisance_change_max_std': (('<', 0.25), 'largest nuisance change at the flip frame, in dataset std'),
    'causal_share': (None, 'share of the normalised attribute change that falls on causal attributes'),
}


def build_scorecard(values: dict[str, np.ndarray]) -> dict[str, dict]:
  """{metric: {value, low, high, goal, met, meaning}} for the per-series values [B] of the metrics in GOALS (in
  GOALS' order; NaN-aware means with 95% bootstrap intervals)."""
  return {
      name: fidelity.score(fidelity.Metric(name, np.asarray(values[name], np.float64), goal, meaning))
      for name, (goal, meaning) in GOALS.items()
      if name in values
  }


def _export_dir(workdir: str, explanations: str | None) -> str:
  return storage.absolute(explanations or os.path.join(workdir, 'explain'))


def _read_schema(directory: str) -> dict:
  """schema.json of the export, with one clear error when there is none."""
  if not storage.isdir(directory):
    raise FileNotFoundError(f'no explanation export at {directory}; run the explain stage first '
                            '(--config.stages=explain) or pass --explanations DIR')
  try:
    return export_lib.read_schema(directory)
  except FileNotFoundError:
    raise FileNotFoundError(f'{directory} has no schema.json: not a finished explanation export (run the explain '
                            'stage, or pass the directory that holds schema.json)') from None


def _target(schema: dict, config: ml_collections.ConfigDict) -> direction_lib.Target:
  ec = schema.get('config', {}).get('explain') or config.explain.to_dict()
  class_index = ec.get('class_index', -1)
  return direction_lib.make_target(ec.get('target', 'auto'), int(schema['num_classes']),
                                   None if class_index is None or class_index < 0 else int(class_index))


def _chunks(directory: str):
  """Lists of explanation dicts (export.read_explanations) of at most CHUNK items."""
  chunk = []
  for item in export_lib.read_explanations(directory):
    chunk.append(item)
    if len(chunk) == CHUNK:
      yield chunk
      chunk = []
  if chunk:
    yield chunk


def _to_float(u8: np.ndarray) -> np.ndarray:
  return np.asarray(u8, np.float32) / 127.5 - 1.0


class _Classifier:
  """The trained classifier as numpy functions: probabilities and penultimate features of images in [-1, 1]."""

  def __init__(self, workdir: str, config: ml_collections.ConfigDict, batch_size: int = 64):
    model, variables = classifier_stage.load_classifier(workdir, config)
    self._probs = jax.jit(lambda x: jax.nn.softmax(model.apply(variables, x, train=False).astype(jnp.float32)))
    self._features = jax.jit(lambda x: model.apply(variables, x, train=False, return_features=True)[1])
    self.batch_size = batch_size

  def _map(self, fn, images: np.ndarray) -> np.ndarray:
    out = [np.asarray(fn(jnp.asarray(images[i:i + self.batch_size]))) for i in range(0, len(images), self.batch_size)]
    return np.concatenate(out).astype(np.float64) if out else np.zeros((0,))

  def probs(self, images: np.ndarray) -> np.ndarray:
    return self._map(self._probs, images)

  def features(self, images: np.ndarray) -> np.ndarray:
    return self._map(self._features, images)


def scored_export(schema: dict, directory: str, workdir: str) -> dict:
  """What a scorecard is a scorecard of: the export (directory, creation time, size, the checkpoint steps it was
  made from) and the classifier checkpoint step that scores it. A scorecard of anything else is out of date."""
  return dict(directory=directory, created=schema.get('created'), num_examples=schema.get('num_examples'),
              provenance=schema.get('provenance'),
              classifier=common.checkpoint_steps(workdir, (classifier_stage.STAGE,))[classifier_stage.STAGE])


def _jsonable_config(config: ml_collections.ConfigDict) -> dict:
  return json.loads(json.dumps(config.to_dict(), default=str))


def _real_images(config: ml_collections.ConfigDict, split: str, num: int) -> dict[str, np.ndarray]:
  """A seeded class-balanced sample of `num` images of `split` (float [-1, 1]) with their labels."""
  data = pipeline_lib.Pipeline(config.data, split, global_batch_size=min(64, max(num, 1)), seed=config.seed,
                               train=False)
  n = min(num, data.num_examples)
  return data.examples(pipeline_lib.class_balanced_indices(data.labels, n, config.seed + 11))


def _phantom_reference(spec: dict, reals: dict, target_class: int) -> tuple[dict, dict]:
  """(implied sign of each causal attribute towards the target class, dataset std of every attribute), measured
  with the oracles on real images."""
  m = spec['measure'](reals['image'])
  ok = np.ones(len(reals['label']), bool) if spec['valid'] is None else np.asarray(m[spec['valid']]) > 0
  signs = {}
  for a in spec['causal']:
    try:
      signs[a] = fidelity.implied_signs(np.asarray(m[a])[ok], reals['label'][ok], target_class)
    except ValueError as e:  # e.g. too few real images of one class: that attribute cannot be judged
      print(f'[evaluate] {a}: no direction implied by the labels ({e}); not judged')
  std = {a: float(np.nanstd(np.asarray(m[a], np.float64)[ok])) for a in spec['causal'] + spec['nuisances']}
  for a in [a for a, v in std.items() if not v > 0]:  # constant on this data (e.g. no marker at all)
    print(f'[evaluate] {a}: constant on the real images; not judged')
    del std[a]
  return signs, std


def check_config(config: ml_collections.ConfigDict) -> None:
  """One clear error for a bad config.evaluate before anything is read; cheap, so `stages.run` calls it before the
  first stage."""
  if config.evaluate.real_images < 2:
    raise ValueError(f'config.evaluate.real_images={config.evaluate.real_images} must be >= 2 (the test images '
                     'realism (KID) and the phantom attribute statistics are measured on)')


def run(config: ml_collections.ConfigDict, workdir: str, *, explanations: str | None = None) -> dict:
  """Computes the scorecard of the export (see the module docstring); returns {metric: entry}."""
  check_config(config)
  t0 = time.perf_counter()
  directory = _export_dir(workdir, explanations)
  schema = _read_schema(directory)
  out_dir = os.path.join(workdir, STAGE)
  storage.makedirs(out_dir)
  source = scored_export(schema, directory, workdir)
  for name in ('scorecard.json', 'scorecard.md'):  # never left beside an export it does not describe
    storage.remove(os.path.join(out_dir, name))
  target = _target(schema, config)
  classifier = _Classifier(workdir, config)
  dataset = schema.get('config', {}).get('data', {}).get('dataset', config.data.dataset)
  spec = PHANTOM_ATTRIBUTES.get(dataset)
  if spec is not None and int(schema['image_shape'][0]) < measure.MIN_RESOLUTION:
    print(f'[evaluate] attribute metrics skipped: the oracles need images of >= {measure.MIN_RESOLUTION} px')
    spec = None
  elif spec is None:
    print(f'[evaluate] attribute metrics skipped: dataset {dataset!r} has no oracles (phantoms only)')
  reals = _real_images(config, config.data.test_split, config.evaluate.real_images)
  positive = target.class_index if target.class_index is not None else int(schema['num_classes']) - 1
  if spec is not None:
    signs, std = _phantom_reference(spec, reals, positive)

  per: dict[str, list[np.ndarray]] = {}
  flip_feats, recon_feats = [], []
  add = lambda k, v: per.setdefault(k, []).append(np.asarray(v, np.float64))
  for done, chunk in enumerate(_chunks(directory)):
    common.stop_if_preempted(STAGE, done * CHUNK, 'no scorecard written')
    series = np.stack([_to_float(c['series']) for c in chunk])  # [B, S, H, W, C]
    recon = np.stack([_to_float(c['reconstruction']) for c in chunk])
    probs = np.stack([c['probs'] for c in chunk]).astype(np.float64)  # [B, S, K]
    alphas = np.stack([c['alphas'] for c in chunk]).astype(np.float64)
    target_values = np.asarray(target(jnp.log(jnp.clip(jnp.asarray(probs.reshape(-1, probs.shape[-1])), 1e-12,
                                                       1.0)))).reshape(probs.shape[:2])
    flips = fidelity.flip_index(probs, alphas)
    add('flip_rate', flips >= 0)
    add('monotonicity', quality.monotonicity(target_values, alphas))
    add('proximity', quality.proximity(series, recon, probs, alphas))
    add('proximity_ssim', fidelity.proximity_ssim(series, recon, probs, alphas))
    add('sparsity', fidelity.sparsity(series, recon, probs, alphas))
    has = flips >= 0
    rows = np.flatnonzero(has)
    anchors = quality.anchor_index(alphas)
    cout = np.full(len(chunk), np.nan)  # NaN where the series never flips (every metric keeps its row)
    if rows.size:
      cf = series[rows, flips[rows]]
      pred = probs.argmax(-1)
      cout[rows] = fidelity.cout(recon[rows], cf, classifier.probs, pred[rows, anchors[rows]], pred[rows, flips[rows]])
      flip_feats.append(classifier.features(cf))
    add('cout', cout)
    recon_feats.append(classifier.features(recon))
    if spec is not None:
      b, s = series.shape[:2]
      m = spec['measure'](series.reshape(b * s, *series.shape[2:]))
      attrs = {k: np.asarray(m[k], np.float64).reshape(b, s) for k in spec['causal'] + spec['nuisances']}
      valid = None if spec['valid'] is None else np.asarray(m[spec['valid']]).reshape(b, s) > 0
      rec = fidelity.attribute_recovery({
          k: v for k, v in attrs.items() if k in std
      }, alphas, flips, {
          k: v for k, v in signs.items() if k in std
      }, tuple(n for n in spec['nuisances'] if n in std), std, valid)
      for k in ('causal_right_direction', 'nuisance_change_max_std', 'causal_share'):
        add(k, rec[k])
      for k, v in rec.items():
        if k.startswith('trend_'):
          add(k, v)

  values = {k: np.concatenate(v) for k, v in per.items()}
  if not values:
    raise ValueError(f'{directory} holds no explanations; nothing to evaluate')
  real_feats = classifier.features(reals['image'])
  flip_feats = np.concatenate(flip_feats) if flip_feats else np.zeros((0, real_feats.shape[-1]))
  realism = fidelity.realism(flip_feats, np.concatenate(recon_feats), real_feats)

  scorecard = build_scorecard(values)
  for name, (goal, meaning) in GOALS.items():
    if name in realism:
      entry = fidelity.score(fidelity.Metric(name, np.asarray([realism[name]]), goal, meaning))
      entry['low'] = entry['high'] = None  # one number over the whole export: no per-series interval
      scorecard[name] = entry
  for name in sorted(k for k in values if k.startswith('trend_')):
    scorecard[name] = fidelity.score(fidelity.Metric(name, values[name], None, f'Spearman of {name[6:]} with shift'))
  result = dict(stage=STAGE, export=directory, images=int(len(values['flip_rate'])), scorecard=scorecard,
                seconds=round(time.perf_counter() - t0, 2), source=source, config=_jsonable_config(config))
  writers.write_json(os.path.join(out_dir, 'scorecard.json'), result)
  markdown = fidelity.to_markdown(scorecard)
  storage.write_atomic(
      os.path.join(out_dir, 'scorecard.md'),
      f'# Scorecard of {directory}\n\n{len(values["flip_rate"])} explained images.\n\n{markdown}\n'.encode())
  report_lib.insert_scorecard(os.path.join(directory, 'report.html'), scorecard)
  print(f'[evaluate] {result["images"]} explanations in {result["seconds"]:.0f} s\n{markdown}\n'
        f'  scorecard: {os.path.join(out_dir, "scorecard.json")}')
  return result


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage entry point for launch/train.py: the scorecard of `<workdir>/explain/`, unless scorecard.json already
  scores that very export (same creation time, size and provenance, same classifier step) with this config."""
  path = os.path.join(workdir, STAGE, 'scorecard.json')
  directory = _export_dir(workdir, None)
  if storage.exists(path) and storage.exists(os.path.join(directory, 'schema.json')):
    previous = json.loads(storage.read_text(path))
    source = scored_export(_read_schema(directory), directory, workdir)
    if previous.get('source') == source and previous.get('config') == _jsonable_config(config):
      print(f'[evaluate] already scored this export with this config ({path}); not recomputing')
      return previous
    print(f'[evaluate] {path} scores another export or config; recomputing')
  return run(config, workdir)
