"""Procedural medical-image phantoms with ground-truth attributes (numpy + scipy only).

Two modalities, both deterministic in ``seed`` and renderable at any square resolution 32..512 (the knee here,
the histology tile in ``histology_phantoms``, which shares this module's checks, scene textures and tags):

* ``knee_radiograph`` -- an AP knee radiograph (1 channel): distal femur with medial and lateral condyles and
  the intercondylar notch, proximal tibia with its plateau and tibial spines, fibula head on the lateral side,
  a faint patella over the femur, bright subchondral plates and cortices, band-passed trabecular texture,
  soft-tissue envelope and dark background. The Kellgren-Lawrence grade drives a continuous latent severity
  (``grade + N(0, 0.3^2)``) that sets medial joint-space narrowing, marginal osteophytes and subchondral
  sclerosis, so neighbouring grades overlap as they do when radiologists grade real knees.
* ``histology_phantoms.histology_tile`` -- an H&E-like RGB tile (stroma, nuclei, lumina through Beer-Lambert
  optics); tumour vs normal drives nuclear density, size, pleomorphism and hyperchromasia.

Both can burn in a spurious corner tag (the shortcut a confounded classifier may learn) with probability
``marker_probability(positive, strength)``. The knee can also come from a second acquisition device,
"scanner B" (with probability ``marker_probability(grade >= 2, scanner_strength)``): a GLOBAL shortcut that no
heatmap can point at -- the whole image is slightly blurred (Gaussian, sigma 0.55..0.9 px at 64 px, scaled with
the resolution) and its white noise is stronger (std 0.016..0.046 instead of 0.004..0.026 of full scale). The
anatomy stays readable (``measure.measure_knee`` still finds the joint), while ``measure.noise_level`` and
``measure.sharpness`` tell the scanners apart. All random draws come from ``np.random.default_rng(seed)`` split
into fixed independent streams, so the same seed with a different ``grade``/``label``/``marker_strength`` renders
the same "patient" (same pose, texture, nuisances) -- a counterfactual pair.

Geometry is evaluated analytically at every output pixel (no resampling), with edges anti-aliased from signed
distances, so ground-truth distances are exact in output pixels. Scene textures (trabeculae, lumina, fibres,
cell clustering) are drawn on a fixed 128-grid spectrum and Fourier-interpolated, so one seed depicts the same
scene at every resolution (only the per-pixel noise and chromatin grain are per resolution).

Knee scale: the medial gap is (0.17 - 0.031 * severity) half-image units wide, i.e. at 64 px and scale 1 about
5.4 px at KL0 down to 1.5 px at KL4 (the lateral compartment stays ~5.4 px); it is constant across the flat
contact zone of each compartment (the tibia conforms to the condyle there), so the narrowest width is well
defined. The subchondral plates are flat-topped and >= 2 px thick, the property ``measure.measure_knee`` relies
on to read the bone level next to the gap. The corner tag sits at ``marker_box`` (top right).

Units of the returned attributes (all python floats):

knee (``KNEE_ATTRIBUTES``)
  joint_space_width  px   minimum joint-space width over the two compartments, in output pixels (after scale)
  osteophyte_size    px   length of the largest marginal osteophyte, in output pixels (0 = none)
  sclerosis          0..1 subchondral sclerosis of the medial compartment
  rotation           deg  in-plane rotation, positive = anticlockwise as displayed (about -8..8)
  shift_x, shift_y   fraction of the image side (about -0.05..0.05), +x right, +y down
  scale              anatomy scale factor (about 0.9..1.1)
  brightness         additive intensity offset (fraction of full scale, about -0.06..0.06)
  contrast           multiplicative contrast (about 0.85..1.15)
  noise_std          Gaussian (white, per-pixel) noise std (fraction of full scale); scanner A 0.004..0.026,
                     scanner B 0.016..0.046 (the same percentile of its range for the same seed)
  flipped            1.0 if mirrored left/right (fibula on the image left), else 0.0
  marker             1.0 if the corner tag is burnt in, else 0.0
  scanner            1.0 if acquired on "scanner B" (see below), else 0.0 (scanner A, the default images)
  blur_sigma         px   Gaussian blur sigma of the whole image in output pixels (0 on scanner A)

histology (``HISTOLOGY_ATTRIBUTES``)
  nuclear_count        number of nuclei drawn in the tile
  nuclear_mean_area    px^2  mean nuclear area (pi * a * b) in output pixels
  nuclear_darkness     0..1  hyperchromasia (hematoxylin load of the nuclei)
  pleomorphism         coefficient of variation of the nuclear areas
  stain_shift          -1..1 stain variation: negative = redder, paler; positive = bluer/purpler, heavier
  blur_sigma           px    Gaussian blur (out-of-focus) sigma in output pixels
  background_fraction  0..1  fraction of the tile that is lumen / empty glass
  marker               1.0 if the corner tag is burnt in, else 0.0
"""
from __future__ import annotations

