"""TFDS builder `kl_xray`: knee radiographs graded Kellgren–Lawrence 0–4 (manual download).

Source: Chen P. (2018/2019), "Knee Osteoarthritis Severity Grading Dataset", Mendeley Data,
doi:10.17632/56rmx5bjcr.1 — knee joints cropped from Osteoarthritis Initiative (OAI) radiographs,
split by the authors into train/val/test (plus an optional 'auto_test' set of automatically
detected joints). Download and unzip it yourself, then point `manual_dir` (config.data.manual_dir)
at the folder that holds the split folders:

    <manual_dir>/train/{0,1,2,3,4}/*.png
    <manual_dir>/val/{0,1,2,3,4}/*.png        -> split 'validation'
    <manual_dir>/test/{0,1,2,3,4}/*.png
    <manual_dir>/auto_test/{0,...,4}/*.png     -> split 'auto_test' (optional)

If `manual_dir` holds exactly one folder with that layout below it (e.g. the unzipped
`KneeXrayData/ClsKLData/kneeKL224/`), that folder is used.

Stored as: `image` uint8 (None, None, 1) PNG at the source resolution (224² in the published
release; resizing is the pipeline's job), converted to grayscale if a file was saved as RGB;
`label` ClassLabel(KL0..KL4); `id` Text, the path relative to the split root's parent
('train/2/9001695L.png'; the OAI subject id is in the file name). Unreadable files are skipped with
one warning (as in `image_folder`). TFDS shuffles examples by key, so slices like 'train[:10%]' are
class-mixed.

Missing or mis-laid-out manual data -> FileNotFoundError naming the expected layout.
"""
from __future__ import annotations

import io
import os

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath
from PIL import Image

from stylex_jax.data import phantoms
from stylex_jax.data.builders import image_folder

SPLIT_DIRS = {'train': 'train', 'val': 'validation', 'test': 'test', 'auto_test': 'auto_test'}
REQUIRED_SPLIT_DIRS = ('train', 'val', 'test')
GRADE_DIRS = ('0', '1', '2', '3', '4')

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the "Knee Osteoarthritis Severity Grading Dataset" (Chen 2018, Mendeley Data,
https://data.mendeley.com/datasets/56rmx5bjcr/1), unzip it, and pass the folder that contains the
split folders as manual_dir (config.data.manual_dir, or
tfds.download.DownloadConfig(manual_dir=...)). Expected layout:
  <manual_dir>/train/{0,1,2,3,4}/*.png
  <manual_dir>/val/{0,1,2,3,4}/*.png
  <manual_dir>/test/{0,1,2,3,4}/*.png
  <manual_dir>/auto_test/{0,1,2,3,4}/*.png   (optional)
"""


def layout_error(manual_dir: str | None, problem: str) -> FileNotFoundError:
  """The one error for missing or mis-laid-out manual data."""
  where = manual_dir if manual_dir else '(not set)'
  return FileNotFoundError(
      f'kl_xray manual data: {problem} (manual_dir={where}). Expected <manual_dir>/{{train,val,test}}/{{0,1,2,3,4}}/*.png '
      '(Chen 2018 "Knee Osteoarthritis Severity Grading Dataset", Mendeley Data 56rmx5bjcr); download and unzip it, '
      'then set --config.data.manual_dir=/path/to/that/folder')


def _has_layout(folder: str) -> bool:
  return all(os.path.isdir(os.path.join(folder, d)) for d in REQUIRED_SPLIT_DIRS)


def find_root(manual_dir: str) -> str:
  """The folder holding train/val/test: `manual_dir` itself or its only descendant (<= 3 levels) that has them."""
  if not manual_dir or not os.path.isdir(manual_dir):
    raise layout_error(manual_dir, 'the folder does not exist')
  if _has_layout(manual_dir):
    return manual_dir
  found = []
  for dirpath, dirnames, _ in os.walk(manual_dir):
    depth = os.path.relpath(dirpath, manual_dir).count(os.sep) + (dirpath != manual_dir)
    if depth >= 1 and _has_layout(dirpath):
      found.append(dirpath)
      dirnames[:] = []
    elif depth >= 3:
      dirnames[:] = []
    else:
      dirnames.sort()
  if len(found) == 1:
    logging.info('kl_xray: using %s below manual_dir %s', found[0], manual_dir)
    return found[0]
  if len(found) > 1:
    raise layout_error(manual_dir, f'several candidate folders {found}; point manual_dir at one of them')
  present = sorted(os.listdir(manual_dir))[:10]
  raise layout_error(manual_dir, f'no train/, val/ and test/ folders found (it holds {present})')


def _encode_gray_png(path: str) -> bytes:
  """The file as a 1-channel PNG. Raises image_folder.UnreadableImageError."""
  image = image_folder.read_image(path)
  if image.shape[-1] == 3:
    if np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2]):
      image = image[..., :1]
    else:  # ITU-R BT.601 luma, as Pillow's convert('L')
      luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
      image = np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0]).save(buffer, format='PNG')
  return buffer.getvalue()


class KlXray(tfds.core.GeneratorBasedBuilder):
  """Knee radiographs (OAI crops) graded Kellgren-Lawrence 0-4; manual download."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  code_path = epath.Path(__file__)  # as in synthetic_knee.PhantomBuilder: TFDS's derivation needs importlib_resources

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format='png'),
            'label': tfds.features.ClassLabel(names=list(phantoms.KL_GRADE_NAMES)),
            'id': tfds.features.Text(),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://data.mendeley.com/datasets/56rmx5bjcr/1',
        citation='Chen, Pingjun (2018), "Knee Osteoarthritis Severity Grading Dataset", Mendeley Data, V1, '
        'doi: 10.17632/56rmx5bjcr.1',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    try:
      manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError:  # tfds: manual dir missing or empty
      raise layout_error(
          os.fspath(dl_manager._manual_dir) if dl_manager._manual_dir else None,  # pylint: disable=protected-access
          'the folder does not exist or is empty') from None
    root = find_root(manual_dir)
    splits = {}
    for folder, split in SPLIT_DIRS.items():
      split_root = os.path.join(root, folder)
      if not os.path.isdir(split_root):
        continue  # only auto_test may be absent (find_root checked the others)
      unexpected = [
          d for d in os.listdir(split_root)
          if os.path.isdir(os.path.join(split_root, d)) and d not in GRADE_DIRS and not d.startswith('.')
      ]
      if unexpected:
        raise layout_error(manual_dir,
                           f'{split_root} has folders {sorted(unexpected)}; expected only {list(GRADE_DIRS)}')
      files = [(os.path.join(folder, g, name), int(g)) for g in GRADE_DIRS if os.path.isdir(os.path.join(split_root, g))
               for name in sorted(os.listdir(os.path.join(split_root, g))) if image_folder._is_image_file(name)]  # pylint: disable=protected-access
      if not files:
        raise layout_error(manual_dir, f'{split_root} holds no images in {{0,1,2,3,4}}/')
      splits[split] = self._generate_examples(root, files)
    return splits

  def _generate_examples(self, root: str, files: list[tuple[str, int]]):
    skipped = []
    for relpath, grade in files:
      try:
        png = _encode_gray_png(os.path.join(root, relpath))
      except image_folder.UnreadableImageError:
        skipped.append(relpath)
        continue
      key = relpath.replace(os.sep, '/')
      yield key, {'image': png, 'label': grade, 'id': key}
    if skipped:
      logging.warning('skipped %d unreadable images, e.g. %s', len(skipped), os.path.join(root, skipped[0]))
