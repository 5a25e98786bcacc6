"""Tests for stylex_jax.writers: TensorBoard event files read back with TensorFlow, metrics.jsonl,
image grids, PNG I/O and the progress line (the CRC-32C / TFRecord codec is tested in test_tfrecord.py)."""
import io
import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from stylex_jax import writers
from stylex_jax.writers import MetricWriter, Progress, image_grid, read_metrics, save_png, to_uint8


def _tf_events(path):
  tf = pytest.importorskip('tensorflow')
  return [tf.compat.v1.Event.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]


def test_tensorboard_events_read_back_with_tensorflow(tmp_path):
  rng = np.random.default_rng(0)
  fake = rng.uniform(-1, 1, size=(5, 6, 7, 1)).astype(np.float32)
  rgb = rng.integers(0, 256, size=(2, 4, 3, 3), dtype=np.uint8)
  with MetricWriter(str(tmp_path), is_chief=True) as w:
    w.write_scalars(0, {'loss': 0.5, 'acc': np.float32(0.25)})
    w.write_scalars(10, {'loss': jnp.float32(0.125), 'lr': 3e-4, 'nan': float('nan'), 'cm': [[1, 2], [3, 4]]})
    paths = w.write_images(10, {'fake': fake, 'real/rgb': rgb})
  files = os.listdir(tmp_path / 'tensorboard')
  assert len(files) == 1 and files[0].startswith('events.out.tfevents.')
  events = _tf_events(str(tmp_path / 'tensorboard' / files[0]))
  assert events[0].file_version == 'brain.Event:2'
  scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value if not v.HasField('image')]
  assert scalars[:2] == [(0, 'loss', 0.5), (0, 'acc', 0.25)]
  assert scalars[2:4] == [(10, 'loss', 0.125), (10, 'lr', np.float32(3e-4))]
  assert scalars[4][:2] == (10, 'nan') and math.isnan(scalars[4][2])
  assert len(scalars) == 5  # the confusion matrix is JSON-only
  images = [(e.step, v.tag, v.image) for e in events for v in e.summary.value if v.HasField('image')]
  assert [(s, t) for s, t, _ in images] == [(10, 'fake'), (10, 'real/rgb')]
  for (_, _, img), expected, path in zip(images, [image_grid(fake), image_grid(rgb)], paths):
    decoded = np.asarray(Image.open(io.BytesIO(img.encoded_image_string)))
    decoded = decoded.reshape(expected.shape)
    np.testing.assert_array_equal(decoded, expected)
    assert (img.height, img.width, img.colorspace) == expected.shape
    with open(path, 'rb') as f:
      assert f.read() == img.encoded_image_string
  assert [os.path.basename(p) for p in paths] == ['fake_00000010.png', 'real_rgb_00000010.png']


def test_metrics_jsonl_round_trip(tmp_path):
  cm = np.array([[5, 1], [0, 6]], np.int64)
  with MetricWriter(str(tmp_path), tensorboard=False, is_chief=True) as w:
    w.write_scalars(1, {'loss': 0.75, 'count': np.int32(3), 'acc': jnp.float32(0.5), 'ok': True})
    w.write_scalars(2, {'confusion': cm, 'probs': np.array([0.25, np.inf]), 'inf': -np.inf, 'note': 'x'})
  assert not (tmp_path / 'tensorboard').exists()
  lines = open(tmp_path / 'metrics.jsonl').read().splitlines()
  assert len(lines) == 2 and all(isinstance(json.loads(line), dict) for line in lines)
  assert 'NaN' not in lines[1] and 'Infinity' not in lines[1]  # strict JSON
  assert read_metrics(str(tmp_path / 'metrics.jsonl')) == [
      {
          'step': 1,
          'loss': 0.75,
          'count': 3,
          'acc': 0.5,
          'ok': True
      },
      {
          'step': 2,
          'confusion': [[5, 1], [0, 6]],
          'probs': [0.25, None],
          'inf': None,
          'note': 'x'
      },
  ]
  # appending from a second writer (a resumed run) keeps earlier lines
  with MetricWriter(str(tmp_path), tensorboard=False, is_chief=True) as w:
    w.write_scalars(3, {'loss': 0.5})
  assert [r['step'] for r in read_metrics(str(tmp_path / 'metrics.jsonl'))] == [1, 2, 3]


