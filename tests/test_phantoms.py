"""Tests for stylex_jax.data.phantoms: API contract, determinism, ground truth vs pixels, grade/label effects."""
import hashlib

import numpy as np
import pytest
from scipy import stats

from stylex_jax.data import histology_phantoms as H
from stylex_jax.data import phantoms as P

# ------------------------------------------------------------------------------------------------ contract


def test_constants():
  assert P.KNEE_ATTRIBUTES == ('joint_space_width', 'osteophyte_size', 'sclerosis', 'rotation', 'shift_x', 'shift_y',
                               'scale', 'brightness', 'contrast', 'noise_std', 'flipped', 'marker', 'scanner',
                               'blur_sigma')
  assert P.HISTOLOGY_ATTRIBUTES == ('nuclear_count', 'nuclear_mean_area', 'nuclear_darkness', 'pleomorphism',
                                    'stain_shift', 'blur_sigma', 'background_fraction', 'marker')
  assert P.KL_GRADE_NAMES == ('KL0', 'KL1', 'KL2', 'KL3', 'KL4')
  assert P.HISTOLOGY_CLASS_NAMES == ('normal', 'tumour')


@pytest.mark.parametrize('positive', [False, True])
@pytest.mark.parametrize('strength', [0.0, 0.25, 0.5, 1.0])
def test_marker_probability_values(positive, strength):
  expected = 0.5 * (1 - strength) + strength * (1.0 if positive else 0.0)  # the spec formula
  assert P.marker_probability(positive, strength) == pytest.approx(expected, abs=1e-12)
  assert isinstance(P.marker_probability(positive, strength), float)


def test_marker_probability_endpoints():
  assert P.marker_probability(True, 0.0) == P.marker_probability(False, 0.0) == 0.5
  assert P.marker_probability(True, 1.0) == 1.0 and P.marker_probability(False, 1.0) == 0.0


@pytest.mark.parametrize('strength', [-0.01, 1.01, float('nan'), 'high', None])
def test_marker_probability_rejects_bad_strength(strength):
  with pytest.raises(ValueError, match='strength'):
    P.marker_probability(True, strength)


@pytest.mark.parametrize('resolution', [32, 64, 100, 512])
def test_knee_shapes_types(resolution):
  image, grade, attrs = P.knee_radiograph(7, resolution)
  assert image.shape == (resolution, resolution, 1) and image.dtype == np.uint8
  assert isinstance(grade, int) and 0 <= grade <= 4
  assert tuple(attrs) == P.KNEE_ATTRIBUTES
  assert all(type(v) is float and np.isfinite(v) for v in attrs.values())
  assert image.min() < 40 and image.max() > 150  # dark air and bright bone both present


@pytest.mark.parametrize('resolution', [32, 64, 96, 512])
def test_histology_shapes_types(resolution):
  image, label, attrs = H.histology_tile(7, resolution)
  assert image.shape == (resolution, resolution, 3) and image.dtype == np.uint8
  assert label in (0, 1) and isinstance(label, int)
  assert tuple(attrs) == P.HISTOLOGY_ATTRIBUTES
  assert all(type(v) is float and np.isfinite(v) for v in attrs.values())


def test_determinism_and_seed_dependence():
  for fn in (P.knee_radiograph, H.histology_tile):
    a, la, aa = fn(123, 64, marker_strength=0.3)
    b, lb, ab = fn(123, 64, marker_strength=0.3)
    c, _, _ = fn(124, 64, marker_strength=0.3)
    np.testing.assert_array_equal(a, b)
    assert la == lb and aa == ab
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 2.0
  # numpy integer seeds and the TFDS builder's large seeds are fine
  np.testing.assert_array_equal(P.knee_radiograph(np.int64(5), 32)[0], P.knee_radiograph(5, 32)[0])
  H.histology_tile(3 * 2**32 + 17, 32)


