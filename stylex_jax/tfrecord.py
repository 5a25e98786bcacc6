"""The package's one record codec: TFRecord framing, `tf.train.Example` and TensorBoard `Event` protobufs.

Everything the package writes for TensorFlow tools goes through here, without TensorFlow (only the
standard library, numpy and `google_crc32c`), so exports and TensorBoard logs work where TF is absent:

* TFRecord framing: little-endian uint64 length, masked CRC-32C of the length bytes, payload, masked
  CRC-32C of the payload (`frame_record`), and a reader that checks both CRCs (`read_records`).
* `tf.train.Example`: features encoded with `bytes_feature` / `float_feature` / `int64_feature` and
  `encode_example`; `decode_example` reads them back as (kind, values).
* TensorBoard: `event` with `scalar_value` / `image_value` summaries (`tensorflow.Event` / `Summary`).

Protobufs are encoded by hand (varints and length-delimited fields); only the fields above are written.
"""
from __future__ import annotations

import struct
from typing import Any, Iterator, Mapping

import google_crc32c
import numpy as np

from stylex_jax import storage

# ---------------------------------------------------------------------------------------------
# CRC-32C and TFRecord framing
# ---------------------------------------------------------------------------------------------


def crc32c(data: bytes, value: int = 0) -> int:
  """CRC-32C (Castagnoli) of `data`, continuing from a previous `value` (0 for a fresh CRC).

  Returns an int in [0, 2**32). `crc32c(b'123456789') == 0xE3069283`.
  """
  return google_crc32c.extend(value, bytes(data))


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC of `data`: CRC-32C rotated right by 15, plus 0xA282EAD8 (mod 2**32)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(payload: bytes) -> bytes:
  """One TFRecord: uint64 length, masked CRC of the length bytes, payload, masked CRC of the payload."""
  header = struct.pack('<Q', len(payload))
  return header + struct.pack('<I', masked_crc32c(header)) + payload + struct.pack('<I', masked_crc32c(payload))


def read_records(path: str) -> Iterator[bytes]:
  """Payloads of a TFRecord file; verifies both masked CRC-32Cs. Corruption -> ValueError naming file and offset."""
  with storage.open_file(path, 'rb') as f:  # a local path or any URI etils.epath knows (gs://...)
    offset = 0
    while True:
      header = f.read(12)
      if not header:
        return
      if len(header) < 12:
        raise ValueError(f'{path}: truncated record header at byte {offset}; the file is incomplete')
      length, length_crc = struct.unpack('<QI', header)
      if masked_crc32c(header[:8]) != length_crc:
        raise ValueError(f'{path}: corrupt record length at byte {offset} (CRC mismatch)')
      payload = f.read(length)
      crc = f.read(4)
      if len(payload) < length or len(crc) < 4:
        raise ValueError(f'{path}: truncated record at byte {offset}; the file is incomplete')
      if masked_crc32c(payload) != struct.unpack('<I', crc)[0]:
        raise ValueError(f'{path}: corrupt record data at byte {offset} (CRC mismatch)')
      yield payload
      offset += 16 + length


# ---------------------------------------------------------------------------------------------
# Protobuf wire format
# ---------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
  """Protobuf base-128 varint of an int (negative int64 as 10-byte two's complement)."""
  if n < 0:
    n += 1 << 64
  out = bytearray()
  while True:
    byte = n & 0x7F
    n >>= 7
    if n:
      out.append(byte | 0x80)
    else:
      out.append(byte)
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint((field << 3) | wire_type)


def _pb_bytes(field: int, value: bytes) -> bytes:
  """Length-delimited field (wire type 2)."""
  return _key(field, 2) + _varint(len(value)) + value


def _pb_int(field: int, value: int) -> bytes:
  return _key(field, 0) + _varint(int(value))


def _pb_double(field: int, value: float) -> bytes:
  return _key(field, 1) + struct.pack('<d', value)


def _pb_float(field: int, value: float) -> bytes:
  return _key(field, 5) + struct.pack('<f', value)


def _read_varint(buf, pos: int) -> tuple[int, int]:
  """(value, position after it) of the varint at `pos` of `buf`."""
  result = shift = 0
  while True:
    if pos >= len(buf):
      raise ValueError('truncated varint')
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift >= 70:
      raise ValueError('malformed varint')


def _fields(buf) -> Iterator[tuple[int, int, Any]]:
  """(field number, wire type, value) of a serialized message; value: int (varint) or memoryview."""
  buf = memoryview(buf)
  pos, n = 0, len(buf)
  while pos < n:
    key, pos = _read_varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 2:
      length, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + length], pos + length
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    else:
      raise ValueError(f'unsupported protobuf wire type {wire}')
    if pos > n:
      raise ValueError('truncated protobuf message')
    yield field, wire, value


