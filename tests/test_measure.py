"""Tests for stylex_jax.data.measure: the oracles against analytic images and against phantom ground truth."""
import numpy as np
import pytest
from scipy import stats

from stylex_jax.data import measure as M
from stylex_jax.data import phantoms as P


@pytest.fixture(scope='module')
def knees64():
  """120 knee phantoms at 64^2 with all their nuisances (grade drawn from the seed, tags at p = 0.5)."""
  return [P.knee_radiograph(1000 + s, 64, marker_strength=0.0) for s in range(120)]


@pytest.fixture(scope='module')
def knees64_measured(knees64):
  return [M.measure_knee(im) for im, _, _ in knees64]


@pytest.fixture(scope='module')
def knees128():
  return [P.knee_radiograph(5000 + s, 128, marker_strength=0.0) for s in range(40)]


@pytest.fixture(scope='module')
def tiles64():
  return [P.histology_tile(2000 + s, 64, marker_strength=0.0) for s in range(100)]


# ------------------------------------------------------------------------------------- analytic references


def _slab_knee(width, angle_deg=0.0, size=96, bone=0.75, gap=0.22, sub=12):
  """Two bright bony slabs separated by a dark gap of perpendicular ``width`` px, tilted by ``angle_deg``,
    on a dark background; pixels are exact box-filtered coverage (``sub`` x ``sub`` supersampling)."""
  o = (np.arange(size * sub) + 0.5) / sub - 0.5  # sub-pixel centres in pixel units
  y, x = np.meshgrid(o, o, indexing='ij')
  th = np.deg2rad(angle_deg)
  cy = cx = (size - 1) / 2.0 + 0.3
  n = (y - cy) * np.cos(th) + (x - cx) * np.sin(th)  # across the joint line
  s = -(y - cy) * np.sin(th) + (x - cx) * np.cos(th)  # along it
  inside = (np.abs(n) > width / 2) & (np.abs(n) < 0.3 * size) & (np.abs(s) < 0.3 * size)
  cov = inside.reshape(size, sub, size, sub).mean(axis=(1, 3))
  return (gap + (bone - gap) * cov).astype(np.float32) * 2.0 - 1.0  # float in [-1, 1]


@pytest.mark.parametrize('width', [0.8, 1.5, 2.7, 4.25, 6.6])
@pytest.mark.parametrize('angle', [0.0, 7.0, -11.0])
def test_jsw_exact_on_analytic_gap(width, angle):
  m = M.measure_knee(_slab_knee(width, angle))
  assert m['joint_found'] == 1.0
  assert m['joint_space_width'] == pytest.approx(width, abs=0.15)


def test_jsw_analytic_gap_survives_blur_and_noise():
  """The area method is insensitive to blur (GAN-like softness) as long as the plates stay visible."""
  from scipy import ndimage
  img = _slab_knee(4.0, 3.0)
  img = ndimage.gaussian_filter(img, 0.8) + np.random.default_rng(0).normal(0, 0.02, img.shape)
  assert M.measure_knee(img.astype(np.float32))['joint_space_width'] == pytest.approx(4.0, abs=0.5)


def _disk_tile(centres, radius, h_conc=1.2, size=96, sub=8):
  """Pink eosin background with hematoxylin disks (Beer-Lambert with the reference stain vectors)."""
  h_vec, e_vec = P.stain_vectors(0.0)
  o = (np.arange(size * sub) + 0.5) / sub - 0.5
  y, x = np.meshgrid(o, o, indexing='ij')
  cov = np.zeros_like(y)
  for cy, cx in centres:
    cov = np.maximum(cov, ((y - cy)**2 + (x - cx)**2 < radius**2).astype(float))
  cov = cov.reshape(size, sub, size, sub).mean(axis=(1, 3))
  od = (h_conc * cov)[..., None] * h_vec + (0.45 * (1 - cov))[..., None] * e_vec + 0.02
  return np.round(255 * np.exp(-od)).astype(np.uint8)


def test_nuclear_count_and_area_exact_on_analytic_disks():
  rng = np.random.default_rng(3)
  grid = [(y, x) for y in range(14, 90, 13) for x in range(14, 90, 13)]  # 36 well-separated sites
  for k in (1, 7, 20, 36):
    centres = [grid[i] for i in rng.choice(len(grid), k, replace=False)]
    centres = [(cy + rng.uniform(-1, 1), cx + rng.uniform(-1, 1)) for cy, cx in centres]
    m = M.measure_histology(_disk_tile(centres, 3.3))
    assert m['nuclear_count'] == k
    assert m['nuclear_mean_area'] == pytest.approx(np.pi * 3.3**2, rel=0.12)
  # darker nuclei (more hematoxylin) measure darker
  pale = M.measure_histology(_disk_tile(grid[:10], 3.3, h_conc=0.7))['nuclear_darkness']
  dark = M.measure_histology(_disk_tile(grid[:10], 3.3, h_conc=1.0))['nuclear_darkness']
  assert dark > pale