import numbers

import numpy as np
from scipy import ndimage

KNEE_ATTRIBUTES: tuple[str, ...] = (
    'joint_space_width',
    'osteophyte_size',
    'sclerosis',
    'rotation',
    'shift_x',
    'shift_y',
    'scale',
    'brightness',
    'contrast',
    'noise_std',
    'flipped',
    'marker',
    'scanner',
    'blur_sigma',
)
HISTOLOGY_ATTRIBUTES: tuple[str, ...] = (
    'nuclear_count',
    'nuclear_mean_area',
    'nuclear_darkness',
    'pleomorphism',
    'stain_shift',
    'blur_sigma',
    'background_fraction',
    'marker',
)
KL_GRADE_NAMES: tuple[str, ...] = ('KL0', 'KL1', 'KL2', 'KL3', 'KL4')
HISTOLOGY_CLASS_NAMES: tuple[str, ...] = ('normal', 'tumour')

MIN_RESOLUTION = 32
MAX_RESOLUTION = 512

# ----------------------------------------------------------------------------------------------------------
# Corner tag (the spurious marker). Shared with measure.py, which looks for exactly this pattern.
# ----------------------------------------------------------------------------------------------------------
# 7x7 cell layout: a 1-cell frame around a 5x5 glyph. 1 = tag colour, 0 = glyph ("ink") colour.
_GLYPH_R = ('11110', '10001', '11110', '10010', '10001')  # letter "R" (radiograph side marker)
_GLYPH_H = ('10001', '10001', '11111', '10001', '10001')  # letter "H" (slide-scanner tag)


def _tag_cells(glyph: tuple[str, ...]) -> np.ndarray:
  cells = np.ones((7, 7), np.float32)
  cells[1:6, 1:6] = 1.0 - np.array([[int(c) for c in row] for row in glyph], np.float32)
  return cells


KNEE_TAG_CELLS = _tag_cells(_GLYPH_R)  # [7, 7]; 1 = bright tag, 0 = dark ink of the letter
HISTOLOGY_TAG_CELLS = _tag_cells(_GLYPH_H)  # [7, 7]; 1 = dark tag, 0 = white ink of the letter


def marker_box(height: int, width: int) -> tuple[int, int, int]:
  """Position of the corner tag: (row0, col0, size) in pixels; the tag sits in the top-right corner.

    Used by both the phantoms (to burn it in) and measure.py (to look for it).
    """
  side = min(height, width)
  size = max(9, int(round(0.12 * side)))
  margin = max(2, int(round(0.03 * side)))
  return margin, width - margin - size, size


def tag_pattern(cells: np.ndarray, size: int) -> np.ndarray:
  """Nearest-neighbour upsampling of a [7, 7] tag cell layout to [size, size] float32 (1 = tag, 0 = ink)."""
  idx = (np.arange(size) * cells.shape[0]) // size
  return cells[np.ix_(idx, idx)]


def marker_probability(positive: bool, strength: float) -> float:
  """P(marker present) = 0.5 * (1 - strength) + strength * positive.

    strength 0 -> 0.5 regardless of the label (no shortcut); 1 -> marker iff positive (perfect shortcut);
    linear in between. ``strength`` must lie in [0, 1].
    """
  strength = check_strength(strength)
  return float(0.5 * (1.0 - strength) + strength * float(bool(positive)))


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------
def check_seed(seed) -> int:
  """``seed`` as a non-negative int; ValueError naming it otherwise."""
  if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
    raise ValueError(f'seed must be a non-negative integer, got {seed!r}; pass e.g. seed=0.')
  return int(seed)


