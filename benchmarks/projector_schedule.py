"""Projector schedules: reconstruction quality per step of `explain.invert.Inverter` on held-out images.

Each setting is `config.invert` with the steps, learning rate and schedule of one `--setting steps:lr:schedule`
(schedule 'constant' | 'cosine' | 'nvidia'); every setting starts from the same encoder output of the same
held-out validation images (`--num_images`, default 16), so the lines differ only by the optimisation. Prints one
line per setting (`benchmarks/invert.py`'s `time_inversion`): images/s (compilation excluded, its seconds printed),
SSIM mean and worst image, PSNR, MSE, agreement, mean |dp|.

  python benchmarks/projector_schedule.py --config configs/demo.py --workdir /tmp/stylex_demo \\
      --setting 200:0.1:constant --setting 200:0.1:nvidia --setting 100:0.3:cosine

Why it exists: the demo's explain stage spends most of its time in the projector, and the schedule decides how
many steps reach a given reconstruction (benchmarks/README.md, "Projector schedule").
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
import ml_collections  # noqa: E402

from benchmarks import invert as invert_benchmark  # noqa: E402  (its --config, --workdir, --num_images, timing)
from stylex_jax.explain import invert  # noqa: E402
from stylex_jax.stages import encoder as encoder_stage  # noqa: E402

flags.FLAGS.set_default('num_images', 16)
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
    invert_benchmark.time_inversion(f'{steps}:{lr:g}:{schedule}', config, FLAGS.workdir, ic, images)


if __name__ == '__main__':
  app.run(main)
