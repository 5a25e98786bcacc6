"""Benchmark of `explain.export.ExplanationWriter`: host time per exported image and output sizes.

Exports knee phantoms (`data.phantoms.knee_radiograph`, the demo's 64x64 grey images) with a synthetic
series (a blend from the KL0 to the KL4 render of the same seed, S frames), a GradCAM blob and logistic
probabilities, i.e. realistic PNG sizes without running any model. Imports no TensorFlow.

Usage:
  python benchmarks/export_speed.py --images 16 --res 64 --series 9 --batch 8

Output: one figure per line, `name value unit`.
  ms_per_image      add() + close() wall time / images (TFRecord, strip, GIF, report row)
  close_s           close(): shard renames, schema.json, report.html stitching, swap-in
  report_kib        report.html size;  report_kib_per_image: / images
  tfrecord_kib_per_image, strip_kib_per_image, gif_kib_per_image
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from stylex_jax.data import phantoms
from stylex_jax.explain import export


def make_batch(start: int, n: int, res: int, s: int, num_ws: int, w_dim: int) -> dict:
  rng = np.random.default_rng(start)
  t = np.linspace(0.0, 1.0, s, dtype=np.float32)
  alphas = np.linspace(-2.0, 2.0, s, dtype=np.float32)
  images, series = [], []
  for seed in range(start, start + n):
    lo = phantoms.knee_radiograph(seed, res, grade=0)[0].astype(np.float32) / 127.5 - 1
    hi = phantoms.knee_radiograph(seed, res, grade=4)[0].astype(np.float32) / 127.5 - 1
    images.append(lo * 0.5 + hi * 0.5)
    series.append((1 - t[:, None, None, None]) * lo[None] + t[:, None, None, None] * hi[None])
  images, series = np.stack(images), np.stack(series)
  p1 = 1 / (1 + np.exp(-(1.5 * alphas[None] + rng.normal(size=(n, 1)))))
  probs = np.stack([1 - p1, p1], -1).astype(np.float32)
  yy, xx = np.mgrid[:res, :res] / res
  cam = np.exp(-((yy - 0.5)**2 + (xx - 0.4)**2) / 0.02).astype(np.float32)
  return {
      'id': np.array([f'knee_{i:05d}.png' for i in range(start, start + n)]),
      'image': images,
      'reconstruction': np.clip(images + rng.normal(0, 0.02, images.shape), -1, 1).astype(np.float32),
      'series': series.astype(np.float32),
      'alphas': np.tile(alphas, (n, 1)),
      'probs': probs,
      'original_probs': probs[:, s // 2],
      'reconstruction_probs': probs[:, s // 2],
      'latent': rng.normal(size=(n, num_ws, w_dim)).astype(np.float32),
      'gradcam': np.repeat(cam[None], n, 0),
      'label': rng.integers(0, 2, n),
      'metrics': {
          'ssim': rng.uniform(0.7, 0.95, n),
          'crossed': (p1[:, -1] > 0.5).astype(np.float64)
      }
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=16)
  parser.add_argument('--res', type=int, default=64)
  parser.add_argument('--series', type=int, default=9)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--num-ws', type=int, default=10)
  parser.add_argument('--w-dim', type=int, default=256)
  args = parser.parse_args()
  batches = [
      make_batch(i, min(args.batch, args.images - i), args.res, args.series, args.num_ws, args.w_dim)
      for i in range(0, args.images, args.batch)
  ]
  directory = tempfile.mkdtemp(prefix='export_bench_')
  try:
    start = time.perf_counter()
    writer = export.ExplanationWriter(directory, num_classes=2, class_names=['KL0-1', 'KL2-4'],
                                      image_shape=(args.res, args.res, 1), num_ws=args.num_ws, w_dim=args.w_dim,
                                      config={}, target_description='benchmark')
    for b in batches:
      writer.add(b)
    t_close = time.perf_counter()
    paths = writer.close({'flip_rate': 1.0})
    end = time.perf_counter()
    n = args.images
    size = lambda p: os.path.getsize(p) / 1024
    folder = lambda d: sum(size(os.path.join(d, f)) for f in os.listdir(d))
    print(f'# {n} images, {args.res}x{args.res}x1, S={args.series}, latent [{args.num_ws}, {args.w_dim}]')
    print(f'ms_per_image {1000 * (end - start) / n:.1f} ms')
    print(f'close_s {end - t_close:.3f} s')
    print(f'report_kib {size(paths["report"]):.0f} KiB')
    print(f'report_kib_per_image {size(paths["report"]) / n:.1f} KiB')
    print(f'tfrecord_kib_per_image {sum(size(p) for p in paths["tfrecords"]) / n:.1f} KiB')
    print(f'strip_kib_per_image {folder(paths["strips"]) / n:.1f} KiB')
    print(f'gif_kib_per_image {folder(paths["gifs"]) / n:.1f} KiB')
  finally:
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == '__main__':
  main()
