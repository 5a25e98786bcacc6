"""Scores an explanation export: the fidelity scorecard (validity, monotonicity, proximity, COUT, realism and,
on the phantoms, whether the causal attributes move and the nuisances stay).

  python launch/evaluate.py --config configs/demo.py --workdir /tmp/stylex_demo
  python launch/evaluate.py --config configs/demo.py --workdir /tmp/stylex_demo --explanations /tmp/my_explanations

Reads <explanations> (default <workdir>/explain/) through its TFRecords and schema.json, never changing its records,
with the classifier of --workdir; writes <workdir>/evaluate/scorecard.json and scorecard.md and puts the scorecard at
the top of the export's report.html.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `configs`

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import config_flag, outcome  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py[:variant]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir holding the trained classifier/ (and explain/).')
_EXPLANATIONS = flags.DEFINE_string('explanations', None, 'Export directory to score (default <workdir>/explain).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  from stylex_jax.stages import evaluate as stage  # pylint: disable=g-import-not-at-top
  from stylex_jax.stages import checks  # pylint: disable=g-import-not-at-top
  from stylex_jax.stages import compile_cache  # pylint: disable=g-import-not-at-top
  with outcome.one_line():  # the evaluate stage also stops between chunks on SIGTERM
    checks.check_stages(_CONFIG.value, ['evaluate'])  # the config, before any checkpoint is read
    compile_cache.enable(_CONFIG.value.get('compile_cache', compile_cache.WORKDIR),
                         _WORKDIR.value)  # before any compile
    stage.run(_CONFIG.value, _WORKDIR.value, explanations=_EXPLANATIONS.value)


if __name__ == '__main__':
  app.run(main, flags_parser=config_flag.parse_flags)
