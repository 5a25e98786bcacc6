"""The bad-input sweep: every kind of bad input a user can hand the image reader, the image-folder builder, the
pipeline or the explain launcher gets its documented behaviour (docs_bad_input_table.md): one clear error naming
the problem and the fix, or a skip with a count and an example; nothing written before is lost, and a refusal
before computation leaves no folder behind. Fast: no model is trained or restored (at most a second or two each).
"""
import importlib.util
import json
import logging
import os
import struct
import zlib

import numpy as np
import PIL.ImageFile
import pytest
from PIL import Image

from configs import demo
from stylex_jax import stages
from stylex_jax.data import images
from stylex_jax.data.builders import image_folder
from stylex_jax.data.pipeline import Pipeline
from stylex_jax.explain import image_files, media
from stylex_jax.stages import common
from stylex_jax.stages import explain as explain_stage

S = 16

# ------------------------------------------------------------------------------------------------- helpers


def _save(path, array, mode=None, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array, mode=mode).save(path, **kwargs)
  return str(path)


def _gray(seed=0, shape=(S, S)):
  return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data) & 0xffffffff)


def _png_of_zeros(path, side: int, idat: bool = True) -> str:
  """A grayscale PNG of side x side black pixels, streamed (a 13,000² one is < 1 MB on disk); idat=False: the
  header alone (a decompression bomb's declaration)."""
  data = b''
  if idat:
    c = zlib.compressobj(1)
    rows = b'\0' * ((side + 1) * 1000)
    data = b''.join([c.compress(rows) for _ in range(side // 1000)] +
                    [c.compress(b'\0' * ((side + 1) *
                                         (side % 1000))), c.flush()])
  with open(path, 'wb') as f:
    f.write(b'\x89PNG\r\n\x1a\n' + _png_chunk(b'IHDR', struct.pack('>IIBBBBB', side, side, 8, 0, 0, 0, 0)) +
            (_png_chunk(b'IDAT', data) if idat else b'') + _png_chunk(b'IEND', b''))
  return str(path)


def _data_config(root, **overrides):
  config = dict(dataset='image_folder', builder_config='', data_dir='', manual_dir=str(root), image_size=S, channels=1,
                label_threshold=-1, hflip=False, train_split='train', eval_split='train', test_split='train')
  config.update(overrides)
  return config


def _pipeline(root, split='train', **overrides):
  return Pipeline(_data_config(root, **overrides), split, global_batch_size=2, seed=0, train=False, process_index=0,
                  process_count=1)


def _two_class_folder(root, extra=None):
  """root/a/{0,1}.png, root/b/{0,1}.png (gray S x S) plus `extra` {relpath: writer(path)}."""
  for cls in ('a', 'b'):
    for k in range(2):
      _save(os.path.join(root, cls, f'{k}.png'), _gray(k))
  for rel, write in (extra or {}).items():
    os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)
    write(os.path.join(root, rel))
  return str(root)


def _scanned_with_one_skipped(ctx, writer, reason, name='bad.png'):
  """Training: the bad file is skipped with one warning (count + example + reason); explain: one rejected line."""
  root = _two_class_folder(ctx.tmp_path / 'data', {f'a/{name}': writer})
  with ctx.caplog.at_level(logging.WARNING):
    folder = image_folder.ImageFolder(root)
  assert folder.num_skipped == 1 and folder.splits == {'train': 4}
  line = [r.getMessage() for r in ctx.caplog.records if 'skipped 1 unreadable images, e.g.' in r.getMessage()]
  assert len(line) == 1 and name in line[0] and reason in line[0], line
  _, ids, _, rejected = image_files.load_image_files(os.path.join(root, 'a'), S, 1)
  assert len(ids) == 2 and len(rejected) == 1 and name in rejected[0] and reason in rejected[0], rejected


def _one_file_both_paths(ctx, writer, channels=1, name='x.png'):
  """The file through the training pipeline (a one-file folder) and the explain reader: identical results."""
  root = ctx.tmp_path / 'one'
  path = str(root / 'cls' / name)
  os.makedirs(os.path.dirname(path))
  writer(path)
  train = next(_pipeline(root, channels=channels).eval_batches())['image'][0]
  explain, notes = image_files.load_image(path, S, channels)
  np.testing.assert_array_equal(train, explain)
  return path, explain, notes


# ---------------------------------------------------------------------------------------------------- cases


def empty_folder(ctx):
  (ctx.tmp_path / 'empty').mkdir()
  with pytest.raises(FileNotFoundError, match=r'no images found under .*root/<class_name>/'):
    image_folder.ImageFolder(str(ctx.tmp_path / 'empty'))
  _explain_refused_before_anything(ctx, str(ctx.tmp_path / 'empty'))


def glob_matching_nothing(ctx):
  _explain_refused_before_anything(ctx, str(ctx.tmp_path / 'scans' / '*.png'))


def _explain_refused_before_anything(ctx, pattern):
  """launch/explain.py --images PATTERN: refused before the checkpoints are even opened (the workdir has none: a
  later check would name the missing gan), and neither the output folder nor the workdir is created."""
  work, out = ctx.tmp_path / 'work', ctx.tmp_path / 'out'
  with pytest.raises(ValueError, match='no image files match'):
    explain_stage.run(demo.get_config('smoke'), str(work), image_patterns=pattern, output_dir=str(out))
  assert not out.exists() and not work.exists()


def non_image_files(ctx):
  root = ctx.tmp_path / 'data'
  _two_class_folder(root, {'a/notes.txt': lambda p: open(p, 'w').write('x'), 'a/.DS_Store': lambda p: open(p, 'w')})
  assert image_folder.ImageFolder(str(root)).splits == {'train': 4}  # other extensions are ignored, no error
  only_text = ctx.tmp_path / 'text' / 'a'
  os.makedirs(only_text)
  (only_text / 'readme.md').write_text('x')
  with pytest.raises(FileNotFoundError, match='no images found'):
    image_folder.ImageFolder(str(only_text.parent))
  _scanned_with_one_skipped(ctx, lambda p: open(p, 'w').write('not a png'), 'cannot be read as an image')


def truncated_png(ctx):

  def write(path):
    _save(path, _gray(3, (64, 64)))
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])

  _scanned_with_one_skipped(ctx, write, 'cannot be read as an image')


