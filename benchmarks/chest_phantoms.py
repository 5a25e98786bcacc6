"""A second phantom family, given to stylex as an image folder: frontal chest radiographs with and without
cardiomegaly, their oracle (the cardiothoracic ratio measured from the pixels), and the scoring of an
explanation export of them.

Not knees, and not a TFDS builder: `make` writes `root/{train,test}/{normal,cardiomegaly}/*.png` (8-bit
grayscale), which the pipeline reads as `--config.data.dataset=image_folder --config.data.manual_dir=root`
(the validation split is carved from train). The causal attribute is the cardiothoracic ratio (CTR = widest
horizontal diameter of the heart / widest inner diameter of the thorax); the label is CTR >= 0.5, the
clinical threshold of cardiomegaly. Nuisances: exposure (brightness, contrast), quantum noise, blur, rib
phase, patient position (shift) and size (thorax scale), lung height.

  python benchmarks/chest_phantoms.py make --out /tmp/chest
  python launch/train.py --config configs/demo.py --config.data.dataset=image_folder \\
      --config.data.manual_dir=/tmp/chest --config.data.label_threshold=-1 --workdir /tmp/chest_run
  python benchmarks/chest_phantoms.py score --export /tmp/chest_run/explain

`score` prints one line per figure: the share of series whose CTR moves the way the labels imply (towards
cardiomegaly it grows: the Spearman of CTR with the shift alpha, signed so that > 0 is the right way), the median
of that signed per-series Spearman, the share of frames in which the oracle finds both lungs, and the oracle's CTR
on the inputs against their reconstructions. Frame realism (KID of the frames against real images, beside the
reconstructions') is in the evaluate stage's scorecard of the same export.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
from scipy import ndimage

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from stylex_jax.data import measure  # noqa: E402
from stylex_jax.evaluate import explanations  # noqa: E402

CLASSES = ('normal', 'cardiomegaly')  # by CTR < 0.5 / >= 0.5 (the image folder sorts them: cardiomegaly is 0)
CTR_THRESHOLD = 0.5
CTR_RANGE = (0.36, 0.64)  # drawn uniformly: about half of each class
_NOT_FOUND = dict(lungs_found=0.0, ctr=np.nan, heart_width_px=np.nan, thorax_width_px=np.nan)
MIN_LUNG_CONTRAST = 0.25  # Otsu's bright - dark class means: >= 0.31 on 300 phantoms, 0.19 on uniform noise


def draw_attributes(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
  """The generating attributes of `n` phantoms (CTR causal; everything else a nuisance)."""
  return dict(
      ctr=rng.uniform(*CTR_RANGE, n),
      thorax=rng.uniform(0.74, 0.86, n),  # inner thoracic width / image width
      shift=rng.uniform(-0.04, 0.04, n),  # patient position, image widths
      lung_top=rng.uniform(0.10, 0.18, n),
      lung_bottom=rng.uniform(0.80, 0.88, n),
      heart_y=rng.uniform(0.10, 0.15, n),  # height of the heart's widest row above the diaphragm
      brightness=rng.uniform(-0.08, 0.08, n),
      contrast=rng.uniform(0.85, 1.15, n),
      noise=rng.uniform(0.01, 0.04, n),
      blur=rng.uniform(0.3, 1.0, n),  # px at 64²
      rib_phase=rng.uniform(0, 2 * np.pi, n),
  )


def render(attrs: dict[str, np.ndarray], i: int, size: int, rng: np.random.Generator) -> np.ndarray:
  """Phantom `i` of `attrs` as float [size, size] in [0, 1] (0 black = air, 1 white = bone)."""
  a = {k: float(v[i]) for k, v in attrs.items()}
  y, x = np.mgrid[0:size, 0:size].astype(np.float64)
  y, x = (y + 0.5) / size, (x + 0.5) / size
  cx = 0.5 + a['shift']
  half_thorax = a['thorax'] / 2
  img = 0.50 + 0.06 * (y - 0.5)  # soft tissue of the chest wall filling the field

  # lungs: two rounded shapes from the apex to the diaphragm, the mediastinum between them
  top, bottom = a['lung_top'], a['lung_bottom']
  t = np.clip((y - top) / (bottom - top), 0, 1)
  inner = 0.06 + 0.02 * t  # half-width of the mediastinum
  outer = half_thorax * np.sqrt(np.clip(1 - (1 - t)**3, 0, 1))  # narrow apex, widest at the bases
  dist = np.abs(x - cx)
  dome = bottom  # a flat diaphragm: no lung below the heart's base, so the widest gap is the heart's
  in_lung = (dist > inner) & (dist < outer) & (y > top) & (y < dome)
  ribs = 0.07 * np.clip(np.sin(2 * np.pi * 7 * (y + 0.15 * dist**2 / half_thorax) + a['rib_phase']), 0, 1)**2
  img = np.where(in_lung, 0.13 + ribs, img)
  img = np.where((y >= dome) & (dist < half_thorax), 0.62, img)  # below the diaphragm

  # the spine and mediastinum down the middle, the heart overlying the bases (more to the patient's left)
  img = np.where((dist <= inner) & (y > 0.02), np.maximum(img, 0.74), img)
  half_heart = a['ctr'] * half_thorax
  hx = cx + 0.22 * half_heart  # the patient's left is the image's right
  hy, hh = bottom - a['heart_y'], 0.16
  heart = ((x - hx) / half_heart)**2 + ((y - hy) / hh)**2 <= 1
  heart &= y < np.maximum(dome, hy)  # the heart sits on the diaphragm
  img = np.where(heart, 0.72, img)

  img = ndimage.gaussian_filter(img, a['blur'] * size / 64, mode='mirror', truncate=3.0)
  img = (img - 0.5) * a['contrast'] + 0.5 + a['brightness']
  img = img + rng.normal(0, a['noise'], img.shape)
  return np.clip(img, 0, 1)


def measure_ctr(image: np.ndarray) -> dict[str, float]:
  """The oracle: the cardiothoracic ratio of one phantom, from the pixels only.

  image: [H, W] or [H, W, 1] in [0, 1]. Lungs are the two largest connected regions darker than an Otsu
  threshold of the lightly smoothed image (the two classes' means at least MIN_LUNG_CONTRAST apart; each region
  >= 4% of the image, one either side of the midline); per row, the thorax is the span from the outer edge of
  one lung to the outer edge of the other and the heart/mediastinum the bright gap between them that contains
  the midline. Returns
  {'lungs_found': 0/1, 'ctr', 'heart_width_px', 'thorax_width_px'} (NaN when not found: no such two regions,
  or fewer than 3 rows with a lung on both sides).
  """
  img = np.asarray(image, np.float64)
  if img.ndim == 3:
    img = img[..., 0]
  h, w = img.shape
  smooth = ndimage.gaussian_filter(img, 0.7 * w / 64, mode='mirror', truncate=3.0)
  threshold, dark_mean, bright_mean = measure.otsu(smooth)  # the threshold is the dark class's largest value
  if bright_mean - dark_mean < MIN_LUNG_CONTRAST:
    return dict(_NOT_FOUND)
  labels, n = ndimage.label(smooth <= threshold)
  # the lungs: the two largest dark regions, each >= 4% of the image, one either side of the midline
  sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
  order = np.argsort(sizes)[::-1][:2] + 1
  mid = w // 2
  centres = [np.mean(np.nonzero(labels == k)[1]) for k in order]
  if n < 2 or sizes[order[1] - 1] < 0.04 * h * w or (min(centres) >= mid or max(centres) < mid):
    return dict(_NOT_FOUND)
  dark = np.isin(labels, order)
  heart, thorax, rows = 0.0, 0.0, 0
  for r in range(h):
    cols = np.flatnonzero(dark[r])
    left, right = cols[cols < mid], cols[cols >= mid]
    if len(left) < 2 or len(right) < 2:
      continue
    # the bright gap around the midline: between the innermost lung pixels on either side of the widest gap
    gaps = np.diff(cols)
    k = int(np.argmax(gaps))
    if not (cols[k] < mid + w // 8 and cols[k + 1] > mid - w // 8):
      continue  # the widest gap is not central (a rib shadow in one lung)
    rows += 1
    heart = max(heart, float(cols[k + 1] - cols[k] - 1))
    thorax = max(thorax, float(cols[-1] - cols[0] + 1))
  if rows < 3 or thorax <= 0:
    return dict(_NOT_FOUND)
  return dict(lungs_found=1.0, ctr=heart / thorax, heart_width_px=heart, thorax_width_px=thorax)


def measure_ctr_batch(images: np.ndarray) -> dict[str, np.ndarray]:
  """measure_ctr over images [B, H, W(, 1)] in [0, 1] -> {name: [B]}."""
  rows = [measure_ctr(im) for im in np.asarray(images)]
  return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}


def make(out: str, n_train: int, n_test: int, size: int, seed: int) -> dict[str, int]:
  """Writes the image folder; returns {split/class: count}. Refuses a folder that already holds images."""
  from PIL import Image  # Pillow comes with the project's image reading

  if os.path.isdir(out) and any(os.scandir(out)):
    raise SystemExit(f'{out} is not empty: give a new folder (existing images are never overwritten)')
  rng = np.random.default_rng(seed)
  counts = {}
  for split, n in (('train', n_train), ('test', n_test)):
    attrs = draw_attributes(rng, n)
    for i in range(n):
      label = int(attrs['ctr'][i] >= CTR_THRESHOLD)
      folder = os.path.join(out, split, CLASSES[label])
      os.makedirs(folder, exist_ok=True)
      pixels = np.round(render(attrs, i, size, rng) * 255).astype(np.uint8)
      Image.fromarray(pixels, mode='L').save(os.path.join(folder, f'{i:05d}_ctr{attrs["ctr"][i]:.3f}.png'))
      key = f'{split}/{CLASSES[label]}'
      counts[key] = counts.get(key, 0) + 1
  return counts


def score(export: str) -> dict[str, float]:
  """Scores an explanation export of chest phantoms with the oracle (see the module docstring)."""
  from stylex_jax.explain import records

  schema = records.read_schema(export)
  names = [str(n) for n in schema.get('class_names', [])]
  if int(schema['num_classes']) != 2 or sorted(names) != sorted(CLASSES):
    raise SystemExit(f'{export}: classes {names} are not this family\'s {list(CLASSES)}')
  # the series' target, the log-odds of class 1, grows with alpha: CTR should grow with it when class 1 is
  # cardiomegaly and shrink when it is normal (the image folder sorts the names: cardiomegaly is class 0)
  sign = 1.0 if names[1] == 'cardiomegaly' else -1.0
  rho, found, input_ctr, recon_ctr = [], [], [], []
  for item in records.read_explanations(export):
    series = item['series'].astype(np.float64) / 255.0
    m = measure_ctr_batch(series)
    found.append(m['lungs_found'])
    rho.append(sign * explanations.spearman(np.asarray(item['alphas'], np.float64), m['ctr']))
    input_ctr.append(measure_ctr(item['image'] / 255.0)['ctr'])
    recon_ctr.append(measure_ctr(item['reconstruction'] / 255.0)['ctr'])
  rho = np.array(rho)
  ok = np.isfinite(rho)
  return dict(
      series=len(rho),
      ctr_right_direction=float(np.mean(rho[ok] > 0)) if ok.any() else np.nan,
      median_ctr_spearman=float(np.median(rho[ok])) if ok.any() else np.nan,
      frames_lungs_found=float(np.mean(np.concatenate(found))) if found else np.nan,
      reconstruction_ctr_abs_error=float(np.nanmean(np.abs(np.array(input_ctr) - np.array(recon_ctr)))),
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  m = sub.add_parser('make', help='write the image folder')
  m.add_argument('--out', required=True)
  m.add_argument('--train', type=int, default=4000)
  m.add_argument('--test', type=int, default=500)
  m.add_argument('--size', type=int, default=64)
  m.add_argument('--seed', type=int, default=0)
  s = sub.add_parser('score', help='score an explanation export of these phantoms')
  s.add_argument('--export', required=True, help='the explain stage folder (holds schema.json)')
  args = parser.parse_args()
  if args.command == 'make':
    for key, n in sorted(make(args.out, args.train, args.test, args.size, args.seed).items()):
      print(f'{key} {n}')
  else:
    for key, value in score(args.export).items():
      print(f'{key} {value:.3f}' if isinstance(value, float) else f'{key} {value}')


if __name__ == '__main__':
  main()
