"""Tests of stylex_jax.data.pipeline: determinism in (seed, step), process slicing, eval coverage, preprocessing.

References are independent of the pipeline: examples read straight from the TFDS data source (or the PNG
files), tf.image.resize(antialias=True) for resizing, numpy for label thresholds and flips.
"""
import os

import ml_collections
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import stylex_jax.data.builders  # noqa: F401  (registers the TFDS builders)
from stylex_jax.data import pipeline as pipeline_lib
from stylex_jax.data.pipeline import Pipeline


def _config(**overrides):
  config = ml_collections.ConfigDict(
      dict(dataset='synthetic_knee', builder_config='tiny', data_dir='', manual_dir='', image_size=32, channels=1,
           label_threshold=-1, hflip=False, train_split='train', eval_split='validation', test_split='test'))
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp('tfds'))
  for name in ('synthetic_knee/tiny', 'synthetic_histology/tiny'):
    tfds.builder(name, data_dir=d).download_and_prepare(file_format='array_record')
  return d


@pytest.fixture(scope='module')
def raw(data_dir):
  """The knee 'tiny' splits read directly from TFDS: {split: (uint8 images [N, 32, 32, 1], labels, ids)}."""
  out = {}
  for split in ('train', 'validation'):
    source = tfds.builder('synthetic_knee/tiny', data_dir=data_dir).as_data_source(split)
    exs = [source[i] for i in range(len(source))]
    out[split] = (np.stack([e['image'] for e in exs]), np.array([e['label'] for e in exs]),
                  [e['id'].decode() for e in exs])
  return out


def _make(data_dir, split='train', *, batch=8, seed=0, train=True, index=0, count=1, **overrides):
  return Pipeline(_config(data_dir=data_dir, **overrides), split, global_batch_size=batch, seed=seed, train=train,
                  process_index=index, process_count=count)


def _tf_resize(images_u8, size):
  return tf.image.resize(images_u8.astype(np.float32), (size, size), method='bilinear', antialias=True).numpy()


# ------------------------------------------------------------------------------------------------ training


