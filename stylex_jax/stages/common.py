"""What every stage does the same way: its folder `<workdir>/<name>/`, checkpointer and "already complete" check
(`open_stage`), resume (`Stage.restore_or_init`), periodic / final / preemption checkpoints (`Stage.save`) and
loading a finished stage's parameters for a later stage (`restore_latest`, a partial restore that never reads
optimiser or augmentation state).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import jax
import ml_collections

from stylex_jax import checkpointing


def completed_summary(stage: str, ckpt, num_steps: int, summary_path: str) -> dict | None:
  """The saved summary of a stage whose latest intact checkpoint is at `num_steps` (so it is not retrained), else
  None: the stage resumes from its latest intact checkpoint (a damaged newest one is skipped with one warning
  naming both steps, and the missing steps are retrained), and an unreadable summary.json is recomputed (one line).

  ckpt: the stage's `checkpointing.Checkpointer` (closed here when the stage is complete).
  """
  if not os.path.exists(summary_path):
    return None
  latest = ckpt.latest_intact_step()  # reads the newest checkpoint back in full: damage shows here, not later
  if latest is None or latest < num_steps:
    return None
  summary = read_summary(stage, summary_path)
  if summary is None:
    return None
  print(f'[{stage}] already trained to step {latest} (checkpoints in {ckpt.directory}); not retraining. '
        f'Summary: {summary_path}')
  ckpt.close()
  return summary


def read_summary(stage: str, summary_path: str) -> dict | None:
  """summary.json as a dict, or None (after one line naming the file) when it is truncated or not a JSON object."""
  try:
    with open(summary_path) as f:
      summary = json.load(f)
    if isinstance(summary, dict):
      return summary
    problem = f'holds a {type(summary).__name__}, not a JSON object'
  except (OSError, UnicodeDecodeError, ValueError) as e:
    problem = f'is unreadable ({type(e).__name__}: {e})'
  print(f'[{stage}] {summary_path} {problem}; recomputing it from the latest checkpoint (the file is rewritten)')
  return None


@dataclasses.dataclass
class Stage:
  """A stage's folder `<workdir>/<name>/` and (training stages) its checkpointer: what every stage opens the
  same way.

  completed: the saved summary when the stage is already complete (trained to `num_steps`, or an export of the
  same config exists; then nothing is to be done and the checkpointer is closed), else None.
  ckpt: None for a stage that exports instead of checkpointing (explain).
  """
  name: str
  directory: str
  summary_path: str
  ckpt: checkpointing.Checkpointer | None
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
                                    save_interval_steps=stage_config.checkpoint_every, config_fingerprint=fingerprint)
  return Stage(name, directory, summary_path, ckpt, completed_summary(name, ckpt, stage_config.num_steps, summary_path))


def open_export_stage(name: str, workdir: str, config: ml_collections.ConfigDict, source: dict | None = None) -> Stage:
  """`<workdir>/<name>/` of a stage whose output is an export (summary.json + schema.json holding the config it
  was made with) rather than checkpoints: complete when both exist, the schema's config equals `config` and, when
  `source` is given, the schema's 'source' (what was explained) equals it (another split, another sample size or
  the user's files -> not complete)."""
  directory = os.path.join(workdir, name)
  summary_path = os.path.join(directory, 'summary.json')
  schema_path = os.path.join(directory, 'schema.json')
  completed = None
  if os.path.exists(summary_path) and os.path.exists(schema_path):
    with open(schema_path) as f:
      schema = json.load(f)
    previous = schema.get('config')
    if source is not None and schema.get('source') != json.loads(json.dumps(source)):
      print(f'[{name}] {directory} holds an export of {schema.get("source") or "unrecorded inputs"}, not of '
            f'{source}; recomputing')
    elif previous == json.loads(json.dumps(config.to_dict(), default=str)):
      print(f'[{name}] already explained with this config ({summary_path}); not recomputing. Report: '
            f'{os.path.join(directory, "report.html")}')
      with open(summary_path) as f:
        completed = json.load(f)
  return Stage(name, directory, summary_path, None, completed)


def restore_latest(name: str, workdir: str, fingerprint: dict, abstract_fields: dict[str, Any], how: str) -> dict:
  """Some fields of the latest checkpoint of stage `name` (`<workdir>/<name>/checkpoints`): a partial restore of
  what a later stage needs, e.g. {'g_ema': ..., 'g_stats': ...}, never the optimiser or augmentation state.

  abstract_fields: {state field: pytree of jax.ShapeDtypeStructs with shardings (checkpointing.abstract_like)}.
  how: the end of the missing-checkpoint message, how to run the stage (e.g. 'with the same --workdir').
  Returns {field: restored pytree}. No checkpoint -> FileNotFoundError saying which stage to run first.
  """
  directory = os.path.join(workdir, name, 'checkpoints')
  missing = FileNotFoundError(f'no {name} checkpoint in {directory}; run the {name} stage first '
                              f'(--config.stages={name}) {how}')
  if '://' not in directory and not os.path.isdir(directory):
    raise missing  # before the Checkpointer, which would create the folder: a failed run leaves nothing behind
  ckpt = checkpointing.Checkpointer(directory, config_fingerprint=fingerprint)
  try:
    if ckpt.latest_step() is None:
      raise missing
    fields, _ = ckpt.restore_fields(abstract_fields)
  finally:
    ckpt.close()
  return fields
