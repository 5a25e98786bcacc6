"""Projector schedules: reconstruction quality per step of `explain.invert.Inverter` on held-out images.

Each setting is `config.invert` with the steps, learning rate and schedule of one `--setting steps:lr:schedule`
(schedule 'constant' | 'cosine' | 'nvidia'); every setting starts from the same encoder output of the same
held-out validation images, so the lines differ only by the optimisation. Prints one line per setting: SSIM mean
and worst image, PSNR, MSE, agreement, mean |dp|, images/s (compilation excluded, its seconds printed).

  python benchmarks/projector_schedule.py --config configs/demo.py --workdir /tmp/stylex_demo \\
      --setting 200:0.1:constant --setting 200:0.1:nvidia --setting 100:0.3:cosine

Why it exists: the demo's explain stage spends most of its time in the projector, and the schedule decides how
many steps reach a given reconstruction (benchmarks/README.md, "Projector schedule").
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
flags.DEFINE_string('workdir', '/tmp/stylex_demo', 'workdir with classifier, gan and encoder checkpoints')
flags.DEFINE_integer('num_images', 16, 'held-out validation images')
flags.DEFINE_multi_string('setting', ['200:0.1:constant', '200:0.1:nvidia'], 'steps:lr:schedule, repeatable')
FLAGS = flags.FLAGS


def parse_setting(text: str) -> tuple[int, float, str]:
  """'steps:lr:schedule' -> (steps >= 1, lr > 0, schedule in invert.SCHEDULES); ValueError naming the fix."""
  parts = text.split(':')
  try:
    steps, lr, schedule = int(parts[0]), float(parts[1]), parts[2]
    if len(parts) != 3:
      raise IndexError
  except (IndexError, ValueError):
    raise ValueError(f'--setting {text!r}: write steps:lr:schedule, e.g. 100:0.3:cosine') from None
  if steps < 1 or not lr > 0 or schedule not in invert.SCHEDULES:
    raise ValueError(f'--setting {text!r}: steps must be >= 1, lr > 0 and the schedule one of {invert.SCHEDULES}')
  return steps, lr, schedule


def main(_):
  config = FLAGS.config
  settings = [parse_setting(s) for s in FLAGS.setting]  # all checked before any model is loaded
  images = encoder_stage.eval_images(config, FLAGS.num_images)
  print(f'load: {os.getloadavg()}; {len(images)} held-out images from {config.data.eval_split}', flush=True)
  for steps, lr, schedule in settings:
    ic = ml_collections.ConfigDict(config.invert.to_dict())
    ic.steps, ic.lr, ic.lr_schedule = steps, lr, schedule
    inv = encoder_stage.load_inverter(FLAGS.workdir, config, invert_config=ic)
    compile_s = inv.warmup()
    t0 = time.perf_counter()
    out = inv(images)
    dt = time.perf_counter() - t0
    print(
        f'{steps} steps lr {lr:g} {schedule}: ssim {np.mean(out["ssim"]):.4f} (worst {np.min(out["ssim"]):.4f}) '
        f'psnr {np.mean(out["psnr"]):.2f} dB mse {np.mean(out["mse"]):.5f} agreement {np.mean(out["agree"]):.3f} '
        f'mean|dp| {np.mean(out["prob_delta"]):.4f} | {len(images) / dt:.3f} images/s (compile {compile_s:.1f} s)',
        flush=True)


if __name__ == '__main__':
  app.run(main)
