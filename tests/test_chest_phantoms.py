"""Tests for benchmarks/chest_phantoms.py, the second phantom family (chest radiographs, cardiomegaly): the
oracle against the generating cardiothoracic ratio (the independent truth), the image folder it writes as
the pipeline reads it, and the scoring of an export whose series' CTR is known."""
import os

import numpy as np
import pytest
from scipy import stats

from benchmarks import chest_phantoms as cp
from series_exports import chest_series, write_series_export
from stylex_jax.data.builders import image_folder


def _phantoms(n, seed, size=64, **fixed):
  rng = np.random.default_rng(seed)
  attrs = cp.draw_attributes(rng, n)
  for k, v in fixed.items():
    attrs[k] = np.asarray(v, np.float64)
  return attrs, np.stack([cp.render(attrs, i, size, rng) for i in range(n)])


def test_oracle_measures_the_generating_ratio():
  attrs, images = _phantoms(200, seed=3)
  assert images.shape == (200, 64, 64) and images.min() >= 0 and images.max() <= 1
  m = cp.measure_ctr_batch(images)
  assert m['lungs_found'].mean() == 1.0
  err = np.abs(m['ctr'] - attrs['ctr'])
  assert np.percentile(err, 90) < 0.03, np.percentile(err, [50, 90, 100])
  assert stats.spearmanr(m['ctr'], attrs['ctr'])[0] > 0.97
  assert np.mean((m['ctr'] >= cp.CTR_THRESHOLD) == (attrs['ctr'] >= cp.CTR_THRESHOLD)) >= 0.93
  # width in pixels: the thorax spans `thorax` of the image width (to a pixel or two at the edges)
  np.testing.assert_allclose(m['thorax_width_px'], attrs['thorax'] * 64, atol=2.5)


def test_oracle_finds_no_lungs_in_a_blank_or_noise_image():
  rng = np.random.default_rng(0)
  for image in (np.full((64, 64), 0.5), rng.uniform(size=(64, 64))):
    m = cp.measure_ctr(image)
    assert m['lungs_found'] == 0.0 and np.isnan(m['ctr'])


def test_make_writes_an_image_folder_the_pipeline_reads(tmp_path):
  root = str(tmp_path / 'chest')
  counts = cp.make(root, n_train=24, n_test=8, size=64, seed=1)
  assert sum(counts.values()) == 32
  folder = image_folder.ImageFolder(root)
  assert folder.class_names == ('cardiomegaly', 'normal') and folder.channels == 1
  # every file's class is its generating CTR's (written in its name) on the right side of the threshold
  for split in ('train', 'test'):
    for name in cp.CLASSES:
      for f in os.listdir(os.path.join(root, split, name)):
        ctr = float(f.split('_ctr')[1][:-4])
        assert (ctr >= cp.CTR_THRESHOLD) == (name == 'cardiomegaly'), f
  with pytest.raises(SystemExit, match='not empty'):
    cp.make(root, n_train=2, n_test=2, size=64, seed=1)  # nothing overwritten
  assert sum(len(files) for _, _, files in os.walk(root)) == 32


def _series_export(directory, ctr_series, class_names):
  """An export whose series are chest phantoms rendered at the given CTRs [B, S] (other attributes fixed)."""
  write_series_export(directory, chest_series(ctr_series), class_names)


@pytest.mark.parametrize('class_names,sign', [(['cardiomegaly', 'normal'], -1.0), (['normal', 'cardiomegaly'], 1.0)])
def test_score_signs_the_ctr_trend_by_the_explained_class(tmp_path, class_names, sign):
  grow = np.linspace(0.38, 0.62, 5)
  # class 1's log-odds grows with alpha: the right way is CTR growing when class 1 is cardiomegaly
  ctr = np.stack([grow, grow[::-1], grow if sign > 0 else grow[::-1]])
  directory = str(tmp_path / 'explain')
  _series_export(directory, ctr, class_names)
  got = cp.score(directory)
  assert got['series'] == 3
  assert got['ctr_right_direction'] == pytest.approx(2 / 3)
  assert got['median_ctr_spearman'] == pytest.approx(1.0)
  assert got['frames_lungs_found'] == 1.0
  assert got['reconstruction_ctr_abs_error'] == 0.0


def test_score_refuses_an_export_of_other_classes(tmp_path):
  directory = str(tmp_path / 'explain')
  _series_export(directory, np.full((1, 3), 0.5), ['healthy', 'OA'])
  with pytest.raises(SystemExit, match='not this family'):
    cp.score(directory)