def png_16bit(ctx):
  values = np.random.default_rng(4).integers(100, 4000, size=(S, S), dtype=np.uint16)
  _, got, _ = _one_file_both_paths(ctx, lambda p: _save(p, values))
  stretched = (values - values.min()) / (values.max() - values.min()) * 2 - 1  # per image min-max, not / 255
  np.testing.assert_allclose(got[..., 0], stretched, atol=1e-6)


def rgba(ctx):
  rgba_ = np.random.default_rng(5).integers(0, 256, size=(S, S, 4), dtype=np.uint8)
  with ctx.caplog.at_level(logging.WARNING):
    path, got, notes = _one_file_both_paths(ctx, lambda p: _save(p, rgba_, 'RGBA'), channels=3)
  np.testing.assert_allclose(got, rgba_[..., :3] / 255.0 * 2 - 1, atol=1e-6)  # alpha dropped, colour as stored
  assert notes == [images.ALPHA_NOTE]  # explain prints it as '[explain] converted <path>: ...'
  assert [r.getMessage() for r in ctx.caplog.records if 'transparent' in r.getMessage()] == [
      f'1 image(s) with transparent pixels: the alpha channel is dropped (colour kept as stored), e.g. {path}'
  ]


def palette_png(ctx):
  indices = (_gray(6) % 4).astype(np.uint8)
  palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 12)

  def write(path):
    im = Image.fromarray(indices, 'P')
    im.putpalette(palette)
    im.save(path)

  _, got, _ = _one_file_both_paths(ctx, write, channels=3)
  want = np.asarray(palette[:12], np.float32).reshape(4, 3)[indices] / 255.0 * 2 - 1
  np.testing.assert_allclose(got, want, atol=1e-6)


def cmyk_jpeg(ctx):
  cmyk = np.zeros((S, S, 4), np.uint8)
  cmyk[..., 0] = 255  # full cyan
  _, got, _ = _one_file_both_paths(ctx, lambda p: _save(p, cmyk, 'CMYK', quality=100), channels=3, name='c.jpg')
  assert got.shape == (S, S, 3) and got[..., 0].mean() < -0.8 and got[..., 1:].mean() > 0.8  # cyan as RGB


def exif_rotated_jpeg(ctx):
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 degrees clockwise to display

  def write(path):
    Image.fromarray(_gray(7, (S, S + 8))).save(path, exif=exif, quality=95)

  path, got, notes = _one_file_both_paths(ctx, write, name='r.jpg')
  assert images.read_image(path).shape == (S + 8, S, 1)  # displayed upright: taller than wide
  assert notes == [f'{S + 8}x{S} centre-cropped and resized to {S}x{S}']


def decompression_bomb(ctx):
  _scanned_with_one_skipped(ctx, lambda p: _png_of_zeros(p, 50_000, idat=False), 'decompression bomb')


