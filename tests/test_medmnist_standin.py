"""Tests for benchmarks/medmnist_standin.py: the stand-in files pass the `medmnist` builder's checks of the official
layout, their labels are what the oracles measure (chest: the cardiothoracic ratio; histology: nuclear counts), the
histology tiles come in their 8 rotations/flips, nothing is overwritten, and the scoring of an export whose series'
attribute is known, signed by the explained class."""
import numpy as np
import pytest

from benchmarks import chest_phantoms as cp
from benchmarks import medmnist_standin as standin
from series_exports import chest_series, write_series_export
from stylex_jax.data import measure
from stylex_jax.data.builders import medmnist

SMALL = dict(pneumonia=(40, 8, 8), breast=(40, 8, 8), path=(64, 16, 16))


@pytest.fixture()
def small(monkeypatch):
  monkeypatch.setattr(standin, 'SPLITS', SMALL)


def _config(dataset):
  return next(c for c in medmnist.MedMnist.BUILDER_CONFIGS if c.name == standin.FILES[dataset][:-4])


@pytest.mark.parametrize('dataset', ['pneumonia', 'breast'])
def test_chest_standins_have_the_official_layout_and_oracle_labels(small, tmp_path, dataset):
  path = standin.make(str(tmp_path), dataset, seed=1)
  counts = medmnist.check_file(path, _config(dataset))
  assert [counts[k] for k in ('train', 'val', 'test')] == list(SMALL[dataset])
  images, labels = medmnist.load_split(path, _config(dataset), 'train')
  assert images.dtype == np.uint8 and images.shape[1:3] == (64, 64)
  ctr = cp.measure_ctr_batch(images.reshape(-1, 64, 64).astype(np.float64) / 255)['ctr']
  sick = labels.ravel() == standin.POSITIVE[dataset]  # pneumonia: class 1, breast: class 0 ('malignant')
  assert 0.2 < sick.mean() < 0.8
  assert np.mean((ctr >= cp.CTR_THRESHOLD) == sick) >= 0.9  # the oracle reads the label back
  with pytest.raises(SystemExit, match='exists'):
    standin.make(str(tmp_path), dataset, seed=2)
  assert medmnist.check_file(path, _config(dataset)) == counts  # unchanged


def test_path_standin_tumour_is_class_8_in_all_eight_orientations(small, tmp_path):
  path = standin.make(str(tmp_path), 'path', seed=0)
  config = _config('path')
  assert [medmnist.check_file(path, config)[k] for k in ('train', 'val', 'test')] == list(SMALL['path'])
  images, labels = medmnist.load_split(path, config, 'train')
  labels = labels.ravel()
  assert images.shape == (64, 64, 64, 3) and set(labels) <= set(range(9)) and (labels == 8).any()
  count = measure.measure_histology_batch(images)['nuclear_count']
  assert count[labels == 8].mean() > count[labels != 8].mean()  # tumour tiles: denser nuclei (the oracle)
  # 64 = 8 drawn tiles x their 8 orientations: every image's group has all 8 members, with one label
  canon = [min(np.rot90(t, k).tobytes() for k in range(4) for t in (im, im[:, ::-1])) for im in images]
  for key in set(canon):
    members = [i for i, c in enumerate(canon) if c == key]
    assert len(members) == 8 and len(set(labels[members])) == 1


def _ctr_export(directory, ctr_series, class_names, explained):
  """An export whose series are chest phantoms rendered at the given CTRs [B, S] (other attributes fixed)."""
  write_series_export(directory, chest_series(ctr_series), class_names,
                      target_description=f"log_odds of class '{explained}'; blackbox direction in W")


def test_score_counts_series_whose_ctr_grows_towards_the_explained_disease(tmp_path):
  grow = np.linspace(0.38, 0.62, 5)
  directory = str(tmp_path / 'explain')
  _ctr_export(directory, np.stack([grow, grow[::-1], grow]), ['normal', 'pneumonia'], 'pneumonia')
  got = standin.score('pneumonia', directory)
  assert got['series'] == 3
  assert got['ctr_right_direction'] == pytest.approx(2 / 3) and got['all_causal_right_direction'] == pytest.approx(
      2 / 3)
  assert got['ctr_median_spearman'] == pytest.approx(1.0)
  assert got['frames_readable'] == 1.0
  with pytest.raises(SystemExit, match='scores explanations of class 0'):
    standin.score('breast', directory)  # breast's stand-in disease is class 0 ('malignant')
