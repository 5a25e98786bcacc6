"""What the training stages do about NaN/Inf: count the steps the pure steps skipped, and act on a run of them.

The pure steps (`train/nonfinite.py`) already skip an update whose loss or gradient is not finite and report it as
their `nonfinite` metric (0/1). Here, per stage:

* `Monitor.observe(step, flag)` reads each step's flag one step late (so the host never waits for the step it
  has just dispatched), logs a warning per skipped step and keeps `total` (the running count the stages write
  to metrics.jsonl as `nonfinite_steps`, counted since this process started the stage) and the current run.
* more than `config.<stage>.nonfinite_patience` skipped steps in a row -> `config.<stage>.on_nonfinite`:
  'stop' raises `checkpointing.NonFiniteError` (a ValueError: launch/train.py prints it as one line and exits
  non-zero) naming the stage, the steps, the count and what to try; 'restore' (`train_with_restores`) closes
  the stage, reloads its last checkpoint (its initial state when there is none yet) and trains on with the
  learning rates multiplied by `nonfinite_lr_factor`, at most `nonfinite_max_restores` times, then stops as
  'stop' does. The lowered learning rate holds for the rest of this process only: a later resume uses the
  configured one (the message says which flag to set).

A checkpoint of a state with NaN/Inf is never written (`checkpointing.Checkpointer.save` refuses it).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import ml_collections
from absl import logging

from stylex_jax import checkpointing

ACTIONS = ('stop', 'restore')


class _Restore(Exception):
  """Internal: the monitor asks `train_with_restores` to reload the last checkpoint (never leaves this module)."""

  def __init__(self, detail: str):
    super().__init__(detail)
    self.detail = detail


def check_config(name: str, group: ml_collections.ConfigDict) -> None:
  """Fails fast (ValueError) on a bad `config.<name>.on_nonfinite` / `nonfinite_*` field."""
  if group.on_nonfinite not in ACTIONS:
    raise ValueError(f'config.{name}.on_nonfinite={group.on_nonfinite!r}; use one of {ACTIONS}')
  if int(group.nonfinite_patience) < 0 or int(group.nonfinite_max_restores) < 0:
    raise ValueError(f'config.{name}.nonfinite_patience={group.nonfinite_patience} and nonfinite_max_restores='
                     f'{group.nonfinite_max_restores} must be >= 0')
  if not 0.0 < float(group.nonfinite_lr_factor) < 1.0:
    raise ValueError(f'config.{name}.nonfinite_lr_factor={group.nonfinite_lr_factor} must be in (0, 1)')


def _lr_flags(name: str, group: ml_collections.ConfigDict, lr_fields: Sequence[str], factor: float) -> str:
  """'--config.gan.g_lr=0.00125 --config.gan.d_lr=0.00125': the learning rates of `lr_fields` times `factor`."""
  return ' '.join(f'--config.{name}.{f}={_get(group, f) * factor:.3g}' for f in lr_fields)


def _get(group: ml_collections.ConfigDict, dotted: str) -> Any:
  for part in dotted.split('.'):
    group = group[part]
  return group


class Monitor:
  """Counts a stage's skipped steps and acts on more than `nonfinite_patience` of them in a row (module doc).

  stage: the `common.Stage` (its name and checkpointer); group: the stage's config group (`on_nonfinite`,
  `nonfinite_patience`); lr_fields: the learning-rate fields of the group (for the message); closing: objects
  whose `close()` runs before the monitor raises (the metric writer, the checkpointer, which waits for pending
  saves), so nothing already written is lost.
  """

  def __init__(self, stage, group: ml_collections.ConfigDict, lr_fields: Sequence[str], closing: Sequence[Any] = ()):
    self.name = stage.name
    self._stage, self._group, self._lr_fields, self._closing = stage, group, tuple(lr_fields), tuple(closing)
    self.patience = int(group.nonfinite_patience)
    self.total = 0  # skipped steps since this process started the stage
    self.in_a_row = 0
    self._pending: list[tuple[int, jax.Array]] = []

  def observe(self, step: int, flag: jax.Array) -> None:
    """Queues the int 0/1 scalar `flag` (the step's `nonfinite` metric) of 1-based `step`; resolves the flags of
    earlier steps (waiting for those steps only). May raise (see the module doc)."""
    self._pending.append((int(step), flag))
    while len(self._pending) > 1:
      self._resolve(*self._pending.pop(0))

  def flush(self) -> None:
    """Resolves every queued flag (at log steps, which wait for the device anyway, and at the end)."""
    while self._pending:
      self._resolve(*self._pending.pop(0))

  def _resolve(self, step: int, flag: jax.Array) -> None:
    if not int(jax.device_get(flag)):
      self.in_a_row = 0
      return
    self.total += 1
    self.in_a_row += 1
    logging.warning('[%s] step %d: NaN/Inf loss or gradient, update skipped (%d in a row, %d in total)', self.name,
                    step, self.in_a_row, self.total)
    if self.in_a_row > self.patience:
      self._trigger(step)

  def _trigger(self, step: int) -> None:
    self._pending.clear()
    latest = self._stage.ckpt.latest_step()  # waits for this process's pending save
    for obj in self._closing:
      obj.close()
    g = self._group
    detail = (f'[{self.name}] {self.in_a_row} training steps in a row had a NaN/Inf loss or gradient (steps '
              f'{step - self.in_a_row + 1}-{step}, more than config.{self.name}.nonfinite_patience={self.patience}; '
              f'{self.total} skipped in total this run)')
    if g.on_nonfinite == 'restore':
      raise _Restore(detail)
    kept = f'step {latest}' if latest is not None else 'none written yet'
    raise checkpointing.NonFiniteError(
        f'{detail}; stopped (config.{self.name}.on_nonfinite=stop). Last checkpoint: {kept} (kept; a rerun resumes '
        f'from it). Try a lower learning rate ({_lr_flags(self.name, g, self._lr_fields, 0.5)}), check the inputs '
        f'for NaN/Inf (e.g. corrupt images), or --config.{self.name}.on_nonfinite=restore')


def train_with_restores(name: str, config: ml_collections.ConfigDict, lr_fields: Sequence[str],
                        train: Callable[[ml_collections.ConfigDict], dict]) -> dict:
  """`train(config)` (a stage's loop, returning its summary); when its Monitor asks for a restore
  (`config.<name>.on_nonfinite='restore'`), runs `train` again on a copy of `config` whose learning rates
  `config.<name>.<lr_fields>` are multiplied by `nonfinite_lr_factor` (so it resumes from the last checkpoint),
  at most `nonfinite_max_restores` times; then raises `checkpointing.NonFiniteError`. `config` is not changed."""
  group = config[name]
  check_config(name, group)
  restores, scale = 0, 1.0
  while True:
    try:
      return train(config)
    except _Restore as e:
      if restores >= int(group.nonfinite_max_restores):
        raise checkpointing.NonFiniteError(
            f'{e.detail}, after {restores} restore(s) with the learning rate multiplied by {scale:.3g}; stopped '
            f'(config.{name}.nonfinite_max_restores={group.nonfinite_max_restores}). Check the inputs for NaN/Inf '
            f'(e.g. corrupt images), or lower the learning rate further '
            f'({_lr_flags(name, group, lr_fields, float(group.nonfinite_lr_factor))})') from None
      restores += 1
      factor = float(group.nonfinite_lr_factor)
      scale *= factor
      config = config.copy_and_resolve_references()
      group = config[name]
      for field in lr_fields:
        *parents, leaf = field.split('.')
        holder = _get(group, '.'.join(parents)) if parents else group
        holder[leaf] = float(holder[leaf]) * factor
      print(f'{e.detail}: restoring the last checkpoint with the learning rate x{scale:.3g} of the configured one '
            f'({", ".join(f"{f}={_get(group, f):.3g}" for f in lr_fields)}), restore {restores} of '
            f'{group.nonfinite_max_restores}. For this run only: to keep it on a later resume, pass '
            f'{" ".join(f"--config.{name}.{f}={_get(group, f):.3g}" for f in lr_fields)}')
