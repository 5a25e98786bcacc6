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
"""
from __future__ import annotations

import glob
import os
from typing import Sequence

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
  images, ids, notes, rejected = [], [], [], []
  for path in expand_patterns(patterns):
    try:
      image, file_notes = load_image(path, image_size, channels)
    except ValueError as e:
      rejected.append(f'{path}: {e}')
      continue
    images.append(image.astype(np.float32))
    ids.append(path)
    notes.extend(f'{path}: {n}' for n in file_notes)
  if not images:
    raise ValueError('none of the image files can be explained:\n  ' + '\n  '.join(rejected))
  return np.stack(images), ids, notes, rejected