def check_resolution(resolution) -> int:
  """``resolution`` as an int in [MIN_RESOLUTION, MAX_RESOLUTION]; ValueError naming the range otherwise."""
  if (isinstance(resolution, (bool, np.bool_)) or not isinstance(resolution, numbers.Integral) or
      not MIN_RESOLUTION <= int(resolution) <= MAX_RESOLUTION):
    raise ValueError(f'resolution must be an integer in [{MIN_RESOLUTION}, {MAX_RESOLUTION}] (square images), '
                     f'got {resolution!r}; pick e.g. 64, 128 or 256.')
  return int(resolution)


def check_strength(strength, name: str = 'marker_strength') -> float:
  """``strength`` as a float probability in [0, 1]; ValueError naming ``name`` otherwise."""
  try:
    value = float(strength)
  except (TypeError, ValueError):
    raise ValueError(f'{name} must be a number in [0, 1], got {strength!r}.') from None
  if not 0.0 <= value <= 1.0:  # also rejects NaN
    raise ValueError(f'{name} must be in [0, 1] (0 = no shortcut, 1 = present iff positive), got {strength!r}.')
  return value


def check_class(value, n: int, name: str) -> int | None:
  """``value`` as an int class in [0, n), or None (drawn from the seed); ValueError naming ``name`` otherwise."""
  if value is None:
    return None
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or not 0 <= int(value) < n:
    raise ValueError(f'{name} must be an integer in 0..{n - 1} or None (drawn from the seed), got {value!r}.')
  return int(value)


# ----------------------------------------------------------------------------------------------------------
# Small numerical helpers
# ----------------------------------------------------------------------------------------------------------
def _smoothstep(t):
  t = np.clip(t, 0.0, 1.0)
  return t * t * (3.0 - 2.0 * t)


def _coverage(sdf_px):
  """Anti-aliased coverage from a signed distance in pixels (positive inside): box-filtered straight edge."""
  return np.clip(0.5 + sdf_px, 0.0, 1.0)


