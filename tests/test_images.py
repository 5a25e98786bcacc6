"""data/images.py: a file reaches the classifier identically through training (image folder -> Pipeline) and
explanation (explain/image_files.py), checked against values computed by hand with numpy."""
import logging
import warnings

import numpy as np
import pytest
from PIL import Image

from stylex_jax.data import images
from stylex_jax.data.pipeline import Pipeline
from stylex_jax.explain import image_files

S = 8


def _training(path, size, channels):
  """The image as the training pipeline delivers it: a one-file image folder, eval batch of one."""
  root = path.parent.parent
  config = dict(dataset='image_folder', builder_config='', data_dir='', manual_dir=str(root), image_size=size,
                channels=channels, label_threshold=-1, hflip=False, train_split='train', eval_split='train',
                test_split='train')
  pipeline = Pipeline(config, 'train', global_batch_size=1, seed=0, train=False, process_index=0, process_count=1)
  return next(pipeline.eval_batches())['image'][0]


def _both_paths(path, size=S, channels=1):
  train = _training(path, size, channels)
  explain, _ = image_files.load_image(str(path), size, channels)
  assert train.dtype == explain.dtype == np.float32 and train.shape == (size, size, channels)
  np.testing.assert_array_equal(train, explain)  # bit-identical
  return explain


def _file(tmp_path, name):
  folder = tmp_path / name.split('.')[0] / 'cls'
  folder.mkdir(parents=True)
  return folder / name


def _stretch(values):  # the reference: per-image min-max stretch to [-1, 1]
  v = values.astype(np.float64)
  return (v - v.min()) / (v.max() - v.min()) * 2 - 1


def test_16bit_png_low_values_are_stretched_not_divided_by_255(tmp_path):
  rng = np.random.default_rng(0)
  low = rng.integers(10, 200, size=(S, S), dtype=np.uint16)  # max <= 255 in a 16-bit file
  path = _file(tmp_path, 'low.png')
  Image.fromarray(low).save(path)
  got = _both_paths(path)
  np.testing.assert_allclose(got[..., 0], _stretch(low), atol=1e-6)
  # the same values as a mode-I (32-bit int) TIFF, as Pillow < 10.3 opens 16-bit PNGs: same result
  path_i = _file(tmp_path, 'low_i.tif')
  Image.fromarray(low.astype(np.int32), 'I').save(path_i)
  assert Image.open(path_i).mode == 'I'
  np.testing.assert_array_equal(_both_paths(path_i), got)


def test_16bit_png_full_range(tmp_path):
  rng = np.random.default_rng(1)
  full = rng.integers(0, 65536, size=(S, S), dtype=np.uint16)
  full[0, 0], full[0, 1] = 0, 65535
  path = _file(tmp_path, 'full.png')
  Image.fromarray(full).save(path)
  np.testing.assert_allclose(_both_paths(path)[..., 0], full / 65535.0 * 2 - 1, atol=1e-6)


def test_8bit_png_and_resize(tmp_path):
  rng = np.random.default_rng(2)
  gray = rng.integers(0, 256, size=(S, S), dtype=np.uint8)
  path = _file(tmp_path, 'gray.png')
  Image.fromarray(gray).save(path)
  np.testing.assert_allclose(_both_paths(path)[..., 0], gray / 255.0 * 2 - 1, atol=1e-6)
  np.testing.assert_allclose(_both_paths(path, channels=3), np.repeat(gray[..., None] / 255.0 * 2 - 1, 3, -1),
                             atol=1e-6)
  big = _file(tmp_path, 'big.png')
  Image.fromarray(rng.integers(0, 65536, size=(20, 30), dtype=np.uint16)).save(big)
  _both_paths(big)  # cropped + resized 16-bit: still identical in both paths


def test_exif_rotated_jpeg(tmp_path):
  rng = np.random.default_rng(3)
  stored = rng.integers(0, 256, size=(S, 12), dtype=np.uint8)  # stored 8 x 12, displayed 12 x 8
  path = _file(tmp_path, 'rot.jpg')
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
  Image.fromarray(stored).save(path, exif=exif, quality=95)
  with Image.open(path) as im:
    decoded = np.asarray(im.convert('L'))  # as stored, without the EXIF rotation
  upright = np.rot90(decoded, k=-1)  # 12 x 8
  want = upright[2:10] / 255.0 * 2 - 1  # centre square crop of the 12 rows
  np.testing.assert_allclose(_both_paths(path)[..., 0], want, atol=1e-6)


def test_rgba(tmp_path, caplog):
  rng = np.random.default_rng(4)
  rgba = rng.integers(0, 256, size=(S, S, 4), dtype=np.uint8)
  opaque = rgba.copy()
  opaque[..., 3] = 255
  path = _file(tmp_path, 'opaque.png')
  Image.fromarray(opaque, 'RGBA').save(path)
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # fully opaque: dropped without a word
    np.testing.assert_allclose(_both_paths(path, channels=3), rgba[..., :3] / 255.0 * 2 - 1, atol=1e-6)
  path = _file(tmp_path, 'seethrough.png')
  Image.fromarray(rgba, 'RGBA').save(path)
  with caplog.at_level(logging.WARNING), warnings.catch_warnings():
    warnings.simplefilter('error')  # a note or a log line naming the file, never a stray warning per read
    got = _both_paths(path, channels=3)
  np.testing.assert_allclose(got, rgba[..., :3] / 255.0 * 2 - 1, atol=1e-6)
  assert any('1 image(s) with transparent pixels' in r.getMessage() and 'seethrough.png' in r.getMessage()
             for r in caplog.records)  # the training scan: one line with the count and an example
  _, notes = image_files.load_image(str(path), S, 3)
  assert notes == ['has transparent pixels; the alpha channel is dropped (colour kept as stored)']
  with pytest.warns(UserWarning, match='seethrough.png: has transparent pixels'):
    images.read_image(str(path))  # a caller without a notes list gets a warning naming the file


def test_float_tiff(tmp_path):
  rng = np.random.default_rng(5)
  values = rng.uniform(0.2, 0.7, size=(S, S)).astype(np.float32)
  path = _file(tmp_path, 'float.tif')
  Image.fromarray(values, 'F').save(path)
  np.testing.assert_allclose(_both_paths(path)[..., 0], _stretch(values), atol=1e-6)


def test_colour_to_one_channel_is_one_clear_error():
  colour = np.zeros((S, S, 3), np.uint8)
  colour[..., 0] = 255
  with pytest.raises(ValueError, match='RGB .*colour but config.data.channels=1; set --config.data.channels=3'):
    images.conform(colour, S, 1)
  gray_rgb = np.repeat(np.arange(S * S, dtype=np.uint8).reshape(S, S, 1), 3, axis=-1)
  np.testing.assert_array_equal(images.conform(gray_rgb, S, 1), images.conform(gray_rgb[..., :1], S, 1))
