"""The `shortcut` stage: does the stylex explanation reveal a planted shortcut, and does GradCAM?

For each kind of config.shortcut.kinds -- 'marker' (a LOCAL artefact: the corner "R" tag, builder config
config.shortcut.confounded.marker, e.g. `64_marker`) and 'scanner' (a GLOBAL one: scanner B's blur and noise,
`64_scanner`) -- two classifiers are explained with the SAME GAN + encoder on the SAME images:

  <workdir>/shortcut/<kind>/confounded/   classifier, gan, encoder and explain on the confounded data (the GAN
                                          learns to draw the artefact);
  <workdir>/shortcut/<kind>/clean/        its own classifier trained on config.shortcut.clean (e.g. `64`), the
                                          confounded run's gan/ and encoder/ (symlinked: the encoder's checkpoint
                                          fingerprint does not involve the classifier) and an explain stage on the
                                          confounded data's test split (the same images as the confounded one).

Both sub-runs are ordinary `stages.run` calls, so they resume like any other run. Measured on both exports
(`evaluate/shortcut.py`; each entry: {value, low, high, goal, met, meaning, images}, the mean over images with a
95% bootstrap interval; `images` counts the images the value is defined on, e.g. GradCAM mass skips all-zero
heatmaps), written to `<workdir>/evaluate/shortcut.json` under 'metrics', with the printed 'table':

  <kind>_shown_confounded / _clean     share of series where the artefact appears or vanishes (oracle
                                       `measure_knee_batch` on every frame). marker: its measured presence changes
                                       between any two frames; scanner: noise_level or sharpness changes by more
                                       than config.shortcut.scanner_threshold dataset stds (std over the export's
                                       original images) between the anchor frame (the image's own latent) and the
                                       far end of the series (largest |alpha|). Goals: >= 0.8 confounded, <= 0.1
                                       clean.
  gradcam_<kind>_mass_confounded / _clean   share of the GradCAM mass inside `phantoms.marker_box` (for the
                                       scanner, where no box can hold a global artefact, for completeness only).
  gradcam_<kind>_difference            mean |GradCAM(confounded) - GradCAM(clean)| per image, in [0, 1]: do the two
                                       classifiers' heatmaps differ at all (the scanner's GradCAM verdict).
  <kind>_accuracy_drop_confounded / _clean   each classifier's accuracy on config.shortcut.probe_images fresh
                                       phantoms with the artefact tied to the label as in the confounded data,
                                       minus its accuracy on the SAME seeds without it (marker forced off;
                                       scanner_strength=None: all scanner A).
  accuracy_drop_confounded / _clean    the marker's accuracy drops again (the issue's names for the marker).

A finished shortcut.json made with the same config is returned without recomputing anything.
"""
from __future__ import annotations

import copy
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stylex_jax import storage, writers
from stylex_jax.data import measure, phantoms
from stylex_jax.evaluate import explanations as quality
from stylex_jax.evaluate import fidelity
from stylex_jax.evaluate import shortcut as shortcut_lib
from stylex_jax.explain import export as export_lib
from stylex_jax.stages import classifier as classifier_stage

STAGE = 'shortcut'
KINDS = ('marker', 'scanner')
CONFOUNDED_STAGES = 'classifier,gan,encoder,explain'
SHARED = ('gan', 'encoder')  # what the clean run borrows from the confounded one
SHOWN_GOALS = {'confounded': ('>=', 0.8), 'clean': ('<=', 0.1)}


def check_config(config: ml_collections.ConfigDict) -> None:
  """One clear error for a bad config.shortcut (or a dataset the oracles cannot measure) before any training."""
  sc = config.shortcut
  problems = []
  if config.data.dataset != 'synthetic_knee':
    problems.append(f'data.dataset={config.data.dataset!r}: the shortcut experiment needs the knee phantoms '
                    "('synthetic_knee')")
  if config.data.image_size < measure.MIN_RESOLUTION:
    problems.append(f'data.image_size={config.data.image_size} < {measure.MIN_RESOLUTION}: the oracles cannot measure')
  kinds = tuple(sc.kinds)
  if not kinds or any(k not in KINDS for k in kinds) or len(set(kinds)) != len(kinds):
    problems.append(f'shortcut.kinds={kinds!r} must name some of {KINDS}, each once')
  for k in kinds:
    if k in KINDS and not sc.confounded.get(k):
      problems.append(f'shortcut.confounded.{k} (the builder config with the {k} shortcut) is not set')
  if sc.probe_images < 1:
    problems.append(f'shortcut.probe_images={sc.probe_images} must be >= 1')
  if not sc.scanner_threshold > 0:
    problems.append(f'shortcut.scanner_threshold={sc.scanner_threshold} must be > 0 (dataset stds)')
  if problems:
    raise ValueError('config.shortcut: ' + '; '.join(problems))


