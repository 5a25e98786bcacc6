"""Images from a trained generator: one PNG per seed (with truncation) and an optional style-mixing grid.

  python launch/generate.py --config configs/demo.py --workdir /tmp/stylex_demo --seeds 0-15 --truncation 0.7
  python launch/generate.py --config configs/demo.py --workdir /tmp/stylex_demo --seeds 0-3 \
      --mix_rows 0-3 --mix_cols 10-14 --mix_layers 0-3

Reads G_ema from <workdir>/gan/checkpoints; writes <workdir>/generate/seed<NNNN>.png, seeds.png (a grid) and
style_mixing.png. Seeds and layer lists accept '0-7', '1,5,9' or a mix ('0-3,10').
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `configs`

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import config_flag, outcome  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'The config the GAN was trained with.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir holding gan/checkpoints.')
_OUTDIR = flags.DEFINE_string('outdir', None, 'Where to write PNGs (default <workdir>/generate).')
_SEEDS = flags.DEFINE_string('seeds', '0-15', 'Seeds of the images to generate.')
_PSI = flags.DEFINE_float('truncation', 1.0, 'Truncation psi toward w_avg (1 = none, 0.7 typical).')
_CUTOFF = flags.DEFINE_integer('truncation_cutoff', None, 'Truncate only the first N W+ layers.')
_ROWS = flags.DEFINE_string('mix_rows', '', 'Style mixing: row seeds (the image whose other styles are kept).')
_COLS = flags.DEFINE_string('mix_cols', '', 'Style mixing: column seeds (the styles taken).')
_LAYERS = flags.DEFINE_string('mix_layers', '0-3', 'Style mixing: W+ layers taken from the column seed.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_ranges(text: str) -> list[int]:
  """'0-3,10' -> [0, 1, 2, 3, 10]."""
  out = []
  for part in filter(None, (p.strip() for p in text.split(','))):
    lo, _, hi = part.partition('-')
    try:
      out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
      raise ValueError(f'cannot read {text!r}: use numbers and ranges like 0-7,10') from None
  return out


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from stylex_jax import storage, writers
  from stylex_jax.stages import gan
  with outcome.one_line():
    seeds = parse_ranges(_SEEDS.value)
    rows, cols, layers = parse_ranges(_ROWS.value), parse_ranges(_COLS.value), parse_ranges(_LAYERS.value)
    if bool(rows) != bool(cols):
      raise ValueError('style mixing needs both --mix_rows and --mix_cols')
    outdir = _OUTDIR.value or os.path.join(_WORKDIR.value, 'generate')
    storage.makedirs(outdir)  # local or gs://
    generator, g_ema, g_stats = gan.load_generator(_WORKDIR.value, _CONFIG.value)
  images = gan.images_from_seeds(generator, g_ema, g_stats, seeds, _PSI.value, _CUTOFF.value)
  for seed, image in zip(seeds, writers.to_uint8(images)):
    writers.save_png(os.path.join(outdir, f'seed{seed:04d}.png'), image)
  writers.save_png(os.path.join(outdir, 'seeds.png'), writers.image_grid(images))
  print(f'{len(seeds)} images (truncation {_PSI.value}) in {outdir}')
  if rows:
    grid = gan.style_mixing_grid(generator, g_ema, g_stats, rows, cols, layers, _PSI.value)
    flat = grid.reshape(-1, *grid.shape[2:])
    writers.save_png(os.path.join(outdir, 'style_mixing.png'), writers.image_grid(flat, cols=grid.shape[1]))
    print(f'style-mixing grid {len(rows)}x{len(cols)} (layers {layers}) in {outdir}/style_mixing.png')


if __name__ == '__main__':
  app.run(main, flags_parser=config_flag.parse_flags)
