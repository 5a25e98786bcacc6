"""Load benchmark of `launch/explain.py --images DIR`: images/s and peak memory at N = 64, 1,000 and 10,000 files.

The explain stage streams users' files (headers checked up front, pixels decoded batch by batch) and the export
writer keeps no per-image heavy data, so the peak resident memory should not grow with N: the goal is peak RSS at
the largest N within 10% of that at the smallest.

What it does: trains the classifier, GAN and encoder of `configs/demo.py:<--variant>` (default `smoke`, the
models of tests/conftest.py's smoke_stages; `--variant ''` = the default demo, e.g. a finished demo workdir) into
--workdir unless they are there already; writes max(N) knee phantoms
(`stylex_jax/data/phantoms.py`, at the config's image size, PNG) into a temp folder (a folder per N, hard links
of the first N files); then, per N, ONE fresh subprocess runs the real path (`stages.explain.run` with
image_patterns=<folder>, as launch/explain.py --images does) so the peaks of different N never mix, and reports
the child's peak RSS (VmHWM of /proc/self/status, else ru_maxrss). Like launch/explain.py it caps glibc's malloc
arenas at 2 first (launch/malloc_arenas.py; `MALLOC_ARENA_MAX=16 python benchmarks/explain_load.py ...` measures
with more).

Usage:
  nice -n 10 python benchmarks/explain_load.py --workdir /tmp/stylex_load/work --sizes 1000,10000
  python benchmarks/explain_load.py --workdir /tmp/stylex_load/work --sizes 1000,3000   # a shorter run
  python benchmarks/explain_load.py --variant '' --workdir <demo workdir> --data-dir <its data_dir> --sizes 64,1000

Output: one figure per line, `name value unit`; lines starting with '#' are notes.
  images_per_s_N   steady rate of the batch loop (the stage's last progress line: images / loop seconds)
  wall_s_N         the whole run() call in the child (model load, direction fit, loop, report, swap)
  peak_rss_mib_N   the child's peak resident memory (VmHWM)
  ssim_N           the export's mean reconstruction SSIM (explain/summary.json `ssim`; --invert-steps sets the steps)
  rss_ratio        peak RSS at the largest N / at the smallest (goal <= 1.10)
A '# goal' line per N says whether it ran at >= 1.5 images/s with a mean SSIM >= 0.85 (issue 14's explain goal).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from launch import malloc_arenas  # pylint: disable=g-import-not-at-top,wrong-import-position

_ARENAS = malloc_arenas.limit()  # as launch/explain.py does, before any thread; the children inherit it


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default='/tmp/stylex_load/work', help='smoke classifier/, gan/, encoder/ (trained '
                 'here if missing)')
  p.add_argument('--data-dir', default=None, help='TFDS folder of the smoke phantoms (default <workdir>/../tfds)')
  p.add_argument('--variant', default='smoke', help="configs/demo.py variant of the models ('' = the default demo)")
  p.add_argument('--sizes', default='1000,10000', help='comma-separated numbers of image files')
  p.add_argument('--batch', type=int, default=4, help='config.explain.batch_size (the smoke config: 4; the demo: 16)')
  p.add_argument('--invert-steps', type=int, default=0, help="projector steps (0 = the config's config.invert.steps)")
  p.add_argument('--files-dir', default=None, help='where the phantom PNGs are written (default: a temp folder, '
                 'removed at the end)')
  p.add_argument(
      '--jax-cache', default=os.path.join(tempfile.gettempdir(), 'stylex_explain_load_jax_cache'),
      help='persistent XLA compilation cache shared by the children (a warm-up child fills it first, '
      'so no measured child compiles and the peaks compare the explain loop, not XLA)')
  p.add_argument('--child', default=None, help=argparse.SUPPRESS)  # internal: folder to explain in this process
  p.add_argument('--output', default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def smoke_config(args):
  """configs/demo.py:<args.variant> with the data folder, the three training stages and the explain batch."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  config = demo.get_config(args.variant)
  config.data.data_dir = args.data_dir or os.path.join(os.path.dirname(os.path.abspath(args.workdir)), 'tfds')
  config.stages = 'classifier,gan,encoder'
  config.explain.batch_size = args.batch
  if args.invert_steps < 0:
    sys.exit(f'--invert-steps {args.invert_steps}: give a number of steps >= 1, or 0 for the config\'s')
  if args.invert_steps:
    config.invert.steps = args.invert_steps
  return config