def test_touching_nuclei_are_split():
  m = M.measure_histology(_disk_tile([(40, 40), (40, 46.4), (60, 60), (70, 30)], 3.3))
  assert m['nuclear_count'] == 4


def test_no_nuclei_no_joint():
  pink = _disk_tile([], 3.0)
  m = M.measure_histology(pink)
  assert m['nuclear_count'] == 0.0 and m['nuclear_mean_area'] == 0.0 and np.isnan(m['nuclear_darkness'])
  rng = np.random.default_rng(0)
  for img in (np.zeros((64, 64),
                       np.uint8), rng.integers(0, 256, (64, 64, 1), dtype=np.uint8), np.full(
                           (48, 80), 0.3, np.float32), rng.uniform(-1, 1, (32, 32)).astype(np.float32)):
    m = M.measure_knee(img)
    assert m['joint_found'] == 0.0 and np.isnan(m['joint_space_width']) and m['marker'] == 0.0
    assert tuple(m) == M.KNEE_MEASUREMENTS


# ---------------------------------------------------------------------------------- phantom ground truth


def test_jsw_within_one_pixel_on_phantoms(knees64, knees64_measured, knees128):
  """Ground truth: >= 95% of phantoms (all nuisances) within 1 px, at 64^2 (120 images) and 128^2 (40)."""
  measured = (knees64_measured, [M.measure_knee(im) for im, _, _ in knees128])
  for data, ms in zip((knees64, knees128), measured):
    err = np.array([m['joint_space_width'] - a['joint_space_width'] for m, (_, _, a) in zip(ms, data)])
    assert np.all(np.isfinite(err))
    assert np.mean(np.abs(err) <= 1.0) >= 0.95, np.sort(np.abs(err))[-10:]
    assert abs(np.median(err)) < 0.25  # no systematic bias


def test_jsw_separates_kl_grades(knees64, knees64_measured):
  """Measured JSW alone separates KL >= 2 from KL < 2 well (so the classification task is learnable)."""
  jsw = np.array([m['joint_space_width'] for m in knees64_measured])
  positive = np.array([g >= 2 for _, g, _ in knees64])
  auc = stats.mannwhitneyu(jsw[~positive], jsw[positive]).statistic / (positive.sum() * (~positive).sum())
  assert auc > 0.95


def test_joint_line_angle_matches_rotation(knees64):
  """Positive rotation = anticlockwise on screen = the joint line rises to the right (row decreases)."""
  est, truth = [], []
  for im, _, a in knees64[:50]:
    geo = M._joint_line(im[..., 0] / 255.0)[0]
    est.append(-np.degrees(np.arctan(geo['slope'])))
    truth.append(a['rotation'])
  assert np.max(np.abs(np.array(est) - np.array(truth))) < 1.5


def test_osteophytes_and_sclerosis_track_truth(knees128):
  ms = [M.measure_knee(im) for im, _, _ in knees128]
  ost = np.array([m['osteophyte_area'] for m in ms])
  scl = np.array([m['sclerosis'] for m in ms])
  assert np.all(np.isfinite(ost)) and np.all(np.isfinite(scl))
  assert np.all((scl >= 0) & (scl <= 1))
  assert stats.spearmanr([a['osteophyte_size'] for _, _, a in knees128], ost)[0] > 0.7
  assert stats.spearmanr([a['sclerosis'] for _, _, a in knees128], scl)[0] > 0.7
  grades = np.array([g for _, g, _ in knees128])
  assert ost[grades == 4].mean() > ost[grades <= 1].mean() + 10
  assert scl[grades == 4].mean() > scl[grades <= 1].mean() + 0.4


def test_nuclear_count_rank_correlation(tiles64):
  truth = [a['nuclear_count'] for _, _, a in tiles64]
  ms = [M.measure_histology(im) for im, _, _ in tiles64]
  assert stats.spearmanr(truth, [m['nuclear_count'] for m in ms])[0] >= 0.9
  assert stats.spearmanr([a['nuclear_mean_area'] for _, _, a in tiles64],
                         [m['nuclear_mean_area'] for m in ms])[0] >= 0.85
  assert stats.spearmanr([a['nuclear_darkness'] for _, _, a in tiles64], [m['nuclear_darkness'] for m in ms])[0] >= 0.6
  ratio = np.median(np.array([m['nuclear_count'] for m in ms]) / np.array(truth))
  assert 0.85 < ratio < 1.15


