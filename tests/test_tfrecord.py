"""Tests for stylex_jax.tfrecord: CRC-32C against known vectors, TFRecord framing and its CRC-checking reader,
tf.train.Example encode -> decode round trips, and records / TensorBoard events parsed by real TensorFlow."""
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from stylex_jax import tfrecord
from stylex_jax.tfrecord import crc32c
from stylex_jax.writers import MetricWriter


def _crc32c_bitwise(data: bytes) -> int:
  """Independent reference: bit-at-a-time CRC-32C, no tables."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc ^= byte
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
  return crc ^ 0xFFFFFFFF


def test_crc32c_known_vectors():
  assert crc32c(b'123456789') == 0xE3069283
  assert crc32c(b'') == 0
  # RFC 3720 (iSCSI) appendix B.4
  assert crc32c(bytes(32)) == 0x8A9136AA
  assert crc32c(b'\xff' * 32) == 0x62A8AB43
  assert crc32c(bytes(range(32))) == 0x46DD794E
  assert crc32c(bytes(range(31, -1, -1))) == 0x113FDB5C


@pytest.mark.parametrize('n', [1, 7, 1000, 16383, 16384, 16385, 3 * 16384 + 1029])
def test_crc32c_matches_bitwise_reference(n):
  data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
  assert crc32c(data) == _crc32c_bitwise(data)
  # continuation: crc of a concatenation from the crc of the prefix
  k = n // 3
  assert crc32c(data[k:], crc32c(data[:k])) == crc32c(data)


def test_masked_crc_definition():
  crc = 0xE3069283
  rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
  assert tfrecord.masked_crc32c(b'123456789') == (rotated + 0xA282EAD8) % 2**32


def test_frame_layout_and_reader(tmp_path):
  payloads = [b'', b'x', bytes(range(256)) * 70]
  framed = [tfrecord.frame_record(p) for p in payloads]
  for p, f in zip(payloads, framed):
    assert len(f) == 16 + len(p)
    assert struct.unpack('<Q', f[:8])[0] == len(p) and f[12:12 + len(p)] == p
    assert struct.unpack('<I', f[8:12])[0] == tfrecord.masked_crc32c(f[:8])
    assert struct.unpack('<I', f[-4:])[0] == tfrecord.masked_crc32c(p)
  path = tmp_path / 'a.tfrecord'
  path.write_bytes(b''.join(framed))
  assert list(tfrecord.read_records(str(path))) == payloads


@pytest.mark.parametrize('damage,pattern', [
    (lambda d: d[:4] + bytes([d[4] ^ 1]) + d[5:], 'corrupt record length at byte 0'),
    (lambda d: d[:-6] + bytes([d[-6] ^ 1]) + d[-5:], 'corrupt record data at byte 17 '),
    (lambda d: d[:-2], 'truncated record at byte 17;'),
    (lambda d: d + b'\0' * 5, 'truncated record header at byte 37'),
])
def test_reader_detects_corruption(tmp_path, damage, pattern):
  data = tfrecord.frame_record(b'a') + tfrecord.frame_record(b'four')
  path = tmp_path / 'bad.tfrecord'
  path.write_bytes(damage(data))
  with pytest.raises(ValueError, match=pattern):
    list(tfrecord.read_records(str(path)))


def _example():
  return {
      'id': tfrecord.bytes_feature(['é x'.encode('utf-8')]),
      'series': tfrecord.bytes_feature([b'\x89PNG', b'', bytes(range(200))]),
      'alphas': tfrecord.float_feature(np.array([-2.0, 0.5, 3e-8], np.float32)),
      'latent': tfrecord.float_feature(np.arange(12, dtype=np.float64).reshape(3, 4) / 7),
      'label': tfrecord.int64_feature([-1]),
      'counts': tfrecord.int64_feature([0, 1, 300, 2**62, -(2**63)]),
  }


def test_example_round_trip():
  decoded = tfrecord.decode_example(tfrecord.encode_example(_example()))
  assert list(decoded) == ['id', 'series', 'alphas', 'latent', 'label', 'counts']
  assert decoded['id'] == ('bytes', ['é x'.encode('utf-8')])
  assert decoded['series'] == ('bytes', [b'\x89PNG', b'', bytes(range(200))])
  kind, alphas = decoded['alphas']
  assert kind == 'float' and alphas.dtype == np.float32
  np.testing.assert_array_equal(alphas, np.array([-2.0, 0.5, 3e-8], np.float32))
  np.testing.assert_array_equal(decoded['latent'][1], (np.arange(12) / 7).astype(np.float32))
  assert decoded['label'][0] == 'int64' and decoded['label'][1].tolist() == [-1]  # 10-byte varint
  assert decoded['counts'][1].tolist() == [0, 1, 300, 2**62, -(2**63)]


def test_example_parses_with_tensorflow(tmp_path):
  tf = pytest.importorskip('tensorflow')
  path = str(tmp_path / 'ex.tfrecord')
  with open(path, 'wb') as f:
    for _ in range(2):
      f.write(tfrecord.frame_record(tfrecord.encode_example(_example())))
  spec = {
      'id': tf.io.FixedLenFeature([], tf.string),
      'series': tf.io.FixedLenFeature([3], tf.string),
      'alphas': tf.io.FixedLenFeature([3], tf.float32),
      'latent': tf.io.FixedLenFeature([12], tf.float32),
      'label': tf.io.FixedLenFeature([], tf.int64),
      'counts': tf.io.VarLenFeature(tf.int64)
  }
  records = list(tf.data.TFRecordDataset(path).map(lambda r: tf.io.parse_single_example(r, spec)))
  assert len(records) == 2
  r = records[1]
  assert r['id'].numpy().decode('utf-8') == 'é x'
  assert r['series'].numpy().tolist() == [b'\x89PNG', b'', bytes(range(200))]
  np.testing.assert_array_equal(r['alphas'].numpy(), np.array([-2.0, 0.5, 3e-8], np.float32))
  np.testing.assert_array_equal(r['latent'].numpy(), (np.arange(12) / 7).astype(np.float32))
  assert r['label'].numpy() == -1
  assert r['counts'].values.numpy().tolist() == [0, 1, 300, 2**62, -(2**63)]


def test_events_parse_with_tensorflow(tmp_path):
  tf = pytest.importorskip('tensorflow')
  path = str(tmp_path / 'events.out.tfevents.test')
  with open(path, 'wb') as f:
    f.write(tfrecord.frame_record(tfrecord.event(12.5, file_version='brain.Event:2')))
    f.write(
        tfrecord.frame_record(
            tfrecord.event(13.0, 7, values=[tfrecord.scalar_value('loss', 0.25),
                                            tfrecord.scalar_value('a/b', -3.0)])))
    f.write(tfrecord.frame_record(tfrecord.event(14.0, 8, values=[tfrecord.image_value('img', b'png', 4, 5, 3)])))
  events = list(tf.compat.v1.train.summary_iterator(path))
  assert events[0].file_version == 'brain.Event:2' and events[0].wall_time == 12.5
  assert [(e.step, e.wall_time) for e in events[1:]] == [(7, 13.0), (8, 14.0)]
  assert [(v.tag, v.simple_value) for v in events[1].summary.value] == [('loss', 0.25), ('a/b', -3.0)]
  image = events[2].summary.value[0]
  assert image.tag == 'img' and image.image.encoded_image_string == b'png'
  assert (image.image.height, image.image.width, image.image.colorspace) == (4, 5, 3)


def test_tensorflow_rejects_corrupted_record(tmp_path):
  """TFRecordDataset checks the CRCs: a flipped payload byte must be detected."""
  tf = pytest.importorskip('tensorflow')
  with MetricWriter(str(tmp_path), is_chief=True) as w:
    w.write_scalars(1, {'x': 1.0})
  path = str(tmp_path / 'tensorboard' / os.listdir(tmp_path / 'tensorboard')[0])
  data = bytearray(open(path, 'rb').read())
  data[-6] ^= 0x01  # inside the last record's payload
  open(path, 'wb').write(bytes(data))
  with pytest.raises(tf.errors.DataLossError):
    list(tf.data.TFRecordDataset(path))


def test_codec_and_report_import_without_tensorflow():
  code = ('import sys; import stylex_jax.tfrecord, stylex_jax.explain.report; '
          'assert "tensorflow" not in sys.modules, sorted(m for m in sys.modules if "tensorflow" in m)')
  subprocess.run([sys.executable, '-c', code], check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
