"""The H&E histology tile phantom (numpy + scipy only): ``histology_tile`` and its stain model ``stain_vectors``.

An H&E-like RGB tile rendered through Beer-Lambert optics from hematoxylin and eosin concentration maps: fibrous
eosinophilic stroma, hematoxylin nuclei (elliptic, textured, with membranes and nucleoli), white lumina. Tumour
vs normal drives nuclear density, size, pleomorphism and hyperchromasia via a latent ``label + N(0, 0.3^2)``.
Deterministic in ``seed`` at any square resolution 32..512, with the dark "H" corner tag (the shortcut) present
with probability ``phantoms.marker_probability(label == 1, marker_strength)``; the same seed with another
``label`` renders the same tile otherwise (a counterfactual pair). The attribute names and units are
``phantoms.HISTOLOGY_ATTRIBUTES`` (listed in ``phantoms``' docstring); the seed and resolution checks, scene
textures and tag burning are ``phantoms``', shared with the knee radiograph.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from stylex_jax.data.phantoms import (HISTOLOGY_TAG_CELLS, burn_tag, check_class, check_resolution, check_seed,
                                      check_strength, filtered_noise, marker_probability, scene_noise)

# Optical densities per unit stain concentration (R, G, B), after Ruifrok & Johnston (2001), normalised.
_H_OD = np.array([0.65, 0.70, 0.29])
_E_OD = np.array([0.12, 0.84, 0.50])
_H_SHIFT = np.array([0.10, -0.12, 0.12])  # stain_shift > 0: bluer hematoxylin
_E_SHIFT = np.array([0.06, -0.05, 0.20])  # stain_shift > 0: purpler eosin; < 0: redder
_GLASS_OD = 0.02


def stain_vectors(stain_shift: float) -> tuple[np.ndarray, np.ndarray]:
  """Unit optical-density vectors (R, G, B) of hematoxylin and eosin for a given stain shift in [-1, 1]."""
  h = _H_OD + stain_shift * _H_SHIFT
  e = _E_OD + stain_shift * _E_SHIFT
  return h / np.linalg.norm(h), e / np.linalg.norm(e)


def _histology_transfers(fibre_angle: float):
  """Scene transfers (cycles per tile) of the texture fields: lumina, cell clustering, collagen fibres."""
  ca, sa = np.cos(fibre_angle), np.sin(fibre_angle)

  def transfer(ky, kx):
    k = np.sqrt(ky * ky + kx * kx)
    lumen = np.exp(-0.5 * (k / 1.5)**2)
    cluster = np.exp(-0.5 * (k / 3.0)**2)
    k_par = kx * ca + ky * sa  # along the fibre direction
    k_perp = -kx * sa + ky * ca  # across the fibres
    fibre = np.exp(-0.5 * (k_par / 1.8)**2) * np.exp(-0.5 * ((np.abs(k_perp) - 18.0) / 8.0)**2)
    fibre = fibre + 0.12 * np.exp(-0.5 * ((k - 20.0) / 8.0)**2)  # some isotropic wispiness
    return np.stack([lumen, cluster, fibre])

  return transfer


def _place_nuclei(rng, R, n_target, radius, sigma_size, tissue, cluster, clustering, aspect_fn):
  """Random sequential placement of non-overlapping elliptic nuclei inside tissue.

    Returns arrays (cy, cx, a, b) in pixels for up to ``n_target`` nuclei.
    """
  n_cand = int(6 * n_target + 40)
  cy = rng.uniform(0, R, n_cand)
  cx = rng.uniform(0, R, n_cand)
  r = radius * np.exp(sigma_size * rng.standard_normal(n_cand) - 0.5 * sigma_size**2)
  asp = aspect_fn(n_cand)
  accept_u = rng.random(n_cand)
  iy = np.clip(cy.astype(int), 0, R - 1)
  ix = np.clip(cx.astype(int), 0, R - 1)
  p = np.clip(0.5 + clustering * cluster[iy, ix], 0.05, 1.0) * (tissue[iy, ix] > 0.6)
  ok = accept_u < p
  cy, cx, r, asp = cy[ok], cx[ok], r[ok], asp[ok]
  chosen: list[int] = []
  py = np.empty(len(cy))
  pxs = np.empty(len(cy))
  pr = np.empty(len(cy))
  for i in range(len(cy)):
    if len(chosen) >= n_target:
      break
    k = len(chosen)
    if k:
      d2 = (py[:k] - cy[i])**2 + (pxs[:k] - cx[i])**2
      reach = 0.9 * (pr[:k] + r[i] * np.sqrt(asp[i]))
      if np.any(d2 < reach * reach):
        continue
    py[k], pxs[k], pr[k] = cy[i], cx[i], r[i] * np.sqrt(asp[i])
    chosen.append(i)
  idx = np.array(chosen, dtype=int)
  return cy[idx], cx[idx], r[idx] * np.sqrt(asp[idx]), r[idx] / np.sqrt(asp[idx])


def _render_nuclei(cy, cx, a, b, phi, R, halo_scale):
  """Rasterise elliptic nuclei (centres cy, cx, semi-axes a >= b, orientation phi; pixels).

    Returns float32 [R, R] maps in [0, 1] -- coverage, membrane rim, cytoplasm halo (out to ``halo_scale``
    radii) -- and the int32 [R, R] index of the nucleus covering each pixel (-1 = none).
    """
  cov = np.zeros((R, R), np.float32)
  rim = np.zeros((R, R), np.float32)
  halo = np.zeros((R, R), np.float32)
  owner = np.full((R, R), -1, np.int32)
  n = len(cy)
  if n == 0:
    return cov, rim, owner, halo
  pad = int(np.ceil(halo_scale * a.max() + 3))
  big = [np.zeros((R + 2 * pad, R + 2 * pad), np.float32) for _ in range(3)]
  own = np.full((R + 2 * pad, R + 2 * pad), -1, np.int32)
  iy = np.clip(np.round(cy), 0, R - 1).astype(int)
  ix = np.clip(np.round(cx), 0, R - 1).astype(int)
  order = np.argsort(a)
  for chunk in np.array_split(order, max(1, int(np.ceil(n / 16)))):  # vectorised over similar-sized nuclei
    P = int(np.ceil(halo_scale * a[chunk].max() + 2))
    d = np.arange(-P, P + 1, dtype=np.float32)
    ry = (iy[chunk] - cy[chunk]).astype(np.float32)[:, None, None] + d[None, :, None]
    rx = (ix[chunk] - cx[chunk]).astype(np.float32)[:, None, None] + d[None, None, :]
    c = np.cos(phi[chunk]).astype(np.float32)[:, None, None]
    s = np.sin(phi[chunk]).astype(np.float32)[:, None, None]
    xr = rx * c + ry * s
    yr = -rx * s + ry * c
    a3 = a[chunk].astype(np.float32)[:, None, None]
    b3 = b[chunk].astype(np.float32)[:, None, None]
    q = (xr / a3)**2 + (yr / b3)**2
    grad = 2.0 * np.sqrt((xr / a3**2)**2 + (yr / b3**2)**2)
    sdf = (1.0 - q) / np.maximum(grad, 1e-3)  # ~ signed distance to the ellipse, px
    pcov = np.clip(0.5 + sdf, 0.0, 1.0)
    prim = np.exp(-np.maximum(sdf, 0.0) / np.maximum(0.25 * b3, 0.6)) * pcov
    phalo = np.clip((halo_scale - np.sqrt(q)) / (0.5 * halo_scale), 0.0, 1.0)
    for i, k in enumerate(chunk):
      sl = (slice(iy[k] - P + pad, iy[k] + P + 1 + pad), slice(ix[k] - P + pad, ix[k] + P + 1 + pad))
      np.maximum(big[0][sl], pcov[i], out=big[0][sl])
      np.maximum(big[1][sl], prim[i], out=big[1][sl])
      np.maximum(big[2][sl], phalo[i], out=big[2][sl])
      own[sl][pcov[i] > 0.5] = k
  inner = (slice(pad, pad + R), slice(pad, pad + R))
  return big[0][inner], big[1][inner], own[inner], big[2][inner]


def histology_tile(seed: int, resolution: int = 64, label: int | None = None,
                   marker_strength: float = 0.0) -> tuple[np.ndarray, int, dict[str, float]]:
  """Render one H&E histology tile phantom.

    The tile covers a fixed field of view at any resolution: nuclear counts do not depend on ``resolution``;
    areas in px^2 scale with resolution^2.

    Args:
      seed: non-negative int; everything random derives from ``np.random.default_rng(seed)``.
      resolution: output side R in [32, 512].
      label: 0 normal / 1 tumour, or None to draw it (p = 0.5) from the seed.
      marker_strength: in [0, 1]; the dark "H" corner tag is present with probability
        ``marker_probability(label == 1, marker_strength)``.

    Returns:
      image: uint8 [R, R, 3] RGB in [0, 255].
      label: int 0 or 1.
      attrs: dict with exactly ``HISTOLOGY_ATTRIBUTES`` keys, python floats (units in ``phantoms``' docstring).
    """
  seed = check_seed(seed)
  R = check_resolution(resolution)
  label = check_class(label, 2, 'label')
  strength = check_strength(marker_strength)

  root = np.random.default_rng(seed)
  r_label, r_sev, r_nuis, r_tex, r_nuc, r_marker = root.spawn(6)
  drawn = int(r_label.integers(0, 2))
  label = drawn if label is None else label

  # ---- biology: latent malignancy t -> density, size, pleomorphism, hyperchromasia ------------------------
  z = r_sev.standard_normal(6)
  t = float(np.clip(label + 0.3 * z[0], -0.7, 1.7))
  tp = float(np.clip(t, 0.0, 1.3))
  density = (26.0 + 42.0 * tp) * float(np.exp(0.15 * z[1]))  # nuclei per fully cellular tile
  radius = (1.85 + 1.0 * tp) * (1.0 + 0.06 * z[2]) * R / 64.0  # mean nuclear radius, px
  sigma_size = 0.1 + 0.22 * tp  # log-size spread (pleomorphism)
  darkness = float(np.clip(0.3 + 0.42 * t + 0.07 * z[3], 0.0, 1.0))
  cytoplasm = 0.25 + 0.5 * tp

  # ---- nuisances -----------------------------------------------------------------------------------------
  nu = r_nuis.random(5)
  stain_shift = 2.0 * nu[0] - 1.0
  blur = 0.6 * nu[1]**1.5 * R / 64.0
  bg_target = 0.02 + 0.28 * nu[2]
  fibre_angle = np.pi * nu[3]
  stain_strength = 1.0 + 0.12 * stain_shift  # bluer stains are also a little heavier

  marker = bool(r_marker.random() < marker_probability(label == 1, strength))

  # ---- textures --------------------------------------------------------------------------------------------
  lumen_f, cluster_f, fibre_f = scene_noise(r_tex, 3, R, _histology_transfers(fibre_angle))
  # chromatin granularity is a per-pixel texture (its grain does not resolve at low resolution)
  chrom_f = filtered_noise(r_tex, 1, R, lambda fy, fx: np.exp(-0.5 * (np.sqrt(fy**2 + fx**2) / 0.28)**2))[0]
  thr = np.quantile(lumen_f, 1.0 - bg_target)
  edge = max(0.02, 1.0 / (R * 0.12))
  tissue = np.clip(0.5 + (thr - lumen_f) / (edge * 4.0), 0.0, 1.0)  # 1 tissue, 0 lumen (soft edge)
  background_fraction = float(1.0 - tissue.mean())

  # ---- nuclei ----------------------------------------------------------------------------------------------
  n_target = int(round(density * (1.0 - background_fraction)))
  spindle_frac = float(np.clip(0.55 * (1.0 - tp), 0.0, 0.55))

  def aspect_fn(n):
    spindle = r_nuc.random(n) < spindle_frac
    return np.where(spindle, 2.2 + 0.4 * r_nuc.standard_normal(n),
                    1.0 + np.abs(0.12 + 0.25 * tp) * np.abs(r_nuc.standard_normal(n))).clip(1.0, 3.5)

  cy, cx, a, b = _place_nuclei(r_nuc, R, n_target, radius, sigma_size, tissue, cluster_f, 0.35 + 0.4 * tp, aspect_fn)
  n = len(cy)
  spindle = (a / np.maximum(b, 1e-6)) > 1.8
  phi = np.where(spindle, fibre_angle + 0.25 * r_nuc.standard_normal(n), np.pi * r_nuc.random(n))
  conc = (0.55 + 0.95 * darkness) * np.exp(0.1 * r_nuc.standard_normal(n))
  conc = conc * np.where(b < 0.8 * radius, 1.15, 1.0)  # small round cells (lymphocytes) are darker
  vesicular = r_nuc.random(n) < 0.7 * tp  # open chromatin, thick membrane, nucleolus
  cov, rim, owner, halo = _render_nuclei(cy, cx, a, b, phi, R, 1.9)

  per_conc = np.where(owner >= 0, conc[np.maximum(owner, 0)], 0.0).astype(np.float32)
  per_ves = np.where(owner >= 0, vesicular[np.maximum(owner, 0)], False)
  chrom = 1.0 + 0.22 * chrom_f
  interior = np.where(per_ves, 0.62 + 0.55 * rim, 0.9 + 0.15 * rim)
  H = cov * per_conc * interior * chrom
  # nucleoli: a dark-magenta dot inside vesicular nuclei
  nucleoli = np.zeros((R, R), np.float32)
  ves_idx = np.nonzero(vesicular)[0]
  if len(ves_idx):
    off = 0.3 * r_nuc.standard_normal((len(ves_idx), 2)) * b[ves_idx, None]
    ny, nx = cy[ves_idx] + off[:, 0], cx[ves_idx] + off[:, 1]
    nr = np.maximum(0.2 * b[ves_idx], 0.45)
    nucleoli = _render_nuclei(ny, nx, nr, nr, np.zeros(len(ves_idx)), R, 1.0)[0]

  # ---- stroma, cytoplasm, lumen ----------------------------------------------------------------------------
  fibres = np.clip(0.55 + 0.45 * fibre_f, 0.0, 1.3)
  stroma_E = 0.38 * fibres + 0.16
  cyto = cytoplasm * halo
  E = tissue * ((1.0 - cyto) * stroma_E + cyto * 0.5) * (1.0 - 0.55 * cov) + 0.45 * nucleoli
  H = tissue * (H + 0.1 * cyto * (1.0 - cov) + 0.5 * nucleoli)
  E = E * stain_strength
  H = H * stain_strength

  h_vec, e_vec = stain_vectors(stain_shift)
  od = (H[..., None] * h_vec.astype(np.float32) + E[..., None] * e_vec.astype(np.float32) + _GLASS_OD)
  image = np.exp(-od)
  if blur > 0.15:
    image = ndimage.gaussian_filter(image, sigma=(blur, blur, 0.0), mode='reflect', truncate=3.0)
  image += 0.008 * r_tex.standard_normal(image.shape, dtype=np.float32)
  image = np.clip(image, 0.0, 1.0).astype(np.float32)
  if marker:
    burn_tag(image, HISTOLOGY_TAG_CELLS, 0.07, 0.96)
  out = np.round(image * 255.0).astype(np.uint8)

  areas = np.pi * a * b
  attrs = {
      'nuclear_count': float(n),
      'nuclear_mean_area': float(areas.mean()) if n else 0.0,
      'nuclear_darkness': darkness,
      'pleomorphism': float(areas.std() / areas.mean()) if n > 1 else 0.0,
      'stain_shift': float(stain_shift),
      'blur_sigma': float(blur if blur > 0.15 else 0.0),
      'background_fraction': background_fraction,
      'marker': float(marker),
  }
  return out, label, attrs
