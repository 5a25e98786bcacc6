"""Trains the stages of `config.stages` in order (each resumes from its latest checkpoint).

  python launch/train.py --config configs/demo.py --workdir /tmp/stylex_demo
  python launch/train.py --config configs/demo.py:smoke --config.stages=classifier --workdir /tmp/w
  python launch/train.py --config configs/kl_xray.py --config.data.manual_dir=/data/kl --workdir gs://b/kl

Multi-host (TPU pods, multi-node GPU): run the same command on every host; `jax.distributed` is initialised
from the environment (see launch/tpu_pod.sh and launch/slurm.sh) or from --coordinator_address etc.

Preemption: SIGTERM (and Ctrl-C once, on one process) lets the running stage finish its step and save; no later
stage runs, and the command exits 0 with one line `incomplete: ...` naming the stage and step and the command to
resume (the same command). A second Ctrl-C quits at once.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # repo root, for `configs`

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import config_flag, outcome  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py[:variant]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and samples go.')
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'Multi-host: host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-host: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-host: this process\' index.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:  # library INFO logs (orbax, tfds) only with -v / --verbosity=0
    logging.set_verbosity(logging.WARNING)
  from stylex_jax import sharding
  from stylex_jax import stages, storage
  with outcome.one_line('later stages not run'):
    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    results = stages.run(_CONFIG.value, _WORKDIR.value)
  print(f'outputs in {storage.absolute(_WORKDIR.value)}: ' + ', '.join(f'{k}/' for k in results))


if __name__ == '__main__':
  app.run(main, flags_parser=config_flag.parse_flags)
