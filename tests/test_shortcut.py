"""The shortcut experiment: its metrics (evaluate/shortcut.py) against hand-computed values, the probe phantoms,
and one end-to-end run of the `shortcut` stage on configs/demo.py:shortcut_smoke (the marker only) checking the
keys and ranges of shortcut.json (not its values: smoke models learn nothing)."""
import json
import math
import os

import numpy as np
import pytest

from configs import demo
from stylex_jax import stages
from stylex_jax.data import phantoms
from stylex_jax.evaluate import shortcut as S
from stylex_jax.stages import shortcut as stage

# ------------------------------------------------------------------------------------------------ metrics


def test_artefact_shown_any_two_frames():
  values = np.array(
      [
          [0, 0, 0, 0],  # never there
          [0, 0, 1, 1],  # appears
          [1, 0, 1, 1],  # vanishes for a frame
          [1, 1, 1, 1],  # always there
          [np.nan, 1, np.nan, np.nan],  # one measurable frame
          [np.nan, 0, np.nan, 1],  # NaN ignored
      ],
      np.float64)
  np.testing.assert_array_equal(S.artefact_shown(values, 0.5), [False, True, True, False, False, True])


def test_artefact_shown_anchor_to_end():
  values = np.array([
      [0.0, 0.2, 0.9],  # anchor 0 -> end 2: 0.9 > 0.5
      [0.0, 2.0, 0.4],  # a big change mid-way only: 0.4 < 0.5
      [1.0, 0.0, 0.7],  # anchor 1 -> end 0: 1.0 > 0.5
      [0.0, np.nan, 3.0],  # NaN at the anchor: not shown
  ])
  anchor = np.array([0, 0, 1, 1])
  end = np.array([2, 2, 0, 2])
  np.testing.assert_array_equal(S.artefact_shown(values, 0.5, anchor=anchor, end=end), [True, False, True, False])
  np.testing.assert_array_equal(S.artefact_shown(values, 0.5, anchor=anchor), [True, False, True, False])  # 0.7
  with pytest.raises(ValueError, match='threshold'):
    S.artefact_shown(values, 0.0)
  with pytest.raises(ValueError, match=r'\[B, S\]'):
    S.artefact_shown(values[0], 0.5)


def test_gradcam_mass_in_box():
  heat = np.zeros((3, 4, 4))
  heat[0, 0, 2:] = 1.0  # all of it inside box (0, 2, 2)
  heat[1] = 1.0  # uniform: 4 of 16 pixels inside
  heat[1, 3, 3] = 5.0  # 5 more outside: mass 4 / 20
  np.testing.assert_allclose(S.gradcam_mass_in_box(heat, (0, 2, 2)), [1.0, 0.2, np.nan])
  box = phantoms.marker_box(32, 32)
  inside = np.zeros((1, 32, 32))
  inside[0, box[0]:box[0] + box[2], box[1]:box[1] + box[2]] = 0.5
  np.testing.assert_allclose(S.gradcam_mass_in_box(inside, box), [1.0])
  with pytest.raises(ValueError, match='non-negative'):
    S.gradcam_mass_in_box(-heat, (0, 0, 1))


def test_heatmap_difference():
  a = np.zeros((2, 2, 2))
  b = np.zeros((2, 2, 2))
  b[0] = 1.0  # every pixel differs by 1
  b[1, 0, 0] = 0.4  # one pixel of four by 0.4
  np.testing.assert_allclose(S.heatmap_difference(a, b), [1.0, 0.1])
  np.testing.assert_allclose(S.heatmap_difference(b, b), [0.0, 0.0])
  with pytest.raises(ValueError, match='both'):
    S.heatmap_difference(a, b[:, :1])


def test_accuracy_and_correct():
  probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
  labels = np.array([0, 1, 1, 1])
  np.testing.assert_array_equal(S.correct(probs, labels), [1, 1, 0, 1])
  assert S.accuracy(probs, labels) == 0.75
  assert math.isnan(S.accuracy(np.zeros((0, 2)), np.zeros(0)))


# ------------------------------------------------------------------------------------------- probe phantoms