def test_same_seed_is_a_counterfactual_pair():
  """Same seed, different grade/label/marker strength: the same 'patient' (pose, stain, nuisances)."""
  keep_knee = ('rotation', 'shift_x', 'shift_y', 'scale', 'brightness', 'contrast', 'noise_std', 'flipped')
  _, _, a0 = P.knee_radiograph(11, 64, grade=0)
  _, _, a4 = P.knee_radiograph(11, 64, grade=4)
  assert all(a0[k] == a4[k] for k in keep_knee)
  assert a4['joint_space_width'] < a0['joint_space_width']
  keep_histo = ('stain_shift', 'blur_sigma', 'background_fraction')
  _, _, h0 = H.histology_tile(11, 64, label=0)
  _, _, h1 = H.histology_tile(11, 64, label=1)
  assert all(h0[k] == h1[k] for k in keep_histo)
  # marker strength only decides the tag: the rest of the image is identical
  im_a, _, _ = P.knee_radiograph(2, 64, grade=3, marker_strength=1.0)
  im_b, _, _ = P.knee_radiograph(2, 64, grade=3, marker_strength=0.0)
  r0, c0, size = P.marker_box(64, 64)
  outside = np.ones((64, 64), bool)
  outside[r0:r0 + size, c0:c0 + size] = False
  np.testing.assert_array_equal(im_a[..., 0][outside], im_b[..., 0][outside])


def test_grade_and_label_drawn_uniformly_when_none():
  grades = np.array([P.knee_radiograph(s, 32)[1] for s in range(250)])
  counts = np.bincount(grades, minlength=5)
  assert stats.chisquare(counts).pvalue > 1e-3, counts
  labels = np.array([H.histology_tile(s, 32)[1] for s in range(150)])
  assert 0.35 < labels.mean() < 0.65


@pytest.mark.parametrize('fn, key', [(P.knee_radiograph, 'grade'), (H.histology_tile, 'label')])
def test_marker_frequency_follows_probability(fn, key):
  n = 160
  for strength in (0.0, 1.0):
    marks, positives = [], []
    for s in range(n):
      _, y, attrs = fn(s, 32, marker_strength=strength)
      marks.append(attrs['marker'])
      positives.append(float(y >= 2) if key == 'grade' else float(y))
    marks, positives = np.array(marks), np.array(positives)
    if strength == 1.0:
      np.testing.assert_array_equal(marks, positives)
    else:  # independent of the label, p = 0.5: binomial two-sided 99.9% bounds
      assert stats.binomtest(int(marks.sum()), n, 0.5).pvalue > 1e-3
      assert abs(np.corrcoef(marks, positives)[0, 1]) < 0.3


