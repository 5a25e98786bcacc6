"""Benchmark of the explainer's batch path: explanations/s batched vs a per-image Python loop, latency, compile time.

One explanation = `SeriesRenderer.auto_alphas` (the target on a grid of `--grid` shifts and `--refine`
regula-falsi steps, then the per-image range across the decision boundary) + a series of `--frames` images with
the classifier's probabilities (`SeriesRenderer.__call__`) + GradCAM of the original (alpha = 0 frame,
`explain/gradcam.gradcam`, jitted), along ONE global direction computed once beforehand
(`direction.GradientDirection`, gradient mode in W, timed separately). It goes through the real code only: the
trained demo artefacts (`configs/demo.py`, loaded with `stages.gan.load_generator` and `stages.classifier.load_classifier`) and
the explain modules; nothing is re-implemented here.
Latents come from the mapping network of random z: the inverter is not used (real images are not inverted here).

On a 2-core CPU the generator and classifier are compute-bound already at a handful of frames per call, so batching
gains little (measured 1.6x over the batch-1 loop, 2.5x over a per-frame loop, far from 10x); what matters there
is a small chunk (8): larger chunks are slower per frame. The batch path is written for accelerators, where one
call of batch x frames images is what keeps the device busy.

Usage:
  python benchmarks/explain.py --workdir /tmp/stylex_demo    # batch 256, chunk 8 on CPU, loop over 16 images
  # speed only, any config, no trained workdir (e.g. 256² on an accelerator): randomly initialised G and classifier
  python benchmarks/explain.py --config configs/kl_xray.py --random-init

Output: one figure per line, `name value unit`; lines starting with '#' are notes.
  direction_run_s         fit of the global direction, --direction-latents latents, --steps Adam steps (2nd call)
  direction_compile_s     first call minus second (trace + XLA compile of the whole optimiser)
  batched_compile_s       first batched call minus a steady batched call (tracing + XLA compile of the chunk
                          programs: grid/series renders and GradCAM)
  batched_expl_per_s      explanations/s for a batch of --batch, chunked by --chunk (steady state, best of --repeats)
  loop_expl_per_s         explanations/s of a Python loop over images calling the same functions at batch 1
                          (each render one unpadded chunk of that image's frames; measured on --loop-images
                          images after a warm-up; the rate is scaled, not re-run)
  speedup                 batched_expl_per_s / loop_expl_per_s
  frame_loop_expl_per_s   a naive loop: one image at a time and one frame per jitted call (renderer chunk 1)
  speedup_vs_frame_loop   batched_expl_per_s / frame_loop_expl_per_s
  latency_ms              one explanation at batch 1 after compile (median over the loop images)
  single_compile_s        first batch-1 call minus the median steady batch-1 call
"""
from __future__ import annotations