def filtered_noise(rng: np.random.Generator, n: int, size: int, transfer) -> np.ndarray:
  """``n`` independent real fields [n, size, size] with power spectrum |transfer(fy, fx)|^2, unit std.

    ``transfer`` receives frequency grids in cycles/pixel (fy [size, 1], fx [1, size//2+1]).
    """
  fy = np.fft.fftfreq(size)[:, None]
  fx = np.fft.rfftfreq(size)[None, :]
  shape = (n, size, size // 2 + 1)
  spec = (rng.standard_normal(shape, dtype=np.float32) + 1j * rng.standard_normal(shape, dtype=np.float32))
  spec *= transfer(fy, fx).astype(np.float32)
  fields = np.fft.irfft2(spec, s=(size, size), axes=(-2, -1)).astype(np.float32)
  fields -= fields.mean(axis=(-2, -1), keepdims=True)
  fields /= fields.std(axis=(-2, -1), keepdims=True) + 1e-12
  return fields


_SCENE_BASE = 128  # scene textures are band-limited to 64 cycles per image side


def scene_noise(rng: np.random.Generator, n: int, size: int, transfer) -> np.ndarray:
  """``n`` fields [n, size, size] of one continuous random scene, identical at every resolution.

    The spectrum is drawn once on a 128 x 128 grid with amplitude ``transfer(ky, kx)`` (frequencies in cycles
    per image side; may return [n, ...]) and Fourier-interpolated (zero-padded or truncated) to ``size``, so
    the same seed shows the same texture at 32 px (low-passed) and at 512 px. Unit std at the base grid.
    """
  N = _SCENE_BASE
  ky = np.fft.fftfreq(N)[:, None] * N
  kx = np.fft.rfftfreq(N)[None, :] * N
  shape = (n, N, N // 2 + 1)
  spec = rng.standard_normal(shape, dtype=np.float32) + 1j * rng.standard_normal(shape, dtype=np.float32)
  spec *= np.broadcast_to(transfer(ky, kx), shape).astype(np.float32)
  spec[:, 0, 0] = 0.0
  std = np.fft.irfft2(spec, s=(N, N), axes=(-2, -1)).std(axis=(-2, -1), keepdims=True) + 1e-12
  m = min(N, size) // 2
  out = np.zeros((n, size, size // 2 + 1), np.complex64)
  out[:, :m, :m + 1] = spec[:, :m, :m + 1]
  out[:, -m:, :m + 1] = spec[:, -m:, :m + 1]
  fields = np.fft.irfft2(out, s=(size, size), axes=(-2, -1)) * (size * size / (N * N))
  return (fields / std).astype(np.float32)


def burn_tag(image: np.ndarray, cells: np.ndarray, tag_value, ink_value) -> None:
  """Burn the corner tag into ``image`` [R, R, C] float in [0, 1] in place."""
  r0, c0, size = marker_box(image.shape[0], image.shape[1])
  pattern = tag_pattern(cells, size)[..., None]
  tag_value = np.asarray(tag_value, np.float32)
  ink_value = np.asarray(ink_value, np.float32)
  image[r0:r0 + size, c0:c0 + size, :] = pattern * tag_value + (1.0 - pattern) * ink_value


# ----------------------------------------------------------------------------------------------------------
# Knee radiograph
# ----------------------------------------------------------------------------------------------------------
# Canonical frame: u horizontal (+ = lateral, fibula side), v vertical (+ = down, towards the tibia), both in
# [-1, 1] across the unscaled image; the joint line is v = 0.
_UC = 0.35  # condyle centres at u = -UC (medial) and +UC (lateral)
_A = 0.25  # condyle half-width (femur is 2 * (UC + A) = 1.2 wide, 60% of the unscaled image)
_HC = 0.24  # condyle half-height (superellipse)
_P = 2.6  # superellipse exponent: flat-ish condyle bottoms with rounded corners
_SHAFT_F = 0.27  # femoral shaft half-width
_SHAFT_T = 0.25  # tibial shaft half-width
_PLATEAU = 0.62  # tibial plateau half-width
_NOTCH = 0.115  # half-width of the intercondylar notch
_CONTACT = 0.6  # tibial plateau conforms to the condyle for |u - uc| < CONTACT * A (constant gap there)
_BONE = 0.40  # bone attenuation (intensity units)


def _superellipse_sdf(u, v, uc, vc, a, b, p=_P):
  """Approximate signed distance (canonical units, + inside) to the superellipse |x|^p + |y|^p = 1."""
  x = np.abs(u - uc) / a
  y = np.abs(v - vc) / b
  xp = x**(p - 1.0)
  yp = y**(p - 1.0)
  f = xp * x + yp * y - 1.0
  grad = p * np.sqrt((xp / a)**2 + (yp / b)**2)
  return -f / np.maximum(grad, 1e-3)


def _condyle_rise(x):
  """Height of the superellipse bottom above its lowest point, in units of the half-height, for |x| < 1."""
  x = np.minimum(np.abs(x), 1.0)
  return 1.0 - (1.0 - x**_P)**(1.0 / _P)


def _femur_halfwidth(v, v_body):
  t = np.clip((v + 1.25) / (v_body + 1.25), 0.0, 1.0)
  return _SHAFT_F + (_UC + _A - _SHAFT_F) * _smoothstep(t)**1.5


def _tibia_halfwidth(v):
  return _SHAFT_T + (_PLATEAU - _SHAFT_T) * (1.0 - _smoothstep((v - 0.2) / 0.75))**2.0


def _tibia_top(u, g_m, g_l):
  """v of the tibial articular surface at horizontal position u (medial u<0, lateral u>0)."""
  x_m = np.clip((u + _UC) / _A, -_CONTACT, _CONTACT)
  x_l = np.clip((u - _UC) / _A, -_CONTACT, _CONTACT)
  top_m = 0.5 * g_m - _HC * _condyle_rise(x_m)
  top_l = 0.5 * g_l - _HC * _condyle_rise(x_l)
  w = _smoothstep((u + 0.04) / 0.08)
  top = (1.0 - w) * top_m + w * top_l
  au = np.abs(u)
  top = top - 0.08 * np.exp(-((au - 0.075) / 0.05)**2) - 0.02 * np.exp(-(u / 0.12)**2)  # tibial spines
  top = top + 4.0 * np.maximum(au - 0.53, 0.0)**1.5  # rounded plateau margins
  return top


def _spur_sdf(u, v, base_u, base_v, direction_deg, length, hook):
  """Signed distance (+ inside) of a tapered, slightly hooked bony spur rooted at (base_u, base_v)."""
  ang = np.deg2rad(direction_deg)
  du, dv = np.float32(np.cos(ang)), np.float32(np.sin(ang))
  s = (u - base_u) * du + (v - base_v) * dv  # along the spur
  n = -(u - base_u) * dv + (v - base_v) * du  # across
  t = np.clip(s / length, 0.0, 1.0)
  n = n - hook * length * t * t
  half = (0.012 + 0.33 * length) * (1.0 - t)**0.85
  return np.minimum(np.minimum(length - s, half - np.abs(n)), s + 0.03)


def _table(fn, lo: float, hi: float, n: int = 4097):
  """Sample a smooth 1-D profile once so that per-pixel evaluation is a cheap np.interp."""
  xs = np.linspace(lo, hi, n)
  return xs, fn(xs)


def _lookup(q, table):
  return np.interp(q, table[0], table[1]).astype(np.float32)


def knee_radiograph(seed: int, resolution: int = 64, grade: int | None = None, marker_strength: float = 0.0,
                    scanner_strength: float | None = None,
                    marker: bool | None = None) -> tuple[np.ndarray, int, dict[str, float]]:
  """Render one AP knee radiograph phantom.

    Args:
      seed: non-negative int; everything random derives from ``np.random.default_rng(seed)``.
      resolution: output side R in [32, 512].
      grade: Kellgren-Lawrence grade 0..4, or None to draw it uniformly from the seed.
      marker_strength: in [0, 1]; the "R" corner tag is present with probability
        ``marker_probability(grade >= 2, marker_strength)``.
      scanner_strength: None (default: every image from scanner A -- the images this function always rendered,
        bit for bit) or a number in [0, 1]: the image comes from scanner B (global blur + stronger noise, see the
        module docstring) with probability ``marker_probability(grade >= 2, scanner_strength)`` -- 0 mixes the
        two scanners 50/50 independently of the grade, 1 means scanner B iff KL >= 2. The scanner draw has its
        own random stream (independent of the marker's); the same seed renders the same patient on either.
      marker: None (default: the tag is drawn with ``marker_strength`` as above) or a bool that forces the "R"
        tag on (True) or off (False) whatever the grade and ``marker_strength`` -- e.g. the same patients with the
        artefact removed. The marker's random draw is made either way, so nothing else in the image changes.

    Returns:
      image: uint8 [R, R, 1] in [0, 255] (bone bright, air dark).
      grade: the KL grade (int 0..4).
      attrs: dict with exactly ``KNEE_ATTRIBUTES`` keys, python floats (units in the module docstring).
    """
  seed = check_seed(seed)
  R = check_resolution(resolution)
  grade = check_class(grade, 5, 'grade')
  strength = check_strength(marker_strength)
  scanner_p = None if scanner_strength is None else check_strength(scanner_strength, 'scanner_strength')

  root = np.random.default_rng(seed)
  # a 6th child stream for the scanner leaves the first five (and so the default images) exactly as before
  r_label, r_sev, r_pose, r_tex, r_marker, r_scanner = root.spawn(6)
  drawn = int(r_label.integers(0, 5))
  grade = drawn if grade is None else grade

  # ---- disease: continuous latent severity -> JSW, osteophytes, sclerosis (canonical units) ----------------
  z = r_sev.standard_normal(8)
  sev = float(np.clip(grade + 0.3 * z[0], -0.6, 4.6))
  g_m = max(0.03, (0.17 - 0.031 * sev) * (1.0 + 0.04 * z[1]))  # medial joint space
  g_l = max(0.03, 0.168 - 0.004 * sev + 0.007 * z[2])  # lateral: mostly preserved
  ost_m = 0.032 * max(0.0, sev - 0.6) * float(np.exp(0.15 * z[3]))  # medial osteophyte length
  ost_l = ost_m * (0.55 + 0.12 * float(np.tanh(z[4])))
  scl = float(np.clip((sev - 1.2) / 3.0 + 0.04 * z[5], 0.0, 1.0))
  hook_f, hook_t = 0.25 + 0.1 * np.tanh(z[6]), 0.25 + 0.1 * np.tanh(z[7])

  # ---- nuisances -----------------------------------------------------------------------------------------
  pose = r_pose.random(9)
  rotation = 16.0 * pose[0] - 8.0
  shift_x, shift_y = 0.1 * pose[1] - 0.05, 0.1 * pose[2] - 0.05
  scale = 0.9 + 0.2 * pose[3]
  brightness = 0.12 * pose[4] - 0.06
  contrast = 0.85 + 0.3 * pose[5]
  noise_std = 0.004 + 0.022 * pose[6]
  flipped = bool(pose[7] < 0.5)
  heel = 0.06 * pose[8] - 0.03  # anode-heel gradient (visual only)

  marker_drawn = bool(r_marker.random() < marker_probability(grade >= 2, strength))
  marker = marker_drawn if marker is None else bool(marker)

  # scanner B: the whole image slightly blurred and noisier; drawn in full whatever the outcome so that the same
  # seed is the same patient (and the same scanner-B settings) at any strength
  sc = r_scanner.random(2)
  scanner = scanner_p is not None and bool(sc[0] < marker_probability(grade >= 2, scanner_p))
  blur_sigma = 0.0
  if scanner:
    blur_sigma = (0.55 + 0.35 * sc[1]) * R / 64.0
    noise_std = 0.016 + 0.03 * pose[6]  # same percentile as scanner A's 0.004 + 0.022 * pose[6]

  # ---- output pixel grid -> canonical coordinates ----------------------------------------------------------
  # display (x right, y down, both in [-1, 1]) from canonical: [x, y] = scale * Rot(rotation) [u', v] + 2 * shift,
  # u' = -u when flipped; positive rotation turns the anatomy anticlockwise on screen.
  coords = ((np.arange(R) + 0.5) * (2.0 / R) - 1.0).astype(np.float32)
  x = coords[None, :] - np.float32(2.0 * shift_x)
  y = coords[:, None] - np.float32(2.0 * shift_y)
  th = np.deg2rad(rotation)
  c, s = np.float32(np.cos(th) / scale), np.float32(np.sin(th) / scale)
  u = c * x - s * y
  v = s * x + c * y
  if flipped:
    u = -u
  px = 2.0 / (R * scale)  # one output pixel in canonical units

  def to_pixel(cu, cv):
    cu = -cu if flipped else cu
    dx = scale * (np.cos(th) * cu + np.sin(th) * cv) + 2.0 * shift_x
    dy = scale * (-np.sin(th) * cu + np.cos(th) * cv) + 2.0 * shift_y
    return (dy + 1.0) * R / 2.0 - 0.5, (dx + 1.0) * R / 2.0 - 0.5

  def window(u_lo, u_hi, v_lo, v_hi):
    """Pixel slices covering the canonical rectangle [u_lo, u_hi] x [v_lo, v_hi] (+2 px), or None."""
    corners = [to_pixel(cu, cv) for cu in (u_lo, u_hi) for cv in (v_lo, v_hi)]
    rows, cols = [p[0] for p in corners], [p[1] for p in corners]
    r0, r1 = max(0, int(np.floor(min(rows))) - 2), min(R, int(np.ceil(max(rows))) + 3)
    c0, c1 = max(0, int(np.floor(min(cols))) - 2), min(R, int(np.ceil(max(cols))) + 3)
    return (slice(r0, r1), slice(c0, c1)) if (r0 < r1 and c0 < c1) else None

  def windowed(fn, u_lo, u_hi, v_lo, v_hi, outside=-1.0):
    """fn(u, v) evaluated on the window of a canonical rectangle; ``outside`` elsewhere (far outside a shape)."""
    field = np.full((R, R), outside, np.float32)
    win = window(u_lo, u_hi, v_lo, v_hi)
    if win is not None:
      field[win] = fn(u[win], v[win])
    return field

  def add_spur(field, bu, bv, direction, length, hook):
    """field = max(field, spur) on the pixel window around the spur only."""
    reach = length + 0.05
    win = window(bu - reach, bu + reach, bv - reach, bv + reach)
    if win is not None:
      field[win] = np.maximum(field[win], _spur_sdf(u[win], v[win], bu, bv, direction, length, hook))

  # ---- femur -----------------------------------------------------------------------------------------------
  vc_m, vc_l = -0.5 * g_m - _HC, -0.5 * g_l - _HC
  v_body = min(vc_m, vc_l)
  body = np.minimum(v_body - v, _lookup(v, _table(lambda q: _femur_halfwidth(q, v_body), -2.0, 2.0)) - np.abs(u))
  m = 0.15  # margin (canonical) beyond which a shape's SDF only matters through its sign
  for uc, vc in ((-_UC, vc_m), (_UC, vc_l)):
    body = np.maximum(
        body,
        windowed(lambda uu, vv: _superellipse_sdf(uu, vv, uc, vc, _A, _HC), uc - _A - m, uc + _A + m, vc - _HC - m,
                 vc + _HC + m))
  femur = body
  # intercondylar notch: an inverted U (slot with a round roof) cut between the condyles
  roof_c = v_body - 0.07 + _NOTCH
  notch = np.where(v > roof_c, _NOTCH - np.abs(u), _NOTCH - np.sqrt(u * u + (v - roof_c)**2))
  femur = np.minimum(femur, -notch)
  # marginal osteophytes on the femoral condyles, pointing outwards and down (v points down)
  for sign, vc, length in ((-1.0, vc_m, ost_m), (1.0, vc_l, ost_l)):
    if length > 1e-3:
      bu = sign * (_UC + 0.93 * _A)
      bv = vc + _HC * (1.0 - 0.93**_P)**(1.0 / _P)
      add_spur(femur, bu, bv, 145.0 if sign < 0 else 35.0, length, hook_f * sign)

  # ---- tibia -----------------------------------------------------------------------------------------------
  top_tab = _table(lambda q: _tibia_top(q, g_m, g_l), -2.0, 2.0)
  slope_tab = (top_tab[0], np.gradient(top_tab[1], top_tab[0]))
  top, slope = _lookup(u, top_tab), _lookup(u, slope_tab)
  hw_t = _lookup(v, _table(_tibia_halfwidth, -2.0, 2.0))
  tibia = np.minimum((v - top) / np.sqrt(1.0 + slope * slope), hw_t - np.abs(u))
  for sign, length in ((-1.0, ost_m), (1.0, ost_l)):
    if length > 1e-3:
      bu = sign * (_PLATEAU - 0.01)
      bv = float(_tibia_top(np.array(bu), g_m, g_l)) + 0.012
      add_spur(tibia, bu, bv, 210.0 if sign < 0 else -30.0, length, -hook_t * sign)  # outwards and up

  # ---- fibula (lateral, below the plateau) and patella (faint, over the femur) ---------------------------
  head = windowed(lambda uu, vv: _superellipse_sdf(uu, vv, 0.61, 0.33, 0.11, 0.13, p=2.2), 0.61 - 0.11 - m,
                  0.61 + 0.11 + m, 0.33 - 0.13 - m, 0.33 + 0.13 + m)
  neck = _lookup(v, _table(lambda q: 0.055 + 0.05 * np.exp(-((q - 0.4) / 0.12)**2), -2.0, 2.0))
  shaft = np.minimum(neck - np.abs(u - (0.6 - 0.05 * (v - 0.33))), v - 0.33)
  fibula = np.maximum(head, shaft)
  patella = windowed(lambda uu, vv: _superellipse_sdf(uu, vv, 0.03, -0.4, 0.22, 0.26, p=2.0), 0.03 - 0.22 - m,
                     0.03 + 0.22 + m, -0.4 - 0.26 - m, -0.4 + 0.26 + m)

  # ---- intensities -----------------------------------------------------------------------------------------
  trabecular, softtex = scene_noise(r_tex, 2, R, _knee_transfers(scale))

  plate = max(0.03, 2.0 * px)  # subchondral plate / cortex: flat-topped, >= 2 px thick (see measure.py)
  cortex = plate + _lookup(v, _table(lambda q: 0.035 * np.clip((np.abs(q) - 0.45) / 0.3, 0.0, 1.0), -2.0, 2.0))
  inv_px = np.float32(1.0 / px)

  def bone_value(sdf, density):
    cov = _coverage(sdf * inv_px)
    rim = np.clip(1.0 - (sdf - cortex) * np.float32(1.0 / 0.07), 0.0, 1.0)
    return cov, density * cov * (0.58 + 0.42 * rim) * (1.0 + 0.16 * (1.0 - rim) * trabecular)

  cov_f, val_f = bone_value(femur, _BONE)
  cov_t, val_t = bone_value(tibia, _BONE)
  _, val_fi = bone_value(fibula, 0.55 * _BONE)
  val_p = 0.09 * _smoothstep(patella * np.float32(1.0 / 0.04)) * (1.0 + 0.1 * trabecular)
  # the trochlea/posterior condyles overlap the notch: it is radiolucent, not empty
  val_n = (0.35 * _BONE) * _coverage(notch * inv_px) * _smoothstep(
      (v_body + 0.12 - v) / 0.1) * (1.0 + 0.16 * trabecular)

  # subchondral sclerosis: a brighter band under both articular surfaces of each compartment, strongest
  # medially; depth is measured vertically from the articular surface (condyle bottom / tibial plateau)
  def sclerosis_band(depth, amount):
    width = 0.05 + 0.08 * amount
    return amount * np.clip(1.0 - np.maximum(depth - plate, 0.0) * np.float32(1.0 / width), 0.0, 1.0)

  scl_val = 0.0
  if scl > 0.0:
    for uc, g, amount in ((-_UC, g_m, scl), (_UC, g_l, 0.35 * scl)):
      x = (u - uc) / _A
      win = _smoothstep((1.15 - np.abs(x)) / 0.3)
      depth_f = (-0.5 * g - _HC * _condyle_rise(x)) - v
      depth_t = v - top
      scl_val = scl_val + 0.55 * _BONE * win * (cov_f * sclerosis_band(depth_f, amount) +
                                                cov_t * sclerosis_band(depth_t, amount))

  # soft tissue envelope (thigh above, calf below) and background with an anode-heel gradient
  half = _lookup(v, _table(lambda q: 0.9 - 0.06 * q + 0.04 * np.exp(-(q / 0.3)**2), -2.0, 2.0))
  thick = np.sqrt(np.clip(1.0 - (u / half)**2, 0.0, 1.0))
  soft = 0.2 * thick**0.7 * (1.0 + 0.05 * softtex)
  background = 0.035 + heel * 0.5 * y

  image = background + soft + val_f + val_t + val_fi + val_p + val_n + scl_val
  image = (image - 0.35) * contrast + (0.35 + brightness)
  if blur_sigma > 0.0:  # scanner B's optics / detector: before the (white) noise
    image = ndimage.gaussian_filter(image, sigma=blur_sigma, mode='nearest', truncate=3.0)
  image += np.float32(noise_std) * r_tex.standard_normal((R, R), dtype=np.float32)
  image = np.clip(image, 0.0, 1.0)[..., None]
  if marker:
    burn_tag(image, KNEE_TAG_CELLS, 0.94, 0.08)
  out = np.round(image * 255.0).astype(np.uint8)

  attrs = {
      'joint_space_width': float(min(g_m, g_l) / px),
      'osteophyte_size': float(max(ost_m, ost_l) / px),
      'sclerosis': scl,
      'rotation': float(rotation),
      'shift_x': float(shift_x),
      'shift_y': float(shift_y),
      'scale': float(scale),
      'brightness': float(brightness),
      'contrast': float(contrast),
      'noise_std': float(noise_std),
      'flipped': float(flipped),
      'marker': float(marker),
      'scanner': float(scanner),
      'blur_sigma': float(blur_sigma),
  }
  return out, grade, attrs


def _knee_transfers(scale: float):
  """Scene transfers (cycles per image side): trabecular texture (band-pass, period 0.08 canonical units,
    vertically streaked) and a smooth soft-tissue thickness variation."""
  f0 = 25.0 / scale

  def transfer(ky, kx):
    k = np.sqrt(ky**2 + (0.8 * kx)**2)
    trabecular = np.exp(-0.5 * ((k - f0) / (0.45 * f0))**2) * (1.0 + 0.6 * kx**2 / (kx**2 + ky**2 + 1e-12))
    soft = np.exp(-0.5 * ((ky**2 + kx**2) / 16.0))
    return np.stack([trabecular, soft])

  return transfer
