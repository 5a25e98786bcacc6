"""Tests of the TFDS builders (synthetic_knee, synthetic_histology, kl_xray) and the image-folder source.

Real, small generation ('tiny' configs) into a temporary data_dir; every stored example is checked against
an independent render of the phantom from its seed, or against the PNG files it came from.
"""
import logging
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import stylex_jax.data.builders  # noqa: F401  (registers the builders)
from stylex_jax.data import histology_phantoms, phantoms
from stylex_jax.data.builders import image_folder, kl_xray, synthetic_knee
from stylex_jax.data.builders.synthetic_histology import SyntheticHistologyConfig
from stylex_jax.data.builders.synthetic_knee import SyntheticKneeConfig, example_seed


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def _prepared(name, data_dir, **kwargs):
  builder = tfds.builder(name, data_dir=data_dir, **kwargs)
  builder.download_and_prepare(file_format='array_record')
  return builder


def test_registered_with_predefined_configs():
  registered = tfds.list_builders(with_community_datasets=False)
  for name in ('synthetic_knee', 'synthetic_histology', 'kl_xray'):
    assert name in registered
  knee = [c.name for c in tfds.builder_cls('synthetic_knee').BUILDER_CONFIGS]
  assert {'64', '32', '128', '256', '64_marker', 'tiny'} <= set(knee)
  assert tfds.builder_cls('synthetic_knee').DEFAULT_BUILDER_CONFIG_NAME == '64'
  marker = {c.name: c for c in tfds.builder_cls('synthetic_knee').BUILDER_CONFIGS}['64_marker']
  assert marker.marker_strength == 0.9 and marker.resolution == 64
  configs = {c.name: c for c in tfds.builder_cls('synthetic_knee').BUILDER_CONFIGS}
  scanner = configs['64_scanner']
  assert scanner.scanner_strength == 0.9 and scanner.marker_strength == 0.0 and scanner.resolution == 64
  assert scanner.split_sizes() == marker.split_sizes()
  assert 'scanner B' in scanner.description and 'strength 0.9' in scanner.description
  assert configs['tiny_scanner'].scanner_strength == 0.9 and configs['tiny_scanner'].resolution == 32
  assert all(c.scanner_strength is None for name, c in configs.items() if 'scanner' not in name)
  histo = [c.name for c in tfds.builder_cls('synthetic_histology').BUILDER_CONFIGS]
  assert {'64', '32', '96', '128', '256', '64_marker', 'tiny'} <= set(histo)


@pytest.mark.parametrize('name, render, channels, attributes, class_names', [
    ('synthetic_knee', phantoms.knee_radiograph, 1, phantoms.KNEE_ATTRIBUTES, phantoms.KL_GRADE_NAMES),
    ('synthetic_histology', histology_phantoms.histology_tile, 3, phantoms.HISTOLOGY_ATTRIBUTES,
     phantoms.HISTOLOGY_CLASS_NAMES),
])
def test_tiny_generation_matches_the_phantoms(data_dir, name, render, channels, attributes, class_names):
  builder = _prepared(f'{name}/tiny', data_dir)
  info = builder.info
  assert {s: info.splits[s].num_examples for s in ('train', 'validation', 'test')} == \
      {'train': 48, 'validation': 16, 'test': 16}
  assert info.features['image'].shape == (32, 32, channels)
  assert tuple(info.features['label'].names) == tuple(class_names)
  assert set(attributes) <= set(info.features.keys())
  seen = {}
  for split in ('train', 'validation', 'test'):
    source = builder.as_data_source(split)
    for i in (0, 7, len(source) - 1):
      ex = source[i]
      image, label, attrs = render(example_seed(0, split, i), resolution=32)
      np.testing.assert_array_equal(ex['image'], image)  # PNG is lossless
      assert ex['label'] == label and ex['id'].decode() == f'{split}/{i:06d}'
      for a in attributes:
        assert info.features[a].np_dtype == np.float32
        assert np.float32(ex[a]) == np.float32(attrs[a])
    seen[split] = {ex['image'].tobytes() for ex in source}
    assert len(seen[split]) == len(source)  # distinct phantoms
  assert not (seen['train'] & seen['validation']) and not (seen['train'] & seen['test']) \
      and not (seen['validation'] & seen['test'])


