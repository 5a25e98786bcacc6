"""Pictures of one explanation for the export: PNG encode/decode, the difference map, captioned strips and GIFs,
and the file-system-safe names they are saved under.

Used by `explain.export.ExplanationWriter` (strips/<safe_id>.png, gifs/<safe_id>.gif) and
`explain.report` (the PNGs inlined in report.html). Pillow only; no TensorFlow, no JAX. Files are written through
`stylex_jax.storage` (etils.epath), so an export directory may be on an object store.
"""
from __future__ import annotations

import io
import math
import re
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stylex_jax import storage

MIN_TILE = 128  # strip/GIF tiles are upscaled (nearest) to at least this many pixels
_DIFF_MIN_SCALE = 1 / 127.5  # one grey level: differences below it are not blown up to full colour
_IMAGE_SUFFIX = re.compile(r'\.(png|jpe?g|tiff?|bmp|gif|dcm|dicom|nii(\.gz)?)$', re.IGNORECASE)


def png_bytes(image: np.ndarray) -> bytes:
  """uint8 [H, W] / [H, W, 1] (grey) or [H, W, 3] -> PNG bytes."""
  x = np.ascontiguousarray(image)
  if x.ndim == 3 and x.shape[-1] == 1:
    x = x[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(x).save(buffer, format='PNG')
  return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  """PNG bytes -> uint8 [H, W, C] (grey -> C = 1), like tf.io.decode_png."""
  with Image.open(io.BytesIO(data)) as im:
    x = np.asarray(im)
  return x[..., None] if x.ndim == 2 else x


def heat_uint8(heat: np.ndarray) -> np.ndarray:
  """Heatmap float in [0, 1] -> uint8 round(255 * heat) clipped; uint8 passes through."""
  if heat.dtype == np.uint8:
    return heat
  return np.clip(np.rint(heat.astype(np.float32) * 255.0), 0, 255).astype(np.uint8)


def as_float_image(x: np.ndarray) -> np.ndarray:
  """Image float (any range) or uint8 -> float32 in [-1, 1]."""
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 127.5 - 1.0
  return np.clip(x.astype(np.float32), -1.0, 1.0)


def to_rgb(u8: np.ndarray) -> np.ndarray:
  """uint8 [H, W, C] with C in {1, 3, 4} -> uint8 [H, W, 3]."""
  if u8.shape[-1] == 1:
    return np.repeat(u8, 3, axis=-1)
  return u8[..., :3]


def diff_map(last: np.ndarray, reconstruction: np.ndarray) -> tuple[np.ndarray, float]:
  """Signed difference (last frame - reconstruction) as a blue-white-red picture.

  last, reconstruction: [H, W, C] float in [-1, 1] (or uint8). The channel mean d [H, W] is divided by
  scale = max(max |d|, 1/127.5): -scale -> blue (0, 0, 255), 0 -> white, +scale -> red (255, 0, 0).
  Returns (uint8 [H, W, 3], scale).
  """
  d = np.mean(as_float_image(last) - as_float_image(reconstruction), axis=-1)
  scale = float(max(np.max(np.abs(d)) if d.size else 0.0, _DIFF_MIN_SCALE))
  t = np.clip(d / scale, -1.0, 1.0)
  neg, pos = np.clip(-t, 0, 1), np.clip(t, 0, 1)
  rgb = np.stack([1.0 - neg, 1.0 - neg - pos, 1.0 - pos], axis=-1)
  return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8), scale


def _font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except (TypeError, AttributeError, OSError):  # Pillow without FreeType: the bitmap font
    return ImageFont.load_default()


_FONTS: dict[int, Any] = {}


def _get_font(size: int):
  if size not in _FONTS:
    _FONTS[size] = _font(size)
  return _FONTS[size]