import argparse
import os
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import demo  # noqa: E402
from stylex_jax.explain import direction as direction_lib  # noqa: E402
from stylex_jax.explain import gradcam as gradcam_lib  # noqa: E402
from stylex_jax.explain import series as series_lib  # noqa: E402
from stylex_jax.stages import classifier as classifier_stage  # noqa: E402
from stylex_jax.stages import gan as gan_stage  # noqa: E402
from stylex_jax.train import gan as gan_train  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', default='/tmp/stylex_demo', help='workdir with classifier/ and gan/ of configs/demo.py')
  p.add_argument('--variant', default='', help="configs/demo.py variant ('' = the default demo)")
  p.add_argument('--config', default=None,
                 help="another config file, e.g. configs/kl_xray.py[:variant] (default: configs/demo.py:--variant)")
  p.add_argument(
      '--random-init', action='store_true',
      help='randomly initialised G and classifier of the config instead of --workdir\'s checkpoints: '
      'speed only (the direction and series are meaningless), for configs nobody trained here')
  p.add_argument('--batch', type=int, default=256, help='images explained in one batched call')
  p.add_argument(
      '--chunk', type=int, default=None,
      help='SeriesRenderer chunk size of the batched path (frames per jitted call); default 8 on CPU '
      '(measured fastest per frame there: 6.0 ms at 8, 6.5 at 32, 10.2 at 128), 64 elsewhere')
  p.add_argument('--frames', type=int, default=9, help='series length S')
  p.add_argument('--grid', type=int, default=9, help='auto_alphas grid points')
  p.add_argument('--refine', type=int, default=2, help='auto_alphas regula-falsi refinement steps')
  p.add_argument('--max-shift', type=float, default=2.0, help='max |alpha| as a multiple of the latent scale')
  p.add_argument('--loop-images', type=int, default=16, help='images timed in the per-image loop')
  p.add_argument('--frame-loop-images', type=int, default=4,
                 help='images timed in the per-frame loop (chunk 1: one G + classifier call per frame)')
  p.add_argument('--direction-latents', type=int, default=32)
  p.add_argument('--steps', type=int, default=20, help='Adam steps of the global direction')
  p.add_argument('--layer', default='stage4', help='GradCAM layer')
  p.add_argument('--repeats', type=int, default=2, help='steady batched calls (best is reported)')
  a = p.parse_args(argv)
  for name in ('batch', 'frames', 'grid', 'loop_images', 'frame_loop_images', 'direction_latents', 'steps', 'repeats'):
    if getattr(a, name) < 1:
      p.error(f'--{name.replace("_", "-")}={getattr(a, name)} must be >= 1')
  if a.chunk is not None and a.chunk < 1:
    p.error(f'--chunk={a.chunk} must be >= 1')
  return a