def test_example_seeds_are_disjoint_across_splits_and_base_seeds():
  seeds = {example_seed(b, s, i) for b in range(3) for s in ('train', 'validation', 'test') for i in range(100)}
  assert len(seeds) == 3 * 3 * 100


def test_custom_config_object(data_dir):
  config = SyntheticHistologyConfig(name='custom_small', resolution=40, num_train=3, num_validation=2, num_test=1,
                                    marker_strength=1.0, seed=5)
  builder = _prepared('synthetic_histology', data_dir, config=config)
  assert builder.info.features['image'].shape == (40, 40, 3)
  assert builder.info.splits['train'].num_examples == 3
  ex = builder.as_data_source('validation')[1]
  image, label, attrs = histology_phantoms.histology_tile(example_seed(5, 'validation', 1), resolution=40,
                                                          marker_strength=1.0)
  np.testing.assert_array_equal(ex['image'], image)
  assert ex['label'] == label and ex['marker'] == np.float32(attrs['marker'])


def test_scanner_config_builds(data_dir):
  """A tiny config with the 64_scanner parameters' kind (scanner_strength): examples are the phantoms rendered
    with that strength, with `scanner` and `blur_sigma` stored like `marker`."""
  config = SyntheticKneeConfig(name='scanner_small', resolution=32, num_train=6, num_validation=2, num_test=2,
                               scanner_strength=1.0)
  builder = _prepared('synthetic_knee', data_dir, config=config)
  info = builder.info
  assert info.features['scanner'].np_dtype == np.float32 and info.features['blur_sigma'].np_dtype == np.float32
  source = builder.as_data_source('train')
  for i in range(len(source)):
    ex = source[i]
    image, label, attrs = phantoms.knee_radiograph(example_seed(0, 'train', i), resolution=32, scanner_strength=1.0)
    np.testing.assert_array_equal(ex['image'], image)
    assert ex['label'] == label and ex['scanner'] == np.float32(attrs['scanner']) == np.float32(label >= 2)
    assert ex['blur_sigma'] == np.float32(attrs['blur_sigma']) and ex['noise_std'] == np.float32(attrs['noise_std'])


@pytest.mark.parametrize('kwargs, message', [
    (dict(scanner_strength=1.5), 'scanner_strength'),
    (dict(scanner_strength='high'), 'scanner_strength'),
    (dict(resolution=8), 'resolution'),
    (dict(num_train=0), 'num_train'),
    (dict(marker_strength=1.5), 'marker_strength'),
    (dict(seed=-1), 'seed'),
])
def test_bad_config_fails_fast(kwargs, message):
  with pytest.raises(ValueError, match=message):
    SyntheticKneeConfig(name='bad', **kwargs)


def test_a_renderer_that_breaks_its_contract_is_named():
  """A job whose channel count the renderer does not give, or asking for an attribute it does not return: the
  error names the renderer's module and function."""
  seed = example_seed(0, 'train', 0)
  with pytest.raises(ValueError, match=r'stylex_jax\.data\.histology_phantoms\.histology_tile\(seed=.*expected uint8'):
    synthetic_knee._render(('histology', seed, 32, 0.0, 1, ()))
  with pytest.raises(ValueError, match=r"phantoms\.knee_radiograph returned no value for attributes \['nope'\]"):
    synthetic_knee._render(('knee', seed, 32, 0.0, 1, ('nope',)))


def test_worker_processes_give_the_same_examples(monkeypatch):
  jobs = [('knee', example_seed(0, 'train', i), 32, 0.0, 1, tuple(phantoms.KNEE_ATTRIBUTES)) for i in range(6)]
  inline = [synthetic_knee._render(job) for job in jobs]
  monkeypatch.setattr(synthetic_knee, 'GENERATION_WORKERS', 2)
  monkeypatch.setattr(synthetic_knee, 'MIN_EXAMPLES_FOR_WORKERS', 1)
  pooled = list(synthetic_knee._render_all(jobs))
  assert pooled == inline
  decoded = np.asarray(Image.open(__import__('io').BytesIO(inline[3][0])))
  np.testing.assert_array_equal(decoded, phantoms.knee_radiograph(jobs[3][1], resolution=32)[0][..., 0])