def test_tag_is_burnt_in_exactly():
  """The corner tag is the letter R (knee, bright) / H (histology, dark), independent reference bitmaps."""
  r_bitmap = ['####.', '#...#', '####.', '#..#.', '#...#']
  h_bitmap = ['#...#', '#...#', '#####', '#...#', '#...#']
  for fn, bitmap, tag, ink, res in ((P.knee_radiograph, r_bitmap, 240, 20, 70), (H.histology_tile, h_bitmap, 18, 245,
                                                                                 140)):
    seed = next(s for s in range(50) if fn(s, res, marker_strength=0.0)[2]['marker'] == 1.0)
    image = fn(seed, res, marker_strength=0.0)[0][..., 0]
    r0, c0, size = P.marker_box(res, res)
    assert r0 + size < res // 3 and c0 > 2 * res // 3  # top-right corner
    cells = np.ones((7, 7), bool)
    cells[1:6, 1:6] = [[ch != '#' for ch in row] for row in bitmap]
    expected = np.where(cells[np.ix_(np.arange(size) * 7 // size, np.arange(size) * 7 // size)], tag, ink)
    np.testing.assert_array_equal(image[r0:r0 + size, c0:c0 + size], expected)


@pytest.mark.parametrize('bad', [
    dict(seed=-1),
    dict(seed=1.5),
    dict(seed=True),
    dict(resolution=31),
    dict(resolution=513),
    dict(resolution=64.0),
    dict(grade=5),
    dict(grade=-1),
    dict(grade=2.0),
    dict(marker_strength=2.0),
    dict(scanner_strength=-0.1),
    dict(scanner_strength='B'),
])
def test_knee_bad_input(bad):
  kwargs = dict(seed=0, resolution=64, grade=None, marker_strength=0.0)
  kwargs.update(bad)
  with pytest.raises(ValueError):
    P.knee_radiograph(**kwargs)


@pytest.mark.parametrize('bad', [dict(label=2), dict(label=-1), dict(resolution=16), dict(marker_strength=-1)])
def test_histology_bad_input(bad):
  kwargs = dict(seed=0, resolution=64, label=None, marker_strength=0.0)
  kwargs.update(bad)
  with pytest.raises(ValueError):
    H.histology_tile(**kwargs)


def test_error_messages_name_the_problem():
  with pytest.raises(ValueError, match=r'resolution.*\[32, 512\]'):
    P.knee_radiograph(0, 1024)
  with pytest.raises(ValueError, match=r'grade.*0\.\.4'):
    P.knee_radiograph(0, 64, grade=7)


# ------------------------------------------------------------------------------------------- ground truth


def test_knee_disease_attributes_monotone_in_grade():
  per_grade = {g: [P.knee_radiograph(s, 32, grade=g)[2] for s in range(40)] for g in range(5)}
  # JSW in units of the anatomy (px / scale) removes the scale nuisance from the comparison
  jsw = [np.mean([a['joint_space_width'] / a['scale'] for a in per_grade[g]]) for g in range(5)]
  ost = [np.mean([a['osteophyte_size'] / a['scale'] for a in per_grade[g]]) for g in range(5)]
  scl = [np.mean([a['sclerosis'] for a in per_grade[g]]) for g in range(5)]
  assert np.all(np.diff(jsw) < 0), jsw
  assert np.all(np.diff(ost) > 0), ost
  assert np.all(np.diff(scl) >= 0) and scl[4] > scl[0] + 0.5, scl
  assert np.median([a['osteophyte_size'] for a in per_grade[0]]) == 0.0  # none at KL0
  # neighbouring grades overlap (continuous latent severity), distant ones do not
  j1 = [a['joint_space_width'] / a['scale'] for a in per_grade[1]]
  j2 = [a['joint_space_width'] / a['scale'] for a in per_grade[2]]
  j4 = [a['joint_space_width'] / a['scale'] for a in per_grade[4]]
  j0 = [a['joint_space_width'] / a['scale'] for a in per_grade[0]]
  assert max(j2) > min(j1)
  assert max(j4) < min(j0)


def test_knee_jsw_is_in_output_pixels():
  """At 32 px, grade 0 is ~2.7 px wide and grade 4 ~0.7 px (the 64-px spec: ~6 -> ~1.5, scaled)."""
  a64 = P.knee_radiograph(9, 64, grade=1)[2]
  a128 = P.knee_radiograph(9, 128, grade=1)[2]
  assert a128['joint_space_width'] == pytest.approx(2 * a64['joint_space_width'], rel=1e-9)
  assert a128['osteophyte_size'] == pytest.approx(2 * a64['osteophyte_size'], rel=1e-9)
  g0 = np.mean([P.knee_radiograph(s, 64, grade=0)[2]['joint_space_width'] for s in range(20)])
  g4 = np.mean([P.knee_radiograph(s, 64, grade=4)[2]['joint_space_width'] for s in range(20)])
  assert 4.5 < g0 < 7.0 and 0.8 < g4 < 2.2


def test_knee_nuisance_ranges():
  attrs = [P.knee_radiograph(s, 32)[2] for s in range(60)]
  get = lambda k: np.array([a[k] for a in attrs])  # noqa: E731
  assert np.all(np.abs(get('rotation')) <= 8) and get('rotation').std() > 3
  assert np.all(np.abs(get('shift_x')) <= 0.05) and np.all(np.abs(get('shift_y')) <= 0.05)
  assert np.all((get('scale') >= 0.9) & (get('scale') <= 1.1))
  assert set(get('flipped')) == {0.0, 1.0}
  assert np.all(get('noise_std') > 0)


def test_knee_flip_and_brightness_show_in_pixels():
  """The fibula (lateral) is on the image right unless flipped; brightness/contrast move the pixel mean."""
  agree = []
  for s in range(16):
    image, _, a = P.knee_radiograph(s, 96, grade=0)
    profile = image[int(96 * 0.86):int(96 * 0.94), :, 0].astype(float).mean(axis=0)
    bright = profile > 0.5 * (profile.min() + profile.max())
    runs = np.split(np.arange(96), np.nonzero(np.diff(bright.astype(int)))[0] + 1)
    runs = [r for r in runs if bright[r[0]]]
    tibia = max(runs, key=len)  # the widest bright run is the tibial shaft
    fibula = min((r for r in runs if r is not tibia), key=lambda r: abs(r.mean() - tibia.mean()))
    fibula_right = fibula.mean() > tibia.mean()
    agree.append(fibula_right == (a['flipped'] == 0.0))
  assert np.mean(agree) == 1.0
  means, offsets = [], []
  for s in range(40):
    image, _, a = P.knee_radiograph(s, 48, grade=2)
    means.append(image.mean() / 255.0)
    offsets.append(a['brightness'])
  assert stats.spearmanr(means, offsets)[0] > 0.7


def test_histology_attributes_follow_label():
  normal = [H.histology_tile(s, 48, label=0)[2] for s in range(30)]
  tumour = [H.histology_tile(s, 48, label=1)[2] for s in range(30)]
  for key in ('nuclear_count', 'nuclear_mean_area', 'nuclear_darkness', 'pleomorphism'):
    n, t = np.array([a[key] for a in normal]), np.array([a[key] for a in tumour])
    assert t.mean() > n.mean(), key
    assert stats.mannwhitneyu(t, n, alternative='greater').pvalue < 1e-3, key
  counts_n = [a['nuclear_count'] for a in normal]
  counts_t = [a['nuclear_count'] for a in tumour]
  assert max(counts_n) > min(counts_t)  # classes overlap, as real tissue does


def test_histology_fixed_field_of_view():
  """Counts do not depend on resolution; areas scale with resolution^2."""
  for s in range(6):
    a = H.histology_tile(s, 64)[2]
    b = H.histology_tile(s, 128)[2]
    assert abs(a['nuclear_count'] - b['nuclear_count']) <= 0.15 * a['nuclear_count'] + 2
    assert b['nuclear_mean_area'] / a['nuclear_mean_area'] == pytest.approx(4.0, rel=0.25)


def test_histology_background_fraction_matches_white_pixels():
  fractions, white = [], []
  for s in range(30):
    image, _, a = H.histology_tile(s, 64)
    fractions.append(a['background_fraction'])
    white.append(np.mean(image.min(axis=-1) > 225))
  fractions, white = np.array(fractions), np.array(white)
  assert stats.spearmanr(fractions, white)[0] > 0.9
  assert np.median(np.abs(fractions - white)) < 0.05


def test_histology_colours_are_h_and_e():
  """Beer-Lambert with H&E vectors: pink stroma (G lowest), blue-purple nuclei (B highest), white lumen."""
  seed = next(s for s in range(20) if H.histology_tile(s, 32, label=1)[2]['marker'] == 0.0)
  image, _, a = H.histology_tile(seed, 128, label=1)
  assert a['marker'] == 0.0
  rgb = image.reshape(-1, 3).astype(float)
  tissue = rgb[rgb.min(axis=1) < 200]
  assert np.median(tissue[:, 1]) < np.median(tissue[:, 0]) and np.median(tissue[:, 1]) < np.median(tissue[:, 2])
  darkest = rgb[np.argsort(rgb.sum(axis=1))[:len(rgb) // 50]]  # nuclei
  assert np.median(darkest[:, 2]) > np.median(darkest[:, 0]) and np.median(darkest[:, 2]) > np.median(darkest[:, 1])
  h, e = H.stain_vectors(0.0)
  np.testing.assert_allclose([np.linalg.norm(h), np.linalg.norm(e)], 1.0)
  h_blue, _ = H.stain_vectors(1.0)
  assert h_blue[2] > h[2]


def test_histology_blur_and_stain_shift_show_in_pixels():
  sharp, blur_attr = [], []
  shift, blueness = [], []
  for s in range(30):
    image, _, a = H.histology_tile(s, 64, label=1)
    g = image.astype(float).mean(-1)
    sharp.append(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean())
    blur_attr.append(a['blur_sigma'])
    od = -np.log((image.reshape(-1, 3).astype(float) + 1) / 256)
    tissue = od[od.sum(1) > 0.3]
    shift.append(a['stain_shift'])
    blueness.append(np.median(tissue[:, 0] / tissue.sum(1)))  # red absorption share grows with bluer stain
  assert stats.spearmanr(blur_attr, sharp)[0] < -0.6
  assert stats.spearmanr(shift, blueness)[0] > 0.7


# ------------------------------------------------------------------------------------------------ scanner B

# sha256 of the images rendered by knee_radiograph before scanner_strength existed (commit 7c41ec0):
# (seed, resolution, grade, marker_strength) -> digest of image.tobytes()
_PRE_SCANNER_DIGESTS = {
    (0, 64, None, 0.0): '95dcf1b475e4edd176aa6e14c3d900ec60cb0c5a0071b2ff38b720a00fb0ff48',
    (1, 64, 4, 0.0): '1ce1e0b348a2594ebe8fccae2b1b8080bbcc5a7ef2239817a77cb10513a75351',
    (2, 32, None, 0.9): '7c499b79ad56ea0561a3e21bf11a2d65400b9e9c4a2f85222e87910e3031d4bf',
    (3, 128, 0, 1.0): '5314626b0477a4b2ac07398408fc44f53f5cf94bb7172fbe54413a107eef12a0',
}


@pytest.mark.parametrize('case', sorted(_PRE_SCANNER_DIGESTS, key=str))
def test_default_knee_images_unchanged_bit_for_bit(case):
  seed, resolution, grade, marker_strength = case
  image, _, attrs = P.knee_radiograph(seed, resolution, grade=grade, marker_strength=marker_strength)
  assert hashlib.sha256(image.tobytes()).hexdigest() == _PRE_SCANNER_DIGESTS[case]
  assert attrs['scanner'] == 0.0 and attrs['blur_sigma'] == 0.0
  explicit, _, _ = P.knee_radiograph(seed, resolution, grade=grade, marker_strength=marker_strength,
                                     scanner_strength=None)
  np.testing.assert_array_equal(explicit, image)


def test_scanner_frequency_follows_probability():
  """Same tie rule as the marker: strength 0 -> scanner B at p = 0.5 independent of KL; 1 -> B iff KL >= 2."""
  n = 160
  for strength in (0.0, 1.0):
    scanners, positives, markers = [], [], []
    for s in range(n):
      _, grade, attrs = P.knee_radiograph(s, 32, scanner_strength=strength)
      scanners.append(attrs['scanner'])
      positives.append(float(grade >= 2))
      markers.append(attrs['marker'])
    scanners, positives = np.array(scanners), np.array(positives)
    if strength == 1.0:
      np.testing.assert_array_equal(scanners, positives)
    else:
      assert stats.binomtest(int(scanners.sum()), n, 0.5).pvalue > 1e-3
      assert abs(np.corrcoef(scanners, positives)[0, 1]) < 0.3
      assert abs(np.corrcoef(scanners, markers)[0, 1]) < 0.3  # its own random stream
  # strength 0.9 (the 64_scanner config): P(B | KL >= 2) = 0.95, P(B | KL < 2) = 0.05
  draws = [P.knee_radiograph(s, 32, scanner_strength=0.9) for s in range(200)]
  pos = np.array([g >= 2 for _, g, _ in draws])
  b = np.array([a['scanner'] for _, _, a in draws])
  assert b[pos].mean() > 0.88 and b[~pos].mean() < 0.12


def test_scanner_b_is_a_global_blur_and_noise_change():
  """Same seed on scanner A and B: the same patient; every part of the image changes (noisier, softer), not
    one region; the anatomy is where it was."""
  seed = next(s for s in range(20) if P.knee_radiograph(s, 32, grade=3, marker_strength=0.0)[2]['marker'] == 0.0)
  a_img, _, a = P.knee_radiograph(seed, 64, grade=3)
  b_img, _, b = P.knee_radiograph(seed, 64, grade=3, scanner_strength=1.0)
  assert a['scanner'] == 0.0 and b['scanner'] == 1.0
  assert 0.55 <= b['blur_sigma'] <= 0.9 and a['blur_sigma'] == 0.0
  assert b['noise_std'] > a['noise_std'] and 0.016 <= b['noise_std'] <= 0.046
  same = [k for k in P.KNEE_ATTRIBUTES if k not in ('scanner', 'blur_sigma', 'noise_std')]
  assert all(a[k] == b[k] for k in same)
  diff = np.abs(a_img.astype(float) - b_img.astype(float))[..., 0]
  quadrants = [diff[:32, :32], diff[:32, 32:], diff[32:, :32], diff[32:, 32:]]
  assert all(q.mean() > 2.0 for q in quadrants), [q.mean() for q in quadrants]  # 1.0 = one grey level
  assert max(q.mean() for q in quadrants) < 3 * min(q.mean() for q in quadrants)
  # the same anatomy: smoothed images agree closely; the fine detail (local variance of the residual) differs
  from scipy import ndimage
  smooth = lambda im: ndimage.gaussian_filter(im[..., 0].astype(float), 2.0)  # noqa: E731
  assert np.abs(smooth(a_img) - smooth(b_img)).mean() < 2.0
  assert np.corrcoef(smooth(a_img).ravel(), smooth(b_img).ravel())[0, 1] > 0.99
  # scales with the resolution: the same physical blur
  assert P.knee_radiograph(seed, 128, grade=3,
                           scanner_strength=1.0)[2]['blur_sigma'] == pytest.approx(2 * b['blur_sigma'])


# ------------------------------------------------------------------------------------- marker override (shortcut)


@pytest.mark.parametrize('case', sorted(_PRE_SCANNER_DIGESTS, key=str))
def test_marker_none_keeps_default_images_bit_for_bit(case):
  seed, resolution, grade, marker_strength = case
  image, _, _ = P.knee_radiograph(seed, resolution, grade=grade, marker_strength=marker_strength, marker=None)
  assert hashlib.sha256(image.tobytes()).hexdigest() == _PRE_SCANNER_DIGESTS[case]


def test_marker_override_forces_the_tag_and_changes_nothing_else():
  r0, c0, size = P.marker_box(64, 64)
  outside = np.ones((64, 64), bool)
  outside[r0:r0 + size, c0:c0 + size] = False
  for seed in range(6):
    drawn, grade, attrs = P.knee_radiograph(seed, 64, marker_strength=0.9, scanner_strength=0.9)
    on, g_on, a_on = P.knee_radiograph(seed, 64, marker_strength=0.9, scanner_strength=0.9, marker=True)
    off, g_off, a_off = P.knee_radiograph(seed, 64, marker_strength=0.9, scanner_strength=0.9, marker=False)
    assert g_on == g_off == grade and a_on['marker'] == 1.0 and a_off['marker'] == 0.0
    assert a_on['scanner'] == a_off['scanner'] == attrs['scanner']
    np.testing.assert_array_equal(on[..., 0][outside], off[..., 0][outside])  # only the tag's box differs
    assert not np.array_equal(on, off)
    np.testing.assert_array_equal(drawn, on if attrs['marker'] else off)
