"""Benchmark of inversion on held-out validation images of a trained workdir: images/s and reconstruction
quality of encoder-only, encoder + refinement (config.invert) and NVIDIA's projector recipe (1000 Adam steps
from w_avg in W with noise maps, `explain.invert.nvidia_recipe`, our losses instead of LPIPS).

Usage (after the classifier, gan and encoder stages of the demo):
  python benchmarks/invert.py --config configs/demo.py --workdir /tmp/stylex_demo

Prints one line per figure. Throughput excludes compilation (each inverter is warmed up first; the compile
seconds are printed). The recipe runs on the first --recipe_images images with --recipe_batch images per chunk.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from stylex_jax.explain import invert  # noqa: E402
from stylex_jax.stages import encoder as encoder_stage  # noqa: E402

config_flags.DEFINE_config_file('config', 'configs/demo.py', 'experiment config')
flags.DEFINE_string('workdir', '/tmp/stylex_demo', 'workdir with classifier, gan (and encoder) checkpoints')
flags.DEFINE_integer('num_images', 64, 'held-out validation images for encoder-only and encoder + refinement')
flags.DEFINE_integer('recipe_images', 4, 'images for the NVIDIA recipe (1000 steps each)')
flags.DEFINE_integer('recipe_batch', 4, 'images per chunk for the NVIDIA recipe')
flags.DEFINE_integer('recipe_steps', 1000, 'steps of the NVIDIA recipe')
flags.DEFINE_integer('short_steps', 20, 'refinement steps of a short run, to compare with the recipe at its SSIM')
# the short run's own schedule (the config's suits its own number of steps; 20 steps from a half-cosine at lr 0.3
# reach SSIM 0.63 where a constant 0.1 reaches 0.80: benchmarks/README.md, "Projector schedule")
flags.DEFINE_float('short_lr', 0.1, 'learning rate of the short run')
flags.DEFINE_enum('short_schedule', 'constant', invert.SCHEDULES, 'learning-rate schedule of the short run')
FLAGS = flags.FLAGS


def time_inversion(name, config, workdir, ic, images):
  """Inverts images with an Inverter of `workdir` set to `ic` (compiled first, not timed); prints one line and
  returns (images/s, `invert.summarize` of the result)."""
  inv = encoder_stage.load_inverter(workdir, config, invert_config=ic)
  compile_s = inv.warmup()
  t0 = time.perf_counter()
  out = inv(images)
  dt = time.perf_counter() - t0
  s = invert.summarize(out)
  print(
      f'{name}: {len(images) / dt:.3f} images/s ({dt / len(images):.3f} s/image, {ic.steps} steps at lr {ic.lr:g} '
      f'{ic.lr_schedule}, chunks of {ic.batch_size}, start {inv.start}, compile {compile_s:.1f} s) | ssim '
      f'{s["ssim"]:.4f} (worst image {np.min(out["ssim"]):.4f}) psnr {s["psnr"]:.2f} dB mse {s["mse"]:.5f} '
      f'agreement {s["agreement"]:.3f} mean|dp| {s["prob_delta"]:.4f} ||w-w_avg|| {s["w_distance"]:.2f} on '
      f'{s["num_images"]} held-out images', flush=True)
  return len(images) / dt, s


def main(_):
  config = FLAGS.config
  images = encoder_stage.eval_images(config, FLAGS.num_images)
  print(f'uptime/load: {os.getloadavg()}; {len(images)} held-out images from {config.data.eval_split}')
  enc_only = ml_collections.ConfigDict(config.invert.to_dict())
  enc_only.steps = 0
  r_enc, s_enc = time_inversion('encoder only', config, FLAGS.workdir, enc_only, images)
  r_ref, s_ref = time_inversion('encoder + refine', config, FLAGS.workdir, config.invert, images)
  recipe = invert.nvidia_recipe(config.invert, steps=FLAGS.recipe_steps)
  recipe.batch_size = FLAGS.recipe_batch
  r_nv, s_nv = time_inversion(f'NVIDIA recipe ({FLAGS.recipe_steps} steps from w_avg)', config, FLAGS.workdir, recipe,
                              images[:FLAGS.recipe_images])
  short = ml_collections.ConfigDict(config.invert.to_dict())
  short.steps, short.lr, short.lr_schedule = FLAGS.short_steps, FLAGS.short_lr, FLAGS.short_schedule
  r_short, s_short = time_inversion(f'encoder + refine ({FLAGS.short_steps} steps)', config, FLAGS.workdir, short,
                                    images)
  print(f'speed-up of encoder + {FLAGS.short_steps} steps over the NVIDIA recipe: {r_short / r_nv:.1f}x per image '
        f'(ssim {s_short["ssim"]:.3f} vs {s_nv["ssim"]:.3f})')
  print(f'speed-up of encoder + refine over the NVIDIA recipe: {r_ref / r_nv:.1f}x per image '
        f'(ssim {s_ref["ssim"]:.3f} vs {s_nv["ssim"]:.3f}; recipe measured on {FLAGS.recipe_images} images in '
        f'chunks of {FLAGS.recipe_batch}); load after: {os.getloadavg()}')
  status = lambda ok: 'met' if ok else 'missed'
  print(f'goal encoder alone ssim >= 0.7: {s_enc["ssim"]:.3f} {status(s_enc["ssim"] >= 0.7)}')
  print(f'goal encoder alone agreement >= 0.95: {s_enc["agreement"]:.3f} {status(s_enc["agreement"] >= 0.95)}')
  print(f'goal encoder + <= 20 steps ssim >= 0.85: {s_short["ssim"]:.3f} with {FLAGS.short_steps} steps '
        f'{status(s_short["ssim"] >= 0.85 and FLAGS.short_steps <= 20)}')
  fast = [(r / r_nv, s['ssim']) for r, s in ((r_short, s_short), (r_ref, s_ref)) if s['ssim'] >= s_nv['ssim']]
  best = max(fast, default=(0.0, 0.0))
  print(f'goal >= 20x the NVIDIA recipe at equal or better ssim: {best[0]:.1f}x (ssim {best[1]:.3f} vs '
        f'{s_nv["ssim"]:.3f}) {status(best[0] >= 20)}')


if __name__ == '__main__':
  app.run(main)