class Explainer:
  """auto_alphas + series + GradCAM for a batch of latents along one global direction (the timed unit)."""

  def __init__(self, synthesize, classify, model, variables, target, direction, *, chunk, frames, grid, refine,
               max_alpha, layer):
    self.renderer = series_lib.SeriesRenderer(synthesize, classify, chunk_size=chunk, num_classes=target.num_classes)
    self.model, self.variables, self.target, self.direction = model, variables, target, direction
    self.chunk, self.frames, self.grid, self.max_alpha, self.layer = chunk, frames, grid, max_alpha, layer
    self.refine = refine
    self._gradcam = jax.jit(gradcam_lib.gradcam, static_argnums=(0,), static_argnames=('layer',))

  def gradcam(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """GradCAM [B, H, W] in chunks of the renderer's chunk size (last chunk padded: one compiled shape)."""
    n = images.shape[0]
    c = min(self.chunk, n)
    out = []
    for i in range(0, n, c):
      x, t = images[i:i + c], classes[i:i + c]
      m = x.shape[0]
      if m < c:
        x = np.concatenate([x, np.repeat(x[:1], c - m, 0)])
        t = np.concatenate([t, np.repeat(t[:1], c - m, 0)])
      out.append(np.asarray(self._gradcam(self.model, self.variables, x, t, layer=self.layer))[:m])
    return np.concatenate(out)

  def __call__(self, ws: np.ndarray):
    auto = self.renderer.auto_alphas(ws, self.direction, self.target, num_frames=self.frames, max_alpha=self.max_alpha,
                                     grid_points=self.grid, refine_steps=self.refine)
    images, probs = self.renderer(ws, self.direction, auto.alphas)
    zero = np.argmax(auto.alphas == 0, axis=1)  # alpha = 0 is in every row
    rows = np.arange(len(ws))
    originals = images[rows, zero]
    # the class the series moves towards: the argmax of the last frame on the far side of alpha = 0
    far = np.where(auto.alphas[:, -1] > 0, auto.alphas.shape[1] - 1, 0)
    towards = np.argmax(probs[rows, far], axis=-1).astype(np.int32)
    cams = self.gradcam(originals, towards)
    return auto, images, probs, cams


def _config(a: argparse.Namespace):
  """configs/demo.py:--variant, or the `get_config(variant)` of --config 'configs/<name>.py[:variant]'."""
  if a.config is None:
    return demo.get_config(a.variant)
  path, _, variant = a.config.partition(':')
  name = os.path.splitext(os.path.basename(path))[0]
  if os.path.dirname(os.path.abspath(path)) != os.path.join(_ROOT, 'configs') or not os.path.exists(path):
    raise SystemExit(f'error: --config {a.config!r}: give a file of configs/, e.g. configs/kl_xray.py:binary')
  import importlib
  return importlib.import_module(f'configs.{name}').get_config(variant)


def _random_models(config):
  """(G, G params, G stats, classifier, classifier variables) freshly initialised for `config` (speed only): w_avg
  is the mean of 512 mapped latents, as training would track it."""
  g = gan_train.build_generator(config)
  g_vars = jax.jit(lambda k: g.init({'params': k, 'noise': k}, jnp.zeros((1, g.z_dim), jnp.float32)))(jax.random.key(0))
  ws = jax.jit(lambda z: g.apply(g_vars, z, method='mapping'))(jax.random.normal(jax.random.key(1), (512, g.z_dim)))
  g_stats = {'mapping_network': {'w_avg': jnp.mean(ws[:, 0], axis=0)}}
  model = classifier_stage.build_model(config)
  shape = (1, config.data.image_size, config.data.image_size, config.data.channels)
  variables = jax.jit(lambda k: model.init(k, jnp.zeros(shape, jnp.float32), train=False))(jax.random.key(2))
  return g, g_vars['params'], g_stats, model, variables


def main(argv=None) -> None:
  a = parse_args(argv)
  if a.chunk is None:
    a.chunk = 8 if jax.default_backend() == 'cpu' else 64
  config = _config(a)
  print(f'# backend={jax.default_backend()} devices={jax.device_count()} '
        f'load={os.getloadavg()[0]:.2f},{os.getloadavg()[1]:.2f},{os.getloadavg()[2]:.2f} (1/5/15 min) '
        f'cpus={os.cpu_count()}')
  if a.random_init:
    g, g_ema, g_stats, model, variables = _random_models(config)
  else:
    g, g_ema, g_stats = gan_stage.load_generator(a.workdir, config)
    model, variables = classifier_stage.load_classifier(a.workdir, config)

  def synthesize(ws):
    return jnp.clip(g.apply({'params': g_ema}, ws, method='synthesis', noise_mode='const'), -1.0, 1.0)

  def classify(images):
    return model.apply(variables, images, train=False)

  mapping = jax.jit(lambda z: g.apply({'params': g_ema, 'stats': g_stats}, z, method='mapping'))
  z = jax.random.normal(jax.random.key(0), (a.batch + a.direction_latents, g.z_dim), jnp.float32)
  ws_all = np.asarray(mapping(z))
  ws_fit, ws = ws_all[:a.direction_latents], ws_all[a.direction_latents:]
  w_avg = np.asarray(g_stats['mapping_network']['w_avg'])
  scale = direction_lib.latent_scale(ws_fit, w_avg)
  target = direction_lib.make_target('auto', config.data.num_classes)
  print(f'# G {g.resolution}x{g.resolution}x{g.channels} num_ws={g.num_ws} w_dim={g.w_dim}; latents from the mapping '
        f'network of random z (the inverter is not used); latent scale {scale:.3f}; one explanation = auto_alphas '
        f'({a.grid} grid shifts + {a.refine} refinements) + {a.frames} frames + probabilities + GradCAM '
        f'({a.layer}) of the alpha=0 frame')

  t0 = time.perf_counter()
  fitter = direction_lib.GradientDirection(synthesize, classify, target, space='w', steps=a.steps,
                                           step_size=0.5 * scale, learning_rate=0.1)
  fit = jax.block_until_ready(fitter(ws_fit, key=jax.random.key(1)))
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  fit = jax.block_until_ready(fitter(ws_fit, key=jax.random.key(1)))
  run = time.perf_counter() - t0
  direction = np.asarray(fit.direction)
  print(f'direction_run_s {run:.2f} s  # gradient mode, W, {a.direction_latents} latents, {a.steps} Adam steps, '
        f'gain {float(fit.initial_gain):.3f} -> {float(fit.gain):.3f} (log-odds at 0.5 x scale)')
  print(f'direction_compile_s {first - run:.2f} s  # first call minus second (traced {fitter.trace_count}x)')

  explain = Explainer(synthesize, classify, model, variables, target, direction, chunk=a.chunk, frames=a.frames,
                      grid=a.grid, refine=a.refine, max_alpha=a.max_shift * scale, layer=a.layer)

  # batched: first call compiles; then steady calls on the same shape
  t0 = time.perf_counter()
  auto, images, probs, cams = explain(ws)
  first = time.perf_counter() - t0
  steady = []
  for _ in range(a.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(explain(ws))
    steady.append(time.perf_counter() - t0)
  best = min(steady)
  traces = explain.renderer.trace_count
  print(f'batched_compile_s {first - best:.2f} s  # renderer traced {traces}x over {1 + a.repeats} calls')
  batched_rate = a.batch / best
  print(f'batched_expl_per_s {batched_rate:.2f} expl/s  # batch {a.batch}, chunk {a.chunk}, best of {a.repeats}: '
        f'{best:.2f} s; crossed {auto.crossed.mean():.2f}')

  # per-image Python loop at batch 1 over the same functions (warm-up call first, so compile is excluded)
  loop_chunk = max(a.grid | 1, a.frames)  # one unpadded chunk per render call at batch 1
  single = Explainer(synthesize, classify, model, variables, target, direction, chunk=loop_chunk, frames=a.frames,
                     grid=a.grid, refine=a.refine, max_alpha=a.max_shift * scale, layer=a.layer)
  t0 = time.perf_counter()
  jax.block_until_ready(single(ws[:1]))
  single_first = time.perf_counter() - t0
  times = []
  for i in range(a.loop_images):
    t0 = time.perf_counter()
    jax.block_until_ready(single(ws[i:i + 1]))
    times.append(time.perf_counter() - t0)
  loop_rate = a.loop_images / sum(times)
  print(f'loop_expl_per_s {loop_rate:.2f} expl/s  # batch-1 loop over {a.loop_images} images ({sum(times):.2f} s), '
        f'rate scaled to {a.batch}: {a.batch / loop_rate:.1f} s')
  print(f'speedup {batched_rate / loop_rate:.1f} x  # batched / per-image loop')
  print(f'latency_ms {1000 * np.median(times):.1f} ms  # one explanation, batch 1, after compile (median)')
  print(f'single_compile_s {single_first - np.median(times):.2f} s')

  # naive loop: one image at a time AND one frame per call (SeriesRenderer with chunk_size=1)
  naive = Explainer(synthesize, classify, model, variables, target, direction, chunk=1, frames=a.frames, grid=a.grid,
                    refine=a.refine, max_alpha=a.max_shift * scale, layer=a.layer)
  jax.block_until_ready(naive(ws[:1]))
  t0 = time.perf_counter()
  for i in range(a.frame_loop_images):
    jax.block_until_ready(naive(ws[i:i + 1]))
  frame_rate = a.frame_loop_images / (time.perf_counter() - t0)
  print(f'frame_loop_expl_per_s {frame_rate:.2f} expl/s  # per image and per frame (chunk 1, '
        f'{a.grid + a.refine + a.frames} G+classifier calls per explanation), {a.frame_loop_images} images, scaled')
  print(f'speedup_vs_frame_loop {batched_rate / frame_rate:.1f} x')
  print(f'# load after: {os.getloadavg()[0]:.2f} (1 min)')


if __name__ == '__main__':
  main()