def png_13000_squared(ctx):
  path = _png_of_zeros(str(ctx.tmp_path / 'huge.png'), 13_000)
  assert os.path.getsize(path) < 2**20  # tiny on disk, 169 megapixels (~1.7 GB) once decoded and conformed
  loads = []
  ctx.monkeypatch.setattr(PIL.ImageFile.ImageFile, 'load', lambda self: loads.append(1))
  with pytest.raises(
      images.UnreadableImageError, match=r'13000x13000 = 169 megapixels is above the limit of 64 '
      r'megapixels \(refused before decoding\).*STYLEX_MAX_IMAGE_PIXELS'):
    images.read_image(path)
  assert not loads  # refused from the header
  ctx.monkeypatch.undo()
  small = _save(str(ctx.tmp_path / 'small.png'), _gray(8))
  ctx.monkeypatch.setenv(images.MAX_PIXELS_ENV, str(S * S - 1))  # the limit is configurable
  with pytest.raises(images.UnreadableImageError, match='above the limit'):
    images.read_image(small)
  ctx.monkeypatch.setenv(images.MAX_PIXELS_ENV, 'lots')
  with pytest.raises(ValueError, match='STYLEX_MAX_IMAGE_PIXELS=.*positive number'):
    images.read_image(small)


def wrong_resolution(ctx):
  values = _gray(9, (20, 30))
  _, got, notes = _one_file_both_paths(ctx, lambda p: _save(p, values))
  assert got.shape == (S, S, 1) and notes == [f'20x30 centre-cropped and resized to {S}x{S}']


def wrong_channel_count(ctx):
  colour = np.random.default_rng(10).integers(0, 256, size=(S, S, 3), dtype=np.uint8)
  root = ctx.tmp_path / 'colour'
  _save(str(root / 'a' / 'x.png'), colour)
  with pytest.raises(ValueError, match=r'RGB \(3-channel\) colour but config.data.channels=1; set '
                     r'--config.data.channels=3'):
    _pipeline(root, channels=1)
  _, _, _, rejected = image_files.load_image_files(str(root / 'a' / 'x.png'), S, 3)  # readable as RGB
  assert not rejected
  with pytest.raises(ValueError, match=r'(?s)none of the image files.*channels=3'):
    image_files.load_image_files(str(root / 'a' / 'x.png'), S, 1)


def nan_float_tiff(ctx):
  values = np.full((S, S), 0.5, np.float32)
  values[2, 3] = np.nan
  _scanned_with_one_skipped(ctx, lambda p: _save(p, values, 'F'), 'NaN or infinite pixels', name='bad.tif')


def label_folder_outside_num_classes(ctx):
  root = ctx.tmp_path / 'grades'
  for grade in ('0', '1', '2'):
    _save(str(root / grade / 'x.png'), _gray(int(grade)))
  with pytest.raises(
      ValueError, match=r"num_classes=2 but .* has 3 classes \('0', '1', '2'\).*set "
      r'--config.data.num_classes=3 or change label_threshold'):
    _pipeline(root, num_classes=2)
  two = ctx.tmp_path / 'two'
  _two_class_folder(two)
  with pytest.raises(ValueError, match=r'label_threshold=2 must be -1 .*set --config.data.label_threshold=-1'):
    _pipeline(two, label_threshold=2)


