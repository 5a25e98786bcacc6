"""report.html of an explanation export: one self-contained page (base64 images, inline CSS/JS, no external URL).

Per image a row: original and reconstruction with their class probabilities, the series with a slider
(frame, shift and probabilities follow it), an inline SVG of p(class) vs shift with a marker on the
current frame, the GradCAM overlay and the difference map; above the rows the target, the class
legend, the summary metrics and the config. Every name shown (ids, class names, metric names) is
HTML-escaped.

The markup lives in two templates shipped as package data (`string.Template` placeholders):
`report_template.html` (the page; `$rows` marks where the rows go) and `report_row_template.html`
(one row). Rows are rendered as images are added and kept in a side file, so a large export never
holds its report in memory; `Report.state()` / `Report(..., resume=state)` let an interrupted export continue the
rows file where it was committed. No TensorFlow.
"""
from __future__ import annotations

import base64
import html
import importlib.resources
import json
import math
import shutil
import string
from typing import Any, Mapping

import numpy as np

from stylex_jax import storage
from stylex_jax.explain import media

_CLASS_COLOURS = ('#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
                  '#17becf')


def _template(name: str) -> str:
  return importlib.resources.files('stylex_jax.explain').joinpath(name).read_text(encoding='utf-8')


def _data_uri(png: bytes) -> str:
  return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


def _json_for_script(obj) -> str:
  """JSON safe inside an HTML <script> element."""
  return (json.dumps(obj, allow_nan=False).replace('<', '\\u003c').replace('>', '\\u003e').replace('&', '\\u0026'))


def _fmt(v) -> str:
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v))
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  try:
    f = float(v)
  except (TypeError, ValueError):
    return str(v)
  return 'n/a' if not math.isfinite(f) else f'{f:.4g}'


SCORECARD_START, SCORECARD_END = '<!-- scorecard -->', '<!-- /scorecard -->'


def _goal_text(goal) -> str:
  if goal is None:
    return ''
  if isinstance(goal, (list, tuple)) and len(goal) == 2:
    return f'{goal[0]} {_fmt(goal[1])}'
  return str(goal)


def scorecard_html(scorecard: Mapping[str, Mapping[str, Any]]) -> str:
  """The scorecard as a table: metric | value [95% interval] | goal | met/missed | meaning.

  scorecard: metric name -> {'value', 'low', 'high', 'goal' (None or [op, number]), 'met' (True/False/None),
  'meaning'} (the entries of evaluate/scorecard.json).
  """
  esc = html.escape
  rows = []
  for name, e in scorecard.items():
    interval = ''
    if e.get('low') is not None and e.get('high') is not None:
      interval = f' [{_fmt(e["low"])}, {_fmt(e["high"])}]'
    met = e.get('met')
    verdict = {True: '<b style="color:#2ca02c">met</b>', False: '<b style="color:#d62728">missed</b>'}.get(met, '')
    rows.append(f'<tr><td>{esc(str(name))}</td><td>{esc(_fmt(e.get("value")) + interval)}</td>'
                f'<td>{esc(_goal_text(e.get("goal")))}</td><td>{verdict}</td><td>{esc(str(e.get("meaning", "")))}'
                '</td></tr>')
  return ('<table class="scorecard"><tr><th>metric</th><th>value [95% interval]</th><th>goal</th><th></th>'
          f'<th>meaning</th></tr>{"".join(rows)}</table>')


def insert_scorecard(path: str, scorecard: Mapping[str, Mapping[str, Any]]) -> bool:
  """Replaces the scorecard section at the top of an existing report.html (atomically: `storage.write_atomic`, a
  .tmp file then a rename locally, one object upload on an object store); nothing else of the page changes.
  Returns False (and changes nothing) when the page has no scorecard section (no report, or one written before
  reports had it)."""
  if not storage.isfile(path):
    return False
  page = storage.read_text(path)
  start, end = page.find(SCORECARD_START), page.find(SCORECARD_END)
  if start < 0 or end < start:
    return False
  page = page[:start + len(SCORECARD_START)] + scorecard_html(scorecard) + page[end:]
  storage.write_atomic(path, page.encode('utf-8'))
  return True


