"""The `medmnist` builder on small synthetic .npz files with the official MedMNIST+ layout (12/4/4 images at 28 and
64 px, grey and RGB): shapes, dtypes, labels, ids, splits and class names through TFDS and the project's Pipeline;
the one-line errors (missing file or manual_dir, wrong key / channels / labels, multi-label ChestMNIST); and
configs/medmnist.py:pneumonia_smoke run end to end (all five stages) on such a file."""
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import stylex_jax.data.builders  # noqa: F401  (registers the builders)
from configs import medmnist as medmnist_config
from stylex_jax.data import pipeline
from stylex_jax.data.builders import medmnist

COUNTS = {'train': 12, 'val': 4, 'test': 4}
ZENODO_URL = 'https://zenodo.org/records/10519652'


def _arrays(size, channels, num_classes, seed=0):
  """The official layout: {train,val,test}_images uint8 [N, S, S(, 3)], {...}_labels uint8 [N, 1]; every class
  appears in train."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for prefix, n in COUNTS.items():
    shape = (n, size, size) if channels == 1 else (n, size, size, 3)
    arrays[f'{prefix}_images'] = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = np.arange(n) % num_classes if prefix == 'train' else rng.integers(0, num_classes, n)
    arrays[f'{prefix}_labels'] = labels.astype(np.uint8)[:, None]
  return arrays


def _write(folder, name, arrays):
  os.makedirs(folder, exist_ok=True)
  np.savez_compressed(os.path.join(folder, name), **arrays)
  return os.path.join(folder, name)


def _prepare(name, data_dir, manual_dir):
  builder = tfds.builder(f'medmnist/{name}', data_dir=str(data_dir))
  builder.download_and_prepare(file_format='array_record',
                               download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  return builder


def _data_config(**overrides):
  values = dict(dataset='medmnist', builder_config='pneumoniamnist_64', data_dir='', manual_dir='', image_size=64,
                channels=1, label_threshold=-1, hflip=False, train_split='train', eval_split='validation',
                test_split='test')
  values.update(overrides)
  return values


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  """manual folder with pneumoniamnist.npz (28 px, grey), pathmnist_64.npz (RGB) and pneumoniamnist_64.npz."""
  folder = str(tmp_path_factory.mktemp('medmnist_manual'))
  arrays = {
      'pneumoniamnist': _arrays(28, 1, 2, seed=1),
      'pathmnist_64': _arrays(64, 3, 9, seed=2),
      'pneumoniamnist_64': _arrays(64, 1, 2, seed=3)
  }
  for name, a in arrays.items():
    _write(folder, f'{name}.npz', a)
  return folder, arrays


def test_builder_configs_and_class_names():
  configs = {c.name: c for c in tfds.builder_cls('medmnist').BUILDER_CONFIGS}
  names = ('pathmnist', 'dermamnist', 'octmnist', 'pneumoniamnist', 'retinamnist', 'breastmnist', 'bloodmnist',
           'tissuemnist', 'organamnist', 'organcmnist', 'organsmnist')
  assert set(configs) == {f'{n}_{s}' for n in names for s in (28, 64, 128, 224)}
  assert tfds.builder_cls('medmnist').DEFAULT_BUILDER_CONFIG_NAME == 'pneumoniamnist_64'
  expected = {
      'pathmnist': (3, 9),
      'dermamnist': (3, 7),
      'octmnist': (1, 4),
      'pneumoniamnist': (1, 2),
      'retinamnist': (3, 5),
      'breastmnist': (1, 2),
      'bloodmnist': (3, 8),
      'tissuemnist': (1, 8),
      'organamnist': (1, 11),
      'organcmnist': (1, 11),
      'organsmnist': (1, 11)
  }
  for name, (channels, k) in expected.items():
    c = configs[f'{name}_128']
    assert (c.channels, len(c.class_names), c.size, c.dataset) == (channels, k, 128, name)
  assert configs['pneumoniamnist_64'].class_names == ('normal', 'pneumonia')
  assert configs['breastmnist_64'].class_names == ('malignant', 'normal, benign')
  assert configs['pathmnist_64'].class_names[8] == 'colorectal adenocarcinoma epithelium'
  assert configs['pathmnist_64'].class_names[:2] == ('adipose', 'background')
  assert medmnist.file_name('pneumoniamnist', 28) == 'pneumoniamnist.npz'
  assert configs['pathmnist_224'].file_name == 'pathmnist_224.npz'


def test_grey_28_through_tfds(files, tmp_path):
  folder, arrays = files
  builder = _prepare('pneumoniamnist_28', tmp_path / 'tfds', folder)
  info = builder.info
  assert {s: info.splits[s].num_examples for s in ('train', 'validation', 'test')} == \
      {'train': 12, 'validation': 4, 'test': 4}
  assert info.features['image'].shape == (28, 28, 1)
  assert tuple(info.features['label'].names) == ('normal', 'pneumonia')
  a = arrays['pneumoniamnist']
  for split, prefix in (('train', 'train'), ('validation', 'val'), ('test', 'test')):
    source = builder.as_data_source(split)
    by_id = {ex['id'].decode(): ex for ex in source}
    assert sorted(by_id) == [f'{prefix}/{i:06d}' for i in range(COUNTS[prefix])]
    for i in range(COUNTS[prefix]):
      ex = by_id[f'{prefix}/{i:06d}']
      assert ex['image'].dtype == np.uint8 and ex['image'].shape == (28, 28, 1)
      np.testing.assert_array_equal(ex['image'][..., 0], a[f'{prefix}_images'][i])  # PNG is lossless
      assert ex['label'] == a[f'{prefix}_labels'][i, 0]


def test_rgb_64_through_the_pipeline(files, tmp_path):
  folder, arrays = files
  cfg = _data_config(builder_config='pathmnist_64', channels=3, num_classes=9, manual_dir=folder,
                     data_dir=str(tmp_path / 'tfds'))
  data = pipeline.Pipeline(cfg, 'validation', global_batch_size=4, seed=0, train=False, process_index=0,
                           process_count=1)
  assert data.num_examples == 4 and data.image_shape == (64, 64, 3) and data.num_classes == 9
  assert data.class_names == medmnist.DATASETS['pathmnist'][1]
  batch = next(iter(data.eval_batches()))
  order = [int(i.split('/')[1]) for i in batch['id']]
  assert all(i.startswith('val/') for i in batch['id']) and sorted(order) == [0, 1, 2, 3]
  a = arrays['pathmnist_64']
  assert batch['image'].dtype == np.float32
  np.testing.assert_array_equal(batch['image'], pipeline.to_float(a['val_images'][order]))
  np.testing.assert_array_equal(batch['label'], a['val_labels'][order, 0])
  train = pipeline.Pipeline(cfg, 'train', global_batch_size=4, seed=0, train=True, process_index=0, process_count=1)
  assert train.num_examples == 12 and sorted(train.labels.tolist()) == sorted(a['train_labels'][:, 0].tolist())


def test_missing_file_or_manual_dir_names_file_folder_and_zenodo(files, tmp_path):
  folder, _ = files
  empty = tmp_path / 'other'
  _write(str(empty), 'unrelated.npz', {'x': np.zeros(1)})
  with pytest.raises(FileNotFoundError) as e:
    _prepare('breastmnist_64', tmp_path / 'tfds', empty)
  message = str(e.value)
  assert 'breastmnist_64.npz not found in ' + str(empty) in message and ZENODO_URL in message
  assert 'record 10519652' in message and '--config.data.manual_dir' in message and '\n' not in message
  with pytest.raises(FileNotFoundError) as e:  # a 28 px config wants <name>.npz
    _prepare('breastmnist_28', tmp_path / 'tfds', empty)
  assert 'breastmnist.npz not found' in str(e.value)
  # through the pipeline without manual_dir (TFDS's default manual folder, absent here): the same one line
  cfg = _data_config(data_dir=str(tmp_path / 'tfds_pipeline'))
  with pytest.raises(
      FileNotFoundError, match=r'pneumoniamnist_64\.npz not found in .*downloads.*manual.*'
      r'10519652.*--config\.data\.manual_dir'):
    pipeline.Pipeline(cfg, 'train', global_batch_size=4, seed=0, train=True, process_index=0, process_count=1)


def test_chestmnist_is_refused_as_multi_label(tmp_path):
  with pytest.raises(ValueError, match=r'chestmnist_64: ChestMNIST is multi-label.*one class label per image'):
    tfds.builder('medmnist/chestmnist_64', data_dir=str(tmp_path))
  cfg = _data_config(builder_config='chestmnist_28', data_dir=str(tmp_path))
  with pytest.raises(ValueError, match='multi-label') as e:
    pipeline.Pipeline(cfg, 'train', global_batch_size=4, seed=0, train=True, process_index=0, process_count=1)
  assert 'pneumoniamnist' in str(e.value)  # names the supported ones


def _bad(arrays, **changes):
  arrays = dict(arrays)
  for key, value in changes.items():
    if value is None:
      del arrays[key]
    else:
      arrays[key] = value
  return arrays


@pytest.mark.parametrize('name, arrays, message', [
    ('pneumoniamnist_64', lambda a: _bad(a, val_images=None, valid_images=a['val_images']),
     r"key 'val_images' is missing \(the file has \[.*'valid_images'"),
    ('pneumoniamnist_64', lambda a: _bad(a, test_labels=None), "key 'test_labels' is missing"),
    ('pneumoniamnist_64', lambda a: _bad(a, train_images=np.repeat(a['train_images'][..., None], 3, -1)),
     r"key 'train_images' has RGB images \[12, 64, 64, 3\]; pneumoniamnist is grey, expected \[N, 64, 64\]"),
    ('pneumoniamnist_64', lambda a: _bad(a, val_images=a['val_images'][:, :32]),
     r"key 'val_images' has shape \[4, 32, 64\]; expected \[N, 64, 64\]"),
    ('pneumoniamnist_64', lambda a: _bad(a, train_images=a['train_images'].astype(np.float32)),
     "key 'train_images' has dtype float32"),
    ('pneumoniamnist_64', lambda a: _bad(a, train_labels=np.zeros(
        (12, 14), np.uint8)), r"key 'train_labels' has shape \[12, 14\]: 14 labels per image \(multi-label\)"),
    ('pneumoniamnist_64', lambda a: _bad(a, test_labels=a['test_labels'][:3]),
     r"key 'test_labels' has shape \[3, 1\]; expected \[4, 1\]"),
    ('pneumoniamnist_64', lambda a: _bad(a, test_labels=np.full(
        (4, 1), 7, np.uint8)), r"key 'test_labels' has labels in \[7, 7\]; pneumoniamnist has 2 classes"),
])
def test_bad_file_names_the_file_and_key(tmp_path, name, arrays, message):
  path = _write(str(tmp_path / 'manual'), f'{name}.npz', arrays(_arrays(64, 1, 2)))
  with pytest.raises(ValueError, match=message) as e:
    _prepare(name, tmp_path / 'tfds', tmp_path / 'manual')
  assert str(e.value).startswith(path)


def test_path_config_explains_adenocarcinoma_vs_rest():
  config = medmnist_config.get_config('path_smoke')
  assert config.data.builder_config == 'pathmnist_64' and config.data.channels == 3
  assert config.data.num_classes == 9 and config.explain.class_index == 8
  assert config.explain.target == 'log_odds'


def test_pneumonia_smoke_config_end_to_end(files, tmp_path):
  """configs/medmnist.py:pneumonia_smoke through all five stages on an official-layout file.

  On the 2 devices and demo:smoke sizes of conftest.smoke_stages, so the session's XLA cache serves most programs
  (a cold run is compile-bound: minutes on 2 cores).
  """
  from stylex_jax import stages
  folder, _ = files
  config = medmnist_config.get_config('pneumonia_smoke')
  assert config.data.builder_config == 'pneumoniamnist_64'
  config.data.manual_dir = folder
  config.data.data_dir = str(tmp_path / 'tfds')
  config.num_devices = 2
  results = stages.run(config, str(tmp_path / 'work'))
  assert list(results) == ['classifier', 'gan', 'encoder', 'explain', 'evaluate']
  summary = results['explain']
  assert summary['images'] == config.explain.num_images
  html = open(tmp_path / 'work' / 'explain' / 'report.html').read()
  assert 'pneumonia' in html and 'class="scorecard"' in html
  assert results['evaluate']['scorecard']['flip_rate']['goal'] == ('>=', 0.95)
  assert 'causal_right_direction' not in results['evaluate']['scorecard']  # no oracles for real images
  assert all(f'test/{i:06d}' in html for i in range(config.explain.num_images))


def test_config_without_manual_dir_fails_with_one_line(tmp_path):
  from stylex_jax import stages
  config = medmnist_config.get_config('breast_smoke')
  config.data.data_dir = str(tmp_path / 'tfds')
  config.num_devices = 2
  with pytest.raises(FileNotFoundError, match=r'breastmnist_64\.npz not found in .*--config\.data\.manual_dir'):
    stages.run(config, str(tmp_path / 'work'))


@pytest.mark.parametrize('variant, dataset, explained', [('pneumonia', 'pneumoniamnist', 'pneumonia'),
                                                         ('breast', 'breastmnist', 'malignant'),
                                                         ('path', 'pathmnist', 'colorectal adenocarcinoma epithelium'),
                                                         ('', 'pneumoniamnist', 'pneumonia'),
                                                         ('smoke', 'pneumoniamnist', 'pneumonia')])
def test_config_variants_explain_the_stated_class(variant, dataset, explained):
  from stylex_jax.explain import direction
  config = medmnist_config.get_config(variant)
  d, e = config.data, config.explain
  channels, names, _ = medmnist.DATASETS[dataset]
  assert d.dataset == 'medmnist' and d.builder_config == f'{dataset}_64' and d.manual_dir == ''
  assert (d.channels, d.num_classes, d.label_threshold) == (channels, len(names), -1)
  assert d.image_size == (32 if 'smoke' in variant else 64)
  target = direction.make_target(e.target, d.num_classes, e.class_index)
  assert target.kind == 'log_odds' and names[target.class_index] == explained
