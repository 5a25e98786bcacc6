"""Users' own images as a random-access data source: `root/<class_name>/**/*.{png,jpg,jpeg,bmp,tif,tiff}`.

Two layouts are accepted:

* flat:  `root/<class_name>/...`  -> one split, `'train'`, holding every image. Its examples are ordered by
  the SHA-1 of their relative path (a fixed pseudo-random order that does not change when files are
  added elsewhere), so slices such as `'train[:80%]'` / `'train[80%:]'` give class-mixed, reproducible
  image-level splits. (Patient-level splits need the split layout.)
* split: `root/{train,validation,test}/<class_name>/...` (`val` is accepted as an alias of `validation`).
  Each split is ordered by (class, relative path). A root without a validation folder (only `train/` and
  `test/`) gets one carved from `train/` when asked for (`split(..., carve_validation=True)`, which the pipeline
  passes when the config names 'validation', the default eval_split): `VALIDATION_FRACTION` (10%) of each
  class's training images (at least one of a class with two or more), chosen in a fixed seeded order (SHA-1 of
  `CARVE_SEED` and the relative path, the same on every host and run), are the 'validation' split and no
  longer part of 'train'; one warning line says so and how to choose them yourself.

Class names are the sorted names of the class folders (the union over splits, so a label index means
the same class in every split). Files may sit in nested folders below a class folder; hidden files and
other extensions are ignored.

Images are read at full depth by `stylex_jax.data.images.read_image` (the reader explain/image_files.py
uses too): 1-bit/8-bit grayscale -> uint8 C=1; 16-bit or float grayscale (common for radiographs) -> uint16 /
float32 C=1; RGB/palette/CMYK/YCbCr -> uint8 C=3; alpha dropped (with a warning unless fully opaque); the
EXIF orientation is applied. The pipeline conforms them with `images.conform_levels`
(16-bit/float stretched per image from [min, max] to [0, 1]), so a file reaches the classifier identically
in training and in explanation.
Every file is decoded once when the folder is scanned, which finds the channel count and catches
corrupt files:

* a file Pillow cannot decode (corrupt, truncated, not an image, or larger than `images.max_pixels()`, 64
  megapixels by default, refused from its header) is SKIPPED, and one absl warning
  `skipped N unreadable images, e.g. <path>: <reason>` reports how many and one example;
* files with transparent pixels: alpha dropped, one warning `N image(s) with transparent pixels ..., e.g. <path>`;
* a class folder with no usable image -> ValueError naming the folder (it would be a class the classifier never
  sees, and a wrong class count);
* images with different channel counts (e.g. grayscale and RGB mixed) -> ValueError naming one file
  of each kind with its channel count;
* no images at all -> FileNotFoundError naming the expected layout.

Scans are memoised per process, keyed by the folder listing (paths, sizes, mtimes), so the train,
eval and test pipelines of one run decode the folder once.

`read_image` (the 8-bit form) is used by the `kl_xray` TFDS builder.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import os
import re
import threading
import types
from collections.abc import Mapping, Sequence

import numpy as np
from absl import logging

from stylex_jax.data import images

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')
SPLIT_FOLDERS = {'train': 'train', 'validation': 'validation', 'val': 'validation', 'test': 'test'}
VALIDATION_FRACTION = 0.1  # of each class of train/, carved into 'validation' when the root has no such folder
CARVE_SEED = 0

UnreadableImageError = images.UnreadableImageError  # re-exported: kl_xray and callers catch it from here


def read_image(path: str) -> np.ndarray:
  """Reads one image file as 8-bit (what the kl_xray builder stores): `images.to_uint8(images.read_image(path))`.

  Returns: uint8 [H, W, C], C = 1 (grayscale; 16-bit/float stretched per image, see data/images.py) or 3.
  Raises: UnreadableImageError if the file cannot be decoded.
  """
  return images.to_uint8(images.read_image(path))


def _is_image_file(name: str) -> bool:
  return not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(folder: str) -> list[str]:
  """Image files below `folder` (recursively), as sorted paths relative to `folder`."""
  found = []
  for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith('.'))
    for name in filenames:
      if _is_image_file(name):
        found.append(os.path.relpath(os.path.join(dirpath, name), folder))
  return sorted(found)


def _subdirs(folder: str) -> list[str]:
  return sorted(d for d in os.listdir(folder) if not d.startswith('.') and os.path.isdir(os.path.join(folder, d)))


@dataclasses.dataclass(frozen=True)
class _Entry:
  relpath: str  # relative to the root, '/'-separated
  label: int


def _layout_error(root: str) -> str:
  return (f'no images found under {root!r}. Expected root/<class_name>/*.{{png,jpg,jpeg,bmp,tif,tiff}} '
          f'(e.g. {root}/normal/a.png, {root}/tumour/b.png) or root/{{train,validation,test}}/<class_name>/...; '
          'point config.data.manual_dir at that root')


class ImageFolderSplit(Sequence):
  """One split of an `ImageFolder`: a random-access sequence of examples.

  `split[i]` -> {'image': uint8 | uint16 | float32 [H, W, C] (`images.read_image`), 'label': int in
  [0, num_classes), 'id': str (path relative
  to the root)}. `labels`: int64 [len(split)].
  """

  def __init__(self, root: str, entries: Sequence[_Entry], class_names: tuple[str, ...], channels: int):
    self.root = root
    self._entries = tuple(entries)
    self.class_names = class_names
    self.channels = channels
    self.labels = np.asarray([e.label for e in self._entries], dtype=np.int64)

  def __len__(self) -> int:
    return len(self._entries)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return [self[i] for i in range(*index.indices(len(self)))]
    entry = self._entries[index]
    path = os.path.join(self.root, entry.relpath)
    image = images.read_image(path, notes=[])  # full depth (the pipeline conforms it); the scan reported the notes
    if image.shape[-1] != self.channels:
      raise ValueError(f'{path} now has {image.shape[-1]} channel(s) but the folder was scanned with '
                       f'{self.channels}; the files changed while reading — rerun')
    return {'image': image, 'label': entry.label, 'id': entry.relpath}

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    return [self[int(i)] for i in indices]

  @property
  def ids(self) -> tuple[str, ...]:
    return tuple(e.relpath for e in self._entries)


class ImageFolder:
  """A scanned image folder (see the module docstring for layouts, ordering and error policy).

  Attributes: root, layout ('flat' | 'split'), class_names (sorted), channels (1 | 3), eight_bit (every
  file is 8-bit; else some are 16-bit/float),
  splits (names with their example counts), num_skipped (unreadable files skipped).
  """

  def __init__(self, root: str, *, num_threads: int | None = None):
    if not root:
      raise ValueError("dataset='image_folder' needs its root folder: set --config.data.manual_dir=/path/to/root "
                       '(laid out as root/<class_name>/*.png or root/{train,validation,test}/<class_name>/*.png)')
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
      raise FileNotFoundError(f'image folder root {root!r} does not exist or is not a folder; '
                              'set --config.data.manual_dir to the folder holding the class folders')
    self.root = root
    top = _subdirs(root)
    split_dirs = [d for d in top if d.lower() in SPLIT_FOLDERS]
    if split_dirs:
      others = [d for d in top if d.lower() not in SPLIT_FOLDERS]
      if others:
        raise ValueError(
            f'ambiguous layout under {root!r}: split folders {split_dirs} next to other folders '
            f'{others}; use either root/<class_name>/... or root/{{train,validation,test}}/<class_name>/...')
      names = [SPLIT_FOLDERS[d.lower()] for d in split_dirs]
      if len(set(names)) != len(names):
        raise ValueError(f'{root!r} has both "val" and "validation" folders; keep one')
      self.layout = 'split'
      split_to_dir = dict(zip(names, split_dirs))
      class_names = sorted({c for d in split_dirs for c in _subdirs(os.path.join(root, d))})
    else:
      self.layout = 'flat'
      split_to_dir = {'train': ''}
      class_names = top
    self.class_names = tuple(class_names)
    if not class_names:
      raise FileNotFoundError(_layout_error(root))
    class_index = {c: i for i, c in enumerate(class_names)}

    candidates: dict[str, list[_Entry]] = {}
    for split, sub in split_to_dir.items():
      entries = []
      for c in class_names:
        folder = os.path.join(root, sub, c)
        if os.path.isdir(folder):
          prefix = os.path.join(sub, c) if sub else c
          entries += [
              _Entry(os.path.join(prefix, p).replace(os.sep, '/'), class_index[c]) for p in _list_images(folder)
          ]
      candidates[split] = entries
    all_entries = [e for entries in candidates.values() for e in entries]
    if not all_entries:
      raise FileNotFoundError(_layout_error(root))

    scanned, self.num_skipped = _scan(root, all_entries, num_threads)
    channels_of = {p: c for p, (c, _) in scanned.items()}
    kept = {split: [e for e in entries if e.relpath in channels_of] for split, entries in candidates.items()}
    if not any(kept.values()):
      raise FileNotFoundError(f'none of the {len(all_entries)} image files under {root!r} could be decoded; '
                              'check that they are valid PNG/JPEG/BMP/TIFF files')
    _check_no_empty_class_folder(root, split_to_dir, class_names, candidates, channels_of)
    by_channels: dict[int, str] = {}
    for relpath, c in channels_of.items():
      by_channels.setdefault(c, relpath)
    if len(by_channels) > 1:
      (c1, p1), (c2, p2) = sorted(by_channels.items())[:2]
      raise ValueError(f'mixed channel counts under {root!r}: {p1} has {c1} channel(s) but {p2} has {c2}; '
                       'convert all images to one format (all grayscale or all RGB) first')
    self.channels = next(iter(by_channels))
    self.eight_bit = all(eight_bit for _, eight_bit in scanned.values())
    if self.layout == 'flat':
      kept['train'].sort(key=lambda e: hashlib.sha1(e.relpath.encode('utf-8')).hexdigest())
    self._splits = {
        s: ImageFolderSplit(root, entries, self.class_names, self.channels) for s, entries in kept.items() if entries
    }
    self._carved: dict[str, ImageFolderSplit] | None = None

  @property
  def splits(self) -> dict[str, int]:
    """Split name -> number of examples (the folders as they are, nothing carved)."""
    return {s: len(v) for s, v in self._splits.items()}

  @property
  def can_carve_validation(self) -> bool:
    """A split layout with train/ but no validation folder: 'validation' can be carved from train/."""
    return self.layout == 'split' and 'train' in self._splits and 'validation' not in self._splits

  def _carved_splits(self) -> dict[str, ImageFolderSplit]:
    """The splits with 'validation' carved from 'train' (see the module docstring); computed and logged once."""
    if self._carved is None:
      train = self._splits['train']._entries  # pylint: disable=protected-access
      chosen = set()
      for label in sorted({e.label for e in train}):
        members = sorted((e for e in train if e.label == label),
                         key=lambda e: hashlib.sha1(f'{CARVE_SEED}:{e.relpath}'.encode('utf-8')).hexdigest())
        k = min(len(members) - 1, max(1, round(len(members) * VALIDATION_FRACTION)))
        chosen.update(e.relpath for e in members[:k])
      rest = [e for e in train if e.relpath not in chosen]
      validation = [e for e in train if e.relpath in chosen]
      self._carved = dict(self._splits)
      self._carved['train'] = ImageFolderSplit(self.root, rest, self.class_names, self.channels)
      if validation:
        self._carved['validation'] = ImageFolderSplit(self.root, validation, self.class_names, self.channels)
      logging.warning(
          'image folder %s has no validation/ folder: carved %d of the %d images of train/ into a validation split '
          '(%d%% of each class, fixed seed %d); training uses the other %d. To choose them yourself, move them to '
          '%s/validation/<class_name>/', self.root, len(validation), len(train), round(100 * VALIDATION_FRACTION),
          CARVE_SEED, len(rest), self.root)
    return self._carved

  def split(self, spec: str, *, carve_validation: bool = False) -> ImageFolderSplit:
    """The examples of `spec`: a split name or a TFDS-style slice ('train[:80%]', 'train[100:]', 'a+b').

    carve_validation: when the root has train/ but no validation folder, 'validation' is carved from train/ and
      'train' is the rest (module docstring); pass it for every split of a run, so no image is in both.
    Raises ValueError naming the available splits when `spec` names none of them.
    """
    import tensorflow_datasets as tfds  # for TFDS's own slice grammar, so slices mean the same everywhere

    splits = self._carved_splits() if carve_validation and self.can_carve_validation else self._splits
    available = {s: len(v) for s, v in splits.items()}
    hint = ''
    if self.layout == 'flat':
      hint = (" (flat layout root/<class_name>/...: the only split is 'train'; use slices such as "
              "train_split='train[:80%]', eval_split='train[80%:90%]', test_split='train[90%:]')")
    elif self.layout == 'split':
      hint = (f' (add the folder {self.root}/<split>/<class_name>/..., or set --config.data.train_split / eval_split '
              '/ test_split to the splits above)')
    try:
      instructions = tfds.core.ReadInstruction.from_spec(spec).to_absolute({
          s: types.SimpleNamespace(num_examples=n) for s, n in available.items()
      })
    except (ValueError, KeyError, AssertionError) as e:
      raise ValueError(f'unknown split {spec!r} for image folder {self.root!r}: available splits '
                       f'{sorted(available)}{hint}. ({e})') from None
    entries = []
    for ins in instructions:
      split = splits[ins.splitname]
      start = 0 if ins.from_ is None else ins.from_
      stop = len(split) if ins.to is None else ins.to
      entries += list(split._entries[start:stop])  # pylint: disable=protected-access
    if not entries:
      raise ValueError(f'split {spec!r} of image folder {self.root!r} is empty; available splits {available}{hint}')
    return ImageFolderSplit(self.root, entries, self.class_names, self.channels)


def split_names(spec: str) -> set[str]:
  """The split names a TFDS-style spec reads: 'train[:80%]+validation' -> {'train', 'validation'}."""
  return {re.split(r'[\[(]', part, maxsplit=1)[0].strip() for part in str(spec).split('+')}


def _check_no_empty_class_folder(root: str, split_to_dir: dict[str, str], class_names: Sequence[str],
                                 candidates: dict[str, list[_Entry]], readable: Mapping[str, object]) -> None:
  """Every existing class folder holds at least one readable image, else ValueError naming the folder."""
  for split, sub in split_to_dir.items():
    for label, name in enumerate(class_names):
      folder = os.path.join(root, sub, name)
      if not os.path.isdir(folder):
        continue
      files = [e.relpath for e in candidates[split] if e.label == label]
      if any(p in readable for p in files):
        continue
      why = (f'its {len(files)} image file(s) could not be decoded, e.g. {files[0]}'
             if files else f'no {"/".join(e[1:] for e in IMAGE_EXTENSIONS)} files')
      raise ValueError(f'class folder {folder!r} has no usable images ({why}); every folder under '
                       f'{os.path.join(root, sub) if sub else root!r} is a class: add its images or remove the folder')


def _scan(root: str, entries: Sequence[_Entry], num_threads: int | None) -> tuple[dict[str, tuple[int, bool]], int]:
  """Decodes every file once: relpath -> (channel count, is 8-bit) for the readable ones; logs and counts the rest
  (one line with an example and its reason), and one line for the files whose alpha channel is dropped."""

  def probe(entry: _Entry):
    notes: list[str] = []
    try:
      image = images.read_image(os.path.join(root, entry.relpath), notes=notes)
      return entry.relpath, (image.shape[-1], image.dtype == np.uint8), notes
    except UnreadableImageError as e:
      return entry.relpath, None, [str(e)]

  threads = num_threads or min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    results = list(pool.map(probe, entries))
  unreadable = [(p, notes[0]) for p, c, notes in results if c is None]
  if unreadable:
    logging.warning('skipped %d unreadable images, e.g. %s', len(unreadable), unreadable[0][1])
  alpha = [p for p, c, notes in results if c is not None and images.ALPHA_NOTE in notes]
  if alpha:
    logging.warning(
        '%d image(s) with transparent pixels: the alpha channel is dropped (colour kept as stored), '
        'e.g. %s', len(alpha), os.path.join(root, alpha[0]))
  return {p: c for p, c, _ in results if c is not None}, len(unreadable)


_MEMO: dict[tuple, ImageFolder] = {}
_MEMO_LOCK = threading.Lock()


def _listing_signature(root: str) -> tuple:
  signature = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames.sort()
    for name in sorted(filenames):
      if _is_image_file(name):
        st = os.stat(os.path.join(dirpath, name))
        signature.append((os.path.relpath(os.path.join(dirpath, name), root), st.st_size, st.st_mtime_ns))
  return tuple(signature)


def open_image_folder(root: str) -> ImageFolder:
  """`ImageFolder(root)`, memoised per process while the folder's listing (paths, sizes, mtimes) is unchanged."""
  if not root:
    return ImageFolder(root)  # raises the 'set manual_dir' error
  key_root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(key_root):
    return ImageFolder(root)  # raises the 'does not exist' error
  key = (key_root, hash(_listing_signature(key_root)))
  with _MEMO_LOCK:
    folder = _MEMO.get(key)
  if folder is None:
    folder = ImageFolder(key_root)
    with _MEMO_LOCK:
      while len(_MEMO) >= 4:
        _MEMO.pop(next(iter(_MEMO)))
      _MEMO[key] = folder
  return folder