def html_in_file_name(ctx):
  """Covered by tests/test_report.py::test_page_from_templates (ids, class names, config escaped); run it here,
  and the strip/GIF file name of such an id is plain."""
  spec = importlib.util.spec_from_file_location('report_tests', os.path.join(os.path.dirname(__file__),
                                                                             'test_report.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.test_page_from_templates(ctx.tmp_path)
  assert media.UniqueStems()('<img src=x onerror=alert(1)>.png') == 'img_src_x_onerror_alert_1'


def output_path_escaping_the_export(ctx):
  out = ctx.tmp_path / 'export'
  stems = media.UniqueStems()
  for id_ in ('../../etc/passwd', '/abs/scan.png', 'a/../../b.png', '..', '~/x', 'C:\\win\\y.png'):
    stem = stems(id_)
    path = os.path.realpath(os.path.join(out, 'strips', stem + '.png'))
    assert '/' not in stem and '\\' not in stem and path.startswith(str(out / 'strips') + os.sep), (id_, stem)


def unwritable_workdir(ctx):
  blocker = ctx.tmp_path / 'a_file'
  blocker.write_text('kept')
  with pytest.raises(ValueError, match=r'cannot write to --workdir .*a_file/work: .*choose a writable --workdir'):
    stages.check_workdir(str(blocker / 'work'))
  with pytest.raises(ValueError, match='cannot write explanations to .*choose another'):
    explain_stage.run(demo.get_config('smoke'), str(ctx.tmp_path / 'w'), output_dir=str(blocker / 'out'))
  assert blocker.read_text() == 'kept'


def explain_without_earlier_stages(ctx):
  work = ctx.tmp_path / 'work'
  work.mkdir()
  (work / 'notes.txt').write_text('kept')
  with pytest.raises(FileNotFoundError, match=r'no gan checkpoint .*run the gan stage first'):
    explain_stage.run(demo.get_config('smoke'), str(work))
  assert os.listdir(work) == ['notes.txt']  # no empty explain/ left behind


def images_into_the_split_export(ctx):
  """--images into <workdir>/explain/ is refused (it would be taken for, or replace, the split's export), and an
  export of another source is not the explain stage's (it recomputes instead of reusing it)."""
  config = demo.get_config('smoke')
  work = ctx.tmp_path / 'work'
  export = work / 'explain'
  export.mkdir(parents=True)
  (export / 'report.html').write_text('earlier export')
  scans = ctx.tmp_path / 'scans'
  _save(str(scans / 'x.png'), _gray(11))
  with pytest.raises(ValueError, match=r'would write into .*explain, the export of split .*give --output_dir'):
    explain_stage.run(config, str(work), image_patterns=str(scans))
  assert os.listdir(export) == ['report.html'] and (export / 'report.html').read_text() == 'earlier export'
  own = explain_stage.split_source(config.explain.split, config.explain.num_images)
  provenance = {'classifier': 3, 'gan': 4, 'encoder': 4}  # the same checkpoints: only the source decides
  for source, complete in (({
      'kind': 'images',
      'patterns': [str(scans)]
  }, False), ({
      **own, 'num_images': 3
  }, False), (None, False), (own, True)):
    (export / 'schema.json').write_text(
        json.dumps({
            'config': json.loads(json.dumps(config.to_dict(), default=str)),
            'source': source,
            'provenance': provenance
        }))
    (export / 'summary.json').write_text('{"images": 1}')
    stage = common.open_export_stage('explain', str(work), config, provenance, source=own)
    assert (stage.completed is not None) == complete, source


def empty_class_folder(ctx):
  root = ctx.tmp_path / 'data'
  _two_class_folder(root)
  (root / 'c').mkdir()
  with pytest.raises(ValueError, match=r"class folder '.*data/c' has no usable images \(no png/jpg"):
    _pipeline(root, num_classes=3)  # three folders, three classes: training must still not start
  (root / 'c' / 'broken.png').write_bytes(b'junk')
  with pytest.raises(
      ValueError, match=r"class folder '.*data/c' has no usable images \(its 1 image file\(s\) "
      'could not be decoded, e.g. c/broken.png'):
    image_folder.ImageFolder(str(root))


def only_train_and_test_folders(ctx):
  root = ctx.tmp_path / 'split'
  for split, n in (('train', 10), ('test', 2)):
    for cls in ('a', 'b'):
      for k in range(n):
        _save(str(root / split / cls / f'{k}.png'), _gray(k))
  overrides = dict(train_split='train', eval_split='validation', test_split='test')
  with ctx.caplog.at_level(logging.WARNING):
    validation = _pipeline(root, 'validation', **overrides)
    train = _pipeline(root, 'train', **overrides)
  assert validation.num_examples == 2 and sorted(validation.labels.tolist()) == [0, 1]  # 10% of each class
  assert train.num_examples == 18
  val_ids = {i for b in validation.eval_batches() for i, m in zip(b['id'], b['mask']) if m}
  train_ids = {i for b in train.eval_batches() for i, m in zip(b['id'], b['mask']) if m}
  assert not val_ids & train_ids and all(i.startswith('train/') for i in val_ids)
  lines = [r.getMessage() for r in ctx.caplog.records if 'no validation/ folder' in r.getMessage()]
  assert len(lines) == 1 and 'carved 2 of the 20 images of train/' in lines[0], lines
  assert _pipeline(root, 'train', eval_split='test').num_examples == 20  # 'validation' not named: nothing carved


CASES = [
    empty_folder, glob_matching_nothing, non_image_files, truncated_png, png_16bit, rgba, palette_png, cmyk_jpeg,
    exif_rotated_jpeg, decompression_bomb, png_13000_squared, wrong_resolution, wrong_channel_count, nan_float_tiff,
    label_folder_outside_num_classes, html_in_file_name, output_path_escaping_the_export, unwritable_workdir,
    explain_without_earlier_stages, images_into_the_split_export, empty_class_folder, only_train_and_test_folders
]


class _Context:

  def __init__(self, tmp_path, caplog, monkeypatch):
    self.tmp_path, self.caplog, self.monkeypatch = tmp_path, caplog, monkeypatch


@pytest.mark.parametrize('case', CASES, ids=[c.__name__ for c in CASES])
def test_bad_input(case, tmp_path, caplog, monkeypatch):
  image_folder._MEMO.clear()  # pylint: disable=protected-access  (each case scans its own folders)
  case(_Context(tmp_path, caplog, monkeypatch))
