"""Reads users' own image files for explanation (launch/explain.py --images 'dir/*.png'), without TensorFlow.

Every readable file becomes float32 [S, S, C] in [-1, 1], the model's input:
  * size: centre-cropped to a square (the shorter side) and resized to S x S with Pillow's antialiased
    bilinear filter (the training pipeline's rule), noted once per file;
  * depth: 8-bit as is; 16-bit (common for radiographs) scaled by 255/65535; float images must lie in [0, 1];
  * channels: palette/alpha images are flattened to RGB/L; grayscale is replicated when the model takes RGB;
    RGB whose three channels are equal becomes grayscale when the model takes one channel; true colour
    with a one-channel model is REJECTED (no silent colour -> gray: in histology the colour is the stain).
A file that cannot be used is rejected with one line naming it and the reason, and the rest are still
returned, so one bad file never stops a batch of explanations.
"""
from __future__ import annotations

import glob
import os
from typing import Sequence

import numpy as np
from PIL import Image

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
      files.update(os.path.join(pattern, f) for f in os.listdir(pattern)
                   if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(pattern, f)))
    else:
      files.update(f for f in glob.glob(pattern) if os.path.isfile(f))
  if not files:
    raise ValueError(f'no image files match {list(patterns)}; give a glob such as --images "scans/*.png" '
                     'or a directory of images')
  return sorted(files)


def _to_array(image: Image.Image) -> np.ndarray:
  """PIL image -> float32 [H, W, C] in [0, 1], C in {1, 3}."""
  if image.mode in ('P', 'PA', 'RGBA', 'LA', 'CMYK', 'YCbCr', 'HSV', 'LAB', '1'):
    image = image.convert('RGB' if image.mode not in ('LA', '1') else 'L')
  array = np.asarray(image)
  if image.mode.startswith('I;16') or (image.mode == 'I' and array.max(initial=0) > 255):
    array = array.astype(np.float32) / 65535.0
  elif image.mode == 'F':
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
      raise ValueError('has NaN or infinite pixels')
    if array.min() < 0 or array.max() > 1:
      raise ValueError(f'is a float image with values in [{array.min():.3g}, {array.max():.3g}]; '
                       'save it as 8/16-bit or scale it to [0, 1]')
  else:
    array = array.astype(np.float32) / 255.0
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[-1] not in (1, 3):
    raise ValueError(f'has an unsupported layout {array.shape} (mode {image.mode})')
  return array


def _square_resize(array: np.ndarray, size: int) -> np.ndarray:
  """float [H, W, C] in [0, 1] -> centre square crop resized to [size, size, C] (antialiased bilinear)."""
  h, w, c = array.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  array = array[top:top + side, left:left + side]
  if side == size:
    return array
  return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(array[..., k])).resize(
      (size, size), Image.Resampling.BILINEAR)) for k in range(c)], axis=-1)


def load_image(path: str, image_size: int, channels: int) -> tuple[np.ndarray, list[str]]:
  """One file -> (float32 [image_size, image_size, channels] in [-1, 1], notes on what was converted).

  Raises ValueError (message without the path) when the file cannot be used.
  """
  try:
    with Image.open(path) as image:
      image.load()
      array = _to_array(image)
  except (OSError, SyntaxError, Image.DecompressionBombError) as e:
    raise ValueError(f'cannot be read as an image ({type(e).__name__}: {e})') from None
  notes = []
  c = array.shape[-1]
  if c != channels:
    if c == 1:
      array = np.repeat(array, 3, axis=-1)
      notes.append('grayscale replicated to RGB')
    elif np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 0], array[..., 2]):
      array = array[..., :1]
      notes.append('gray stored as RGB read as one channel')
    else:
      raise ValueError('is a colour image but the model takes one channel; convert it to grayscale yourself '
                       'if that is meaningful for this modality')
  h, w = array.shape[:2]
  if (h, w) != (image_size, image_size):
    array = _square_resize(array, image_size)
    notes.append(f'{h}x{w} centre-cropped and resized to {image_size}x{image_size}')
  return np.clip(array, 0.0, 1.0) * 2.0 - 1.0, notes


def load_image_files(patterns: str | Sequence[str], image_size: int, channels: int
                     ) -> tuple[np.ndarray, list[str], list[str], list[str]]:
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
