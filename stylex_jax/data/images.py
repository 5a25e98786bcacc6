"""The one image reader and the one conforming rule, shared by training (pipeline, image folders, kl_xray) and
explanation (explain/image_files.py, explain/invert.py). numpy + Pillow only: no TensorFlow.

    raw = read_image('knee.png')                    # uint8 | uint16 | float32 [H, W, C], C in {1, 3}
    x = conform(raw, image_size=64, channels=1)     # float32 [64, 64, 1] in [-1, 1], the model's input

Reading (`read_image`): the EXIF orientation is applied; 1-bit/8-bit grayscale -> uint8 C=1; 16-bit
grayscale (modes I;16*, and I, which Pillow < 10.3 uses for 16-bit PNGs) -> uint16 C=1; float (mode F) ->
float32 C=1 (NaN/Inf rejected); RGB/palette/CMYK/YCbCr/LAB/HSV -> uint8 C=3. An alpha channel that is fully
opaque is dropped; a non-opaque one is dropped too (the colour as stored, as Pillow's convert('RGB') and both
paths always did), with a one-line note naming the file, never silently (a warning, or a line appended to the
caller's `notes` list, which the image folder scan and explain/image_files.py summarise).

Size limit: a file whose header declares more than `max_pixels()` pixels (default `DEFAULT_MAX_PIXELS`, 64
megapixels, e.g. 8000 x 8000; set the environment variable STYLEX_MAX_IMAGE_PIXELS to change it) is refused
from its header, BEFORE anything is decoded: a 13,000 x 13,000 PNG is 164 KB on disk but ~1.7 GB once decoded
and conformed. Headers declaring more than twice Pillow's own limit (decompression bombs) are refused by Pillow.

`check_header` reads only a file's header (size, mode: the same refusals, no pixels decoded), so thousands of
files can be checked before any computation and decoded later, batch by batch.

Intensity (`unit_range`, the ONE definition): 8-bit images are divided by 255. 16-bit and float images are
stretched per image from their [min, max] to [0, 1] (radiographs rarely use the full 16-bit range; the
training path has always done this, and tests/test_builders.py::test_read_image_modes pins it); a constant
16-bit or float image has no range to stretch and is scaled by its type's full range instead (16-bit / 65535,
float clipped to [0, 1]).

Conforming (`conform_levels`, `conform`): centre-crop to a square (the shorter side), resize to S x S with
Pillow's antialiased bilinear filter (like tf.image.resize(antialias=True) / jax.image.resize), fix the
channels (grayscale -> RGB by replication; RGB whose three channels are equal -> grayscale; true colour ->
grayscale is an ERROR: in histology the colour is the stain). 8-bit images stay 8-bit levels (resized in
float32 and rounded: what the training pipeline caches); 16-bit/float images become float32 in [0, 1]
(no 8-bit rounding). `to_float` maps either to float32 in [-1, 1].
"""
from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image, ImageOps

_GRAY_MODES = ('1', 'L')
_SIXTEEN_BIT_MODES = ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N')
_ALPHA_MODES = {'LA': 'L', 'La': 'L', 'RGBA': 'RGB', 'RGBa': 'RGB', 'PA': 'RGB'}
_COLOUR_MODES = ('RGB', 'RGBX', 'P', 'CMYK', 'YCbCr', 'LAB', 'HSV')
DEFAULT_MAX_PIXELS = 64 * 1000 * 1000
MAX_PIXELS_ENV = 'STYLEX_MAX_IMAGE_PIXELS'
ALPHA_NOTE = 'has transparent pixels; the alpha channel is dropped (colour kept as stored)'


class UnreadableImageError(ValueError):
  """A file that Pillow cannot decode into an image (corrupt, truncated, unsupported)."""


# ----------------------------------------------------------------------------------------------- reading


def max_pixels() -> int:
  """The largest image (width x height) `read_image` decodes: $STYLEX_MAX_IMAGE_PIXELS, else 64 megapixels."""
  value = os.environ.get(MAX_PIXELS_ENV, '').strip()
  if not value:
    return DEFAULT_MAX_PIXELS
  try:
    limit = int(float(value))
  except ValueError:
    limit = 0
  if limit < 1:
    raise ValueError(f'{MAX_PIXELS_ENV}={value!r} must be a positive number of pixels, e.g. 100000000')
  return limit


def _flatten_alpha(im: Image.Image, path: str, notes: list[str] | None) -> np.ndarray:
  """An image with alpha -> uint8 [H, W, C]: the colour channels as stored; a non-opaque alpha gets one note."""
  array = np.asarray(im.convert('LA' if _ALPHA_MODES.get(im.mode) == 'L' else 'RGBA'))
  if array[..., -1].min() < 255:  # tests/test_builders.py::test_read_image_modes pins dropping (not compositing)
    if notes is None:
      warnings.warn(f'{path}: {ALPHA_NOTE}', stacklevel=3)
    else:
      notes.append(ALPHA_NOTE)
  return np.ascontiguousarray(array[..., :-1])


