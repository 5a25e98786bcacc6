"""Analytic measurements (oracles) of the phantom attributes on ANY image -- real, phantom or GAN-generated.

They read pixels only (never the generating attributes), so an explanation can be checked: does moving along
a latent direction change the joint-space width / osteophytes / nuclear density the label depends on, and
does the spurious corner tag appear or vanish?

Knee (``measure_knee``), AP radiograph, bone bright:
  1. Joint line: every column is searched for the strongest "dark valley between two bright plates" (the
     joint space); a robust line (Theil-Sen, then least squares on inliers) through the valley centres gives
     the joint line; columns whose valley lies on it span the two compartments. The valleys must be
     consistent (>= 40% inliers) and deep (>= 4 noise sigmas), else ``joint_found = 0``. The line is then
     refined on the sub-pixel gap centres of step 2 (tilt error < 1.5 deg on the phantoms).
  2. Width, per column, by the area method: the joint space is a dark gap of intensity T between bone
     plates of intensity B; with box-filtered edges ``width = sum_rows (B - I) / (B - T)`` over the gap and
     its two partial pixels -- exact for anti-aliased edges and insensitive to blur, so it works down to
     sub-pixel gaps. B is read from the first fully bony pixel beyond each edge (edges located at the
     half-level (B + T) / 2), T from the full-gap pixels of the widest columns (or, if every gap is
     sub-2-px, from the soft tissue on the joint line just beyond the bone). The vertical width times
     cos(tilt) is the perpendicular width.
  3. Per compartment (the halves either side of the knee centre) the 30th percentile over its central
     columns is its joint-space width (the flat contact zone is the narrowest part of a compartment); the
     reported ``joint_space_width`` is the narrower compartment, as in minimum-JSW measurement in KL grading.
  4. ``osteophyte_area``: bone (brighter than (B + T) / 2) in the band around the joint line that sticks out
     beyond the femoral condylar width measured above the joint (px^2; a small baseline comes from the
     tibial plateau overhang).
  5. ``sclerosis``: excess brightness of the 0..0.1-image-high subchondral band over the deeper trabecular
     bone, in units of the bone-gap contrast, mapped linearly to 0..1 (0 = the unsclerosed phantom level,
     1 = the fully sclerosed phantom level; the two constants were measured on phantoms).
  6. ``tilt``: the angle of the joint line of step 1 in degrees, positive = anticlockwise on screen (the line
     rises to the right), i.e. the phantoms' ``rotation``; NaN when ``joint_found`` is 0.

Nuisance oracles of the knee (acquisition, not anatomy; an explanation of the grade should leave them alone),
measured on the whole image (the corner-tag boxes excluded) and needing no joint; NaN when not measurable:
  * ``noise_level`` (intensity units, fraction of full scale): robust std of the white noise, 1.4826 x the
    median absolute response of Immerkaer's 3x3 kernel (normalised to unit gain on white noise), over the flat
    pixels of the dark class (soft tissue / background: no trabecular texture) -- those with a
    Gaussian (1.5 px) gradient magnitude below the class median and no clipped (0 or 1) pixel within 1 px.
  * ``sharpness`` (0..1): edge steepness independent of contrast. At the strongest 2% of edges (gradient
    magnitude at 1.5 px, away from the border) the ratio r of the gradient magnitude at 0.7 px (max over 3x3)
    to that at 1.5 px: a step edge blurred to a Gaussian width s has r = sqrt((s^2 + 1.5^2) / (s^2 + 0.7^2));
    sharpness = (r - 1) / (1.5 / 0.7 - 1), clipped to [0, 1]: 1 = a perfect step, 0 = infinitely blurred (the
    edge width is s = sqrt((1.5^2 - r^2 0.7^2) / (r^2 - 1)) px).
  * ``brightness`` (intensity units): the window centre of the anatomy -- the midpoint of the mean intensities
    of the dark (background + soft tissue) and bright (bone) classes of the 1-px-smoothed image split by
    Otsu's threshold. Shifting all intensities by d shifts it by d; a contrast change about it leaves it.

Histology (``measure_histology``), H&E RGB: colour deconvolution (Beer-Lambert optical density projected on
the reference hematoxylin/eosin vectors of ``histology_phantoms.stain_vectors(0)``); nuclei = hematoxylin density
above 0.3 after light smoothing, holes filled (pale vesicular centres), the corner tag excluded. Touching
nuclei merge into one component, so each component counts its hematoxylin blobs (local maxima after
smoothing at half the typical nuclear radius), at least one. Mean area = nuclear pixels / count.
Darkness = median hematoxylin density of nuclear pixels mapped linearly to 0..1 (0.53 -> 0, 1.04 -> 1: the
phantom's darkness-0 and darkness-1 levels).

Marker (both): normalised cross-correlation of each corner box (``phantoms.marker_box``) with the tag
pattern in all 8 flips/rotations (so augmentation that mirrored or rotated the image still counts), plus a
minimum tag-vs-ink contrast.

Inputs: uint8 in [0, 255] or float in [-1, 1] (floats slightly outside, e.g. unclamped GAN outputs, are
clipped); NaN/inf, wrong rank/channels or sides outside [32, 512] raise ValueError.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage, stats

from stylex_jax.data.phantoms import (
    HISTOLOGY_TAG_CELLS,
    KNEE_TAG_CELLS,
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    marker_box,
    tag_pattern,
)
from stylex_jax.data.histology_phantoms import stain_vectors

KNEE_MEASUREMENTS: tuple[str, ...] = ('joint_found', 'joint_space_width', 'osteophyte_area', 'sclerosis', 'marker',
                                      'tilt', 'noise_level', 'sharpness', 'brightness')
HISTOLOGY_MEASUREMENTS: tuple[str, ...] = ('nuclear_count', 'nuclear_mean_area', 'nuclear_darkness', 'marker')

# Sclerosis calibration: normalised subchondral excess brightness of unsclerosed (0) and fully sclerosed (1)
# phantoms (a linear fit of the raw ratio against the phantoms' sclerosis at 64^2 and 128^2: 0.165 + 0.275 s).
_SCLEROSIS_RATIO_0 = 0.165
_SCLEROSIS_RATIO_1 = 0.44
# Median nuclear hematoxylin density (reference-vector units) of phantoms of darkness 0 and 1 (linear fit over
# phantoms at 64^2 and 128^2, all stain shifts and blurs).
_DARKNESS_H0 = 0.53
_DARKNESS_H1 = 1.04
_NUCLEUS_THRESHOLD = 0.3  # hematoxylin density separating nuclei from stroma / cytoplasm
_MARKER_NCC = 0.7
_MARKER_CONTRAST = 0.25
# Immerkaer's noise-estimation kernel: cancels constant and linear intensity trends; norm 6
_NOISE_KERNEL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]]) / 6.0
_SHARPNESS_SCALES = (0.7, 1.5)  # fine and coarse derivative-of-Gaussian scales, px


# ----------------------------------------------------------------------------------------------------------
# Input handling
# ----------------------------------------------------------------------------------------------------------
def _to_unit(image, channels: int, name: str) -> np.ndarray:
  """Validate and convert to float64 in [0, 1]: [H, W] (channels == 1) or [H, W, 3]."""
  arr = np.asarray(image)
  expected = '[H, W] or [H, W, 1]' if channels == 1 else '[H, W, 3]'
  if channels == 1:
    if arr.ndim == 3 and arr.shape[-1] == 1:
      arr = arr[..., 0]
    if arr.ndim != 2:
      raise ValueError(f'{name}: expected a single-channel image {expected}, got shape {arr.shape}; '
                       f'for a batch [B, H, W, 1] use the *_batch function.')
  else:
    if arr.ndim != 3 or arr.shape[-1] != 3:
      raise ValueError(f'{name}: expected an RGB image {expected}, got shape {arr.shape}; '
                       f'for a batch [B, H, W, 3] use the *_batch function.')
  h, w = arr.shape[:2]
  if not (MIN_RESOLUTION <= h <= MAX_RESOLUTION and MIN_RESOLUTION <= w <= MAX_RESOLUTION):
    raise ValueError(f'{name}: image sides must be in [{MIN_RESOLUTION}, {MAX_RESOLUTION}] pixels, got {h}x{w}; '
                     f'resize the image first.')
  if arr.dtype == np.uint8:
    return arr.astype(np.float64) / 255.0
  if np.issubdtype(arr.dtype, np.floating):
    out = arr.astype(np.float64)
    if not np.all(np.isfinite(out)):
      raise ValueError(f'{name}: image contains NaN or inf; check the generator / preprocessing output.')
    return (np.clip(out, -1.0, 1.0) + 1.0) * 0.5
  raise ValueError(f'{name}: image dtype must be uint8 in [0, 255] or float in [-1, 1], got {arr.dtype}; '
                   f'convert with image.astype(np.uint8) or image / 127.5 - 1.')


def _check_batch(images, channels: int, name: str) -> np.ndarray:
  arr = np.asarray(images)
  if arr.ndim != 4 or arr.shape[-1] != channels:
    raise ValueError(f'{name}: expected a batch [B, H, W, {channels}], got shape {arr.shape}.')
  return arr


# ----------------------------------------------------------------------------------------------------------
# Marker
# ----------------------------------------------------------------------------------------------------------
def _dihedral(pattern: np.ndarray) -> list[np.ndarray]:
  out = []
  for k in range(4):
    rot = np.rot90(pattern, k)
    out.extend([rot, rot[:, ::-1]])
  return out


def _detect_tag(gray: np.ndarray, cells: np.ndarray, return_box: bool = False):
  """1.0 if the tag (1 = tag colour, 0 = ink; ``gray`` already oriented so the tag is the bright part)
    is in any corner in any of the 8 flips/rotations, else 0.0 (and its (row, col, size) if asked)."""
  h, w = gray.shape
  r0, c0, size = marker_box(h, w)
  margin_c = w - c0 - size
  templates = _dihedral(tag_pattern(cells, size))
  boxes = ((r0, c0), (r0, margin_c), (h - r0 - size, c0), (h - r0 - size, margin_c))
  for rr, cc in boxes:
    box = gray[rr:rr + size, cc:cc + size]
    if box.shape != (size, size):
      continue
    b = box - box.mean()
    bn = np.sqrt((b * b).sum())
    if bn < 1e-9:
      continue
    for t in templates:
      on = t > 0.5
      if on.all() or not on.any():
        continue
      tc = t - t.mean()
      ncc = float((b * tc).sum() / (bn * np.sqrt((tc * tc).sum())))
      if ncc >= _MARKER_NCC and box[on].mean() - box[~on].mean() >= _MARKER_CONTRAST:
        return (1.0, (rr, cc, size)) if return_box else 1.0
  return (0.0, None) if return_box else 0.0


# ----------------------------------------------------------------------------------------------------------
# Knee
# ----------------------------------------------------------------------------------------------------------
def _shifted_window_max(g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Per pixel, the max over the k rows above (exclusive) and the k rows below (exclusive)."""
  h = g.shape[0]
  if k % 2 == 0:
    k += 1
  m = ndimage.maximum_filter1d(g, size=k, axis=0, mode='nearest')  # window [i - k//2, i + k//2]
  idx = np.arange(h)
  up = m[np.clip(idx - k // 2 - 1, 0, h - 1)]
  down = m[np.clip(idx + k // 2 + 1, 0, h - 1)]
  up[:1] = -np.inf
  down[h - 1:] = -np.inf
  return up, down


def _column_gap(p: np.ndarray, centre: int, search: int, reach: int, T: float):
  """Joint-space geometry in one column profile ``p`` around row ``centre``.

    Returns (width_vertical_px, e_up, e_dn, B_up, B_dn, t_min) or None when no bony plates flank a gap.
    """
  n = len(p)
  lo, hi = max(1, centre - search), min(n - 2, centre + search)
  if lo >= hi:
    return None
  sm = np.convolve(p, [0.25, 0.5, 0.25], mode='same')
  t_min = lo + int(np.argmin(sm[lo:hi + 1]))
  a0, b1 = max(0, t_min - reach), min(n, t_min + reach + 1)
  if t_min - a0 < 2 or b1 - t_min < 3:
    return None
  b_up0, b_dn0 = p[a0:t_min].max(), p[t_min + 1:b1].max()
  if min(b_up0, b_dn0) - T < 0.05:
    return None
  # half-level edges (sub-pixel by linear interpolation)
  level = 0.5 * (b_up0 + T)
  k = t_min
  while k > a0 and p[k] < level:
    k -= 1
  e_up = k + (p[k] - level) / (p[k] - p[k + 1]) if (k < t_min and p[k] >= level > p[k + 1]) else float(t_min)
  level = 0.5 * (b_dn0 + T)
  k = t_min
  while k < b1 - 1 and p[k] < level:
    k += 1
  e_dn = k - (p[k] - level) / (p[k] - p[k - 1]) if (k > t_min and p[k] >= level > p[k - 1]) else float(t_min)
  if e_dn - e_up < 1.0:  # no pixel is mostly gap: integrate two pixels either side of the minimum
    r_up, r_dn = t_min - 2, t_min + 2
  else:
    r_up, r_dn = int(np.floor(e_up - 0.5)), int(np.ceil(e_dn + 0.5))
  if r_up < 0 or r_dn >= n or r_dn - r_up < 2:
    return None
  b_up, b_dn = p[r_up], p[r_dn]
  if min(b_up, b_dn) - T < 0.05:
    return None
  rows = np.arange(r_up + 1, r_dn)
  frac = (rows - r_up) / (r_dn - r_up)
  bb = b_up + (b_dn - b_up) * frac
  width = float(np.sum((bb - p[rows]) / (bb - T)))
  return width, e_up, e_dn, b_up, b_dn, t_min


def _knee_geometry(img: np.ndarray) -> dict | None:
  """Joint line ``row = intercept + slope * col`` and the column span [lo, hi] of the compartments whose
    valleys lie on it; None if no joint is visible."""
  h, w = img.shape
  g = ndimage.gaussian_filter(img, 0.7)
  k = max(3, int(round(0.1 * h)))  # reach of the plates from the gap centre (gap <= ~0.11 H)
  up, down = _shifted_window_max(g, k)
  score = np.minimum(up, down) - g  # depth of the valley below the lower of the two flanking maxima
  r0, c0, size = marker_box(h, w)  # never mistake a corner tag's letter for a joint
  for rr in (slice(0, r0 + size + 1), slice(h - r0 - size - 1, h)):
    for cc in (slice(0, w - c0 + 1), slice(c0 - 1, w)):
      score[rr, cc] = -np.inf
  r_lo, r_hi = int(0.15 * h), int(0.85 * h)
  band = score[r_lo:r_hi]
  best_row = r_lo + np.argmax(band, axis=0)
  best = band.max(axis=0)
  thresh = max(0.06, 0.35 * float(np.percentile(best, 95)))
  cols = np.nonzero(best > thresh)[0]
  if len(cols) < max(8, int(0.12 * w)):
    return None
  # valley centre per column: score-weighted centroid of the run around the best row that stays above half
  # the best score (a wide gap has a flat bottom, where the argmax alone wanders)
  rows = np.empty(len(cols))
  for i, j in enumerate(cols):
    col = band[:, j]
    top, lo_r, hi_r = best[j], best_row[j] - r_lo, best_row[j] - r_lo
    while lo_r > 0 and col[lo_r - 1] >= 0.5 * top:
      lo_r -= 1
    while hi_r < len(col) - 1 and col[hi_r + 1] >= 0.5 * top:
      hi_r += 1
    wts = col[lo_r:hi_r + 1] - 0.5 * top
    rows[i] = r_lo + lo_r + float(np.sum(wts * np.arange(hi_r - lo_r + 1)) / max(np.sum(wts), 1e-12))
  slope, intercept, _, _ = stats.theilslopes(rows, cols)
  tol = max(1.5, 0.02 * h)
  for _ in range(2):
    inl = np.abs(rows - (intercept + slope * cols)) <= tol
    if inl.sum() < max(8, int(0.1 * w)):
      return None
    slope, intercept = np.polyfit(cols[inl], rows[inl], 1)
  inl = np.abs(rows - (intercept + slope * cols)) <= tol
  if abs(slope) > np.tan(np.deg2rad(20.0)) or inl.sum() < 0.4 * len(cols):
    return None
  lo, hi = int(cols[inl].min()), int(cols[inl].max())
  if hi - lo < 0.2 * w:
    return None
  # the valleys must stand well above the pixel noise (robust sigma from horizontal differences)
  noise = 1.4826 * float(np.median(np.abs(np.diff(img, axis=1)))) / np.sqrt(2.0)
  if np.median(best[cols[inl]]) < 4.0 * noise:
    return None
  return dict(slope=float(slope), intercept=float(intercept), lo=lo, hi=hi, k=k,
              cos=float(1.0 / np.sqrt(1.0 + slope**2)), centre=0.5 * (lo + hi), half=max(1.0, 0.5 * (hi - lo)))


def _joint_line(img: np.ndarray):
  """(geo, floors, per_col): the joint line refined on the sub-pixel gap centres of the compartments'
    columns, the gap floor per side and the per-column gap measurements; None if no joint is visible."""
  geo = _knee_geometry(img)
  if geo is None:
    return None
  floors = _gap_floor(img, geo)
  per_col = _gap_columns(img, geo, lambda j: floors[int(j > geo['centre'])])
  contact = [j for j in per_col if 0.15 <= abs(j - geo['centre']) / geo['half'] <= 0.85]
  if len(contact) >= 6:
    centres = np.array([0.5 * (per_col[j][1] + per_col[j][2]) for j in contact])
    slope, intercept, _, _ = stats.theilslopes(centres, np.array(contact, np.float64))
    geo = dict(geo, slope=float(slope), intercept=float(intercept), cos=float(1.0 / np.sqrt(1.0 + slope**2)))
  return geo, floors, per_col


def _gap_columns(img: np.ndarray, geo: dict, floor) -> dict[int, tuple]:
  """``_column_gap`` for every column of the joint span; ``floor(col)`` gives T for that column."""
  h = img.shape[0]
  search = max(2, int(round(0.04 * h)))
  out = {}
  for j in range(geo['lo'], geo['hi'] + 1):
    centre = int(round(geo['intercept'] + geo['slope'] * j))
    res = _column_gap(img[:, j], centre, search, geo['k'] + 2, floor(j))
    if res is not None:
      out[j] = res
  return out


def _gap_floor(img: np.ndarray, geo: dict) -> dict[int, float]:
  """Intensity T of the joint space per side (0 = left of the knee centre, 1 = right).

    Provisional T = 10th percentile of the valley minima; then the median of the full-gap pixels (more than
    1 px inside both edges) of columns whose gap is at least 3 px wide, per side when there are enough.
    """
  h = img.shape[0]
  mins = []
  for j in range(geo['lo'], geo['hi'] + 1):
    c = int(round(geo['intercept'] + geo['slope'] * j))
    mins.append(img[max(0, c - 3):min(h, c + 4), j].min())
  t0 = float(np.percentile(mins, 10))
  floor_px: dict[int, list] = {0: [], 1: []}
  for j, (_, e_up, e_dn, *_rest) in _gap_columns(img, geo, lambda j: t0).items():
    if e_dn - e_up >= 3.0:
      a, b = int(np.ceil(e_up + 1.0)), int(np.floor(e_dn - 1.0))
      floor_px[int(j > geo['centre'])].extend(img[a:b + 1, j].tolist())
  everything = floor_px[0] + floor_px[1]
  if not everything:
    # every gap is narrow (no pixel is pure joint space): fall back to the soft tissue on the joint line
    # just beyond the bone margins, which is what fills the joint space
    w = img.shape[1]
    reach = max(3, int(0.08 * w))
    candidates = list(range(geo['lo'] - reach, geo['lo'] - 1)) + list(range(geo['hi'] + 2, geo['hi'] + reach))
    beyond = [j for j in candidates if 0 <= j < w]
    rows = np.clip(np.round(geo['intercept'] + geo['slope'] * np.array(beyond, float)).astype(int), 0, h - 1)
    t_soft = float(np.median(img[rows, beyond])) if beyond else t0
    return {0: min(t0, t_soft), 1: min(t0, t_soft)}
  t_all = float(np.median(everything))
  return {side: (float(np.median(v)) if len(v) >= 6 else t_all) for side, v in floor_px.items()}


def measure_knee(image) -> dict[str, float]:
  """Measure a knee radiograph (method in the module docstring).

    Args:
      image: [H, W] or [H, W, 1], uint8 in [0, 255] or float in [-1, 1]; sides in [32, 512].

    Returns:
      dict with exactly ``KNEE_MEASUREMENTS`` keys, python floats: joint_found (0/1), joint_space_width (px,
      perpendicular to the joint line, narrower compartment; NaN if no joint), osteophyte_area (px^2; NaN if
      no joint), sclerosis (0..1; NaN if no joint or not measurable), marker (0/1), tilt (degrees, positive =
      anticlockwise; NaN if no joint), noise_level (intensity units), sharpness (0..1), brightness (intensity
      units; these three NaN only on images without flat regions / edges).
    """
  img = _to_unit(image, 1, 'measure_knee')
  nan = float('nan')
  result = {
      'joint_found': 0.0,
      'joint_space_width': nan,
      'osteophyte_area': nan,
      'sclerosis': nan,
      'marker': _detect_tag(img, KNEE_TAG_CELLS),
      'tilt': nan,
  }
  result.update(_acquisition(img))
  found = _joint_line(img)
  if found is None:
    return result
  geo, floors, per_col = found
  compartments = []
  for side in (0, 1):
    js = np.array(
        [j for j in per_col if int(j > geo['centre']) == side and 0.15 <= abs(j - geo['centre']) / geo['half'] <= 0.85])
    if len(js) < 3:
      continue
    ws = np.array([per_col[j][0] for j in js]) * geo['cos']
    smooth = np.array([ws[np.abs(js - j) <= 1].mean() for j in js])  # 3-column moving average
    compartments.append(float(np.percentile(smooth, 30)))
  if not compartments:
    return result
  result['joint_found'] = 1.0
  result['joint_space_width'] = float(max(0.0, min(compartments)))
  result['tilt'] = float(-np.degrees(np.arctan(geo['slope'])))  # rows grow downwards

  B = float(np.median([v for res in per_col.values() for v in (res[3], res[4])]))
  T = float(np.median(list(floors.values())))
  femur = _femur_extent(img, geo, T, B)
  if femur is not None:
    result['osteophyte_area'] = _osteophyte_area(img, geo, T, B, femur)
    result['sclerosis'] = _sclerosis(img, geo, per_col, T, B, femur)
  return result


def _outside_tags(h: int, w: int) -> np.ndarray:
  """[H, W] bool, False on the four corner-tag boxes (+1 px) where a tag may sit."""
  keep = np.ones((h, w), bool)
  r0, c0, size = marker_box(h, w)
  for rr in (slice(0, r0 + size + 1), slice(h - r0 - size - 1, h)):
    for cc in (slice(0, w - c0 + 1), slice(c0 - 1, w)):
      keep[rr, cc] = False
  return keep


def otsu(values: np.ndarray) -> tuple[float, float, float]:
  """Otsu's two-class split of 1-D ``values``: (threshold, mean of the dark class, mean of the bright class)."""
  v = np.sort(np.asarray(values, np.float64).ravel())
  n = len(v)
  if n < 2 or v[-1] - v[0] < 1e-12:
    m = float(v.mean()) if n else float('nan')
    return m, m, m
  c = np.cumsum(v)
  k = np.arange(1, n)
  m0, m1 = c[:-1] / k, (c[-1] - c[:-1]) / (n - k)
  i = int(np.argmax(k * (n - k) * (m0 - m1)**2))
  return float(v[i]), float(m0[i]), float(m1[i])


def _acquisition(img: np.ndarray) -> dict[str, float]:
  """noise_level, sharpness and brightness of a knee image in [0, 1] (definitions in the module docstring)."""
  h, w = img.shape
  nan = float('nan')
  out = {'noise_level': nan, 'sharpness': nan, 'brightness': nan}
  keep = _outside_tags(h, w)
  smooth = ndimage.gaussian_filter(img, 1.0)
  threshold, dark, bright = otsu(smooth[keep])
  out['brightness'] = 0.5 * (dark + bright)

  residual = ndimage.convolve(img, _NOISE_KERNEL, mode='reflect')
  grad = ndimage.gaussian_gradient_magnitude(img, 1.5)
  clipped = ndimage.maximum_filter((img <= 0.0) | (img >= 1.0), size=3)
  ok = keep & ~clipped & (smooth < threshold)
  ok[[0, -1], :] = False
  ok[:, [0, -1]] = False
  if np.count_nonzero(ok) >= 16:
    flat = ok & (grad <= np.median(grad[ok]))
    out['noise_level'] = float(1.4826 * np.median(np.abs(residual[flat])))

  s0, s1 = _SHARPNESS_SCALES
  fine = ndimage.maximum_filter(ndimage.gaussian_gradient_magnitude(img, s0), size=3)
  b = max(3, int(round(0.05 * min(h, w))))
  inner = keep.copy()
  inner[:b], inner[-b:], inner[:, :b], inner[:, -b:] = False, False, False, False
  if inner.any():
    edges = inner & (grad >= np.percentile(grad[inner], 98.0)) & (grad > 1e-6)
    if edges.any():
      r = float(np.median(fine[edges] / grad[edges]))
      out['sharpness'] = float(np.clip((r - 1.0) / (s1 / s0 - 1.0), 0.0, 1.0))
  return out


def _bone_mask(img: np.ndarray, T: float, B: float) -> np.ndarray:
  return ndimage.gaussian_filter(img, 0.6) > T + 0.4 * (B - T)


def _line_frame(shape, geo: dict) -> tuple[np.ndarray, np.ndarray]:
  """Per pixel [H, W]: signed distance to the joint line (+ = below, towards the tibia) and the position
    along it, both in pixels; the frame's origin is the line's point at column 0."""
  rr, cc = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
  dr = rr - geo['intercept']
  return (dr - geo['slope'] * cc) * geo['cos'], (cc + geo['slope'] * dr) * geo['cos']


def _femur_extent(img: np.ndarray, geo: dict, T: float, B: float) -> tuple[float, float] | None:
  """(unit, centre): the femoral condylar width on the line parallel to the joint 0.16 H above it, divided
    by its canonical 1.2 (pixels per knee unit), and the position along the joint line of its middle."""
  h, w = img.shape
  g = ndimage.gaussian_filter(img, 0.6)
  s = np.arange(-0.5 * w, 1.5 * w, 0.5)
  d = -0.16 * h
  rows = geo['intercept'] + s * geo['slope'] * geo['cos'] + d * geo['cos']
  cols = s * geo['cos'] - d * geo['slope'] * geo['cos']
  inside = (rows >= 0) & (rows <= h - 1) & (cols >= 0) & (cols <= w - 1)
  vals = ndimage.map_coordinates(g, [rows[inside], cols[inside]], order=1)
  bone = s[inside][vals > T + 0.4 * (B - T)]
  if len(bone) < 4 or bone.max() - bone.min() < 0.2 * w:
    return None
  return float((bone.max() - bone.min()) / 1.2), float(0.5 * (bone.max() + bone.min()))


def _osteophyte_area(img: np.ndarray, geo: dict, T: float, B: float, femur: tuple[float, float]) -> float:
  """Bone pixels in the joint band (0.22 units above to 0.12 below the line) beyond the condylar width."""
  unit, centre = femur
  perp, along = _line_frame(img.shape, geo)
  dist = np.abs(along - centre)
  half = 0.6 * unit
  roi = (perp >= -0.22 * unit) & (perp <= 0.12 * unit) & (dist > half + 0.5) & (dist < half + 0.3 * unit)
  return float(np.count_nonzero(_bone_mask(img, T, B) & roi))


def _sclerosis(img: np.ndarray, geo: dict, per_col: dict, T: float, B: float, femur: tuple[float, float]) -> float:
  """Calibrated subchondral excess brightness (see module docstring), max over the two compartments."""
  unit = femur[0]
  h = img.shape[0]
  band, deep = 0.1 * unit, (0.2 * unit, 0.3 * unit)
  ratios: dict[int, list] = {0: [], 1: []}
  for j, (_, e_up, e_dn, *_rest) in per_col.items():
    if not 0.3 <= abs(j - geo['centre']) / geo['half'] <= 0.7:
      continue
    col = img[:, j]
    excess = []
    for edge, sign in ((e_up, -1.0), (e_dn, 1.0)):  # into the femur (up) and into the tibia (down)

      def mean_at(d0, d1):
        a, b = sorted((edge + sign * d0, edge + sign * d1))
        a, b = max(0, int(np.ceil(a))), min(h - 1, int(np.floor(b)))
        return col[a:b + 1].mean() if b >= a else np.nan

      excess.append(mean_at(1.5, 1.5 + band) - mean_at(*deep))
    if np.isfinite(excess).any():
      ratios[int(j > geo['centre'])].append(np.nanmean(excess) / (B - T))
  per_side = [float(np.median(r)) for r in ratios.values() if len(r) >= 2]
  if not per_side:
    return float('nan')
  raw = max(per_side)
  return float(np.clip((raw - _SCLEROSIS_RATIO_0) / (_SCLEROSIS_RATIO_1 - _SCLEROSIS_RATIO_0), 0.0, 1.0))


def measure_knee_batch(images) -> dict[str, np.ndarray]:
  """``measure_knee`` over a batch. images: [B, H, W, 1] (uint8 or float in [-1, 1]); each value [B] float64."""
  arr = _check_batch(images, 1, 'measure_knee_batch')
  rows = [measure_knee(im) for im in arr]
  return {key: np.array([r[key] for r in rows], np.float64) for key in KNEE_MEASUREMENTS}


# ----------------------------------------------------------------------------------------------------------
# Histology
# ----------------------------------------------------------------------------------------------------------
def measure_histology(image) -> dict[str, float]:
  """Measure an H&E tile.

    Args:
      image: [H, W, 3] RGB, uint8 in [0, 255] or float in [-1, 1]; sides in [32, 512].

    Returns:
      dict of python floats: nuclear_count, nuclear_mean_area (px^2; 0 if no nuclei), nuclear_darkness (0..1;
      NaN if no nuclei), marker (0/1).
    """
  rgb = _to_unit(image, 3, 'measure_histology')
  h, w = rgb.shape[:2]
  gray = rgb.mean(axis=-1)
  marker, where = _detect_tag(1.0 - gray, HISTOLOGY_TAG_CELLS, return_box=True)
  hem = hematoxylin_density(rgb)
  valid = np.ones((h, w), bool)
  if where is not None:  # the tag is not tissue
    rr, cc, size = where
    valid[max(0, rr - 1):rr + size + 1, max(0, cc - 1):cc + size + 1] = False
  smooth = ndimage.gaussian_filter(hem, 0.5)
  mask = ndimage.binary_fill_holes((smooth > _NUCLEUS_THRESHOLD) & valid)
  labels, n = ndimage.label(mask)
  result = {'nuclear_count': 0.0, 'nuclear_mean_area': 0.0, 'nuclear_darkness': float('nan'), 'marker': marker}
  if n == 0:
    return result
  areas = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
  min_area = max(2.0, 0.5 * (min(h, w) / 64.0)**2)
  keep = areas >= min_area
  if not keep.any():
    return result
  # touching nuclei merge into one component: count the hematoxylin blobs (local maxima after smoothing at
  # half the typical nuclear radius) inside each component, at least one per component.
  radius = float(np.sqrt(np.median(areas[keep]) / np.pi))
  blobs = ndimage.gaussian_filter(hem, 0.5 * radius)
  footprint = max(3, int(round(1.6 * radius)) | 1)
  peaks = (blobs == ndimage.maximum_filter(blobs, size=footprint)) & mask
  peak_labels, n_peaks = ndimage.label(peaks)  # a flat-topped maximum is one peak, not several
  per_component = np.zeros(n + 1)
  if n_peaks:
    first = ndimage.labeled_comprehension(labels, peak_labels, np.arange(1, n_peaks + 1), np.max, int, 0)
    per_component = np.bincount(first, minlength=n + 1).astype(np.float64)
  count = float(np.maximum(per_component[1:][keep], 1.0).sum())
  nuclear = np.isin(labels, np.nonzero(keep)[0] + 1)
  median_h = float(np.median(hem[nuclear]))
  # area at the half level of the nuclear hematoxylin (exact for box-filtered edges of uniform nuclei)
  half_level = ndimage.binary_fill_holes((hem > 0.5 * median_h) & valid) & ndimage.binary_dilation(nuclear)
  result.update(
      nuclear_count=count,
      nuclear_mean_area=float(np.count_nonzero(half_level) / count),
      nuclear_darkness=float(np.clip((median_h - _DARKNESS_H0) / (_DARKNESS_H1 - _DARKNESS_H0), 0.0, 1.0)),
  )
  return result


def hematoxylin_density(rgb: np.ndarray) -> np.ndarray:
  """Colour deconvolution: hematoxylin density [H, W] (>= ~0; nuclei ~0.4..1.5) from RGB [H, W, 3] in [0, 1].

    Beer-Lambert optical density projected on the reference H, E and residual vectors.
    """
  h_vec, e_vec = stain_vectors(0.0)
  resid = np.cross(h_vec, e_vec)
  basis_inv = np.linalg.inv(np.stack([h_vec, e_vec, resid / np.linalg.norm(resid)]))
  od = -np.log((np.asarray(rgb, np.float64) * 255.0 + 1.0) / 256.0)
  return od @ basis_inv[:, 0]


def measure_histology_batch(images) -> dict[str, np.ndarray]:
  """``measure_histology`` over a batch. images: [B, H, W, 3]; each value [B] float64."""
  arr = _check_batch(images, 3, 'measure_histology_batch')
  rows = [measure_histology(im) for im in arr]
  return {key: np.array([r[key] for r in rows], np.float64) for key in HISTOLOGY_MEASUREMENTS}