# ---------------------------------------------------------------------------------------------
# tf.train.Example
# ---------------------------------------------------------------------------------------------


def bytes_feature(values: list[bytes]) -> bytes:
  """Feature{bytes_list=1: BytesList{value=1 (repeated bytes)}}."""
  return _pb_bytes(1, b''.join(_pb_bytes(1, v) for v in values))


def float_feature(values: np.ndarray) -> bytes:
  """Feature{float_list=2: FloatList{value=1 (packed little-endian float32)}}; `values` any shape, flattened."""
  return _pb_bytes(2, _pb_bytes(1, np.ascontiguousarray(values, dtype='<f4').tobytes()))


def int64_feature(values) -> bytes:
  """Feature{int64_list=3: Int64List{value=1 (packed varints)}}; `values` an iterable of ints in int64 range."""
  return _pb_bytes(3, _pb_bytes(1, b''.join(_varint(int(v)) for v in values)))


def encode_example(features: Mapping[str, bytes]) -> bytes:
  """Example{features=1: Features{feature=1: map<string, Feature>}} from key -> encoded Feature bytes."""
  entries = b''.join(_pb_bytes(1, _pb_bytes(1, k.encode()) + _pb_bytes(2, v)) for k, v in features.items())
  return _pb_bytes(1, entries)


def decode_feature(buf) -> tuple[str, Any]:
  """Serialized Feature -> ('bytes', [bytes]), ('float', float32 [N]), ('int64', int64 [N]) or ('empty', None)."""
  for kind, _, lst in _fields(buf):
    if kind == 1:
      return 'bytes', [bytes(v) for f, w, v in _fields(lst) if f == 1]
    if kind == 2:
      parts = []
      for f, w, v in _fields(lst):
        if f == 1:
          parts.append(np.frombuffer(v, '<f4'))
      return 'float', (np.concatenate(parts) if parts else np.zeros(0, '<f4')).astype(np.float32)
    if kind == 3:
      values = []
      for f, w, v in _fields(lst):
        if f != 1:
          continue
        if w == 0:
          values.append(v)
        else:
          pos = 0
          while pos < len(v):
            x, pos = _read_varint(v, pos)
            values.append(x)
      return 'int64', np.asarray([x - (1 << 64) if x >= 1 << 63 else x for x in values], np.int64)
  return 'empty', None


def decode_example(payload: bytes) -> dict[str, tuple[str, Any]]:
  """Serialized tf.train.Example -> {key: (kind, values)} with kind in bytes/float/int64 (raw, not reshaped)."""
  out = {}
  for f, _, features in _fields(payload):
    if f != 1:
      continue
    for g, _, entry in _fields(features):
      if g != 1:
        continue
      key, value = None, b''
      for h, _, v in _fields(entry):
        if h == 1:
          key = bytes(v).decode()
        elif h == 2:
          value = v
      if key is not None:
        out[key] = decode_feature(value)
  return out


# ---------------------------------------------------------------------------------------------
# TensorBoard Event / Summary
# ---------------------------------------------------------------------------------------------


def scalar_value(tag: str, value: float) -> bytes:
  """Summary.Value{tag=1, simple_value=2} (the value stored as float32)."""
  return _pb_bytes(1, tag.encode()) + _pb_float(2, value)


def image_value(tag: str, png: bytes, height: int, width: int, channels: int) -> bytes:
  """Summary.Value{tag=1, image=4: Image{height=1, width=2, colorspace=3, encoded_image_string=4}}."""
  image = _pb_int(1, height) + _pb_int(2, width) + _pb_int(3, channels) + _pb_bytes(4, png)
  return _pb_bytes(1, tag.encode()) + _pb_bytes(4, image)


def event(wall_time: float, step: int | None = None, *, file_version: str | None = None,
          values: list[bytes] | None = None) -> bytes:
  """Event{wall_time=1, step=2, file_version=3, summary=5: Summary{value=1 (repeated)}}.

  values: encoded Summary.Value messages (`scalar_value` / `image_value`).
  """
  out = _pb_double(1, wall_time)
  if step is not None:
    out += _pb_int(2, step)
  if file_version is not None:
    out += _pb_bytes(3, file_version.encode())
  if values is not None:
    out += _pb_bytes(5, b''.join(_pb_bytes(1, v) for v in values))
  return out
