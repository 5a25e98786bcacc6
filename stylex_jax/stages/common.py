"""What every stage does the same way: its folder `<workdir>/<name>/`, checkpointer and "already complete" check
(`open_stage`, which also retrains a stage whose upstream checkpoints moved on), resume (`Stage.restore_or_init`),
periodic / final / preemption checkpoints (`Stage.save`), stopping the pipeline on preemption (`Preempted`) and
loading a finished stage's parameters for a later stage (`restore_latest`, a partial restore that never reads
optimiser or augmentation state).

Provenance: a stage built from other stages' checkpoints records their steps (`checkpoint_steps`): the encoder in
its checkpoints' metadata and summary.json (`upstream`), the explain export in schema.json and summary.json
(`provenance`). When an upstream step changed since (e.g. the GAN was resumed and trained further), the stage is
not "already done": the encoder's old checkpoints are moved aside and it retrains, the export is recomputed.

Test hook: STYLEX_TEST_PREEMPT_AT='<stage>:<step>' (e.g. 'gan:2') sends this process a real SIGTERM when that
stage reaches that step (a training step, or for explain the number of images explained so far) — deterministic
preemption for the tests; unset in normal runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import ml_collections

from stylex_jax import checkpointing, preemption, storage

TEST_PREEMPT_AT = 'STYLEX_TEST_PREEMPT_AT'


class Preempted(Exception):
  """A stage stopped on a preemption notice (SIGTERM, Ctrl-C) after saving what it had: no later stage may run.

  stage: the stage that stopped; step: its last saved step (images explained, for explain; 0 when the notice
  came between stages, before `stage` started); saved: what was kept, for the message.
  """

  def __init__(self, stage: str, step: int, saved: str):
    self.stage, self.step, self.saved = stage, int(step), saved
    super().__init__(f'preempted in the {stage} stage at step {self.step} ({saved})')


def preemption_test_hook(stage: str, step: int) -> None:
  """Sends this process a real SIGTERM when STYLEX_TEST_PREEMPT_AT == '<stage>:<step>' (see the module docstring);
  returns once the handler has raised the preemption flag. A no-op when the variable is unset."""
  if os.environ.get(TEST_PREEMPT_AT) != f'{stage}:{step}':
    return
  os.kill(os.getpid(), signal.SIGTERM)
  deadline = time.monotonic() + 5
  while not preemption.requested() and time.monotonic() < deadline:
    time.sleep(0.01)


def stop_if_preempted(stage: str, step: int, saved: str) -> None:
  """Raises Preempted(stage, step, saved) when a preemption notice was received (test hook first)."""
  preemption_test_hook(stage, step)
  if preemption.requested():
    raise Preempted(stage, step, saved)


def checkpoint_steps(workdir: str, names) -> dict[str, int | None]:
  """{stage: the latest complete checkpoint step in <workdir>/<stage>/checkpoints, or None}: what a later stage is
  built from (its provenance)."""
  return {name: checkpointing.latest_step(os.path.join(workdir, name, 'checkpoints')) for name in names}


def describe_change(before: dict | None, now: dict) -> str:
  """'gan step 4 -> 6' for the stages whose recorded step differs (`before` None: nothing was recorded)."""
  if before is None:
    return 'no upstream steps recorded'
  keys = sorted(set(before) | set(now), key=lambda k: (k not in now, k))
  return ', '.join(f'{k} step {before.get(k)} -> {now.get(k)}' for k in keys if before.get(k) != now.get(k))


def completed_summary(stage: str, ckpt, num_steps: int, summary_path: str) -> dict | None:
  """The saved summary of a stage whose latest intact checkpoint is at `num_steps` (so it is not retrained), else
  None: the stage resumes from its latest intact checkpoint (a damaged newest one is skipped with one warning
  naming both steps, and the missing steps are retrained), and an unreadable summary.json is recomputed (one line).

  ckpt: the stage's `checkpointing.Checkpointer` (closed here when the stage is complete).
  """
  if not storage.exists(summary_path):
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
    summary = json.loads(storage.read_text(summary_path))
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
  upstream: {stage: checkpoint step} this stage is built from, saved in every checkpoint's metadata.
  """
  name: str
  directory: str
  summary_path: str
  ckpt: checkpointing.Checkpointer | None
  completed: dict | None
  upstream: dict | None = None
  preempted: bool = False

  def restore_or_init(self, init_fn: Callable[[jax.Array], Any], key: jax.Array, shardings) -> Any:
    """The state of the latest checkpoint (laid out as init_fn(key) with `shardings`), else init_fn(key)."""
    if self.ckpt.latest_step() is None:
      return init_fn(key)
    state, _ = self.ckpt.restore(checkpointing.abstract_like(jax.eval_shape(init_fn, key), shardings))
    print(f'[{self.name}] resumed from step {int(state.step)} ({self.ckpt.directory})')
    return state

  def save(self, step: int, state: Any, last: bool) -> bool:
    """Checkpoints `state` after `step` (every checkpoint_every steps, and always when `last` or preempted).
    Returns True when the job is being preempted: the caller stops its loop (and raises Preempted unless the
    stage is complete)."""
    preemption_test_hook(self.name, step)
    preempted = self.ckpt.reached_preemption(step)
    self.ckpt.save(step, state, force=last or preempted,
                   metadata=None if self.upstream is None else {'upstream': self.upstream})
    if preempted:
      print(f'[{self.name}] preempted at step {step}: checkpoint saved in {self.ckpt.directory}; rerun to resume')
      self.preempted = True
    return preempted

  def raise_if_preempted(self, step: int, num_steps: int) -> None:
    """After the training loop: Preempted when it stopped on a preemption notice before `num_steps` (a stage
    preempted at its last step finishes its summary; `stages.run` then stops before the next stage)."""
    if self.preempted and step < num_steps:
      raise Preempted(self.name, step, f'checkpoint saved in {self.ckpt.directory}')