def test_probe_images_differ_only_by_the_artefact():
  m = stage.probe_images('marker', 8, 1000, 32, 0.9, None, 2)
  r0, c0, size = phantoms.marker_box(32, 32)
  outside = np.ones((32, 32), bool)
  outside[r0:r0 + size, c0:c0 + size] = False
  np.testing.assert_array_equal(m['with'][:, outside], m['without'][:, outside])
  assert m['with'].min() >= -1 and m['with'].max() <= 1 and set(m['label']) <= {0, 1}
  grades = [phantoms.knee_radiograph(1000 * 2**32 + i, 32)[1] for i in range(8)]
  np.testing.assert_array_equal(m['label'], np.asarray(grades) >= 2)
  s = stage.probe_images('scanner', 8, 1000, 32, 0.0, 1.0, 2)  # strength 1: scanner B iff KL >= 2
  changed = np.abs(s['with'] - s['without']).max(axis=(1, 2, 3)) > 0
  np.testing.assert_array_equal(changed, s['label'] == 1)


def _knee(seed, scanner=None, marker=False):
  image = phantoms.knee_radiograph(seed, 64, grade=3, scanner_strength=scanner, marker=marker)[0]
  return image.astype(np.float32) / 127.5 - 1.0


def test_shown_on_phantom_series():
  """Series built from phantoms: the oracle sees the marker come and the scanner switch from A to B."""
  seeds = range(4)
  a = [[_knee(s)] * 3 for s in seeds]  # nothing changes
  marker = [[_knee(s), _knee(s), _knee(s, marker=True)] for s in seeds]
  scanner = [[_knee(s), _knee(s), _knee(s, scanner=1.0)] for s in seeds]  # strength 1, KL 3: scanner B
  originals = np.stack([_knee(s, scanner=1.0 if s % 2 else None) for s in range(8)])  # a mix: the dataset std
  alphas = np.tile([0.0, 1.0, 2.0], (4, 1))
  export = lambda series: dict(series=np.stack([np.stack(x) for x in series]), image=originals, alphas=alphas)
  np.testing.assert_array_equal(stage.shown('marker', export(marker), 0.5), [True] * 4)
  np.testing.assert_array_equal(stage.shown('marker', export(a), 0.5), [False] * 4)
  np.testing.assert_array_equal(stage.shown('scanner', export(scanner), 0.5), [True] * 4)
  np.testing.assert_array_equal(stage.shown('scanner', export(a), 0.5), [False] * 4)
  np.testing.assert_array_equal(stage.shown('scanner', export(marker), 0.5), [False] * 4)


def test_bad_config_is_named():
  config = demo.get_config('shortcut_smoke')
  config.shortcut.kinds = ('marker', 'ruler')
  with pytest.raises(ValueError, match='ruler'):
    stage.check_config(config)


# ---------------------------------------------------------------------------------------------- end to end

KEYS = ('marker_shown_confounded', 'marker_shown_clean', 'gradcam_marker_mass_confounded', 'gradcam_marker_mass_clean',
        'accuracy_drop_confounded', 'accuracy_drop_clean', 'marker_accuracy_drop_confounded',
        'marker_accuracy_drop_clean', 'gradcam_marker_difference')


def test_shortcut_smoke_end_to_end(tmp_path):
  config = demo.get_config('shortcut_smoke')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.num_devices = 2
  config.shortcut.kinds = ('marker',)
  work = str(tmp_path / 'work')
  result = stages.run(config, work)['shortcut']
  path = os.path.join(work, 'evaluate', 'shortcut.json')
  assert json.load(open(path)) == result
  metrics = result['metrics']
  assert set(KEYS) <= set(metrics)
  n = config.explain.num_images
  for key in KEYS:
    entry = metrics[key]
    value = entry['value']
    if key.startswith('gradcam_marker_mass'):  # NaN (null) only for an all-zero heatmap
      assert value is None or 0 <= value <= 1, key
    else:
      assert value is not None, key
    if 'shown' in key:
      assert 0 <= value <= 1 and entry['images'] == n and entry['goal'] is not None, key
    elif 'accuracy_drop' in key:
      assert -1 <= value <= 1 and entry['images'] == config.shortcut.probe_images, key
    elif key == 'gradcam_marker_difference':
      assert 0 <= value <= 1 and entry['images'] == n
  assert metrics['marker_shown_confounded']['goal'] == ['>=', 0.8]
  assert metrics['marker_shown_clean']['goal'] == ['<=', 0.1]
  assert 'marker' in result['table']
  root = os.path.join(work, 'shortcut', 'marker')
  for name in ('gan', 'encoder'):  # the clean classifier is explained with the confounded G and encoder
    assert os.path.realpath(os.path.join(root, 'clean',
                                         name)) == os.path.realpath(os.path.join(root, 'confounded', name))
  again = stage.train_and_evaluate(config, work)  # finished with this config: not recomputed
  assert again == result