# ------------------------------------------------------------------------------------------------ kl_xray


def _png(path, array):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def _write_kl_tree(root, rng, with_auto_test=False):
  """A miniature of the Chen 2018 layout: 2 images per grade in train, 1 in val/test; one RGB-saved file,
  one corrupt file. Returns {relpath: gray uint8 [H, W]} of the readable ones."""
  expected = {}
  folders = ('train', 'val', 'test') + (('auto_test',) if with_auto_test else ())
  for folder in folders:
    for grade in range(5):
      for k in range(2 if folder == 'train' else 1):
        rel = f'{folder}/{grade}/9{grade}{k:02d}{folder[:2]}.png'
        gray = rng.integers(0, 256, size=(20, 24), dtype=np.uint8)
        if rel == 'train/3/9300tr.png':  # saved as RGB with equal channels
          _png(os.path.join(root, rel), np.repeat(gray[..., None], 3, axis=-1))
        else:
          _png(os.path.join(root, rel), gray)
        expected[rel] = gray
  with open(os.path.join(root, 'train', '1', 'broken.png'), 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n not really a png')
  return expected


def test_kl_xray_from_manual_dir(tmp_path, caplog):
  manual = tmp_path / 'download' / 'KneeXrayData' / 'ClsKLData' / 'kneeKL224'  # found below manual_dir
  expected = _write_kl_tree(str(manual), np.random.default_rng(0), with_auto_test=True)
  builder = tfds.builder('kl_xray', data_dir=str(tmp_path / 'tfds'))
  with caplog.at_level(logging.WARNING):
    builder.download_and_prepare(file_format='array_record',
                                 download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'download')))
  assert any('skipped 1 unreadable images' in r.getMessage() and 'broken.png' in r.getMessage() for r in caplog.records)
  sizes = {s: builder.info.splits[s].num_examples for s in builder.info.splits}
  assert sizes == {'train': 10, 'validation': 5, 'test': 5, 'auto_test': 5}
  for split in sizes:
    for ex in builder.as_data_source(split):
      rel = ex['id'].decode()
      np.testing.assert_array_equal(ex['image'][..., 0], expected[rel])
      assert ex['image'].shape == (20, 24, 1)
      assert ex['label'] == int(rel.split('/')[1])
      assert rel.split('/')[0] == {'validation': 'val'}.get(split, split)


def test_kl_xray_missing_manual_data_names_the_layout(tmp_path):
  builder = tfds.builder('kl_xray', data_dir=str(tmp_path / 'tfds'))
  assert '<manual_dir>/val/{0,1,2,3,4}/*.png' in builder.MANUAL_DOWNLOAD_INSTRUCTIONS
  assert builder.MANUAL_DOWNLOAD_INSTRUCTIONS is kl_xray.MANUAL_DOWNLOAD_INSTRUCTIONS
  with pytest.raises(FileNotFoundError, match=r'train,val,test\}/\{0,1,2,3,4\}/\*\.png'):
    builder.download_and_prepare(file_format='array_record',
                                 download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / 'absent')))
  wrong = tmp_path / 'wrong'
  _png(str(wrong / 'train' / '0' / 'a.png'), np.zeros((4, 4), np.uint8))  # no val/ nor test/
  with pytest.raises(FileNotFoundError, match='no train/, val/ and test/ folders'):
    builder.download_and_prepare(file_format='array_record',
                                 download_config=tfds.download.DownloadConfig(manual_dir=str(wrong)))
  assert not builder.is_prepared()


# ------------------------------------------------------------------------------------------- image folder


