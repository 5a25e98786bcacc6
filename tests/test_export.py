"""Tests for stylex_jax.explain.export: TFRecords written without TF parse with plain tf.data (a spec built
here, independently of the module) and give back the inputs exactly; the module's own reader agrees;
schema.json, report.html, strips and GIFs are complete; bad input fails before anything is written; a
previous export survives a crash in a new one; unsafe ids become unique safe file names; a resumable export
interrupted after a commit is continued to the same bytes as an uninterrupted one."""
import base64
import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from stylex_jax import storage
from stylex_jax.explain import export, media

H, W, C, S, K, NUM_WS, W_DIM = 16, 16, 1, 5, 3, 4, 8
CLASSES = ['none', 'mild', 'severe <&>']


def make_batch(ids, seed=0, channels=C):
  rng = np.random.default_rng(seed)
  b = len(ids)
  logits = rng.normal(size=(b, S, K))
  probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
  return {
      'id':
          np.array(ids),
      'image':
          rng.uniform(-1.2, 1.2, size=(b, H, W, channels)).astype(np.float32),  # out of range: clipped
      'reconstruction':
          rng.uniform(-1, 1, size=(b, H, W, channels)).astype(np.float32),
      'series':
          rng.uniform(-1, 1, size=(b, S, H, W, channels)).astype(np.float32),
      'alphas':
          np.tile(np.linspace(-2, 2, S, dtype=np.float32), (b, 1)) + rng.normal(size=(b, 1)).astype(np.float32) * 0.01,
      'probs':
          probs,
      'original_probs':
          probs[:, S // 2],
      'latent':
          rng.normal(size=(b, NUM_WS, W_DIM)).astype(np.float32),
      'gradcam':
          rng.uniform(0, 1, size=(b, H, W)).astype(np.float32),
      'label':
          rng.integers(-1, K, size=b),
      'reconstruction_probs':
          probs[:, S // 2],
      'metrics': {
          'ssim': rng.uniform(size=b),
          'crossed': (rng.uniform(size=b) > 0.5).astype(np.float64)
      },
  }


def make_writer(directory, channels=C, **kwargs):
  return export.ExplanationWriter(directory, num_classes=K, class_names=CLASSES, image_shape=(H, W, channels),
                                  num_ws=NUM_WS, w_dim=W_DIM, config={
                                      'seed': 3,
                                      'data': {
                                          'name': 'phantoms'
                                      }
                                  }, target_description='severity', **kwargs)


def u8(x):
  """Independent reference of the image encoding: round((x + 1) * 127.5), clipped."""
  return np.clip(np.rint((np.asarray(x, np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def concat(batches):
  out = {}
  for key in batches[0]:
    if key == 'metrics':
      continue
    out[key] = np.concatenate([b[key] for b in batches])
  return out


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp('export'))
  batches = [make_batch(['a/1', 'é x', 'c<d>&"'], seed=1), make_batch(['d', 'e'], seed=2)]
  batches[0]['label'][:2] = [-1, K - 1]  # unknown label: a negative int64 (10-byte varint)
  writer = make_writer(directory, examples_per_shard=2)
  for b in batches:
    writer.add(b)
  paths = writer.close({'flip_rate': 0.75, 'mean_ssim': 0.5})
  return directory, paths, concat(batches), batches


def test_round_trip_through_plain_tf_data(exported):
  tf = pytest.importorskip('tensorflow')
  directory, paths, expected, _ = exported
  files = sorted(
      str(p)
      for p in (os.path.join(directory, 'tfrecords', f) for f in os.listdir(os.path.join(directory, 'tfrecords'))))
  assert [os.path.basename(f) for f in files] == [f'explanations-0000{i}-of-00003.tfrecord' for i in range(3)]
  assert files == paths['tfrecords']
  spec = {
      'id': tf.io.FixedLenFeature([], tf.string),
      'image': tf.io.FixedLenFeature([], tf.string),
      'reconstruction': tf.io.FixedLenFeature([], tf.string),
      'series': tf.io.VarLenFeature(tf.string),
      'alphas': tf.io.VarLenFeature(tf.float32),
      'probs': tf.io.FixedLenFeature([S * K], tf.float32),
      'original_probs': tf.io.FixedLenFeature([K], tf.float32),
      'latent': tf.io.FixedLenFeature([NUM_WS * W_DIM], tf.float32),
      'gradcam': tf.io.FixedLenFeature([], tf.string),
      'label': tf.io.FixedLenFeature([], tf.int64)
  }
  ds = tf.data.TFRecordDataset(files).map(lambda r: tf.io.parse_single_example(r, spec))
  records = [{k: (v.values if isinstance(v, tf.SparseTensor) else v).numpy() for k, v in r.items()} for r in ds]
  assert len(records) == 5
  for i, r in enumerate(records):
    assert r['id'].decode('utf-8') == expected['id'][i]
    np.testing.assert_array_equal(tf.io.decode_png(r['image']).numpy(), u8(expected['image'][i]))
    np.testing.assert_array_equal(tf.io.decode_png(r['reconstruction']).numpy(), u8(expected['reconstruction'][i]))
    series = np.stack([tf.io.decode_png(p).numpy() for p in r['series']])
    np.testing.assert_array_equal(series, u8(expected['series'][i]))
    np.testing.assert_array_equal(r['alphas'], expected['alphas'][i])
    np.testing.assert_array_equal(r['probs'].reshape(S, K), expected['probs'][i])
    np.testing.assert_array_equal(r['original_probs'], expected['original_probs'][i])
    np.testing.assert_array_equal(r['latent'].reshape(NUM_WS, W_DIM), expected['latent'][i])
    heat = tf.io.decode_png(r['gradcam']).numpy()
    assert heat.shape == (H, W, 1)
    np.testing.assert_array_equal(heat[..., 0], np.clip(np.rint(expected['gradcam'][i] * 255), 0, 255))
    assert r['label'] == expected['label'][i]
  # The spec stored in schema.json (the documented copy-paste route) parses the same records.
  schema = json.load(open(paths['schema']))
  stored = {k: tf.io.FixedLenFeature(v['shape'], getattr(tf, v['dtype'])) for k, v in schema['tf_feature_spec'].items()}
  first = next(iter(tf.data.TFRecordDataset(files).map(lambda r: tf.io.parse_single_example(r, stored))))
  np.testing.assert_array_equal(first['latent'].numpy(), expected['latent'][0].reshape(-1))


def test_own_reader_matches_inputs(exported):
  directory, paths, expected, _ = exported
  for source in (directory, os.path.join(directory, 'tfrecords')):
    records = list(export.read_explanations(source))
    assert [r['id'] for r in records] == list(expected['id'])
    for i, r in enumerate(records):
      np.testing.assert_array_equal(r['image'], u8(expected['image'][i]))
      np.testing.assert_array_equal(r['series'], u8(expected['series'][i]))
      np.testing.assert_array_equal(r['probs'], expected['probs'][i])
      np.testing.assert_array_equal(r['latent'], expected['latent'][i])
      np.testing.assert_array_equal(r['alphas'], expected['alphas'][i])
      assert r['gradcam'].shape == (H, W) and r['label'] == expected['label'][i]
  one_shard = list(export.read_explanations(paths['tfrecords'][1]))
  assert [r['id'] for r in one_shard] == list(expected['id'][2:4])


def test_reader_detects_corruption(exported, tmp_path):
  _, paths, _, _ = exported
  data = bytearray(open(paths['tfrecords'][0], 'rb').read())
  data[40] ^= 0xFF
  os.makedirs(tmp_path / 'tfrecords')
  bad = tmp_path / 'tfrecords' / 'bad.tfrecord'
  bad.write_bytes(bytes(data))
  (tmp_path / 'schema.json').write_text(open(paths['schema']).read())
  with pytest.raises(ValueError, match='CRC mismatch'):
    list(export.read_explanations(str(bad)))
  bad.write_bytes(open(paths['tfrecords'][0], 'rb').read()[:-3])
  with pytest.raises(ValueError, match='truncated'):
    list(export.read_explanations(str(bad)))


def test_schema_json(exported):
  directory, paths, expected, batches = exported
  schema = json.load(open(paths['schema']))
  assert schema['num_examples'] == 5 and schema['num_classes'] == K and schema['class_names'] == CLASSES
  assert schema['image_shape'] == [H, W, C] and schema['num_series'] == S
  assert (schema['num_ws'], schema['w_dim']) == (NUM_WS, W_DIM)
  assert list(schema['features']) == [
      'id', 'image', 'reconstruction', 'series', 'alphas', 'probs', 'original_probs', 'latent', 'gradcam', 'label'
  ]
  assert all(v['meaning'] for v in schema['features'].values())
  assert schema['features']['probs']['decoded_shape'] == [S, K]
  assert schema['shards'] == [f'tfrecords/explanations-0000{i}-of-00003.tfrecord' for i in range(3)]
  assert schema['shard_counts'] == [2, 2, 1]
  assert schema['config'] == {'seed': 3, 'data': {'name': 'phantoms'}}
  assert schema['target_description'] == 'severity'
  assert schema['summary_metrics'] == {'flip_rate': 0.75, 'mean_ssim': 0.5}
  ssim = np.concatenate([b['metrics']['ssim'] for b in batches])
  assert schema['per_image_metrics']['ssim']['mean'] == pytest.approx(ssim.mean())
  assert schema['per_image_metrics']['ssim']['max'] == pytest.approx(ssim.max())
  spec = export.feature_spec(schema)
  assert {k: {'shape': v['shape'], 'dtype': v['dtype']} for k, v in spec.items()} == schema['tf_feature_spec']
  assert spec['latent']['shape'] == [NUM_WS * W_DIM] and spec['series']['shape'] == [S]
  index = [json.loads(line) for line in open(paths['index'])]
  assert [e['id'] for e in index] == list(expected['id']) and [e['shard'] for e in index] == [0, 0, 1, 1, 2]
  assert not [n for n in os.listdir(directory) if n.startswith('.')]  # no staging / probe leftovers


def test_report_strips_and_gifs(exported):
  directory, paths, expected, _ = exported
  text = open(paths['report'], encoding='utf-8').read()
  assert 'http://' not in text and 'https://' not in text and '<link' not in text
  assert 'severe &lt;&amp;&gt;' in text and 'severity' in text and 'flip_rate' in text
  for id_ in expected['id']:
    assert f'<b>{__import__("html").escape(id_)}</b>' in text
  assert '<b>c<d>' not in text
  rows = re.findall(r'<script type="application/json" class="rowdata">(.*?)</script>', text, re.S)
  assert len(rows) == 5
  for i, row in enumerate(rows):
    data = json.loads(row)
    assert len(data['frames']) == S and data['alphas'] == pytest.approx(expected['alphas'][i].tolist())
    # every frame is a data-URI PNG equal to the series image
    for j, uri in enumerate(data['frames']):
      assert uri.startswith('data:image/png;base64,')
      frame = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(',', 1)[1]))))
      np.testing.assert_array_equal(frame, u8(expected['series'][i, j])[..., 0])
  # per row: original, reconstruction, shown frame, GradCAM, difference + S frames in the JSON
  assert text.count('data:image/png;base64,') == 5 * (5 + S)
  tile = H * 8  # upscaled to >= 128 px
  index = [json.loads(line) for line in open(paths['index'])]
  for e in index:
    strip = Image.open(os.path.join(directory, e['strip']))
    assert strip.size == ((S + 4) * tile + 4 * (S + 5), tile + 44 + 18 + 4)
    gif = Image.open(os.path.join(directory, e['gif']))
    assert gif.n_frames == S and gif.size == (tile, tile + 44) and gif.info['loop'] == 0


def test_diff_map_colours():
  recon = np.zeros((1, 4, 1), np.float32)
  last = np.array([0.5, -0.5, 0.25, 0.0], np.float32).reshape(1, 4, 1)
  rgb, scale = media.diff_map(last, recon)
  assert scale == pytest.approx(0.5)
  np.testing.assert_array_equal(rgb[0], [[255, 0, 0], [0, 0, 255], [255, 128, 128], [255, 255, 255]])
  _, scale = media.diff_map(recon, recon)
  assert scale == pytest.approx(1 / 127.5)  # no change: not blown up to full colour


def test_unwritable_directory_fails_before_anything(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  target = blocker / 'explain'
  with pytest.raises(ValueError, match=r'cannot write explanations to .*explain: .*choose another'):
    export.check_writable(str(target))
  with pytest.raises(ValueError, match='cannot write explanations to'):
    make_writer(str(target))
  with pytest.raises(ValueError, match='not a directory'):
    export.check_writable(str(blocker))
  assert os.listdir(tmp_path) == ['file']


def test_bad_batches_name_the_key(tmp_path):
  writer = make_writer(str(tmp_path / 'out'))
  good = make_batch(['a', 'b'])
  for key, value, pattern in [('probs', good['probs'][:, :, :2], r"batch\['probs'\] has shape \[2, 5, 2\]"),
                              ('latent', good['latent'][:, :1], r"batch\['latent'\]"),
                              ('label', good['label'].astype(np.float32), r"batch\['label'\] must be integers"),
                              ('gradcam', good['gradcam'] * 3, r"batch\['gradcam'\] must be in \[0, 1\]"),
                              ('alphas', np.full_like(good['alphas'], np.nan), r"batch\['alphas'\] has non-finite")]:
    with pytest.raises(ValueError, match=pattern):
      writer.add({**good, key: value})
  with pytest.raises(ValueError, match=r"unknown key\(s\) \['prob'\]"):
    writer.add({**good, 'prob': good['probs']})
  assert writer.num_examples == 0
  writer.add(good)
  shorter = make_batch(['c'])
  shorter['series'] = shorter['series'][:, :3]
  with pytest.raises(ValueError, match=r"batch\['series'\] has shape \[1, 3, 16, 16, 1\], expected \[1, 5"):
    writer.add(shorter)
  writer.abort()


def test_previous_export_survives_a_crash(tmp_path):
  directory = str(tmp_path / 'explain')
  first = make_batch(['old1', 'old2'], seed=5)
  with make_writer(directory) as writer:
    writer.add(first)
  (tmp_path / 'explain' / 'notes.txt').write_text('mine')
  before = {f: open(os.path.join(directory, f), 'rb').read() for f in ('schema.json', 'report.html')}

  with pytest.raises(RuntimeError, match='boom'):
    with make_writer(directory) as writer:
      writer.add(make_batch(['new1'], seed=6))
      raise RuntimeError('boom')
  with pytest.raises(ValueError, match='no explanations were added'):
    make_writer(directory).close()
  assert {f: open(os.path.join(directory, f), 'rb').read() for f in before} == before
  assert [r['id'] for r in export.read_explanations(directory)] == ['old1', 'old2']
  assert sorted(os.listdir(os.path.join(directory, 'strips'))) == ['old1.png', 'old2.png']
  assert sorted(os.listdir(directory)) == [
      'gifs', 'index.jsonl', 'notes.txt', 'report.html', 'schema.json', 'strips', 'tfrecords'
  ]

  with make_writer(directory) as writer:  # a successful export replaces the old one completely
    writer.add(make_batch(['new1'], seed=6))
  records = list(export.read_explanations(directory))
  assert [r['id'] for r in records] == ['new1']
  np.testing.assert_array_equal(records[0]['latent'], make_batch(['new1'], seed=6)['latent'][0])
  assert os.listdir(os.path.join(directory, 'strips')) == ['new1.png']
  assert (tmp_path / 'explain' / 'notes.txt').read_text() == 'mine'
  assert not [n for n in os.listdir(directory) if n.startswith('.')]

  writer = make_writer(directory, overwrite=True)  # overwrite=True drops the previous export up front
  assert sorted(os.listdir(directory))[-1] == 'notes.txt' and not os.path.exists(os.path.join(directory, 'schema.json'))
  writer.abort()


def test_unsafe_ids_become_unique_safe_names(tmp_path):
  ids = ['a/b', 'a b', 'a_b', '../x', 'A_B', '', 'k.png', 'k.DCM']
  with make_writer(str(tmp_path / 'out'), channels=3) as writer:
    writer.add(make_batch(ids, channels=3))
  index = [json.loads(line) for line in open(tmp_path / 'out' / 'index.jsonl')]
  names = [e['safe_id'] for e in index]
  assert [e['id'] for e in index] == ids
  assert names == ['a_b', 'a_b-2', 'a_b-3', 'x', 'A_B-4', 'image', 'k', 'k-2']
  assert len({n.lower() for n in names}) == len(ids)
  assert all(re.fullmatch(r'[A-Za-z0-9_.-]+', n) for n in names)
  assert sorted(os.listdir(tmp_path / 'out' / 'strips')) == sorted(n + '.png' for n in names)
  assert Image.open(tmp_path / 'out' / 'strips' / 'x.png').mode == 'RGB'
  rec = next(export.read_explanations(str(tmp_path / 'out')))
  assert rec['image'].shape == (H, W, 3) and rec['id'] == 'a/b'


def test_report_row_cap(tmp_path):
  with make_writer(str(tmp_path / 'out'), report_max_images=2) as writer:
    writer.add(make_batch(['p', 'q', 'r', 's'], seed=4))
  text = open(tmp_path / 'out' / 'report.html', encoding='utf-8').read()
  assert text.count('class="rowdata"') == 2 and 'Showing the first 2 of 4 images' in text
  assert '<b>q</b>' in text and '<b>r</b>' not in text
  assert len(os.listdir(tmp_path / 'out' / 'gifs')) == 4  # everything else is complete


def tree_bytes(directory, skip=('schema.json', 'report.html')) -> dict[str, bytes]:
  """{relative path: content} of every file under `directory`, local or memory:// (through stylex_jax.storage)."""
  out = {}
  for name in storage.listdir(directory):
    path = f'{directory}/{name}'
    if storage.isdir(path):
      out.update({f'{name}/{k}': v for k, v in tree_bytes(path, ()).items()})
    elif name not in skip:
      out[name] = storage.read_bytes(path)
  return out


def check_resumable_export(root):
  """A resumable writer interrupted after a commit (and after more images that were not committed) is continued
  by a new writer with the same key: the result equals an uninterrupted export, byte for byte; another key
  starts afresh. `root`: a local folder or a memory:// URI (all checks go through stylex_jax.storage)."""
  batches = [make_batch([f'img{i}_{j}' for j in range(2)], seed=i) for i in range(4)]
  key = {'config': {'seed': 3}, 'inputs': 'four batches'}
  whole = make_writer(f'{root}/whole', examples_per_shard=2, resume_key=key, report_max_images=3)
  for i, b in enumerate(batches):
    whole.add(b)
    assert whole.commit({'position': i + 1}) and whole.committed == 2 * (i + 1)
  whole.close({'n': 8})

  out = f'{root}/resumed'
  first = make_writer(out, examples_per_shard=2, resume_key=key, report_max_images=3)
  with pytest.raises(KeyboardInterrupt):
    with first:
      for i, b in enumerate(batches[:3]):
        first.add(b)
        if i < 2:
          first.commit({'position': i + 1})  # the third batch is written but never committed
      raise KeyboardInterrupt
  partial = f'{out}/{export.PARTIAL_DIR}'
  assert json.loads(storage.read_text(f'{partial}/{export.MANIFEST}'))['num_examples'] == 4
  assert len(storage.listdir(f'{partial}/strips')) == 6  # the uncommitted ones are dropped on resume

  other = make_writer(out, examples_per_shard=2, resume_key={**key, 'inputs': 'other'})
  assert other.resumed_state is None and 'another config' in other.discarded_partial
  other.abort()  # nothing committed: the other key's partial export is gone too
  assert not storage.exists(partial)

  first = make_writer(out, examples_per_shard=2, resume_key=key, report_max_images=3)  # again, then resumed
  for i, b in enumerate(batches[:3]):
    first.add(b)
    if i < 2:
      first.commit({'position': i + 1})
  first.abort(keep_committed=True)
  second = make_writer(out, examples_per_shard=2, resume_key=key, report_max_images=3)
  assert second.resumed_state == {'position': 2} and second.num_examples == 4
  for b in batches[second.resumed_state['position']:]:
    second.add(b)
    second.commit({})
  second.close({'n': 8})
  assert tree_bytes(out) == tree_bytes(f'{root}/whole')
  for name in ('schema.json', 'report.html'):  # equal but for the creation time
    strip = lambda p: re.sub(r'"created": "[^"]*"', '', storage.read_text(p))
    assert strip(f'{out}/{name}') == strip(f'{root}/whole/{name}')
  assert not storage.exists(partial)


def test_resumable_export_continues_from_its_last_commit(tmp_path):
  check_resumable_export(str(tmp_path))  # on memory:// in test_storage.py
