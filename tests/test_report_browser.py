"""report.html as a person sees it: a small export written by ExplanationWriter is opened in headless Chromium.

The test's own copy of report.html (written beside it, so the strip/GIF links resolve the same way) gets two
scripts: an error recorder at the top of <head> and, after the page's script, a checker that on `load` counts the
decoded images, sliders and SVG plots, reads the ids and class names as rendered text, moves every slider to its
last frame (an `input` event, as a drag sends) and records what changed; it writes the result as JSON into
`body[data-check]`, which `--dump-dom` brings back. The unmodified report.html is also screenshotted (a copy is
left at /tmp/report_screenshot.png to look at). Skipped when `chromium` is not installed (`.ci/run` installs it).
"""
import html
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from stylex_jax.explain import export

H = W = 32
CLASSES = ['healthy', 'sick <&>']
IDS = ['scan-01', 'a<b>&"c', 'knee/03.png']
ALPHAS = np.array([-1.0, 0.0, 1.0, 2.0], np.float32)  # the slider starts at frame 1 (shift 0), ends at 3
PROBS = np.array([[0.9, 0.1], [0.7, 0.3], [0.4, 0.6], [0.2, 0.8]], np.float32)  # p(sick) rises: the target
SCREENSHOT_COPY = '/tmp/report_screenshot.png'

# Registered before anything else on the page runs, so every uncaught error (and rejected promise) is counted.
ERRORS_JS = '''<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  window.__errors.push(String(e.message || (e.target && e.target.outerHTML) || e));
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__errors.push('rejection: ' + e.reason); });
</script>'''

CHECK_JS = '''<script>
window.addEventListener('load', function () {
  var out = {errors: window.__errors, rows: [], legend: '', links: []};
  function decoded(img) { return img.complete && img.naturalWidth > 0; }
  var imgs = Array.prototype.slice.call(document.images);
  out.images = imgs.length;
  out.images_decoded = imgs.filter(decoded).length;
  out.undecoded = imgs.filter(function (i) { return !decoded(i); }).map(function (i) { return i.alt; });
  out.sliders = document.querySelectorAll('input[type=range]').length;
  out.plots = document.querySelectorAll('svg').length;
  out.legend = document.querySelector('p').textContent;
  document.querySelectorAll('a[href]').forEach(function (a) { out.links.push(a.getAttribute('href')); });
  var pending = [];
  document.querySelectorAll('.row').forEach(function (row) {
    var d = JSON.parse(row.querySelector('script.rowdata').textContent);
    var scrub = row.querySelector('input[type=range]'), img = row.querySelector('img.frame');
    var info = row.querySelector('.frameinfo'), dot = row.querySelector('svg circle.cur');
    var r = {
      id_text: row.querySelector('.head b').textContent,
      head_elements: row.querySelectorAll('.head *').length,
      images: row.querySelectorAll('img').length,
      sliders: row.querySelectorAll('input[type=range]').length,
      plots: row.querySelectorAll('svg').length,
      polylines: row.querySelectorAll('svg polyline').length,
      min: +scrub.min, max: +scrub.max, start: +scrub.value,
      src_is_start_frame: img.getAttribute('src') === d.frames[+scrub.value],
      info_before: info.textContent, cx_before: dot.getAttribute('cx'), cy_before: dot.getAttribute('cy')
    };
    var src = img.getAttribute('src');
    scrub.value = scrub.max;
    scrub.dispatchEvent(new Event('input', {bubbles: true}));
    r.value = +scrub.value;
    r.src_changed = img.getAttribute('src') !== src;
    r.src_is_last_frame = img.getAttribute('src') === d.frames[d.frames.length - 1];
    r.info_after = info.textContent;
    r.cx_after = dot.getAttribute('cx'); r.cy_after = dot.getAttribute('cy');
    r.cur_last = d.cur[d.cur.length - 1];
    out.rows.push(r);
    pending.push(img.decode().then(function () { r.frame_decoded = decoded(img); },
                                   function (e) { r.frame_decoded = false; r.decode_error = String(e); }));
  });
  Promise.all(pending).then(function () {
    out.errors = window.__errors;
    document.body.dataset.check = JSON.stringify(out);
  });
});
</script>'''


