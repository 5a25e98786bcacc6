"""Explains images with the classifier, GAN and encoder trained in --workdir, and exports the report.

  python launch/explain.py --config configs/demo.py --workdir /tmp/stylex_demo
  python launch/explain.py --config configs/demo.py --workdir /tmp/stylex_demo --split validation --num_images 32
  python launch/explain.py --config configs/demo.py --workdir /tmp/stylex_demo --images 'scans/*.png' \\
      --output_dir /tmp/my_explanations
  python launch/explain.py --config configs/demo.py --workdir /tmp/stylex_demo --config.explain.mode=blackbox

Writes <output_dir> (default <workdir>/explain/): report.html (open it in a browser), tfrecords/ + schema.json,
strips/*.png, gifs/*.gif, index.jsonl, directions.npz, summary.json. Users' files of another size or channel
count are converted (one line each); files that cannot be used are rejected with one line each while the rest
are explained. Always recomputes (the `explain` stage of launch/train.py skips a finished export of the same
config, split and num_images, recorded as 'source' in schema.json).
--images needs --output_dir (<workdir>/explain/ is the split's export, refused for users' files), and is read
before anything is computed: a glob matching nothing or an empty folder is one error and leaves no folder.
Files above 64 megapixels are rejected from their header (STYLEX_MAX_IMAGE_PIXELS=<pixels> raises the limit).
Files are listed and their headers checked up front, then decoded batch by batch, so 10,000 images take the
memory of one batch; one progress line per batch (done/total, img/s, ETA).
Peak memory stays flat from 64 to 10,000 images: glibc's malloc arenas are capped at 2 (launch/malloc_arenas.py;
a MALLOC_ARENA_MAX in the environment wins).
SIGTERM or Ctrl-C stop it between batches with one `incomplete:` line and exit 0; a previous export is
left as it was, and rerunning the same command continues the unfinished one: its finished TFRecord shards
(kept in <output_dir>/.export-partial/) are not recomputed, and the result is the same as an uninterrupted run.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `configs`

from launch import malloc_arenas  # noqa: E402

malloc_arenas.limit()  # before anything starts a thread: flat peak memory over long runs

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import config_flag, outcome  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py[:variant]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir holding the trained classifier/, gan/ (and encoder/).')
_SPLIT = flags.DEFINE_string('split', None, 'Dataset split to explain (default config.explain.split).')
_NUM_IMAGES = flags.DEFINE_integer(
    'num_images', None, 'N images of the split, a seeded class-balanced sample (0 = all; default '
    'config.explain.num_images).')
_IMAGES = flags.DEFINE_string(
    'images', None, "The user's image files instead of a split: glob(s), comma-separated, "
    "or a directory, e.g. 'scans/*.png'.")
_OUTPUT = flags.DEFINE_string('output_dir', None, 'Export directory (default <workdir>/explain; required with '
                              '--images).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from stylex_jax.stages import explain as stage  # pylint: disable=g-import-not-at-top
  from stylex_jax.stages import checks  # pylint: disable=g-import-not-at-top
  from stylex_jax.stages import compile_cache  # pylint: disable=g-import-not-at-top
  if _IMAGES.value and (_SPLIT.value or _NUM_IMAGES.value is not None):
    sys.exit('error: give either --images or --split/--num_images, not both')
  with outcome.one_line():
    checks.check_stages(_CONFIG.value, ['explain'])  # the config, before any checkpoint is read
    compile_cache.enable(_CONFIG.value.get('compile_cache', compile_cache.WORKDIR),
                         _WORKDIR.value)  # before any compile
    stage.run(_CONFIG.value, _WORKDIR.value, split=_SPLIT.value, num_images=_NUM_IMAGES.value,
              image_patterns=_IMAGES.value, output_dir=_OUTPUT.value)


if __name__ == '__main__':
  app.run(main, flags_parser=config_flag.parse_flags)
