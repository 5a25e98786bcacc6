"""Reads users' own image files for explanation (launch/explain.py --images 'dir/*.png'), without TensorFlow.

Every readable file becomes float32 [S, S, C] in [-1, 1], the model's input, by the training pipeline's own
reader and rule (`stylex_jax.data.images`), so a radiograph is explained exactly as the classifier saw it:
  * orientation: the EXIF orientation is applied;
  * size: centre-cropped to a square (the shorter side) and resized to S x S with Pillow's antialiased
    bilinear filter, noted once per file;
  * depth: 8-bit / 255 (rounded to 8-bit levels after resizing, as the training cache does); 16-bit (common
    for radiographs) and float stretched per image from [min, max] to [0, 1] (a constant image: / 65535, or
    float clipped to [0, 1]);
  * size limit: a file above `images.max_pixels()` (64 megapixels unless STYLEX_MAX_IMAGE_PIXELS says
    otherwise) is rejected from its header, before it is decoded;
  * channels: palette images become RGB; alpha is dropped (a note naming the file unless fully opaque); grayscale is
    replicated when the model takes RGB; RGB whose three channels are equal becomes
    grayscale when the model takes one channel; true colour with a one-channel model is REJECTED (no silent
    colour -> gray: in histology the colour is the stain).
A file that cannot be used is rejected with one line naming it and the reason, and the rest are still
returned, so one bad file never stops a batch of explanations.

Many files (launch/explain.py --images DIR over thousands of images): `ImageFiles` lists the files and reads
only their headers up front (no match, an empty folder or no file with a usable header fails there, before any
computation), then decodes pixels batch by batch (`ImageFiles.batches`), so memory holds one batch of images,
never all of them; `batches(start=...)` resumes at a position it reported.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from typing import Iterator, NamedTuple, Sequence

import numpy as np

from stylex_jax.data import images as images_lib

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.gif', '.webp')


def expand_patterns(patterns: str | Sequence[str]) -> list[str]:
  """'a/*.png,b/x.jpg' or a list of globs/paths/directories -> sorted unique file paths.

  A directory stands for the image files directly inside it. No match at all -> ValueError.
  """
  if isinstance(patterns, str):
    patterns = [p for p in patterns.split(',') if p.strip()]
  files = set()
  for pattern in patterns:
    pattern = os.path.expanduser(pattern.strip())
    if os.path.isdir(pattern):
      files.update(
          os.path.join(pattern, f)
          for f in os.listdir(pattern)
          if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(pattern, f)))
    else:
      files.update(f for f in glob.glob(pattern) if os.path.isfile(f))
  if not files:
    raise ValueError(f'no image files match {list(patterns)}; give a glob such as --images "scans/*.png" '
                     'or a directory of images')
  return sorted(files)


def load_image(path: str, image_size: int, channels: int) -> tuple[np.ndarray, list[str]]:
  """One file -> (float32 [image_size, image_size, channels] in [-1, 1], notes on what was converted).

  Read and conformed exactly as the training pipeline reads an image folder (`stylex_jax.data.images`).
  Raises ValueError (message without the path) when the file cannot be used.
  """
  read_notes: list[str] = []
  try:
    raw = images_lib.read_image(path, notes=read_notes)
  except images_lib.UnreadableImageError as e:
    message = str(e)
    raise ValueError(message[len(path) + 2:] if message.startswith(f'{path}: ') else message) from None
  levels, notes = images_lib.conform_levels(raw, image_size, channels, where='the image')
  return images_lib.to_float(levels), read_notes + notes


def load_image_files(patterns: str | Sequence[str], image_size: int,
                     channels: int) -> tuple[np.ndarray, list[str], list[str], list[str]]:
  """Reads every matching file: (images float32 [N, S, S, C] in [-1, 1], ids (the paths), notes, rejected).

  notes: one line per converted file; rejected: one line per unusable file ('path: reason'). If no file is
  usable -> ValueError listing the reasons.
  """
  decoded = _Decoded()
  for path in expand_patterns(patterns):
    decoded.add(path, image_size, channels)
  if not decoded.images:
    raise ValueError('none of the image files can be explained:\n  ' + '\n  '.join(decoded.rejected))
  return np.stack(decoded.images), decoded.ids, decoded.notes, decoded.rejected


@dataclasses.dataclass
class _Decoded:
  """Files decoded so far (by `load_image_files` or one batch of `ImageFiles.batches`): the usable ones' images
  (float32 [S, S, C] in [-1, 1]) and ids (paths), 'path: note' lines, 'path: reason' of the unusable ones."""
  images: list[np.ndarray] = dataclasses.field(default_factory=list)
  ids: list[str] = dataclasses.field(default_factory=list)
  notes: list[str] = dataclasses.field(default_factory=list)
  rejected: list[str] = dataclasses.field(default_factory=list)

  def add(self, path: str, image_size: int, channels: int) -> None:
    """Decodes and conforms one file (`load_image`) into the lists, or records why it cannot be used."""
    try:
      image, file_notes = load_image(path, image_size, channels)
    except ValueError as e:
      self.rejected.append(f'{path}: {e}')
      return
    self.images.append(image.astype(np.float32))
    self.ids.append(path)
    self.notes.extend(f'{path}: {n}' for n in file_notes)


class FileBatch(NamedTuple):
  """One batch of `ImageFiles.batches`: images float32 [b, S, S, C] in [-1, 1], ids (the paths), labels [b] (-1),
  position (the index into `ImageFiles.paths` after this batch's last file: `batches(start=position)` continues
  with the next batch), notes ('path: what was converted') and rejected ('path: reason') met on the way."""
  images: np.ndarray
  ids: list[str]
  labels: np.ndarray
  position: int
  notes: list[str]
  rejected: list[str]


class ImageFiles:
  """The user's files: listed and checked from their headers now, decoded batch by batch later.

    files = ImageFiles('scans/*.png', image_size=64, channels=1)   # ValueError: no match / no usable header
    for batch in files.batches(16):                                # decodes 16 usable files at a time
      ...

  paths: the files whose header is usable (sorted); rejected: 'path: reason' of the others (header refusals:
  not an image, above the pixel limit, unsupported mode). A file with a usable header that fails to decode or to
  conform (truncated data, true colour for a one-channel model) is rejected when its batch is read.
  """

  def __init__(self, patterns: str | Sequence[str], image_size: int, channels: int):
    self.image_size, self.channels = int(image_size), int(channels)
    self.paths: list[str] = []
    self.rejected: list[str] = []
    for path in expand_patterns(patterns):
      try:
        images_lib.check_header(path)
      except images_lib.UnreadableImageError as e:
        self.rejected.append(str(e))
        continue
      self.paths.append(path)
    if not self.paths:
      raise ValueError('none of the image files can be explained:\n  ' + '\n  '.join(self.rejected))

  def __len__(self) -> int:
    return len(self.paths)

  def fingerprint(self) -> str:
    """sha256 of the usable files' paths, sizes and modification times: a resumed export checks it is explaining
    the same files (a file added, removed or rewritten changes it)."""
    h = hashlib.sha256()
    for path in self.paths:
      st = os.stat(path)
      h.update(f'{path}\0{st.st_size}\0{st.st_mtime_ns}\n'.encode('utf-8', 'surrogateescape'))
    return h.hexdigest()

  def batches(self, batch_size: int, start: int = 0) -> Iterator[FileBatch]:
    """Decodes and conforms the files from `paths[start:]`, yielding batches of `batch_size` usable images (the
    last may be smaller); files that fail are skipped with a line in the batch's `rejected`."""
    if batch_size < 1 or not 0 <= start <= len(self.paths):
      raise ValueError(f'batch_size={batch_size} must be >= 1 and start={start} in [0, {len(self.paths)}]')
    decoded = _Decoded()
    for position in range(start, len(self.paths)):
      decoded.add(self.paths[position], self.image_size, self.channels)
      if len(decoded.images) == batch_size:
        yield self._batch(decoded, position + 1)
        decoded = _Decoded()
    if decoded.images or decoded.rejected:
      yield self._batch(decoded, len(self.paths))

  def _batch(self, decoded: _Decoded, position: int) -> FileBatch:
    images = (np.stack(decoded.images) if decoded.images else np.zeros(
        (0, self.image_size, self.image_size, self.channels), np.float32))
    return FileBatch(images, decoded.ids, np.full(len(decoded.ids), -1, np.int64), position, decoded.notes,
                     decoded.rejected)
