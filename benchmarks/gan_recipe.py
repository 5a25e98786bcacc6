"""Learning curves of GAN recipes for the CPU demo: quality per CPU-minute (kimg, training seconds, joint-found
rate, joint-space-width Wasserstein, classifier-feature FID/KID).

Runs the real `gan` stage (`launch/train.py --config configs/demo.py --config.stages=gan`) with a recipe's
overrides in a fresh workdir next to a copy of an already trained demo classifier (its features give FID/KID),
evaluating every `--eval-kimg` thousand images on `--eval-images` G_ema samples (`stylex_jax.evaluate.realism`:
`data/measure.py` finds the joint space and measures its width), and stops the run with SIGTERM (the stage saves
and exits cleanly) after `--minutes` of wall time or at the recipe's own num_steps.

  python launch/train.py --config configs/demo.py --config.stages=classifier --workdir /tmp/cls
  python benchmarks/gan_recipe.py --recipe small_b4 --classifier /tmp/cls --workdir /tmp/recipe_b4 --minutes 8
  python benchmarks/gan_recipe.py --recipe small --classifier /tmp/cls --workdir /tmp/recipe_small \\
      --override=--config.gan.g_lr=0.005   # extra overrides after the recipe's

Output: one line per evaluation, `recipe kimg train_s joint_found_rate jsw_wasserstein fid kid`, where train_s
is the training time up to that point (sum over the log rows of images / images_per_sec, the first window, which
holds the compilation, at the median speed: compile and evaluation excluded); then `img_per_s` (median over the
log rows after the first), the recipe's flags and `wall_s`, the wall time of the whole run (everything included).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from configs import demo  # noqa: E402
from stylex_jax import writers  # noqa: E402

# Each recipe: configs/demo.py plus these overrides. All but `demo` start from the demo GAN the recipes were
# measured against (128 channels from 16², batch 16, path length on), so they reproduce the table in
# benchmarks/README.md whatever configs/demo.py uses now (its current GAN is `b4_noada`).
# Every recipe but `demo` was measured with ADA on (the demo's setting until 2026-12-01).
_ADA_ON = [f'--config.gan.{k}={v}' for k, v in demo.ADA_ON.items()]
_WIDE = [
    '--config.gan.generator.channel_base=2048',
    '--config.gan.generator.channel_max=128',
    '--config.gan.discriminator.channel_base=2048',
    '--config.gan.discriminator.channel_max=128',
    '--config.gan.batch_size=16',
    '--config.gan.ema_kimg=5',
] + _ADA_ON
_BASELINE = _WIDE + ['--config.gan.pl_weight=2']
_NO_PL = _WIDE + ['--config.gan.pl_weight=0']
_SMALL = [
    '--config.gan.generator.channel_base=1024', '--config.gan.generator.channel_max=64',
    '--config.gan.discriminator.channel_base=1024', '--config.gan.discriminator.channel_max=64'
]
RECIPES = {
    'demo': [],  # configs/demo.py as it is now
    'baseline':
        _BASELINE,  # the demo GAN before the recipes
    'nopl':
        _NO_PL,  # path-length regularisation off (NVIDIA's small-resolution configs)
    'small':
        _NO_PL + _SMALL,  # G and D at half the channels from 16² up (a quarter of the FLOPs there)
    'small_noada':
        _NO_PL + _SMALL + ['--config.gan.augment=none', '--config.gan.ada_target=0'],
    'small_b8':
        _NO_PL + _SMALL + ['--config.gan.batch_size=8', '--config.gan.ema_kimg=2.5'],
    'small_lr':
        _NO_PL + _SMALL + ['--config.gan.g_lr=0.005', '--config.gan.d_lr=0.005'],
    'small_b4':
        _NO_PL + _SMALL + ['--config.gan.batch_size=4', '--config.gan.ema_kimg=1.25'],
    'small_lr10':
        _NO_PL + _SMALL + ['--config.gan.g_lr=0.01', '--config.gan.d_lr=0.01'],
    'small_lr_b8':
        _NO_PL + _SMALL + [
            '--config.gan.g_lr=0.005', '--config.gan.d_lr=0.005', '--config.gan.batch_size=8',
            '--config.gan.ema_kimg=2.5'
        ],
    'small_lr_noada':
        _NO_PL + _SMALL + [
            '--config.gan.g_lr=0.005', '--config.gan.d_lr=0.005', '--config.gan.augment=none',
            '--config.gan.ada_target=0'
        ],
}
# The demo's recipe (small_b4) with one more change each: ADA off, R1 gamma x10 (auto: 0.0002 * 64^2 / 4 = 0.2),
# 8 mapping layers (StyleGAN2's; the demo has NVIDIA's small-config 2), no EMA ramp-up.
_B4 = RECIPES['small_b4']
RECIPES.update({
    'b4_noada': _B4 + ['--config.gan.augment=none', '--config.gan.ada_target=0'],
    'b4_r1x10': _B4 + ['--config.gan.r1_gamma=2.048'],
    'b4_map8': _B4 + ['--config.gan.generator.mapping_layers=8'],
    'b4_noramp': _B4 + ['--config.gan.ema_rampup=0'],
    # the demo as it is now (ADA off, = b4_noada) with R1 every 4 / 64 iterations instead of 16
    'demo_r1i4': ['--config.gan.r1_interval=4'],
    'demo_r1i64': ['--config.gan.r1_interval=64'],
    # 2026-12-01, issue 12's JSW gap (the samples' widths spread 0.86 px against the real 1.37: benchmarks/README.md,
    # "Why the demo's joint-space widths miss"): twice the channels at 32² and 64², a doubled / lower learning rate,
    # no style mixing
    'demo_cb2048': ['--config.gan.generator.channel_base=2048', '--config.gan.discriminator.channel_base=2048'],
    'demo_lr5': ['--config.gan.g_lr=0.005', '--config.gan.d_lr=0.005'],
    'demo_lr15': ['--config.gan.g_lr=0.0015', '--config.gan.d_lr=0.0015'],
    'demo_mix0': ['--config.gan.style_mixing_prob=0'],
    # a 10x stronger R1 widened the gap (b4_r1x10: 0.89 px): a weaker one, a quarter and half of the auto 0.2048
    'demo_r1q': ['--config.gan.r1_gamma=0.0512'],
    'demo_r1h': ['--config.gan.r1_gamma=0.1024'],
})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--recipe', choices=sorted(RECIPES), required=True)
  parser.add_argument('--classifier', required=True, help='a trained demo classifier stage folder (W/classifier)')
  parser.add_argument('--workdir', required=True, help='a fresh folder (refused if it holds a gan/ already)')
  parser.add_argument('--minutes', type=float, default=8.0, help='wall-time budget, compile included')
  parser.add_argument('--kimg', type=float, default=64.0, help='stop at this many thousand images at the latest')
  parser.add_argument('--eval-kimg', type=float, default=1.6, help='evaluate every this many thousand images')
  parser.add_argument('--eval-images', type=int, default=256)
  parser.add_argument('--override', action='append', default=[], help='extra --config.* flags, after the recipe')
  parser.add_argument('--summarize', action='store_true', help='only print the curves of a finished --workdir')
  args = parser.parse_args()
  flags = RECIPES[args.recipe] + args.override
  batch = demo.get_config().gan.batch_size  # a recipe's own batch_size flag (the last one) wins
  for flag in flags:
    if flag.startswith('--config.gan.batch_size='):
      batch = int(flag.split('=', 1)[1])
  if args.summarize:
    _summarize(args.recipe, args.workdir, batch, flags)
    return

  if not os.path.isdir(os.path.join(args.classifier, 'checkpoints')):
    sys.exit(f'--classifier {args.classifier} has no checkpoints/: train one with '
             '`python launch/train.py --config configs/demo.py --config.stages=classifier --workdir W`')
  if os.path.exists(os.path.join(args.workdir, 'gan')):
    sys.exit(f'--workdir {args.workdir} already holds a gan/ run: give a fresh folder')
  os.makedirs(args.workdir, exist_ok=True)
  if not os.path.exists(os.path.join(args.workdir, 'classifier')):
    shutil.copytree(args.classifier, os.path.join(args.workdir, 'classifier'))

  every = max(1, round(args.eval_kimg * 1000 / batch))
  num_steps = every * max(1, round(args.kimg * 1000 / batch / every))
  cmd = [
      sys.executable,
      os.path.join(_ROOT, 'launch', 'train.py'), '--config',
      os.path.join(_ROOT, 'configs', 'demo.py'), f'--workdir={args.workdir}', '--config.stages=gan',
      f'--config.gan.num_steps={num_steps}', f'--config.gan.eval_every={every}',
      f'--config.gan.eval_images={args.eval_images}', f'--config.gan.checkpoint_every={num_steps}',
      f'--config.gan.sample_every={every}', f'--config.gan.log_every={max(1, every // 5)}'
  ] + flags
  start = time.perf_counter()
  log = open(os.path.join(args.workdir, 'gan_recipe.log'), 'w')
  proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
  try:
    proc.wait(timeout=args.minutes * 60)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)  # the stage finishes its iteration, saves and exits
    proc.wait()
  wall_total = time.perf_counter() - start
  log.close()
  _summarize(args.recipe, args.workdir, batch, flags)
  print(f'{args.recipe} wall_s {wall_total:.0f} (exit {proc.returncode})')


def _fmt(value, spec: str) -> str:
  return 'none' if value is None else format(value, spec)


def _summarize(recipe: str, workdir: str, batch: int, flags: list[str]) -> None:
  """Prints the curves of `workdir`'s gan/metrics.jsonl (see the module docstring)."""
  path = os.path.join(workdir, 'gan', 'metrics.jsonl')
  rows = writers.read_metrics(path) if os.path.exists(path) else []
  if not rows:
    sys.exit(f'no metrics were written; see {os.path.join(workdir, "gan_recipe.log")}')
  logs = [row for row in rows if 'images_per_sec' in row]
  speeds = sorted(row['images_per_sec'] for row in logs[1:]) or [logs[0]['images_per_sec']]
  median = speeds[len(speeds) // 2]
  train_s, last_log_step = 0.0, 0
  for row in rows:
    if 'images_per_sec' in row:  # the first window holds the compilation: counted at the median speed
      speed = row['images_per_sec'] if last_log_step else median
      train_s += (row['step'] - last_log_step) * batch / speed
      last_log_step = row['step']
    if 'joint_found_rate' in row:
      print(f'{recipe} kimg={row["step"] * batch / 1000:.1f} train_s={train_s:.0f} '
            f'joint_found_rate={_fmt(row["joint_found_rate"], ".3f")} '
            f'jsw_wasserstein={_fmt(row["jsw_wasserstein"], ".2f")} fid={_fmt(row["fid_classifier"], ".2f")} '
            f'kid={_fmt(row["kid_classifier"], ".4f")}')
  print(f'{recipe} img_per_s {median:.1f}')
  print(f'{recipe} flags ' + ' '.join(flags))


if __name__ == '__main__':
  main()
