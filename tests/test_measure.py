"""Tests for stylex_jax.data.measure: the oracles against analytic images and against phantom ground truth."""
import numpy as np
import pytest
from scipy import stats

from stylex_jax.data import measure as M
from stylex_jax.data import histology_phantoms as H
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
def knees_two_scanners():
  """40 knee phantoms at 64^2 from both scanners (scanner_strength 0: B at p = 0.5, independent of KL)."""
  data = [P.knee_radiograph(7000 + s, 64, scanner_strength=0.0) for s in range(40)]
  return data, [M.measure_knee(im) for im, _, _ in data]


@pytest.fixture(scope='module')
def tiles64():
  return [H.histology_tile(2000 + s, 64, marker_strength=0.0) for s in range(100)]


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
  h_vec, e_vec = H.stain_vectors(0.0)
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
    assert np.isnan(m['tilt'])
    assert tuple(m) == M.KNEE_MEASUREMENTS
  blank = M.measure_knee(np.zeros((64, 64), np.uint8))  # no flat unclipped pixels, no edges
  assert np.isnan(blank['noise_level']) and np.isnan(blank['sharpness']) and blank['brightness'] == 0.0


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


def test_tilt_is_the_joint_line_angle(knees64, knees64_measured, knees_two_scanners):
  """measure_knee's tilt = the phantom's rotation (anticlockwise positive); 64^2, 120 phantoms of scanner A
    (measured: max error 0.45 deg at seeds 7000.., median 0.1) and 40 of both scanners."""
  for data, ms in ((knees64, knees64_measured), knees_two_scanners):
    err = np.array([m['tilt'] - a['rotation'] for m, (_, _, a) in zip(ms, data)])
    assert np.all(np.isfinite(err))
    assert np.max(np.abs(err)) < 1.5 and np.median(np.abs(err)) < 0.3


def test_noise_level_tracks_true_noise(knees_two_scanners):
  """Spearman(noise_level, noise_std) >= 0.95 over 40 phantoms of both scanners (measured 0.97; 0.99 over 200),
    in intensity units: measured / true within 0.8..1.25 (measured 0.87..1.10), median within 10%."""
  data, ms = knees_two_scanners
  truth = np.array([a['noise_std'] for _, _, a in data])
  noise = np.array([m['noise_level'] for m in ms])
  assert stats.spearmanr(truth, noise)[0] >= 0.95
  ratio = noise / truth
  assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio
  assert 0.9 < np.median(ratio) < 1.1


def _auc(score, positive):
  return stats.mannwhitneyu(score[positive], score[~positive]).statistic / (positive.sum() * (~positive).sum())


def test_scanners_are_separable_by_the_oracles(knees_two_scanners):
  """Scanner B (blurred, noisier) vs A: AUC of -sharpness >= 0.95 (measured 1.0 here, 0.99 over 200 phantoms),
    of noise_level >= 0.85 (measured 0.90; the noise ranges overlap by design); sharpness falls with blur."""
  data, ms = knees_two_scanners
  scanner = np.array([a['scanner'] for _, _, a in data]) > 0
  assert 0.25 < scanner.mean() < 0.75
  sharp = np.array([m['sharpness'] for m in ms])
  noise = np.array([m['noise_level'] for m in ms])
  assert np.all((sharp >= 0) & (sharp <= 1))
  assert _auc(-sharp, scanner) >= 0.95
  assert _auc(noise, scanner) >= 0.85
  blur = np.array([a['blur_sigma'] for _, _, a in data])
  assert stats.spearmanr(blur, sharp)[0] <= -0.8  # measured -0.92


def test_brightness_tracks_exposure(knees_two_scanners):
  """Spearman(brightness, the phantom's additive exposure offset) >= 0.93 (measured 0.98; contrast and anatomy
    vary too)."""
  data, ms = knees_two_scanners
  assert stats.spearmanr([a['brightness'] for _, _, a in data], [m['brightness'] for m in ms])[0] >= 0.93


def test_nuisance_oracles_on_controlled_images():
  """Analytic: known added noise, added blur and an intensity offset move only their own oracle."""
  from scipy import ndimage
  clean = (_slab_knee(4.0, 3.0) + 1.0) * 0.5  # [0, 1], sharp box-filtered edges, no noise
  rng = np.random.default_rng(0)
  base = M.measure_knee(clean * 2.0 - 1.0)
  assert base['noise_level'] < 1e-3 and base['sharpness'] > 0.6  # measured 0.70 (corners, 4-px gap)
  for sigma in (0.01, 0.03):
    noisy = M.measure_knee((clean + rng.normal(0, sigma, clean.shape)) * 2.0 - 1.0)
    assert noisy['noise_level'] == pytest.approx(sigma, rel=0.15)
    assert noisy['brightness'] == pytest.approx(base['brightness'], abs=0.01)
  sharp = [M.measure_knee(ndimage.gaussian_filter(clean, b) * 2.0 - 1.0)['sharpness'] for b in (0.0, 0.5, 1.0, 2.0)]
  assert np.all(np.diff(sharp) < 0), sharp
  shifted = M.measure_knee((clean + 0.1) * 2.0 - 1.0)
  assert shifted['brightness'] == pytest.approx(base['brightness'] + 0.1, abs=1e-6)
  assert shifted['sharpness'] == pytest.approx(base['sharpness'], abs=1e-6)


def test_jsw_readable_on_scanner_b(knees_two_scanners):
  """Scanner B keeps the anatomy measurable at 64^2: joint always found, JSW within 1 px of the truth."""
  data, ms = knees_two_scanners
  b = [(m, a) for m, (_, _, a) in zip(ms, data) if a['scanner']]
  assert all(m['joint_found'] == 1.0 for m, _ in b)
  assert np.mean([abs(m['joint_space_width'] - a['joint_space_width']) <= 1.0 for m, a in b]) >= 0.95


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
      im for im, _, a in (H.histology_tile(s, 80, marker_strength=1.0, label=1) for s in range(5)) if a['marker'])
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