_KNOWN_MODES = _GRAY_MODES + _SIXTEEN_BIT_MODES + ('F',) + tuple(_ALPHA_MODES) + _COLOUR_MODES


def check_header(path: str) -> tuple[int, int, str]:
  """Reads only the header of one image file (no pixels are decoded): (width, height, mode).

  Cheap (a few hundred bytes per file), so a caller can check thousands of files before any computation and
  decode them later, batch by batch. Raises UnreadableImageError (message starting with the path) for a file
  Pillow cannot identify, a header above `max_pixels()` or a mode `read_image` does not support; a file that
  passes may still fail `read_image` (e.g. truncated pixel data).
  """
  limit = max_pixels()
  try:
    with Image.open(path) as im:
      width, height = im.size
      mode = im.mode
  except Image.DecompressionBombError as e:
    raise UnreadableImageError(f'{path}: refused before decoding, a possible decompression bomb ({e}); downscale '
                               'the file if it is a real image') from None
  except (OSError, ValueError, SyntaxError) as e:
    raise UnreadableImageError(f'{path}: cannot be read as an image ({type(e).__name__}: {e})') from e
  if width * height > limit:
    raise UnreadableImageError(
        f'{path}: {width}x{height} = {width * height / 1e6:.0f} megapixels is above the limit of '
        f'{limit / 1e6:.0f} megapixels (refused before decoding); downscale the file, or raise the limit '
        f'with {MAX_PIXELS_ENV}=<pixels>')
  if width == 0 or height == 0:
    raise UnreadableImageError(f'{path}: empty image of size {width}x{height}')
  if mode not in _KNOWN_MODES:
    raise UnreadableImageError(f'{path}: unsupported image mode {mode!r}')
  return width, height, mode


def read_image(path: str, notes: list[str] | None = None) -> np.ndarray:
  """Reads one image file, EXIF orientation applied (see the module docstring for modes, alpha and size).

  notes: where a note on a lossy conversion (`ALPHA_NOTE`) is appended; None: it is a warning instead.
  Returns: [H, W, C], C in {1, 3}: uint8 (8-bit, palette, colour), uint16 (16-bit grayscale) or float32
    (float grayscale, finite), values as stored (no scaling).
  Raises: UnreadableImageError (a ValueError, message starting with the path) if the file cannot be used,
    including a header declaring more than `max_pixels()` pixels (refused before decoding).
  """
  limit = max_pixels()
  try:
    with Image.open(path) as im:
      width, height = im.size
      if width * height > limit:
        raise UnreadableImageError(
            f'{path}: {width}x{height} = {width * height / 1e6:.0f} megapixels is above the limit of '
            f'{limit / 1e6:.0f} megapixels (refused before decoding); downscale the file, or raise the limit '
            f'with {MAX_PIXELS_ENV}=<pixels>')
      im.load()
      im = ImageOps.exif_transpose(im)
      mode = im.mode
      if mode == 'P' and 'transparency' in im.info:
        mode = 'PA'
      if mode in _GRAY_MODES:
        array = np.asarray(im.convert('L'), dtype=np.uint8)
      elif mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(im)
        if values.size and (values.min() < 0 or values.max() > 65535):
          raise UnreadableImageError(f'{path}: a 32-bit integer image (values {values.min()}..{values.max()}); '
                                     'save it as 8/16-bit or float')
        array = values.astype(np.uint16)
      elif mode == 'F':
        array = np.asarray(im, dtype=np.float32)
        if not np.isfinite(array).all():
          raise UnreadableImageError(f'{path}: has NaN or infinite pixels')
      elif mode in _ALPHA_MODES:
        array = _flatten_alpha(im, path, notes)
      elif mode in _COLOUR_MODES:
        array = np.asarray(im.convert('RGB'), dtype=np.uint8)
      else:
        raise UnreadableImageError(f'{path}: unsupported image mode {mode!r}')
  except UnreadableImageError:
    raise
  except Image.DecompressionBombError as e:
    raise UnreadableImageError(f'{path}: refused before decoding, a possible decompression bomb ({e}); downscale '
                               'the file if it is a real image') from None
  except (OSError, ValueError, SyntaxError) as e:
    raise UnreadableImageError(f'{path}: cannot be read as an image ({type(e).__name__}: {e})') from e
  if array.ndim == 2:
    array = array[..., None]
  if array.ndim != 3 or array.shape[0] == 0 or array.shape[1] == 0:
    raise UnreadableImageError(f'{path}: empty image of shape {array.shape}')
  return np.ascontiguousarray(array)


# --------------------------------------------------------------------------------------------- intensity


