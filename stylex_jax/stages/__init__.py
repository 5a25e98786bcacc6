"""The pipeline's stages and the one function launch/train.py calls: `run(config, workdir)`.

Each stage is a module of this package with `train_and_evaluate(config, workdir) -> summary` and a
`load_<stage>(workdir, config)` that restores only what a later stage needs:

  classifier  the model to explain                        -> <workdir>/classifier/
  gan         StyleGAN2-ADA on the same images             -> <workdir>/gan/
  encoder     image -> W+ for inversion (needs classifier, gan)
  explain     inversion, directions, series, GradCAM, export and report (needs all three)
  evaluate    the fidelity scorecard of the export (needs classifier and explain)
  shortcut    the shortcut experiment: confounded vs clean classifiers explained with one GAN + encoder
              -> <workdir>/shortcut/<kind>/{confounded,clean}/ and <workdir>/evaluate/shortcut.json

Preemption: `run` turns SIGTERM and Ctrl-C into a flag (`preemption.install_handler`); the stage
that is running finishes its step, saves and raises `Preempted` (a notice between stages raises it before the next
one), so no later stage runs on half-trained models. launch/train.py prints one line (which stage, which step) and
exits 0; rerunning the same command resumes.

This package is the composition root: the only code that knows the `<workdir>/<stage>/` layout. It wires the
training math (`train/`), the explanation pieces (`explain/`) and the metrics (`evaluate/`) to data, checkpoints
and writers.
"""
from __future__ import annotations

import importlib

import ml_collections

from stylex_jax import preemption, storage
from stylex_jax.stages.common import Preempted  # noqa: F401  (re-exported: launch/ catches stages.Preempted)

# stage name -> module with `train_and_evaluate(config, workdir) -> dict`, in pipeline order
STAGES = {
    'classifier': 'stylex_jax.stages.classifier',
    'gan': 'stylex_jax.stages.gan',
    'encoder': 'stylex_jax.stages.encoder',
    'explain': 'stylex_jax.stages.explain',
    'evaluate': 'stylex_jax.stages.evaluate',
    'shortcut': 'stylex_jax.stages.shortcut',
}


def parse_stages(stages: str) -> list[str]:
  """'classifier, gan' -> ['classifier', 'gan']; unknown or repeated names -> ValueError."""
  names = [s.strip() for s in stages.split(',') if s.strip()]
  if not names:
    raise ValueError(f'config.stages is empty; set e.g. --config.stages={",".join(STAGES)}')
  unknown = [n for n in names if n not in STAGES]
  if unknown:
    raise ValueError(f'unknown stage(s) {unknown} in config.stages={stages!r}; available: {", ".join(STAGES)}')
  if len(set(names)) != len(names):
    raise ValueError(f'config.stages={stages!r} names a stage twice')
  return names


def check_workdir(workdir: str) -> None:
  """Creates `workdir` if needed and proves it writable (a probe file); else ValueError naming it and the fix.
  A local folder or any path etils.epath knows (gs://bucket/kl: the probe is an object written and deleted)."""
  try:
    storage.check_writable(workdir)
  except OSError as e:
    raise ValueError(f'cannot write to --workdir {workdir}: {e.strerror or e}; choose a writable --workdir') from None


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Runs every stage of `config.stages` in order in `workdir` (checked writable first); returns {stage: summary}.

  Raises Preempted (after the running stage saved) on SIGTERM / Ctrl-C: the later stages do not run.
  """
  names = parse_stages(config.stages)
  from stylex_jax.stages import checks  # every stage's config constraints, before the first stage runs
  checks.check_stages(config, names)
  check_workdir(workdir)
  from stylex_jax.stages import compile_cache
  compile_cache.enable(config.get('compile_cache', compile_cache.WORKDIR), workdir)  # before the first compile
  preemption.install_handler()
  results = {}
  for i, name in enumerate(names):
    if preemption.requested():
      done = f'{names[i - 1]} complete' if i else 'nothing started'
      raise Preempted(name, 0, f'before it started; {done}')
    module = importlib.import_module(STAGES[name])
    results[name] = module.train_and_evaluate(config, workdir)
  return results