def test_marker_detection(knees64, knees64_measured, tiles64):
  """>= 99% correct on each modality (tags present with p = 0.5, independent of the label)."""
  knee_truth = np.array([a['marker'] for _, _, a in knees64])
  knee_found = np.array([m['marker'] for m in knees64_measured])
  tile_truth = np.array([a['marker'] for _, _, a in tiles64])
  tile_found = np.array([M.measure_histology(im)['marker'] for im, _, _ in tiles64])
  for truth, found in ((knee_truth, knee_found), (tile_truth, tile_found)):
    assert 0.3 < truth.mean() < 0.7
    assert np.mean(found == truth) >= 0.99


def test_marker_detected_after_flips_and_rotations():
  knee = next(
      im for im, _, a in (P.knee_radiograph(s, 80, marker_strength=1.0, grade=3) for s in range(5)) if a['marker'])
  tile = next(
      im for im, _, a in (P.histology_tile(s, 80, marker_strength=1.0, label=1) for s in range(5)) if a['marker'])
  for k in range(4):
    for flip in (False, True):
      kk = np.rot90(knee, k)[:, ::-1] if flip else np.rot90(knee, k)
      tt = np.rot90(tile, k)[:, ::-1] if flip else np.rot90(tile, k)
      assert M.measure_knee(np.ascontiguousarray(kk))['marker'] == 1.0
      assert M.measure_histology(np.ascontiguousarray(tt))['marker'] == 1.0


def test_measure_at_other_resolutions():
  for res in (32, 96, 256):
    im, _, a = P.knee_radiograph(77, res, grade=1)
    m = M.measure_knee(im)
    assert m['joint_found'] == 1.0
    assert abs(m['joint_space_width'] - a['joint_space_width']) <= 1.0


# --------------------------------------------------------------------------------------- API and errors


def test_float_and_uint8_inputs_agree(knees64, tiles64):
  im, _, _ = knees64[0]
  a = M.measure_knee(im)
  b = M.measure_knee(im[..., 0].astype(np.float32) / 127.5 - 1.0)
  assert a.keys() == b.keys()
  assert a['joint_space_width'] == pytest.approx(b['joint_space_width'], abs=1e-4)
  tile, _, _ = tiles64[0]
  ha = M.measure_histology(tile)
  hb = M.measure_histology(tile.astype(np.float64) / 127.5 - 1.0)
  assert ha == pytest.approx(hb, nan_ok=True)
  # unclamped generator outputs are clipped, not rejected
  M.measure_knee(np.clip(im[..., 0] / 127.5 - 1.0, -1, 1).astype(np.float32) * 1.05)


def test_batch_functions(knees64, tiles64):
  imgs = np.stack([im for im, _, _ in knees64[:5]])
  out = M.measure_knee_batch(imgs)
  assert tuple(out) == M.KNEE_MEASUREMENTS
  for key, values in out.items():
    assert values.shape == (5,) and values.dtype == np.float64
    np.testing.assert_array_equal(values, [M.measure_knee(im)[key] for im in imgs])
  tiles = np.stack([im for im, _, _ in tiles64[:4]])
  hout = M.measure_histology_batch(tiles)
  assert tuple(hout) == M.HISTOLOGY_MEASUREMENTS and all(v.shape == (4,) for v in hout.values())
  assert all(isinstance(v, float) for v in M.measure_knee(imgs[0]).values())


@pytest.mark.parametrize('fn, image, match', [
    (M.measure_knee, np.zeros((64, 64, 3), np.uint8), 'single-channel'),
    (M.measure_knee, np.zeros((2, 64, 64, 1), np.uint8), 'batch'),
    (M.measure_knee, np.zeros((16, 16), np.uint8), r'\[32, 512\]'),
    (M.measure_knee, np.zeros((64, 600), np.uint8), r'\[32, 512\]'),
    (M.measure_knee, np.full((64, 64), np.nan, np.float32), 'NaN'),
    (M.measure_knee, np.zeros((64, 64), np.int32), 'dtype'),
    (M.measure_knee, np.zeros((64, 64), bool), 'dtype'),
    (M.measure_histology, np.zeros((64, 64, 1), np.uint8), 'RGB'),
    (M.measure_histology, np.zeros((64, 64), np.uint8), 'RGB'),
    (M.measure_histology, np.full((64, 64, 3), np.inf, np.float32), 'NaN or inf'),
    (M.measure_knee_batch, np.zeros((64, 64, 1), np.uint8), r'\[B, H, W, 1\]'),
    (M.measure_histology_batch, np.zeros((2, 64, 64, 1), np.uint8), r'\[B, H, W, 3\]'),
])
def test_bad_input(fn, image, match):
  with pytest.raises(ValueError, match=match):
    fn(image)