def test_read_image_modes(tmp_path):
  rng = np.random.default_rng(1)
  deep = rng.integers(100, 4000, size=(6, 5), dtype=np.uint16)  # 12-bit radiograph in a 16-bit PNG
  Image.fromarray(deep).save(tmp_path / 'deep.png')
  got = image_folder.read_image(str(tmp_path / 'deep.png'))
  want = np.round((deep - deep.min()) * 255.0 / (deep.max() - deep.min())).astype(np.uint8)
  assert got.shape == (6, 5, 1) and got.dtype == np.uint8
  np.testing.assert_array_equal(got[..., 0], want)
  rgba = rng.integers(0, 256, size=(4, 3, 4), dtype=np.uint8)
  Image.fromarray(rgba, 'RGBA').save(tmp_path / 'rgba.png')
  np.testing.assert_array_equal(image_folder.read_image(str(tmp_path / 'rgba.png')), rgba[..., :3])
  (tmp_path / 'bad.jpg').write_bytes(b'\xff\xd8\xff garbage')
  with pytest.raises(image_folder.UnreadableImageError, match='bad.jpg'):
    image_folder.read_image(str(tmp_path / 'bad.jpg'))


def test_image_folder_flat_layout(tmp_path, caplog):
  rng = np.random.default_rng(2)
  files = {}
  for cls in ('tumour', 'normal'):
    for k in range(6):
      rel = f'{cls}/sub/{k}.png' if k == 5 else f'{cls}/{k}.png'  # nested folders count for their class
      files[rel] = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
      _png(str(tmp_path / rel), files[rel])
  (tmp_path / 'normal' / 'notes.txt').write_text('ignored')
  (tmp_path / 'normal' / 'corrupt.png').write_bytes(b'nope')
  with caplog.at_level(logging.WARNING):
    folder = image_folder.ImageFolder(str(tmp_path))
  assert any(
      'skipped 1 unreadable images, e.g.' in r.getMessage() and 'corrupt.png' in r.getMessage() for r in caplog.records)
  assert folder.layout == 'flat' and folder.class_names == ('normal', 'tumour') and folder.channels == 3
  assert folder.splits == {'train': 12} and folder.num_skipped == 1
  train = folder.split('train')
  assert sorted(train.ids) == sorted(files)
  for i in range(len(train)):
    ex = train[i]
    np.testing.assert_array_equal(ex['image'], files[ex['id']])
    assert folder.class_names[ex['label']] == ex['id'].split('/')[0]
  # a fixed pseudo-random order: both classes in the first half; the slices partition the split
  head, tail = folder.split('train[:50%]'), folder.split('train[50%:]')
  assert set(head.labels.tolist()) == {0, 1}
  assert sorted(head.ids + tail.ids) == sorted(files) and not set(head.ids) & set(tail.ids)
  with pytest.raises(ValueError, match=r"only split is 'train'.*train\[:80%\]"):
    folder.split('validation')


def test_image_folder_split_layout_and_val_alias(tmp_path):
  for split, classes in (('train', ('a', 'b')), ('val', ('b', 'c'))):
    for cls in classes:
      _png(str(tmp_path / split / cls / 'x.png'), np.full((5, 5), ord(cls), np.uint8))
  folder = image_folder.open_image_folder(str(tmp_path))
  assert folder.layout == 'split' and folder.class_names == ('a', 'b', 'c') and folder.channels == 1
  assert folder.splits == {'train': 2, 'validation': 2}
  val = folder.split('validation')
  assert val.ids == ('val/b/x.png', 'val/c/x.png') and val.labels.tolist() == [1, 2]
  assert val[1]['image'][0, 0, 0] == ord('c')
  assert image_folder.open_image_folder(str(tmp_path)) is folder  # memoised while unchanged
  with pytest.raises(ValueError, match=r"unknown split 'test'.*\['train', 'validation'\]"):
    folder.split('test')


def test_image_folder_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'root/<class_name>/\*'):
    image_folder.ImageFolder(str(tmp_path))  # empty
  _png(str(tmp_path / 'a' / 'gray.png'), np.zeros((4, 4), np.uint8))
  _png(str(tmp_path / 'b' / 'colour.png'), np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match=r'mixed channel counts.*a/gray.png has 1 channel\(s\) but b/colour.png has 3'):
    image_folder.ImageFolder(str(tmp_path))
  with pytest.raises(ValueError, match='manual_dir'):
    image_folder.ImageFolder('')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    image_folder.ImageFolder(str(tmp_path / 'missing'))
