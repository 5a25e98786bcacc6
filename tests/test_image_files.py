"""explain/image_files.py: users' files are converted (size, depth, channels) or rejected one line each; many
files are checked from their headers up front and decoded batch by batch (ImageFiles)."""
import numpy as np
import pytest
from PIL import Image

from stylex_jax.data import images as images_lib
from stylex_jax.explain import image_files


def _save(path, array, mode=None):
  Image.fromarray(array, mode=mode).save(path)
  return str(path)


def test_conversions_and_rejections(tmp_path):
  ramp = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))  # 64x64, 8-bit
  _save(tmp_path / 'a_exact.png', ramp)
  _save(tmp_path / 'b_big.png', np.full((100, 140), 200, np.uint8))  # constant, other size
  _save(tmp_path / 'c_16bit.png', np.full((64, 64), 65535, np.uint16))  # 16-bit white
  _save(tmp_path / 'd_grey_rgb.png', np.repeat(ramp[..., None], 3, axis=-1))
  colour = np.zeros((64, 64, 3), np.uint8)
  colour[..., 0] = 255
  _save(tmp_path / 'e_colour.png', colour)
  (tmp_path / 'f_corrupt.png').write_bytes(b'not a png at all')
  images, ids, notes, rejected = image_files.load_image_files(str(tmp_path / '*.png'), 64, 1)
  assert images.shape == (4, 64, 64, 1) and images.dtype == np.float32
  assert [i.rsplit('/', 1)[-1] for i in ids] == ['a_exact.png', 'b_big.png', 'c_16bit.png', 'd_grey_rgb.png']
  np.testing.assert_allclose(images[0, ..., 0], ramp / 255.0 * 2 - 1, atol=1e-6)
  np.testing.assert_allclose(images[1], 200 / 255.0 * 2 - 1, atol=1e-5)  # a constant stays constant
  np.testing.assert_allclose(images[2], 1.0, atol=1e-6)
  np.testing.assert_allclose(images[3], images[0], atol=1e-6)
  assert any('b_big.png' in n and '100x140' in n for n in notes)
  assert len(rejected) == 2
  assert any('e_colour.png' in r and 'colour' in r for r in rejected)
  assert any('f_corrupt.png' in r and 'cannot be read' in r for r in rejected)


def test_grayscale_to_rgb_and_directory_input(tmp_path):
  _save(tmp_path / 'x.png', np.full((32, 32), 0, np.uint8))
  images, ids, notes, rejected = image_files.load_image_files(str(tmp_path), 32, 3)
  assert images.shape == (1, 32, 32, 3) and not rejected
  np.testing.assert_allclose(images, -1.0)
  assert 'replicated' in notes[0]


def test_float_image_with_nan_is_rejected(tmp_path):
  bad = np.full((32, 32), 0.5, np.float32)
  bad[3, 4] = np.nan
  _save(tmp_path / 'nan.tif', bad, mode='F')
  _save(tmp_path / 'ok.tif', np.full((32, 32), 0.25, np.float32), mode='F')
  images, ids, _, rejected = image_files.load_image_files(str(tmp_path / '*.tif'), 32, 1)
  assert len(ids) == 1 and ids[0].endswith('ok.tif')
  np.testing.assert_allclose(images, -0.5, atol=1e-6)
  assert rejected and 'nan.tif' in rejected[0] and 'NaN' in rejected[0]


def test_no_match_and_nothing_usable_raise(tmp_path):
  with pytest.raises(ValueError, match='no image files match'):
    image_files.load_image_files(str(tmp_path / '*.png'), 32, 1)
  (tmp_path / 'bad.png').write_bytes(b'junk')
  with pytest.raises(ValueError, match='none of the image files'):
    image_files.load_image_files(str(tmp_path / '*.png'), 32, 1)


def test_image_files_check_headers_up_front_and_decode_batch_by_batch(tmp_path, monkeypatch):
  """ImageFiles reads no pixels when it is created (only headers: a non-image is rejected there), then decodes one
  batch at a time; batches(start=position) continues exactly after a batch."""
  rng = np.random.default_rng(0)
  for i in range(5):
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(tmp_path / f'{i}.png')
  (tmp_path / 'broken.png').write_bytes(b'not an image')
  reads = []
  real = images_lib.read_image
  monkeypatch.setattr(images_lib, 'read_image', lambda path, **k: reads.append(path) or real(path, **k))
  files = image_files.ImageFiles(str(tmp_path), 32, 1)
  assert not reads and len(files) == 5 and files.rejected[0].startswith(str(tmp_path / 'broken.png'))
  batches = files.batches(2)
  first = next(batches)
  assert len(reads) == 2 and first.images.shape == (2, 32, 32, 1) and first.position == 2
  assert first.ids == [str(tmp_path / f'{i}.png') for i in range(2)] and '40x40' in first.notes[0]
  rest = list(batches)
  assert [len(b.ids) for b in rest] == [2, 1] and len(reads) == 5
  again = list(files.batches(2, start=first.position))
  assert [b.ids for b in again] == [b.ids for b in rest]
  np.testing.assert_array_equal(again[0].images, rest[0].images)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match='no image files'):
    image_files.ImageFiles(str(tmp_path / 'empty'), 32, 1)
  with pytest.raises(ValueError, match='none of the image files'):
    image_files.ImageFiles(str(tmp_path / 'broken.png'), 32, 1)