def _batch():
  """3 images: a grey disc (brighter along the series), smooth GradCAM blobs; fixed probabilities."""
  n, s = len(IDS), len(ALPHAS)
  yy, xx = np.mgrid[:H, :W]
  disc = ((yy - H / 2 + 0.5)**2 + (xx - W / 2 + 0.5)**2 < (H / 3)**2).astype(np.float32)
  gradient = (xx / (W - 1)).astype(np.float32)
  images, series = [], []
  for i in range(n):
    base = -0.8 + 0.6 * disc + 0.3 * gradient + 0.1 * i
    images.append(base)
    series.append([base + 0.25 * a * disc for a in ALPHAS])
  image = np.clip(np.stack(images), -1, 1)[..., None]
  heat = np.exp(-((yy - 10 - 5 * np.arange(n)[:, None, None])**2 + (xx - 16)**2) / 40.0).astype(np.float32)
  return {
      'id': np.array(IDS),
      'image': image,
      'reconstruction': np.clip(image * 0.95, -1, 1),
      'series': np.clip(np.stack(series), -1, 1)[..., None].astype(np.float32),
      'alphas': np.tile(ALPHAS, (n, 1)),
      'probs': np.tile(PROBS, (n, 1, 1)),
      'original_probs': np.tile(PROBS[1], (n, 1)),
      'reconstruction_probs': np.tile(PROBS[1], (n, 1)),
      'latent': np.zeros((n, 2, 4), np.float32),
      'gradcam': heat,
      'label': np.array([0, 1, -1]),
      'metrics': {
          'ssim': np.array([0.9, 0.8, 0.7])
      },
  }


def _chromium(tmp_path, *args):
  exe = shutil.which('chromium')
  if exe is None:
    pytest.skip('chromium not installed; .ci/run installs it')
  cmd = [
      exe, '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
      '--no-default-browser-check', '--disable-extensions', '--hide-scrollbars', '--mute-audio',
      f'--user-data-dir={tmp_path / "chromium-profile"}', '--virtual-time-budget=5000', *args
  ]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, f'{cmd} failed ({proc.returncode}): {proc.stderr[-3000:]}'
  return proc


@pytest.fixture(scope='module')
def report_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp('browser_export')
  with export.ExplanationWriter(str(directory), num_classes=2, class_names=CLASSES, image_shape=(H, W, 1), num_ws=2,
                                w_dim=4, config={'seed': 0}, target_description='sick <&>') as writer:
    writer.add(_batch())
  return directory


def test_rendered_report(report_dir, tmp_path):
  text = (report_dir / 'report.html').read_text(encoding='utf-8')
  head = '<meta charset="utf-8">'
  assert text.count(head) == 1 and text.endswith('</body></html>\n')
  checked = text.replace(head, head + ERRORS_JS, 1).replace('</body></html>', CHECK_JS + '</body></html>')
  page = report_dir / 'report_check.html'  # beside report.html: the relative strip/GIF links resolve as there
  page.write_text(checked, encoding='utf-8')
  dom = _chromium(tmp_path, '--dump-dom', page.as_uri()).stdout
  found = re.search(r'<body[^>]*\sdata-check="([^"]*)"', dom)
  assert found, f'the check script wrote no result; rendered DOM starts: {dom[:500]!r}'
  check = json.loads(html.unescape(found.group(1)))

  assert check['errors'] == []
  n = len(IDS)
  assert check['images'] == 5 * n and check['images_decoded'] == check['images'], check['undecoded']
  assert check['sliders'] == n and check['plots'] == n
  assert 'sick <&>' in check['legend']  # class names shown as text
  for link in check['links']:
    assert (report_dir / link).is_file(), link
  assert len(check['links']) == 2 * n
  rows = check['rows']
  assert [r['id_text'] for r in rows] == IDS  # shown as text, not parsed as markup
  for r in rows:
    assert r['head_elements'] == 3  # <b>id</b> and the two links: nothing from the id became an element
    assert (r['images'], r['sliders'], r['plots'], r['polylines']) == (5, 1, 1, 2)
    assert (r['min'], r['max'], r['start']) == (0, len(ALPHAS) - 1, 1) and r['src_is_start_frame']
    assert r['info_before'] == 'shift +0.00 | healthy 0.700, sick <&> 0.300'
    # moving the slider to the end shows the last frame, its shift and probabilities, and moves the plot marker
    assert r['value'] == len(ALPHAS) - 1 and r['src_changed'] and r['src_is_last_frame'] and r['frame_decoded']
    assert r['info_after'] == 'shift +2.00 | healthy 0.200, sick <&> 0.800'
    assert [float(r['cx_after']), float(r['cy_after'])] == r['cur_last']
    assert (r['cx_after'], r['cy_after']) != (r['cx_before'], r['cy_before'])


def test_screenshot_not_blank(report_dir, tmp_path):
  png = tmp_path / 'report.png'
  _chromium(tmp_path, f'--screenshot={png}', '--window-size=1280,2000', (report_dir / 'report.html').as_uri())
  assert png.is_file()
  shutil.copyfile(png, SCREENSHOT_COPY)
  with Image.open(png) as im:
    assert im.size == (1280, 2000)
    rgb = im.convert('RGB')
  colours = rgb.getcolors(maxcolors=1 << 24)
  assert len(colours) > 50, f'{len(colours)} colours: the page looks blank'
  # the rows' pictures are drawn: the GradCAM overlay puts saturated (non-grey) pixels on the page
  x = np.asarray(rgb, np.int16)
  assert (np.ptp(x, axis=-1) > 100).mean() > 0.001