def test_metric_validation_and_non_chief(tmp_path):
  with MetricWriter(str(tmp_path / 'a'), is_chief=True) as w:
    with pytest.raises(ValueError, match='reserved'):
      w.write_scalars(1, {'step': 3})
    with pytest.raises(ValueError, match='non-negative'):
      w.write_scalars(-1, {'x': 1})
    with pytest.raises(ValueError, match='elements'):
      w.write_scalars(1, {'big': np.zeros(70000)})
    with pytest.raises(ValueError, match='dtype'):
      w.write_scalars(1, {'c': np.array(1 + 2j)})
    with pytest.raises(ValueError, match="image 'x'.*C in"):
      w.write_images(1, {'x': np.zeros((2, 4, 4, 2), np.float32)})
  assert open(tmp_path / 'a' / 'metrics.jsonl').read() == ''  # nothing partial was written
  with MetricWriter(str(tmp_path / 'b'), is_chief=False) as w:
    w.write_scalars(1, {'x': 1.0})
    assert w.write_images(1, {'x': np.zeros((1, 2, 2, 1), np.float32)}) == []
  assert not (tmp_path / 'b').exists()


def test_read_metrics_truncated_and_corrupt(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "a": 1}\n\n{"step": 2, "a": 2}\n{"step": 3, "a"')
  assert read_metrics(str(path)) == [{'step': 1, 'a': 1}, {'step': 2, 'a': 2}]
  path.write_text('{"step": 1}\n{oops\n{"step": 3}\n')
  with pytest.raises(ValueError, match='metrics.jsonl:2'):
    read_metrics(str(path))


def _grid_reference(x, cols, pad, value):
  """Independent layout: pad each tile on its right/bottom, stack rows, then pad the top/left border."""
  n, h, w, c = x.shape
  rows = -(-n // cols)
  tiles = list(x) + [np.full((h, w, c), value, np.uint8)] * (rows * cols - n)
  tiles = [np.pad(t, ((0, pad), (0, pad), (0, 0)), constant_values=value) for t in tiles]
  body = np.concatenate([np.concatenate(tiles[r * cols:(r + 1) * cols], axis=1) for r in range(rows)], axis=0)
  return np.pad(body, ((pad, 0), (pad, 0), (0, 0)), constant_values=value)


@pytest.mark.parametrize('n,cols,pad,c', [(5, 3, 2, 3), (4, None, 1, 1), (1, None, 0, 4), (7, 2, 1, 1), (3, 5, 1, 3)])
def test_image_grid_layout(n, cols, pad, c):
  x = np.random.default_rng(n).integers(0, 256, size=(n, 3, 4, c), dtype=np.uint8)
  got = image_grid(x, cols=cols, pad=pad, pad_value=7)
  expected_cols = cols if cols is not None else math.ceil(math.sqrt(n))
  np.testing.assert_array_equal(got, _grid_reference(x, expected_cols, pad, 7))
  assert got.dtype == np.uint8
  with pytest.raises(ValueError, match=r'\[N, H, W, C\]'):
    image_grid(x[0])


def test_to_uint8_edges():
  x = np.array([-1.0, -1.5, 0.0, 1.0, 2.0, np.nan, np.inf, -np.inf, 1 / 127.5 - 1, 0.5 / 127.5 - 1], np.float32)
  np.testing.assert_array_equal(to_uint8(x), [0, 0, 128, 255, 255, 0, 255, 0, 1, 0])
  u = np.arange(256, dtype=np.uint8)
  assert to_uint8(u) is u
  np.testing.assert_array_equal(to_uint8(jnp.asarray([-1.0, 1.0], jnp.bfloat16)), [0, 255])
  # float round trip of every uint8 level is exact
  np.testing.assert_array_equal(to_uint8(u.astype(np.float32) / 127.5 - 1.0), u)
  with pytest.raises(ValueError, match='float in \\[-1, 1\\] or uint8'):
    to_uint8(np.zeros(3, np.int32))


@pytest.mark.parametrize('c', [1, 3, 4])
def test_save_png_round_trip(tmp_path, c):
  img = np.random.default_rng(c).integers(0, 256, size=(5, 6, c), dtype=np.uint8)
  path = str(tmp_path / 'sub' / 'x.png')
  save_png(path, img)
  back = np.asarray(Image.open(path))
  np.testing.assert_array_equal(back.reshape(img.shape), img)
  assert os.listdir(tmp_path / 'sub') == ['x.png']  # no temporary left behind


def test_save_png_rejects_bad_input(tmp_path):
  with pytest.raises(ValueError, match='uint8'):
    save_png(str(tmp_path / 'a.png'), np.zeros((2, 2, 3), np.float32))
  with pytest.raises(ValueError, match=r'\[H, W, C\]'):
    save_png(str(tmp_path / 'a.png'), np.zeros((2, 2, 2), np.uint8))
  assert not os.listdir(tmp_path)


def test_progress_line_with_fake_clock():
  times = iter([100.0, 104.0, 106.0, 107.0])
  out = io.StringIO()
  p = Progress(total_steps=100, start_step=0, global_batch_size=32, every=10, name='gan', file=out,
               clock=lambda: next(times), is_chief=True)
  p.update(5)  # not a print step: no line, no clock read
  p.update(10, {'loss': np.float32(0.5)})  # 10 steps in 4 s
  p.update(20)  # 10 steps in 2 s
  p.update(100)  # 80 steps in 1 s
  lines = out.getvalue().splitlines()
  assert lines == [
      'gan step  10/100 ( 10.0%) | 80.0 img/s | 2.50 step/s | ETA 0:00:36 | loss=0.5',
      'gan step  20/100 ( 20.0%) | 160.0 img/s | 5.00 step/s | ETA 0:00:16',
      'gan step 100/100 (100.0%) | 2560.0 img/s | 80.00 step/s | ETA 0:00:00',
  ]
  silent = io.StringIO()
  Progress(10, 0, 8, every=1, file=silent, is_chief=False).update(1)
  assert silent.getvalue() == ''


def test_write_json_is_strict_json_with_nan_as_null(tmp_path):
  import json as _json
  path = str(tmp_path / 'summary.json')
  out = writers.write_json(path, {
      'a': float('nan'),
      'b': [1.0, float('inf')],
      'c': {
          'd': np.float32(2.5)
      }
  }, is_chief=True)
  assert out == {'a': None, 'b': [1.0, None], 'c': {'d': 2.5}}
  with open(path) as f:
    assert _json.loads(f.read(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))) == out
  writers.write_json(str(tmp_path / 'other.json'), {'a': 1}, is_chief=False)
  assert not (tmp_path / 'other.json').exists()


def test_resume_drops_rows_written_after_the_checkpoint(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  with MetricWriter(str(tmp_path), tensorboard=False, is_chief=True) as w:  # the interrupted run: logged to 6
    for step in (2, 4, 6):
      w.write_scalars(step, {'loss': float(step)})
    w.write_scalars(4, {'eval_auc': 0.5})
  with open(path, 'a') as f:
    f.write('{"step": 8, "lo')  # cut by the crash
  before = path.read_bytes()
  with MetricWriter(str(tmp_path), tensorboard=False, is_chief=True, resume_step=4) as w:  # resumed from step 4
    w.write_scalars(6, {'loss': 60.0})
  rows = read_metrics(str(path))
  assert [(r['step'], r.get('loss')) for r in rows] == [(2, 2.0), (4, 4.0), (4, None), (6, 60.0)]
  assert writers.truncate_metrics(str(path), 6) == 0  # nothing to drop: the file is not rewritten
  assert writers.truncate_metrics(str(tmp_path / 'missing.jsonl'), 0) == 0
  assert before != path.read_bytes() and not [p for p in os.listdir(tmp_path) if '.tmp' in p]
  with MetricWriter(str(tmp_path), tensorboard=False, is_chief=True, resume_step=0):  # a fresh start: all dropped
    pass
  assert read_metrics(str(path)) == []
