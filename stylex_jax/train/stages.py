"""Runs the stages named in `config.stages` in order, each resumable; the one function launch/train.py calls.

Stages read earlier stages' checkpoints from the same workdir (`<workdir>/<stage>/`): `classifier` (the model
to explain), `gan` (StyleGAN2-ADA), `encoder` (image -> W+ for inversion; needs classifier and gan) and
`explain` (inversion, directions, series, GradCAM, export and report; needs all three).
"""
from __future__ import annotations

import importlib
import json
import os

import ml_collections

# stage name -> module with `train_and_evaluate(config, workdir) -> dict`
STAGES = {
    'classifier': 'stylex_jax.train.classifier',
    'gan': 'stylex_jax.train.gan',
    'encoder': 'stylex_jax.train.encoder',
    'explain': 'stylex_jax.explain.stage',
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


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Runs every stage of `config.stages` in order in `workdir`; returns {stage: summary}."""
  names = parse_stages(config.stages)
  os.makedirs(workdir, exist_ok=True)
  results = {}
  for name in names:
    module = importlib.import_module(STAGES[name])
    results[name] = module.train_and_evaluate(config, workdir)
  return results


def completed_summary(stage: str, ckpt, num_steps: int, summary_path: str) -> dict | None:
  """The saved summary of a stage whose latest checkpoint is at `num_steps` (so it is not retrained), else None.

  ckpt: the stage's `checkpointing.Checkpointer` (closed here when the stage is complete).
  """
  latest = ckpt.latest_step()
  if latest is None or latest < num_steps or not os.path.exists(summary_path):
    return None
  print(f'[{stage}] already trained to step {latest} (checkpoints in {ckpt.directory}); not retraining. '
        f'Summary: {summary_path}')
  ckpt.close()
  with open(summary_path) as f:
    return json.load(f)