class Report:
  """Collects the rows of report.html (the first images, within a count and size budget) and writes the page.

  Usage: `report = Report(rows_path, class_names=..., max_images=100, max_bytes=64 * 2**20)`;
  `report.add(...)` per image; at the end `report.write('report.html', ...)` (removes the rows file),
  or `report.close()` to drop it unfinished.
  """

  def __init__(self, rows_path: str, *, class_names: list[str], max_images: int, max_bytes: int,
               resume: Mapping[str, Any] | None = None):
    """
    Args:
      rows_path: the side file the rendered rows are streamed to (created now; `storage.AppendFile`: appended to
        on a local disk; on an object store held in memory, at most about max_bytes, and uploaded whole by
        `state()` and `close()`).
      class_names: K names, in class order.
      max_images: at most this many rows; max_bytes: rows stop once their text would exceed about this
        many bytes (the first row is always kept).
      resume: a `state()` of an earlier Report on the same rows_path: the file is cut back to that state's
        length and continued (the rows added after it are dropped).
    """
    self.class_names = list(class_names)
    self.max_images = int(max_images)
    self._budget = int(max_bytes)
    self._rows_path = rows_path
    self._row_template = string.Template(_template('report_row_template.html'))
    self.shown = 0
    self._full = False
    if resume is None:
      self._rows = storage.AppendFile(rows_path, 'wb')
    else:
      storage.truncate(rows_path, int(resume['bytes']))
      self._rows = storage.AppendFile(rows_path, 'ab')
      self.shown, self._full, self._budget = int(resume['shown']), bool(resume['full']), int(resume['budget'])

  def state(self) -> dict:
    """What `Report(..., resume=...)` needs to continue from here; the rows file is made durable first
    (`storage.AppendFile.sync`: fsync locally, uploaded on an object store)."""
    self._rows.sync()
    return {'bytes': self._rows.tell(), 'shown': self.shown, 'full': self._full, 'budget': self._budget}

  def add(self, id_: str, name: str, label_text: str, target: int, pngs: Mapping[str, bytes], series_pngs: list[bytes],
          alphas: np.ndarray, probs: np.ndarray, original_probs: np.ndarray, recon_probs: np.ndarray | None,
          cam_rgb: np.ndarray, diff_rgb: np.ndarray, diff_scale: float, metrics: Mapping[str, float]) -> None:
    """Renders the row of one image, unless the report is already full.

    Args:
      id_: source id; name: its safe file name (strips/<name>.png, gifs/<name>.gif); label_text: shown label.
      target: the class whose probability the row follows.
      pngs: {'image', 'reconstruction'} PNG bytes; series_pngs: S PNGs ordered by alphas.
      alphas: [S]; probs: [S, K] in [0, 1]; original_probs, recon_probs: [K] (recon_probs may be None).
      cam_rgb, diff_rgb: uint8 [H, W, 3] GradCAM overlay and difference map; diff_scale: its scale.
      metrics: name -> value of this image.
    """
    if self._full:
      return
    row = self._render_row(id_, name, label_text, target, pngs, series_pngs, alphas, probs, original_probs, recon_probs,
                           media.png_bytes(cam_rgb), media.png_bytes(diff_rgb), diff_scale, metrics)
    self._budget -= len(row)
    if self.shown >= self.max_images or (self._budget < 0 and self.shown > 0):
      self._full = True  # rows stay the first N images
    else:
      self._rows.write(row.encode('utf-8'))
      self.shown += 1

  def _plot_svg(self, alphas: np.ndarray, probs: np.ndarray, target: int) -> tuple[str, list[list[float]]]:
    """Inline SVG of p(class) vs alpha; returns (svg, [[x, y] of the target curve per frame])."""
    width, height, left, right, top, bottom = 240, 150, 30, 8, 8, 22
    lo, hi = float(np.min(alphas)), float(np.max(alphas))
    if hi - lo < 1e-9:
      lo, hi = lo - 1.0, hi + 1.0
    sx = lambda a: left + (a - lo) / (hi - lo) * (width - left - right)
    sy = lambda p: top + (1.0 - p) * (height - top - bottom)
    parts = [
        f'<svg class="plot" width="{width}" height="{height}" viewBox="0 0 {width} {height}">',
        f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{height - top - bottom}" '
        'fill="#fafafa" stroke="#999"/>',
        f'<line x1="{left}" y1="{sy(0.5):.1f}" x2="{width - right}" y2="{sy(0.5):.1f}" stroke="#888" '
        'stroke-dasharray="4 3"/>'
    ]
    for p in (0.0, 0.5, 1.0):
      parts.append(f'<text x="{left - 3}" y="{sy(p) + 4:.1f}" font-size="10" text-anchor="end">{p:g}</text>')
    parts.append(f'<text x="{left}" y="{height - 6}" font-size="10">{lo:+.2f}</text>')
    parts.append(f'<text x="{width - right}" y="{height - 6}" font-size="10" text-anchor="end">{hi:+.2f}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.1f}" y="{height - 6}" font-size="10" '
                 'text-anchor="middle">shift</text>')
    if lo <= 0.0 <= hi:
      parts.append(f'<line x1="{sx(0.0):.1f}" y1="{top}" x2="{sx(0.0):.1f}" y2="{height - bottom}" stroke="#444" '
                   'stroke-dasharray="2 2"><title>shift 0 (the inverted image)</title></line>')
      p0 = float(np.interp(0.0, alphas, probs[:, target])) if np.all(np.diff(alphas) > 0) else None
      if p0 is not None:
        parts.append(f'<rect x="{sx(0.0) - 3:.1f}" y="{sy(p0) - 3:.1f}" width="6" height="6" fill="#444"/>')
    order = [c for c in range(len(self.class_names)) if c != target] + [target]
    for c in order:
      pts = ' '.join(f'{sx(a):.1f},{sy(p):.1f}' for a, p in zip(alphas, probs[:, c]))
      colour = _CLASS_COLOURS[c % len(_CLASS_COLOURS)]
      width_px = 2.5 if c == target else 1.2
      parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="{width_px}">'
                   f'<title>p({html.escape(self.class_names[c])})</title></polyline>')
    cur = [[round(sx(float(a)), 1), round(sy(float(p)), 1)] for a, p in zip(alphas, probs[:, target])]
    parts.append(f'<circle class="cur" cx="{cur[0][0]}" cy="{cur[0][1]}" r="4" fill="none" stroke="#000" '
                 'stroke-width="2"/>')
    parts.append('</svg>')
    return ''.join(parts), cur

  def _probs_text(self, probs) -> str:
    return ', '.join(f'{html.escape(n)} {p:.3f}' for n, p in zip(self.class_names, probs))

  def _render_row(self, id_, name, label_text, target, pngs, series_pngs, alphas, probs, original_probs, recon_probs,
                  cam_png, diff_png, diff_scale, metrics) -> str:
    svg, cur = self._plot_svg(alphas, probs, target)
    start = int(np.argmin(np.abs(alphas)))
    data = {
        'frames': [_data_uri(p) for p in series_pngs],
        'alphas': [float(a) for a in alphas],
        'probs': [[round(float(p), 4) for p in row] for row in probs],
        'cur': cur,
        'classes': self.class_names
    }
    esc = html.escape
    recon_caption = f'reconstruction<br>{self._probs_text(recon_probs)}' if recon_probs is not None \
        else 'reconstruction'
    metric_text = ' · '.join(f'{esc(n)} {_fmt(v)}' for n, v in metrics.items())
    return '\n' + self._row_template.substitute(name=esc(name), id=esc(id_), label=esc(label_text), target_class=esc(
        self.class_names[target]), metrics=(' · ' + metric_text) if metric_text else '', image_uri=_data_uri(
            pngs['image']), original_probs=self._probs_text(original_probs), reconstruction_uri=_data_uri(
                pngs['reconstruction']), reconstruction_caption=recon_caption, frame_uri=data['frames'][start],
                                                last_frame=len(series_pngs) - 1, start=start, svg=svg,
                                                gradcam_uri=_data_uri(cam_png), difference_uri=_data_uri(diff_png),
                                                diff_scale=f'{diff_scale:.2f}', data=_json_for_script(data))

  def write(self, path: str, *, title: str, target_description: str, num_images: int, summary: Mapping[str, Any],
            metric_means: Mapping[str, float], config: Mapping,
            scorecard: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Writes the page to `path` (atomically: a .tmp file then a rename locally, one object upload on
    an object store) and removes the rows file.

    num_images: all images of the export (the page says when it shows fewer); scorecard: shown at the top
    (`scorecard_html`; the evaluate stage later replaces it with the full one); summary: name -> value and
    metric_means: per-image metric name -> mean, both shown folded under the scorecard; config: JSON-able, folded.
    """
    self.close()
    esc = html.escape
    legend = ' '.join(f'<span style="color:{_CLASS_COLOURS[c % len(_CLASS_COLOURS)]}">&#9632; {esc(n)}</span>'
                      for c, n in enumerate(self.class_names))
    shown = self.shown
    more = '' if shown == num_images else (f'<p><b>Showing the first {shown} of {num_images} images</b>; all are '
                                           'in tfrecords/, strips/ and gifs/.</p>')
    head, tail = _template('report_template.html').split('$rows')
    head = string.Template(head).substitute(
        title=esc(title), target=esc(target_description) or 'n/a', legend=legend, num_images=num_images, more=more,
        summary_rows=''.join(f'<tr><td>{esc(str(k))}</td><td>{esc(_fmt(v))}</td></tr>' for k, v in summary.items()),
        mean_rows=''.join(f'<tr><td>mean {esc(k)}</td><td>{esc(_fmt(v))}</td></tr>' for k, v in metric_means.items()),
        scorecard=scorecard_html(scorecard or {}), config=esc(json.dumps(config, indent=1, default=str)))
    if storage.is_local(path):
      tmp = path + '.tmp'  # a rename makes the page appear whole; on an object store the upload itself does
    else:
      tmp = path
    with storage.open_file(tmp, 'w') as out:
      out.write(head)
      with storage.open_file(self._rows_path, 'r') as rows:
        shutil.copyfileobj(rows, out)
      out.write(tail)
    if tmp != path:
      storage.replace(tmp, path)
    storage.remove(self._rows_path)

  def close(self) -> None:
    """Closes the rows file (idempotent); the caller removes it with its staging directory."""
    if not self._rows.closed:
      self._rows.close()