def _grey_palette() -> Image.Image:
  """GIF palette for grey images: 252 grey levels + the caption colours (no per-frame colour quantisation)."""
  colours = [(i * 255 // 251,) * 3 for i in range(252)] + [(214, 39, 40), (235, 235, 235), (120, 120, 120), (0, 0, 0)]
  palette = Image.new('P', (1, 1))
  palette.putpalette([v for rgb in colours for v in rgb])
  return palette


_GREY_PALETTE = _grey_palette()


def _upscale(rgb: np.ndarray, factor: int) -> Image.Image:
  im = Image.fromarray(rgb)
  if factor > 1:
    im = im.resize((rgb.shape[1] * factor, rgb.shape[0] * factor), Image.NEAREST)
  return im


def _captioned(rgb: np.ndarray, factor: int, lines: list[str], bar: float | None) -> Image.Image:
  """A tile: the upscaled image with a white caption band (two text lines and an optional p-bar) below."""
  im = _upscale(rgb, factor)
  w, h = im.size
  font = _get_font(12)
  band = 44
  tile = Image.new('RGB', (w, h + band), 'white')
  tile.paste(im, (0, 0))
  draw = ImageDraw.Draw(tile)
  for i, line in enumerate(lines[:2]):
    draw.text((3, h + 2 + 14 * i), line, fill=(0, 0, 0), font=font)
  if bar is not None and math.isfinite(bar):
    y0 = h + band - 10
    draw.rectangle([3, y0, w - 4, y0 + 6], outline=(120, 120, 120), fill=(235, 235, 235))
    filled = 3 + int(round((w - 7) * min(max(bar, 0.0), 1.0)))
    if filled > 3:
      draw.rectangle([3, y0, filled, y0 + 6], fill=(214, 39, 40))
    mid = 3 + (w - 7) // 2
    draw.line([mid, y0 - 1, mid, y0 + 7], fill=(0, 0, 0))
  return tile


def _strip_image(tiles: list[Image.Image], title: str) -> Image.Image:
  gap, head = 4, 18
  width = sum(t.size[0] for t in tiles) + gap * (len(tiles) + 1)
  height = max(t.size[1] for t in tiles) + head + gap
  strip = Image.new('RGB', (width, height), 'white')
  ImageDraw.Draw(strip).text((gap, 2), title, fill=(0, 0, 0), font=_get_font(12))
  x = gap
  for t in tiles:
    strip.paste(t, (x, head))
    x += t.size[0] + gap
  return strip


def _factor(image: np.ndarray) -> int:
  """Nearest-neighbour upscaling factor that makes the longer side of [H, W, ...] at least MIN_TILE pixels."""
  return max(1, math.ceil(MIN_TILE / max(image.shape[0], image.shape[1])))


def save_strip(path: str, title: str, image: np.ndarray, reconstruction: np.ndarray, series: np.ndarray,
               alphas: np.ndarray, p_series: np.ndarray, p_original, p_reconstruction, cam_rgb: np.ndarray,
               diff_rgb: np.ndarray, diff_scale: float) -> None:
  """Saves the strip PNG: original | reconstruction | series | GradCAM | difference, captioned, under a title.

  Args:
    path: the .png to write.
    title: one line above the tiles.
    image, reconstruction: uint8 [H, W, C], C in {1, 3}; series: uint8 [S, H, W, C], ordered by alphas.
    alphas: [S] shifts; p_series: [S] p(target) of each series image, in [0, 1].
    p_original: p(target) of the original; p_reconstruction: of the reconstruction, or None if unknown.
    cam_rgb: uint8 [H, W, 3] GradCAM overlay; diff_rgb, diff_scale: from `diff_map`.
  Tiles are upscaled (nearest) by the factor that makes them >= MIN_TILE pixels; each has a 44 px caption band.
  """
  factor = _factor(image)
  tiles = [
      _captioned(to_rgb(image), factor, ['original', f'p={p_original:.3f}'], float(p_original)),
      _captioned(to_rgb(reconstruction), factor,
                 ['reconstruction', '' if p_reconstruction is None else f'p={p_reconstruction:.3f}'],
                 None if p_reconstruction is None else float(p_reconstruction))
  ]
  for j in range(series.shape[0]):
    tiles.append(
        _captioned(to_rgb(series[j]), factor, [f'shift {alphas[j]:+.2f}', f'p={p_series[j]:.3f}'], float(p_series[j])))
  tiles.append(_captioned(cam_rgb, factor, ['GradCAM', ''], None))
  tiles.append(_captioned(diff_rgb, factor, ['end - recon', f'blue/red = -/+{diff_scale:.2f}'], None))
  buffer = io.BytesIO()
  _strip_image(tiles, title).save(buffer, format='PNG')
  with storage.open_file(path, 'wb') as f:  # local or object store
    f.write(buffer.getvalue())


def save_gif(path: str, series: np.ndarray, alphas: np.ndarray, p_series: np.ndarray, class_name: str) -> None:
  """Saves the series as an endless GIF (400 ms a frame), captioned with shift and p(class_name).

  series: uint8 [S, H, W, C], C in {1, 3}; alphas: [S]; p_series: [S] p(class_name) in [0, 1].
  """
  factor = _factor(series[0])
  frames = [
      _captioned(to_rgb(series[j]), factor, [f'shift {alphas[j]:+.2f}', f'p({class_name})={p_series[j]:.3f}'],
                 float(p_series[j])) for j in range(series.shape[0])
  ]
  if series.shape[-1] == 1:  # ~10x faster than PIL's adaptive palette per frame
    frames = [f.quantize(palette=_GREY_PALETTE, dither=Image.Dither.NONE) for f in frames]
  buffer = io.BytesIO()
  frames[0].save(buffer, format='GIF', save_all=True, append_images=frames[1:], duration=400, loop=0)
  with storage.open_file(path, 'wb') as f:  # local or object store
    f.write(buffer.getvalue())


class UniqueStems:
  """File-system-safe stems for strips/<stem>.png and gifs/<stem>.gif, unique among the calls of one instance."""

  def __init__(self):
    self._used: set[str] = set()

  def __call__(self, id_: str) -> str:
    """The id with its image suffix dropped and runs of other characters -> '_', <= 96 chars ('image' if empty);
    '-2', '-3', ... appended on a clash, compared case-insensitively (safe on macOS/Windows file systems)."""
    stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', _IMAGE_SUFFIX.sub('', id_)).strip('._')[:96] or 'image'
    name, n = stem, 1
    while name.lower() in self._used:
      n += 1
      name = f'{stem}-{n}'
    self._used.add(name.lower())
    return name

  def reserve(self, name: str) -> None:
    """Marks a stem returned earlier (e.g. by the instance of an interrupted export) as used."""
    self._used.add(name.lower())
