"""Tests for stylex_jax.explain.report: the page renders from the packaged templates with every placeholder filled,
names HTML-escaped, rows capped by count and by size, and the rows file removed."""
import json
import os
import re

import numpy as np

from stylex_jax.explain import media, report

CLASSES = ['a', 'b <&>']


def _add(r, id_, seed=0):
  rng = np.random.default_rng(seed)
  u8 = rng.integers(0, 256, size=(3, 8, 8, 1), dtype=np.uint8)
  probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]], np.float32)
  rgb = np.zeros((8, 8, 3), np.uint8)
  r.add(id_, 'safe', 'a', 1, {
      'image': media.png_bytes(u8[0]),
      'reconstruction': media.png_bytes(u8[1])
  }, [media.png_bytes(f) for f in u8], np.array([-1.0, 0.0, 1.0], np.float32), probs, probs[1], None, rgb, rgb, 0.25,
        {'ssim <x>': 0.5})


def test_page_from_templates(tmp_path):
  rows = str(tmp_path / '.rows.html')
  r = report.Report(rows, class_names=CLASSES, max_images=5, max_bytes=2**20)
  _add(r, 'id <1> & "q"')
  path = str(tmp_path / 'report.html')
  r.write(path, title='T <t>', target_description='', num_images=1, summary={'flip': float('nan')},
          metric_means={'ssim <x>': 0.5}, config={'k': '<v>'})
  text = open(path, encoding='utf-8').read()
  assert not os.path.exists(rows) and not os.path.exists(path + '.tmp')
  assert not re.search(r'\$[A-Za-z_{]', text)  # every template placeholder was filled
  assert text.startswith('<!DOCTYPE html>') and text.endswith('</body></html>\n')
  assert '<title>T &lt;t&gt;</title>' in text and 'Target: n/a' in text and 'Images: 1' in text
  assert '<b>id &lt;1&gt; &amp; &quot;q&quot;</b>' in text and 'shown: p(b &lt;&amp;&gt;)' in text
  assert 'ssim &lt;x&gt; 0.5' in text and '<td>flip</td><td>n/a</td>' in text and '&quot;&lt;v&gt;&quot;' in text
  assert 'Showing the first' not in text and text.count('<polyline') == 2
  data = json.loads(re.search(r'class="rowdata">(.*?)</script>', text, re.S).group(1))
  assert data['classes'] == CLASSES and len(data['frames']) == 3 and data['alphas'] == [-1.0, 0.0, 1.0]
  assert 'value="1"' in text  # the slider starts at the frame nearest shift 0


def test_rows_capped_by_count_and_size(tmp_path):
  r = report.Report(str(tmp_path / 'rows'), class_names=CLASSES, max_images=2, max_bytes=2**20)
  for i in range(4):
    _add(r, f'id{i}')
  assert r.shown == 2
  r = report.Report(str(tmp_path / 'rows2'), class_names=CLASSES, max_images=9, max_bytes=10)
  for i in range(3):
    _add(r, f'id{i}')
  assert r.shown == 1  # the first row is always kept
  r.write(str(tmp_path / 'r.html'), title='t', target_description='x', num_images=3, summary={}, metric_means={},
          config={})
  assert 'Showing the first 1 of 3 images' in open(tmp_path / 'r.html', encoding='utf-8').read()
