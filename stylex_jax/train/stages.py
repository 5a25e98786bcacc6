"""Runs the stages named in `config.stages` in order, each resumable; the one function launch/train.py calls.

Stages read earlier stages' checkpoints from the same workdir (`<workdir>/<stage>/`): `classifier` (the model
to explain), `gan` (StyleGAN2-ADA), `encoder` (image -> W+ for inversion; needs classifier and gan) and
`explain` (inversion, directions, series, GradCAM, export and report; needs all three).

Also what every training stage does the same way: `open_stage` (its folder, Checkpointer and "already complete"
check), `Stage.restore_or_init` (resume), `Stage.save` (periodic / final / preemption checkpoints) and
`restore_latest` (loading a finished stage's state for a later stage).
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
from typing import Any, Callable

import jax
import ml_collections

from stylex_jax import checkpointing

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


@dataclasses.dataclass
class Stage:
  """A training stage's folder `<workdir>/<name>/` and its checkpointer: what every stage opens the same way.

  completed: the saved summary when the stage is already trained to `num_steps` (then nothing is to be done and
  the checkpointer is closed), else None.
  """
  name: str
  directory: str
  summary_path: str
  ckpt: checkpointing.Checkpointer
  completed: dict | None

  def restore_or_init(self, init_fn: Callable[[jax.Array], Any], key: jax.Array, shardings) -> Any:
    """The state of the latest checkpoint (laid out as init_fn(key) with `shardings`), else init_fn(key)."""
    if self.ckpt.latest_step() is None:
      return init_fn(key)
    state, _ = self.ckpt.restore(checkpointing.abstract_like(jax.eval_shape(init_fn, key), shardings))
    print(f'[{self.name}] resumed from step {int(state.step)} ({self.ckpt.directory})')
    return state

  def save(self, step: int, state: Any, last: bool) -> bool:
    """Checkpoints `state` after `step` (every checkpoint_every steps, and always when `last` or preempted).
    Returns True when the job is being preempted: the caller stops its loop."""
    preempted = self.ckpt.reached_preemption(step)
    self.ckpt.save(step, state, force=last or preempted)
    if preempted:
      print(f'[{self.name}] preempted at step {step}: checkpoint saved in {self.ckpt.directory}; rerun to resume')
    return preempted


def open_stage(name: str, workdir: str, stage_config: ml_collections.ConfigDict, fingerprint: dict) -> Stage:
  """Creates `<workdir>/<name>/` and its Checkpointer (stage_config: keep_checkpoints, checkpoint_every,
  num_steps; `fingerprint`: the config fields that fix the checkpoint's arrays, a mismatch is refused)."""
  directory = os.path.join(workdir, name)
  os.makedirs(directory, exist_ok=True)
  summary_path = os.path.join(directory, 'summary.json')
  ckpt = checkpointing.Checkpointer(os.path.join(directory, 'checkpoints'), keep=stage_config.keep_checkpoints,
                                    save_interval_steps=stage_config.checkpoint_every,
                                    config_fingerprint=fingerprint)
  return Stage(name, directory, summary_path, ckpt,
               completed_summary(name, ckpt, stage_config.num_steps, summary_path))


def restore_latest(name: str, workdir: str, fingerprint: dict, abstract_state: Any, how: str) -> Any:
  """The latest checkpoint of stage `name` in `<workdir>/<name>/checkpoints`, laid out as `abstract_state`
  (jax.ShapeDtypeStructs with shardings). No checkpoint -> FileNotFoundError saying which stage to run.
  how: the end of that message, how to run the stage (e.g. 'with the same --config and --workdir')."""
  directory = os.path.join(workdir, name, 'checkpoints')
  ckpt = checkpointing.Checkpointer(directory, config_fingerprint=fingerprint)
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f'no {name} checkpoint in {directory}; run the {name} stage first '
                              f'(--config.stages={name}) {how}')
    state, _ = ckpt.restore(abstract_state)
  finally:
    ckpt.close()
  return state