def test_train_batches_are_the_source_examples(data_dir, raw):
  p = _make(data_dir)
  assert (p.num_examples, p.image_shape, p.num_classes, p.local_batch_size) == (48, (32, 32, 1), 5, 8)
  assert p.class_names == ('KL0', 'KL1', 'KL2', 'KL3', 'KL4') and p.cached
  images, labels, _ = raw['train']
  np.testing.assert_array_equal(p.labels, labels)
  for step in (0, 5, 11):
    b = p.batch(step)
    assert set(b) == {'image', 'label'}
    assert b['image'].dtype == np.float32 and b['image'].shape == (8, 32, 32, 1)
    assert b['label'].dtype == np.int32 and b['label'].shape == (8,)
    idx = p.global_indices(step)
    np.testing.assert_allclose(b['image'], images[idx] / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(b['label'], labels[idx])
    assert b['image'].min() >= -1.0 and b['image'].max() <= 1.0


def test_batches_are_deterministic_in_seed_and_step(data_dir):
  a, b = _make(data_dir, hflip=True), _make(data_dir, hflip=True)
  for step in (0, 3, 17):
    x, y = a.batch(step), b.batch(step)
    np.testing.assert_array_equal(x['image'], y['image'])
    np.testing.assert_array_equal(x['label'], y['label'])
  assert not np.array_equal(a.batch(3)['image'], a.batch(4)['image'])
  assert not np.array_equal(a.global_indices(3), _make(data_dir, seed=1).global_indices(3))


def test_each_epoch_is_a_fresh_permutation(data_dir):
  p = _make(data_dir)  # 48 examples, batch 8: 6 steps per epoch
  epochs = [np.concatenate([p.global_indices(s) for s in range(6 * e, 6 * e + 6)]) for e in range(3)]
  for order in epochs:
    np.testing.assert_array_equal(np.sort(order), np.arange(48))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  q = _make(data_dir, batch=20)  # batches that straddle epochs: positions continue across the boundary
  stream = np.concatenate([q.global_indices(s) for s in range(6)])  # 120 positions = 2.5 epochs
  np.testing.assert_array_equal(np.sort(stream[:48]), np.arange(48))
  np.testing.assert_array_equal(np.sort(stream[48:96]), np.arange(48))


def test_process_slices_are_disjoint_and_make_the_global_batch(data_dir):
  whole = _make(data_dir, hflip=True)
  parts = [_make(data_dir, hflip=True, index=i, count=2) for i in range(2)]
  assert parts[0].local_batch_size == 4
  for step in (0, 7):
    got = [p.batch(step) for p in parts]
    want = whole.batch(step)
    np.testing.assert_array_equal(np.concatenate([g['image'] for g in got]), want['image'])
    np.testing.assert_array_equal(np.concatenate([g['label'] for g in got]), want['label'])
    for p in parts:  # every process sees the same global batch (for evaluations that must not depend on it)
      np.testing.assert_array_equal(p.global_batch(step)['image'], want['image'])
    idx = whole.global_indices(step)
    assert not set(idx[:4]) & set(idx[4:])  # within an epoch, the two slices hold different examples


def test_hflip_mirrors_about_half_the_rows(data_dir):
  plain, flipped = _make(data_dir), _make(data_dir, hflip=True)
  n_flipped = n_rows = 0
  for step in range(12):
    a, b = plain.batch(step)['image'], flipped.batch(step)['image']
    for row_a, row_b in zip(a, b):
      is_same, is_mirror = np.array_equal(row_a, row_b), np.array_equal(row_a[:, ::-1], row_b)
      assert is_same or is_mirror
      n_flipped += is_mirror and not is_same
      n_rows += 1
  assert 0.3 < n_flipped / n_rows < 0.7


def test_iterate_resumes_exactly(data_dir):
  p = _make(data_dir, hflip=True)
  it = p.iterate(0)
  first = [next(it) for _ in range(5)]
  resumed = p.iterate(3)
  for step in (3, 4):
    np.testing.assert_array_equal(next(resumed)['image'], first[step]['image'])
  np.testing.assert_array_equal(first[2]['image'], p.batch(2)['image'])
  it.close(), resumed.close()


def test_prefetch_reraises_producer_errors():

  def items():
    yield 1
    raise RuntimeError('decode failed')

  it = pipeline_lib._prefetch(items(), 2)
  assert next(it) == 1
  with pytest.raises(RuntimeError, match='decode failed'):
    next(it)


# ---------------------------------------------------------------------------------------------- evaluation


def test_eval_covers_every_example_once_with_mask(data_dir, raw):
  images, labels, ids = raw['validation']  # 16 examples; global batch 6 over 2 processes -> 3 batches
  seen = {}
  counts = []
  for index in range(2):
    p = _make(data_dir, 'validation', batch=6, train=False, index=index, count=2)
    batches = list(p.eval_batches())
    counts.append(len(batches))
    for b in batches:
      assert b['image'].shape == (3, 32, 32, 1) and b['mask'].dtype == np.float32 and b['label'].dtype == np.int32
      for k in range(3):
        if b['mask'][k] == 1:
          assert b['id'][k] not in seen
          seen[b['id'][k]] = (b['image'][k], b['label'][k])
        else:
          assert b['mask'][k] == 0 and b['id'][k] == '' and not b['image'][k].any()
  assert counts == [3, 3]  # same number of eval steps on every process
  assert sorted(seen) == sorted(ids)
  for i, example_id in enumerate(ids):
    image, label = seen[example_id]
    np.testing.assert_allclose(image, images[i] / 127.5 - 1.0, atol=1e-6)
    assert label == labels[i]
  # in order: the first global batch holds examples 0..5
  first = next(_make(data_dir, 'validation', batch=6, train=False).eval_batches())
  assert list(first['id']) == ids[:6]


def test_label_threshold(data_dir, raw):
  p = _make(data_dir, label_threshold=2)
  assert p.class_names == ('<KL2', '>=KL2') and p.num_classes == 2
  images, labels, _ = raw['train']
  np.testing.assert_array_equal(p.labels, (labels >= 2).astype(np.int32))
  np.testing.assert_array_equal(p.batch(4)['label'], (labels[p.global_indices(4)] >= 2).astype(np.int32))
  for bad in (0, 5, -2):
    with pytest.raises(ValueError, match='label_threshold'):
      _make(data_dir, label_threshold=bad)


def test_resize_matches_tensorflow_antialiased_bilinear(data_dir, raw):
  p = _make(data_dir, 'validation', batch=16, train=False, image_size=12)  # 32 -> 12: non-integer factor
  got = next(p.eval_batches())['image']
  want = _tf_resize(raw['validation'][0], 12) / 127.5 - 1.0
  assert np.abs(got - want).max() <= 1.0 / 127.5 + 1e-5  # the cache keeps uint8: at most one level apart
  rng = np.random.default_rng(0)
  wide = rng.integers(0, 256, size=(10, 16, 3), dtype=np.uint8)  # centre crop to 10x10, then resize
  for size in (5, 10, 23):
    got = pipeline_lib.resize_square(wide, size)
    want = np.clip(np.rint(_tf_resize(wide[None, :, 3:13], size)[0]), 0, 255)
    assert got.dtype == np.uint8 and got.shape == (size, size, 3)
    assert np.abs(got.astype(np.float64) - want).max() <= 1.0


def test_gray_data_read_as_rgb(data_dir, raw):
  p = _make(data_dir, 'validation', batch=16, train=False, channels=3)
  image = next(p.eval_batches())['image']
  assert image.shape == (16, 32, 32, 3)
  for c in range(3):
    np.testing.assert_allclose(image[..., c], raw['validation'][0][..., 0] / 127.5 - 1.0, atol=1e-6)


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_fails_fast_with_one_clear_message(data_dir, tmp_path):
  with pytest.raises(ValueError, match='config.data.channels=1; set --config.data.channels=3'):
    _make(data_dir, dataset='synthetic_histology')
  with pytest.raises(ValueError, match='global_batch_size=6 is not divisible by process_count=4'):
    _make(data_dir, batch=6, count=4)
  with pytest.raises(ValueError, match=r"unknown split 'valid'.*\['test', 'train', 'validation'\]"):
    _make(data_dir, 'valid')
  with pytest.raises(ValueError, match="unknown dataset 'no_such_data'"):
    _make(data_dir, dataset='no_such_data')
  with pytest.raises(ValueError, match=r"no builder config 'huge'.*'tiny'"):
    _make(data_dir, builder_config='huge')
  with pytest.raises(ValueError, match=r"unknown keys \['imagesize'\]"):
    Pipeline({
        **_config(data_dir=data_dir).to_dict(), 'imagesize': 3
    }, 'train', global_batch_size=8, seed=0, train=True, process_index=0, process_count=1)
  with pytest.raises(ValueError, match='num_classes=2 but .* has 5 classes'):
    Pipeline({
        **_config(data_dir=data_dir).to_dict(), 'num_classes': 2
    }, 'train', global_batch_size=8, seed=0, train=True, process_index=0, process_count=1)
  with pytest.raises(ValueError, match='channels=2 must be 1'):
    _make(data_dir, channels=2)
  with pytest.raises(ValueError, match=r'use eval_batches\(\)'):
    _make(data_dir, 'validation', train=False).batch(0)
  with pytest.raises(ValueError, match=r'use iterate\(\)'):
    _make(data_dir).eval_batches()
  with pytest.raises(FileNotFoundError, match=r'kl_xray manual data.*\{train,val,test\}/\{0,1,2,3,4\}/\*\.png'):
    _make(str(tmp_path / 'kl'), dataset='kl_xray', builder_config='', manual_dir=str(tmp_path / 'not_here'))


# --------------------------------------------------------------------------------------------- other sources


def test_patch_camelyon_like_catalog_dataset_read_per_batch(monkeypatch):
  """The TFDS catalog's patch_camelyon (96x96x3, labels 0/1), mocked; large-dataset path (no cache)."""
  rng = np.random.default_rng(3)
  examples = {
      s: [
          dict(image=rng.integers(0, 256, (96, 96, 3), dtype=np.uint8), label=int(rng.integers(2)),
               id=f'{s}_{i}'.encode()) for i in range(n)
      ] for s, n in (('train', 20), ('test', 10))
  }

  def as_data_source(self, split, decoders=None, deserialize_method=None, **kwargs):
    del self, decoders, deserialize_method, kwargs
    return examples[split]

  monkeypatch.setattr(pipeline_lib, 'IN_MEMORY_CACHE_MAX_BYTES', 0)
  config = _config(dataset='patch_camelyon', builder_config='', channels=3, image_size=32, hflip=True)
  with tfds.testing.mock_data(as_data_source_fn=as_data_source):
    train = Pipeline(config, 'train', global_batch_size=8, seed=0, train=True, process_index=1, process_count=2)
    test = Pipeline(config, 'test', global_batch_size=8, seed=0, train=False, process_index=0, process_count=1)
    np.testing.assert_array_equal(train.labels, [e['label'] for e in examples['train']])  # read lazily
  assert not train.cached and train.num_classes == 2 and train.image_shape == (32, 32, 3)
  b = train.batch(2)
  idx = train.global_indices(2)[4:]
  want = _tf_resize(np.stack([examples['train'][i]['image'] for i in idx]), 32) / 127.5 - 1.0
  flips = np.array(
      [np.abs(b['image'][k] - want[k][:, ::-1]).max() < np.abs(b['image'][k] - want[k]).max() for k in range(4)])
  want[flips] = want[flips][:, :, ::-1]
  assert np.abs(b['image'] - want).max() <= 1.0 / 127.5 + 1e-5
  np.testing.assert_array_equal(b['label'], [examples['train'][i]['label'] for i in idx])
  batches = list(test.eval_batches())
  assert len(batches) == 2 and sum(x['mask'].sum() for x in batches) == 10
  assert [i for x in batches for i in x['id'] if i] == [f'test_{i}' for i in range(10)]


def test_image_folder_dataset(tmp_path):
  rng = np.random.default_rng(4)
  files = {}
  for split in ('train', 'validation'):
    for cls in ('benign', 'malignant'):
      for k in range(3):
        rel = f'{split}/{cls}/{k}.png'
        files[rel] = rng.integers(0, 256, size=(12, 20), dtype=np.uint8)  # non-square: centre-cropped
        os.makedirs(tmp_path / split / cls, exist_ok=True)
        Image.fromarray(files[rel]).save(tmp_path / rel)
  config = _config(dataset='image_folder', builder_config='64', manual_dir=str(tmp_path), image_size=12)
  p = Pipeline(config, 'validation', global_batch_size=4, seed=0, train=False, process_index=0, process_count=1)
  assert p.class_names == ('benign', 'malignant') and p.num_examples == 6
  got = {
      i: (img, lab) for b in p.eval_batches() for i, img, lab, m in zip(b['id'], b['image'], b['label'], b['mask']) if m
  }
  assert sorted(got) == sorted(r for r in files if r.startswith('validation/'))
  for rel, (image, label) in got.items():
    np.testing.assert_allclose(image[..., 0], files[rel][:, 4:16] / 127.5 - 1.0, atol=1e-6)
    assert label == ('malignant' in rel)
  train = Pipeline(config, 'train', global_batch_size=4, seed=0, train=True, process_index=0, process_count=1)
  assert train.batch(0)['image'].shape == (4, 12, 12, 1)
  with pytest.raises(ValueError, match=r"unknown split 'test'"):
    Pipeline(config, 'test', global_batch_size=4, seed=0, train=False, process_index=0, process_count=1)


def test_tfrecord_prepared_dataset_falls_back_to_memory(tmp_path, data_dir, raw):
  tfrecord_dir = str(tmp_path / 'tfrecord')
  tfds.builder('synthetic_knee/tiny', data_dir=tfrecord_dir).download_and_prepare(file_format='tfrecord')
  p = _make(tfrecord_dir, 'validation', batch=16, train=False)
  b = next(p.eval_batches())
  np.testing.assert_allclose(b['image'], raw['validation'][0] / 127.5 - 1.0, atol=1e-6)
  assert list(b['id']) == raw['validation'][2]
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(pipeline_lib, 'IN_MEMORY_CACHE_MAX_BYTES', 100)
    with pytest.raises(ValueError, match='tfds convert_format'):
      _make(tfrecord_dir, 'validation', batch=16, train=False)


def test_class_balanced_indices():
  labels = np.array([0] * 10 + [1] * 2 + [2] * 4)
  idx = pipeline_lib.class_balanced_indices(labels, 9, seed=3)
  assert len(idx) == len(set(idx.tolist())) == 9 and np.all(np.diff(idx) > 0)
  # class 1 has only 2: the 9 are 3 + 2 + 3 or 4 + 2 + 3 by round robin (0, 1, 2, 0, 1, 2, 0, 2, 0)
  np.testing.assert_array_equal(np.bincount(labels[idx], minlength=3), [4, 2, 3])
  np.testing.assert_array_equal(idx, pipeline_lib.class_balanced_indices(labels, 9, seed=3))  # seeded
  assert not np.array_equal(idx, pipeline_lib.class_balanced_indices(labels, 9, seed=4))
  np.testing.assert_array_equal(np.bincount(labels[pipeline_lib.class_balanced_indices(labels, 4, 0)], minlength=3),
                                [2, 1, 1])
  np.testing.assert_array_equal(pipeline_lib.class_balanced_indices(labels, 16, 0), np.arange(16))
  with pytest.raises(ValueError, match='cannot sample 17 of 16'):
    pipeline_lib.class_balanced_indices(labels, 17, 0)