def peak_rss_mib() -> float:
  """This process's peak resident set size (VmHWM), MiB."""
  try:
    with open('/proc/self/status', encoding='ascii') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) / 1024.0
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def child(args) -> None:
  """Runs the explain path on the files of args.child and prints one JSON line with the measurements."""
  import jax  # pylint: disable=g-import-not-at-top
  if args.jax_cache:
    jax.config.update('jax_compilation_cache_dir', args.jax_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  from stylex_jax.stages import explain as stage  # pylint: disable=g-import-not-at-top
  config = smoke_config(args)
  t0 = time.perf_counter()
  summary = stage.run(config, args.workdir, image_patterns=args.child, output_dir=args.output)
  print(
      'RESULT ' + json.dumps({
          'images': summary['images'],
          'wall_s': time.perf_counter() - t0,
          'peak_rss_mib': peak_rss_mib(),
          'ssim': summary.get('ssim')
      }), flush=True)


def write_phantoms(folder: str, n: int, size: int) -> None:
  """n knee phantoms as 8-bit PNGs <folder>/phantom_<i>.png (kept between runs: only missing files are made)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from stylex_jax.data import phantoms  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  for i in range(n):
    path = os.path.join(folder, f'phantom_{i:05d}.png')
    if not os.path.exists(path):
      image = np.asarray(phantoms.knee_radiograph(i, resolution=max(size, 32))[0], np.uint8)  # [S, S, 1]
      Image.fromarray(image[..., 0]).save(path)


def main(argv=None) -> None:
  args = parse_args(argv)
  if args.child:
    child(args)
    return
  sizes = sorted({int(s) for s in args.sizes.split(',') if s.strip()})
  config = smoke_config(args)
  if not all(os.path.isdir(os.path.join(args.workdir, s)) for s in ('classifier', 'gan', 'encoder')):
    print(f'# training the classifier, gan and encoder of configs/demo.py:{args.variant} into {args.workdir}',
          flush=True)
    from stylex_jax import stages  # pylint: disable=g-import-not-at-top
    stages.run(config, args.workdir)
  root = args.files_dir or tempfile.mkdtemp(prefix='stylex_explain_load_')
  all_files = os.path.join(root, 'all')
  t0 = time.perf_counter()
  write_phantoms(all_files, sizes[-1], config.data.image_size)
  print(f'# {sizes[-1]} phantom PNGs in {all_files} ({time.perf_counter() - t0:.0f} s)', flush=True)
  print(f'# malloc arenas (launch/malloc_arenas.py): {_ARENAS}', flush=True)
  peaks = {}
  try:
    for n in [args.batch] + sizes:  # the first: a warm-up child that fills the compilation cache (not a figure)
      folder = os.path.join(root, f'n{n}')
      if not os.path.isdir(folder):
        os.makedirs(folder)
        for i in range(n):
          name = f'phantom_{i:05d}.png'
          os.link(os.path.join(all_files, name), os.path.join(folder, name))
      out = os.path.join(root, f'out{n}')
      shutil.rmtree(out, ignore_errors=True)
      cmd = [
          sys.executable,
          os.path.abspath(__file__), '--child', folder, '--output', out, '--workdir', args.workdir, '--batch',
          str(args.batch), '--jax-cache', args.jax_cache, '--variant', args.variant, '--invert-steps',
          str(args.invert_steps)
      ] + (['--data-dir', args.data_dir] if args.data_dir else [])
      proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
      if proc.returncode != 0:
        sys.exit(f'child for N={n} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
      result = json.loads(proc.stdout.split('RESULT ', 1)[1].splitlines()[0])
      rates = re.findall(r'images explained .*?, ([0-9.]+) img/s', proc.stdout)
      if n == args.batch and n not in sizes:
        print(
            f'# warm-up child (N={n}, fills the compilation cache): {result["wall_s"]:.0f} s, peak RSS '
            f'{result["peak_rss_mib"]:.0f} MiB', flush=True)
        continue
      print(f'images_per_s_{n} {float(rates[-1]):.2f} img/s', flush=True)
      print(f'wall_s_{n} {result["wall_s"]:.1f} s', flush=True)
      print(f'peak_rss_mib_{n} {result["peak_rss_mib"]:.1f} MiB', flush=True)
      print(f'ssim_{n} {result["ssim"]:.3f} (mean reconstruction SSIM, {config.invert.steps} projector steps)',
            flush=True)
      met = float(rates[-1]) >= 1.5 and result['ssim'] >= 0.85
      print(f'# goal >= 1.5 img/s at ssim >= 0.85 (N={n}): {"met" if met else "missed"}', flush=True)
      peaks[n] = result['peak_rss_mib']
      shutil.rmtree(out, ignore_errors=True)
  finally:
    if not args.files_dir:
      shutil.rmtree(root, ignore_errors=True)
  if len(peaks) > 1:
    ratio = peaks[sizes[-1]] / peaks[sizes[0]]
    print(f'rss_ratio {ratio:.3f} x (N={sizes[-1]} / N={sizes[0]}; goal <= 1.10: '
          f'{"met" if ratio <= 1.10 else "missed"})')
  print(f'# load average {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}')


if __name__ == '__main__':
  main()