def _scaled(image: np.ndarray, top: float) -> np.ndarray:
  """`unit_range(image) * top`, computed as (x - min) * top / (max - min) so that top=255 rounds exactly."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image * (top / 255.0)
  if image.dtype != np.uint16 and not np.issubdtype(image.dtype, np.floating):
    raise ValueError(f'expected a uint8, uint16 or float image, got {image.dtype}')
  values = image.astype(np.float64)
  if values.size:
    lo, hi = float(values.min()), float(values.max())
    if hi > lo:
      return (values - lo) * top / (hi - lo)
  full = values / 65535.0 if image.dtype == np.uint16 else np.clip(values, 0.0, 1.0)
  return full * top


def unit_range(image: np.ndarray) -> np.ndarray:
  """The intensity rule: uint8 -> x / 255; uint16/float -> per-image min-max stretch (constant: full range).

  image: uint8 | uint16 | float [H, W, C] -> float64 [H, W, C] in [0, 1].
  """
  return _scaled(image, 1.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
  """uint8 | uint16 | float [H, W, C] -> uint8 [H, W, C] (`unit_range` * 255, rounded to the nearest level)."""
  image = np.asarray(image)
  if image.dtype == np.uint8:
    return image
  return np.round(_scaled(image, 255.0)).astype(np.uint8)


def to_float(levels: np.ndarray) -> np.ndarray:
  """`conform_levels` output -> float32 in [-1, 1]: uint8 [..., C] 0 -> -1, 255 -> 1; float [0, 1] 0 -> -1, 1 -> 1."""
  if levels.dtype == np.uint8:
    return levels.astype(np.float32) * np.float32(2.0 / 255.0) - np.float32(1.0)
  return np.asarray(levels, np.float32) * np.float32(2.0) - np.float32(1.0)


# -------------------------------------------------------------------------------------------- conforming


def channels_error(where: str, data_channels: int, channels: int) -> str:
  """The one message for images whose channel count the model cannot take (names the problem and the fix)."""
  if data_channels == 3 and channels == 1:
    return (f'{where} is RGB (3-channel) colour but config.data.channels=1; set --config.data.channels=3 '
            '(colour is not converted to grayscale silently: in histology the colour is the stain; convert the '
            'files to grayscale yourself if that is meaningful for this modality)')
  return (f'{where} has {data_channels}-channel images; config.data.channels={channels} cannot take them '
          f'(supported: 1 or 3 channels; grayscale may be read as 3)')


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
  """Centre-crops to a square (the shorter side) and resizes with an antialiased bilinear filter.

  image: uint8 [H, W, C] -> uint8 [size, size, C] (computed in float32, rounded to the nearest level), or
  float [H, W, C] -> float32 [size, size, C] (not rounded).
  """
  h, w, c = image.shape
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  image = image[top:top + side, left:left + side]
  eight_bit = image.dtype == np.uint8
  if side == size:
    return np.ascontiguousarray(image if eight_bit else image.astype(np.float32))
  out = np.empty((size, size, c), np.uint8 if eight_bit else np.float32)
  for k in range(c):
    channel = Image.fromarray(np.ascontiguousarray(image[..., k], dtype=np.float32))
    resized = np.asarray(channel.resize((size, size), Image.Resampling.BILINEAR))
    out[..., k] = np.clip(np.rint(resized), 0, 255) if eight_bit else resized
  return out


def conform_levels(image: np.ndarray, size: int, channels: int,
                   where: str = 'the image') -> tuple[np.ndarray, list[str]]:
  """A read image -> ([size, size, channels] uint8 levels (8-bit input) or float32 in [0, 1], notes).

  image: uint8 | uint16 | float [H, W] or [H, W, C] (a `read_image` result or a decoded dataset example).
  notes: what was converted ('grayscale replicated to RGB', ...). Raises ValueError (`channels_error`).
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
    raise ValueError(f'{where}: expected an [H, W, C] image, got {image.dtype} {image.shape}')
  notes = []
  c = image.shape[-1]
  if c != channels:
    if c == 1 and channels == 3:
      image = np.repeat(image, 3, axis=-1)
      notes.append('grayscale replicated to RGB')
    elif c == 3 and channels == 1 and np.array_equal(image[..., 0], image[..., 1]) \
        and np.array_equal(image[..., 0], image[..., 2]):
      image = image[..., :1]
      notes.append('gray stored as RGB read as one channel')
    else:
      raise ValueError(channels_error(where, c, channels))
  if image.dtype != np.uint8:
    image = unit_range(image).astype(np.float32)
  h, w = image.shape[:2]
  if (h, w) != (size, size):
    notes.append(f'{h}x{w} centre-cropped and resized to {size}x{size}')
  return resize_square(image, size), notes


def conform(image: np.ndarray, size: int, channels: int, where: str = 'the image') -> np.ndarray:
  """A read image (uint8 | uint16 | float [H, W(, C)]) -> float32 [size, size, channels] in [-1, 1]."""
  return to_float(conform_levels(image, size, channels, where)[0])