def sub_config(config: ml_collections.ConfigDict, builder_config: str, stages: str) -> ml_collections.ConfigDict:
  """A copy of `config` on another builder config of the same dataset, running `stages`."""
  sub = copy.deepcopy(config)
  with sub.unlocked():
    sub.data.builder_config = builder_config
    sub.stages = stages
  return sub


def _run_stages(config, workdir: str) -> dict:
  from stylex_jax import stages as stages_lib  # pylint: disable=g-import-not-at-top  (the package imports us)
  return stages_lib.run(config, workdir)


def _share(src_root: str, dst_root: str) -> None:
  """<dst_root>/{gan,encoder} -> relative symlinks to <src_root>/{gan,encoder} (kept when already there).

  Local only (symlinks; object stores have none): `train_and_evaluate` refuses a gs:// workdir up front."""
  os.makedirs(dst_root, exist_ok=True)  # storage-ok: local only, next to the symlinks (checked up front)
  for name in SHARED:
    dst = os.path.join(dst_root, name)
    target = os.path.relpath(os.path.join(src_root, name), dst_root)
    if os.path.islink(dst) and os.readlink(dst) == target:
      continue
    if os.path.lexists(dst):
      raise FileExistsError(f'{dst} exists and is not a link to the confounded run\'s {name}/ ({target}); remove '
                            'it to rerun the shortcut experiment')
    os.symlink(target, dst)


def _builder_strengths(name: str) -> tuple[float, float | None]:
  """(marker_strength, scanner_strength) of synthetic_knee builder config `name` (lazy: imports TFDS)."""
  from stylex_jax.data.builders import synthetic_knee  # pylint: disable=g-import-not-at-top
  configs = {c.name: c for c in synthetic_knee.SyntheticKnee.BUILDER_CONFIGS}
  if name not in configs:
    raise ValueError(f'unknown synthetic_knee builder config {name!r}; known: {sorted(configs)}')
  c = configs[name]
  return float(c.marker_strength), c.scanner_strength


def probe_images(kind: str, num: int, seed: int, resolution: int, marker_strength: float,
                 scanner_strength: float | None, label_threshold: int) -> dict[str, np.ndarray]:
  """The same `num` fresh phantoms WITH the artefact tied to the label as in the confounded data and WITHOUT it.

  Returns {'with': float32 [N, R, R, 1] in [-1, 1], 'without': same, 'label': int [N] (KL >= label_threshold
  when label_threshold >= 0, else the grade)}. Seeds seed * 2**32 + i (the same patient in both renderings).
  marker / scanner_strength: those of the confounded builder config. kind 'marker': with = the tag drawn with
  marker_strength, without = forced off; kind 'scanner': with = scanner_strength, without = all scanner A (the
  tag drawn with marker_strength in both: the same draw for the same seed).
  """
  with_, without, labels = [], [], []
  for i in range(num):
    s = seed * 2**32 + i
    if kind == 'marker':
      a, grade, _ = phantoms.knee_radiograph(s, resolution, marker_strength=marker_strength)
      b, _, _ = phantoms.knee_radiograph(s, resolution, marker_strength=marker_strength, marker=False)
    else:
      a, grade, _ = phantoms.knee_radiograph(s, resolution, marker_strength=marker_strength,
                                             scanner_strength=scanner_strength)
      b, _, _ = phantoms.knee_radiograph(s, resolution, marker_strength=marker_strength, scanner_strength=None)
    with_.append(a)
    without.append(b)
    labels.append(int(grade >= label_threshold) if label_threshold >= 0 else grade)
  to_float = lambda x: np.stack(x).astype(np.float32) / 127.5 - 1.0
  return {'with': to_float(with_), 'without': to_float(without), 'label': np.asarray(labels, np.int64)}