def _discard_if_stale(name: str, ckpt_dir: str, summary_path: str, upstream: dict) -> None:
  """Moves `ckpt_dir` aside (with the summary) when its latest checkpoint was trained against other upstream
  checkpoint steps than `upstream`, so the stage retrains against what is there now."""
  if checkpointing.latest_step(ckpt_dir) is None or None in upstream.values():
    return  # nothing to judge, or an upstream stage is missing (its loader says which one to run)
  ckpt = checkpointing.Checkpointer(ckpt_dir)
  try:
    saved = ckpt.metadata().get('upstream')
  finally:
    ckpt.close()
  if saved is None:
    print(f'[{name}] the checkpoints in {ckpt_dir} do not record the upstream steps they were trained against; '
          f'assuming {upstream}')
    return
  if saved == upstream:
    return
  why = describe_change(saved, upstream)
  stale = checkpointing.move_aside(ckpt_dir, why)
  if jax.process_index() == 0 and storage.exists(summary_path):
    storage.replace(summary_path, os.path.join(stale, os.path.basename(summary_path)))
  print(f'[{name}] trained against other upstream checkpoints ({why}): retraining from scratch; the old '
        f'checkpoints and summary are in {stale}')


def open_stage(name: str, workdir: str, stage_config: ml_collections.ConfigDict, fingerprint: dict,
               upstream: dict | None = None) -> Stage:
  """Creates `<workdir>/<name>/` and its Checkpointer (stage_config: keep_checkpoints, checkpoint_every,
  num_steps; `fingerprint`: the config fields that fix the checkpoint's arrays, a mismatch is refused;
  `upstream`: {stage: checkpoint step} the stage is built from (`checkpoint_steps`); checkpoints trained against
  other steps are moved aside and the stage starts afresh)."""
  directory = os.path.join(workdir, name)
  storage.makedirs(directory)
  summary_path = os.path.join(directory, 'summary.json')
  ckpt_dir = os.path.join(directory, 'checkpoints')
  if upstream is not None:
    _discard_if_stale(name, ckpt_dir, summary_path, upstream)
  ckpt = checkpointing.Checkpointer(ckpt_dir, keep=stage_config.keep_checkpoints,
                                    save_interval_steps=stage_config.checkpoint_every, config_fingerprint=fingerprint)
  return Stage(name, directory, summary_path, ckpt, completed_summary(name, ckpt, stage_config.num_steps, summary_path),
               upstream)


def open_export_stage(name: str, workdir: str, config: ml_collections.ConfigDict, provenance: dict,
                      source: dict | None = None) -> Stage:
  """`<workdir>/<name>/` of a stage whose output is an export (summary.json + schema.json holding the config, the
  upstream checkpoint steps and what was explained) rather than checkpoints: complete when both exist, the
  schema's config equals `config`, its `provenance` equals `provenance` (`checkpoint_steps`) and, when `source` is
  given, its 'source' equals it (another split, another sample size or the user's files -> not complete)."""
  directory = os.path.join(workdir, name)
  summary_path = os.path.join(directory, 'summary.json')
  schema_path = os.path.join(directory, 'schema.json')
  completed = None
  if storage.exists(summary_path) and storage.exists(schema_path):
    schema = json.loads(storage.read_text(schema_path))
    if schema.get('config') != json.loads(json.dumps(config.to_dict(), default=str)):
      pass  # another config: recomputed (the export says which config it holds)
    elif source is not None and schema.get('source') != json.loads(json.dumps(source)):
      print(f'[{name}] {directory} holds an export of {schema.get("source") or "unrecorded inputs"}, not of '
            f'{source}; recomputing')
    elif schema.get('provenance') != provenance:
      print(f'[{name}] the export in {directory} was made from other checkpoints '
            f'({describe_change(schema.get("provenance"), provenance)}); recomputing it')
    else:
      print(f'[{name}] already explained with this config and these checkpoints ({summary_path}); not recomputing. '
            f'Report: {os.path.join(directory, "report.html")}')
      completed = json.loads(storage.read_text(summary_path))
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
  if not storage.isdir(directory):
    raise missing  # before the Checkpointer, which would create the folder: a failed run leaves nothing behind
  ckpt = checkpointing.Checkpointer(directory, config_fingerprint=fingerprint)
  try:
    if ckpt.latest_step() is None:
      raise missing
    fields, _ = ckpt.restore_fields(abstract_fields)
  finally:
    ckpt.close()
  return fields