def _predict(workdir: str, config, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
  """Probabilities [N, K] of the classifier of `workdir`."""
  model, variables = classifier_stage.load_classifier(workdir, config)
  fn = jax.jit(lambda x: jax.nn.softmax(model.apply(variables, x, train=False).astype(jnp.float32)))
  return np.concatenate([
      np.asarray(fn(jnp.asarray(images[i:i + batch_size]))) for i in range(0, len(images), batch_size)
  ]).astype(np.float64)


def _read_export(directory: str) -> dict[str, np.ndarray]:
  """The arrays of an export the measurements need: id, series [B, S, H, W, 1] and image [B, H, W, 1] (floats in
  [-1, 1]), alphas [B, S], gradcam [B, H, W] in [0, 1]."""
  items = list(export_lib.read_explanations(directory))
  if not items:
    raise ValueError(f'{directory} holds no explanations')
  f = lambda u8: np.asarray(u8, np.float32) / 127.5 - 1.0
  return dict(id=np.asarray([x['id'] for x in items]), series=np.stack([f(x['series']) for x in items]),
              image=np.stack([f(x['image']) for x in items]),
              alphas=np.stack([x['alphas'] for x in items]).astype(np.float64),
              gradcam=np.stack([np.asarray(x['gradcam'], np.float64) / 255.0 for x in items]))


def shown(kind: str, export: dict[str, np.ndarray], threshold: float) -> np.ndarray:
  """[B] bool: the artefact appears or vanishes along each series of `export` (see the module docstring)."""
  series = export['series']
  b, s = series.shape[:2]
  m = measure.measure_knee_batch(series.reshape(b * s, *series.shape[2:]))
  if kind == 'marker':
    return shortcut_lib.artefact_shown(m['marker'].reshape(b, s), 0.5)
  reals = measure.measure_knee_batch(export['image'])
  alphas = export['alphas']
  anchor = quality.anchor_index(alphas)
  end = np.argmax(np.abs(alphas - alphas[np.arange(b), anchor][:, None]), axis=1)
  out = np.zeros(b, bool)
  for key in ('noise_level', 'sharpness'):
    std = float(np.nanstd(reals[key]))
    if not std > 0:
      continue  # every original the same: no scale to judge a change by
    out |= shortcut_lib.artefact_shown(m[key].reshape(b, s) / std, threshold, anchor=anchor, end=end)
  return out


def _entry(values: np.ndarray, goal, meaning: str) -> dict:
  entry = fidelity.score(fidelity.Metric('', np.asarray(values, np.float64), goal, meaning))
  entry['images'] = int(np.isfinite(np.asarray(values, np.float64)).sum())
  return entry


def measure_kind(kind: str, config, root: str) -> dict[str, dict]:
  """The metrics of one kind from the finished sub-runs in root/{confounded,clean} (see the module docstring)."""
  sc = config.shortcut
  runs = {
      'confounded': sub_config(config, sc.confounded[kind], CONFOUNDED_STAGES),
      'clean': sub_config(config, sc.clean, 'classifier')
  }
  exports = {arm: _read_export(os.path.join(root, arm, 'explain')) for arm in runs}
  if not np.array_equal(exports['confounded']['id'], exports['clean']['id']):
    raise ValueError(f'the two exports of {root} explain different images; delete {root}/clean/explain and rerun')
  marker_strength, scanner_strength = _builder_strengths(sc.confounded[kind])
  probes = probe_images(kind, sc.probe_images, sc.probe_seed, config.data.image_size, marker_strength, scanner_strength,
                        config.data.label_threshold)
  h, w = exports['confounded']['gradcam'].shape[1:]
  box = phantoms.marker_box(h, w)
  what = 'the corner marker' if kind == 'marker' else 'scanner B (noise or sharpness)'
  out = {}
  for arm, sub in runs.items():
    out[f'{kind}_shown_{arm}'] = _entry(shown(kind, exports[arm], sc.scanner_threshold), SHOWN_GOALS[arm],
                                        f'share of series ({arm} classifier) where {what} appears or vanishes')
    out[f'gradcam_{kind}_mass_{arm}'] = _entry(shortcut_lib.gradcam_mass_in_box(exports[arm]['gradcam'], box), None,
                                               f'share of the GradCAM mass ({arm} classifier) inside the marker box')
    correct_with = shortcut_lib.correct(_predict(os.path.join(root, arm), sub, probes['with']), probes['label'])
    correct_without = shortcut_lib.correct(_predict(os.path.join(root, arm), sub, probes['without']), probes['label'])
    out[f'{kind}_accuracy_drop_{arm}'] = _entry(
        correct_with - correct_without, None,
        f'accuracy ({arm} classifier) with the artefact tied to the label minus without it, same patients')
  out[f'gradcam_{kind}_difference'] = _entry(
      shortcut_lib.heatmap_difference(exports['confounded']['gradcam'], exports['clean']['gradcam']), None,
      'mean |GradCAM(confounded) - GradCAM(clean)| per image, in [0, 1]')
  return out


def _table(metrics: dict[str, dict], kinds) -> str:
  n = lambda k: 'nan' if k not in metrics or metrics[k]['value'] is None else f'{metrics[k]["value"]:.3g}'
  lines = [
      '| kind | stylex shown (confounded / clean) | GradCAM mass in box or heatmap difference (confounded / '
      'clean) | accuracy drop (confounded / clean) |', '|---|---|---|---|'
  ]
  for k in kinds:
    if k == 'marker':
      gradcam = f'mass {n("gradcam_marker_mass_confounded")} / {n("gradcam_marker_mass_clean")}'
    else:
      gradcam = f'difference {n("gradcam_scanner_difference")}'
    lines.append(f'| {k} | {n(f"{k}_shown_confounded")} / {n(f"{k}_shown_clean")} | {gradcam} | '
                 f'{n(f"{k}_accuracy_drop_confounded")} / {n(f"{k}_accuracy_drop_clean")} |')
  return '\n'.join(lines)


def _jsonable_config(config) -> dict:
  return json.loads(json.dumps(config.to_dict(), default=str))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Stage entry point: trains/explains the sub-runs (resumably), measures them and writes
  <workdir>/evaluate/shortcut.json (unless it exists with the same config). Returns its dict."""
  check_config(config)
  path = os.path.join(workdir, 'evaluate', 'shortcut.json')
  if storage.exists(path):
    previous = json.loads(storage.read_text(path))
    if previous.get('config') == _jsonable_config(config):
      print(f'[shortcut] already measured with this config ({path}); not recomputing\n{previous.get("table", "")}')
      return previous
  if not storage.is_local(workdir):
    raise ValueError(f'the shortcut experiment shares the GAN and encoder of its two arms through symlinks, which '
                     f'{workdir} (an object store) cannot hold; run it with a local --workdir and copy the results')
  t0 = time.perf_counter()
  sc = config.shortcut
  kinds = tuple(sc.kinds)
  metrics = {}
  for kind in kinds:
    root = os.path.join(workdir, STAGE, kind)
    confounded = sub_config(config, sc.confounded[kind], CONFOUNDED_STAGES)
    print(f'[shortcut] {kind}: confounded run ({sc.confounded[kind]}) in {root}/confounded')
    _run_stages(confounded, os.path.join(root, 'confounded'))
    print(f'[shortcut] {kind}: clean classifier ({sc.clean}) in {root}/clean, explained with the confounded G')
    _run_stages(sub_config(config, sc.clean, 'classifier'), os.path.join(root, 'clean'))
    _share(os.path.join(root, 'confounded'), os.path.join(root, 'clean'))
    _run_stages(sub_config(config, sc.confounded[kind], 'explain'), os.path.join(root, 'clean'))
    metrics.update(measure_kind(kind, config, root))
  if 'marker' in kinds:  # the names for the marker's accuracy drops
    for arm in ('confounded', 'clean'):
      metrics[f'accuracy_drop_{arm}'] = dict(metrics[f'marker_accuracy_drop_{arm}'])
  table = _table(metrics, kinds)
  result = dict(stage=STAGE, kinds=list(kinds), metrics=metrics, table=table, config=_jsonable_config(config),
                seconds=round(time.perf_counter() - t0, 2))
  result = writers.write_json(path, result)  # creates <workdir>/evaluate/
  print(f'[shortcut] {", ".join(kinds)} in {result["seconds"]:.0f} s\n{table}\n  {path}')
  return result
