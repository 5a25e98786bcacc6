"""Resumable checkpoints for every training stage: the ONLY module that imports orbax.

A ``Checkpointer`` owns ``<workdir>/<stage>/checkpoints/``.  Each step directory holds two orbax
items: ``state`` (the training state pytree, written with ``StandardSave``: sharded arrays are
written by the processes that own them, asynchronously) and ``meta`` (JSON: the config
fingerprint, the caller's metadata, the step and the wall time).  Saves happen every
``save_interval_steps``, when forced, and at the first step after a preemption notice (SIGTERM);
only the newest ``keep`` complete checkpoints are preserved (orbax ``LatestN`` preservation policy).

Typical training loop::

    preemption.install_handler()                    # after sharding.initialize_distributed()
    ckpt = Checkpointer(f'{workdir}/gan/checkpoints', keep=3, save_interval_steps=1000,
                        config_fingerprint={'resolution': 64, 'channels': 1, ...})
    state = create_state(...)
    if ckpt.latest_step() is not None:
        state, meta = ckpt.restore(abstract_like(state, sharding.replicated(mesh)))
    for step in range(int(state['step']), total_steps):
        state = train_step(state, batch)
        ckpt.save(step + 1, state, metadata={'data_position': step + 1})
        if ckpt.reached_preemption(step + 1):
            break                                      # saved above; exit cleanly
    ckpt.close()

PRNG keys: typed keys (``jax.random.key``) may be kept in the state as they are; orbax writes their
key data with the PRNG implementation and ``restore`` gives back typed keys when the abstract
state holds key-typed ``ShapeDtypeStruct`` s (as ``jax.eval_shape`` / ``abstract_like`` produce).
Raw ``uint32`` key data (``jax.random.key_data(key)``) round-trips as an ordinary array.

Preemption: ``stylex_jax.preemption`` turns SIGTERM and the first Ctrl-C into a flag (see there); ``save``
writes a checkpoint at the next step once the flag is up, whatever the interval, and ``reached_preemption``
tells the loop to stop.  After ``jax.distributed.initialize`` (several processes) JAX's own preemption notifier
catches SIGTERM and agrees on a common save step across hosts; ``reached_preemption`` asks orbax for that sync
point.

A state with a NaN or Inf in any floating-point array is never written: ``save`` checks it first (one jitted
all-finite reduction over the state, only when a save is due) and raises ``NonFiniteError`` naming the arrays,
so the last good checkpoint stays the latest.

Incomplete step directories (a crash while copying, a half-deleted step) are ignored by
``latest_step`` / ``restore`` and, at the first save, renamed ``<step>.incomplete-<time>`` so they
are neither counted as checkpoints nor deleted.

Damaged checkpoints (a complete-looking step whose array data, ``meta/metadata`` or orbax metadata is
truncated or corrupt): ``restore`` / ``restore_fields`` of the latest step fall back to the newest
intact older step with ONE warning naming both steps; ``latest_intact_step`` finds it up front by
reading the step back completely (meta JSON and every array, as numpy on the host).  A step is
damaged when its restore fails AND that full read fails too; a restore that fails on an intact step
is a mismatch (another model or optimiser) and raises the clear error instead.  Damaged steps are
never deleted or modified: the first ``save`` of this Checkpointer moves each damaged step it found
to ``<directory>/damaged/<step>`` (one line each), so the retrained step can be written under the
same number and orbax's step list and retention never count it.  A checkpoint written by another
config (fingerprint) is refused, never skipped.  Before the first read that may fail, ``failed_read_noise``
is installed so the late reports of orbax's abandoned reads do not bury that one message.
"""
from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers

from stylex_jax import failed_read_noise, preemption

_STATE = 'state'
_META = 'meta'
_STEP_METADATA_FILE = '_CHECKPOINT_METADATA'
_DAMAGED_DIR = 'damaged'

_log = logging.getLogger(__name__)

NONFINITE_HINTS = ('lower the learning rate, check the inputs for NaN/Inf (e.g. corrupt images), or set '
                   'on_nonfinite=restore in the stage\'s config group')


class NonFiniteError(ValueError):
  """Training produced NaN/Inf values: a run of non-finite steps (the stages' guard) or a non-finite state a
  checkpoint would hold (``Checkpointer.save``). A ValueError, so launch/train.py prints it as one line."""


# ---------------------------------------------------------------------------------------------
# Abstract state
# ---------------------------------------------------------------------------------------------


def _is_sharding_leaf(x: Any) -> bool:
  return x is None or isinstance(x, jax.sharding.Sharding)


def abstract_like(tree: Any, sharding_tree_or_single_sharding: Any) -> Any:
  """Pytree of ``jax.ShapeDtypeStruct`` (shape, dtype, sharding) to restore into.

    Args:
      tree: pytree of arrays or ``ShapeDtypeStruct`` (e.g. ``jax.eval_shape(create_state, ...)``);
        typed PRNG keys keep their key dtype.  Non-array leaves (python ints, floats, strings)
        are kept as they are and are restored from the checkpoint as the same python type.
      sharding_tree_or_single_sharding: one ``jax.sharding.Sharding`` for every leaf (typically
        ``sharding.replicated(mesh)``), or a pytree prefix of ``tree`` of shardings (``None``
        leaves mean "no sharding": numpy arrays are restored as numpy).
    """

  def leaf(x, s):
    if hasattr(x, 'shape') and hasattr(x, 'dtype'):
      return jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=s)
    return x

  if isinstance(sharding_tree_or_single_sharding, jax.sharding.Sharding):
    return jax.tree.map(lambda x: leaf(x, sharding_tree_or_single_sharding), tree)
  try:
    shardings = jax.tree.broadcast(sharding_tree_or_single_sharding, tree, is_leaf=_is_sharding_leaf)
  except (ValueError, TypeError) as e:
    raise ValueError('abstract_like: the sharding tree must be one Sharding or a pytree prefix of the state '
                     f'({e})') from e
  return jax.tree.map(leaf, tree, shardings, is_leaf=lambda x: x is None)


# ---------------------------------------------------------------------------------------------
# Finite check
# ---------------------------------------------------------------------------------------------


def _finite_per_leaf(leaves: list) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


@functools.lru_cache(maxsize=None)
def _finite_per_leaf_jit(out_sharding):
  """The jitted check, its [num_leaves] bool result replicated on the state's mesh (readable on every host)."""
  return jax.jit(_finite_per_leaf, out_shardings=out_sharding)


def nonfinite_leaves(state: Any) -> list[str]:
  """Key paths (e.g. ``.params['dense']['kernel']``) of the floating-point leaves of ``state`` holding a NaN or
  Inf; [] when all are finite. jax arrays (sharded or not) are checked in one jitted reduction on their devices,
  numpy arrays and python floats on the host; integer, bool and PRNG-key leaves are skipped."""
  on_device, bad = [], []
  for path, x in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = jax.tree_util.keystr(path)
    if isinstance(x, jax.Array):
      if jnp.issubdtype(x.dtype, jnp.inexact):
        on_device.append((name, x))
    elif isinstance(x, (np.ndarray, np.generic, float)):
      x = np.asarray(x)
      if np.issubdtype(x.dtype, np.inexact) and not np.all(np.isfinite(x)):
        bad.append(name)
  if on_device:
    first = on_device[0][1].sharding
    out = jax.sharding.NamedSharding(first.mesh, jax.sharding.PartitionSpec()) if isinstance(
        first, jax.sharding.NamedSharding) else None
    local = lambda a: np.asarray(a.addressable_data(0))  # replicated results: every host holds all of it
    try:
      ok = local(_finite_per_leaf_jit(out)([x for _, x in on_device]))
    except ValueError:  # leaves committed to different devices: check them one by one where they are
      ok = [local(jnp.all(jnp.isfinite(x))) for _, x in on_device]
    bad.extend(name for (name, _), fine in zip(on_device, ok) if not fine)
  return bad


# ---------------------------------------------------------------------------------------------
# JSON helpers
# ---------------------------------------------------------------------------------------------


def _jsonable(value: Any, what: str) -> Any:
  """Plain-python copy of ``value`` (numpy scalars/arrays -> numbers/lists) or ValueError."""
  if isinstance(value, dict):
    out = {}
    for k, v in value.items():
      if not isinstance(k, str):
        raise ValueError(f'{what}: key {k!r} is not a string; JSON objects need string keys')
      out[k] = _jsonable(v, f'{what}.{k}')
    return out
  if isinstance(value, (list, tuple)):
    return [_jsonable(v, what) for v in value]
  if isinstance(value, (np.generic, np.ndarray)) or (isinstance(value, jax.Array) and
                                                     not jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)):
    return np.asarray(value).tolist()
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  raise ValueError(f'{what} holds a {type(value).__name__}, which is not JSON-able; pass numbers, strings, '
                   'lists and dicts (put arrays in the state instead)')


def _flatten(d: dict, prefix: str = '') -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def _short(e: BaseException) -> str:
  """First line of an exception, cut to 160 characters (tensorstore errors carry pages of spec JSON)."""
  text = (str(e).strip().splitlines() or [''])[0]
  text = text if len(text) <= 160 else text[:157] + '...'
  return f'{type(e).__name__}: {text}' if text else type(e).__name__


def _is_complete(step_dir: epath.Path) -> bool:
  try:
    return ((step_dir / _STEP_METADATA_FILE).exists() and (step_dir / _STATE).is_dir() and (step_dir / _META).is_dir())
  except OSError:
    return False


def _scan(directory: epath.Path) -> tuple[list[int], list[epath.Path]]:
  """(sorted complete steps, incomplete integer-named step directories) of a checkpoint directory."""
  complete, incomplete = [], []
  if not directory.exists():
    return complete, incomplete
  for child in directory.iterdir():
    if not child.name.isdigit():
      continue  # orbax temporaries, quarantined dirs, stray files
    if child.is_dir() and _is_complete(child):
      complete.append(int(child.name))
    else:
      incomplete.append(child)
  return sorted(complete), incomplete


def _read_state_numpy(path: epath.Path) -> Any:
  """Every array of a step's saved state, as host numpy arrays in the saved tree (no abstract state needed)."""
  handler = ocp.PyTreeCheckpointHandler()
  failed_read_noise.install()
  try:
    tree = handler.metadata(path).tree
    args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    return handler.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))
  finally:
    handler.close()


def read_numpy(directory: str, step: int | None = None) -> dict[str, np.ndarray]:
  """The saved state of the latest (or the given) complete step in `directory`, flattened to
  {'params/dense/kernel': array, ...} host numpy arrays; for comparing runs and inspecting checkpoints
  without building the model. No fallback: a damaged step raises what orbax raises."""
  steps = _scan(epath.Path(directory))[0]
  if not steps or (step is not None and int(step) not in steps):
    raise FileNotFoundError(f'no complete checkpoint {"" if step is None else f"for step {step} "}in {directory} '
                            f'(complete steps: {steps or "none"})')
  chosen = steps[-1] if step is None else int(step)
  leaves = jax.tree_util.tree_flatten_with_path(_read_state_numpy(epath.Path(directory) / str(chosen) / _STATE))[0]
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path): np.asarray(v) for path, v in leaves}


def latest_step(directory: str) -> int | None:
  """The newest complete checkpoint step in `directory` (no Checkpointer needed, nothing created), or None."""
  steps = _scan(epath.Path(directory))[0]
  return steps[-1] if steps else None


def move_aside(directory: str, reason: str) -> str:
  """Renames a checkpoint directory `<directory>.stale-<time>` (nothing is deleted) so the stage starts afresh;
  returns the new path. The chief renames, every process waits for it."""
  target = f'{directory}.stale-{time.strftime("%Y%m%d-%H%M%S")}'
  if jax.process_index() == 0:
    _log.warning('moving %s aside to %s: %s', directory, target, reason)
    epath.Path(directory).rename(target)
  if jax.process_count() > 1:
    ocp.multihost.sync_global_processes('stylex_checkpointing_move_aside')
  return target


# ---------------------------------------------------------------------------------------------
# Checkpointer
# ---------------------------------------------------------------------------------------------


class Checkpointer:
  """Saves and restores one stage's training state under ``directory`` (see the module docstring)."""

  def __init__(self, directory: str, *, keep: int = 3, save_interval_steps: int = 1000,
               config_fingerprint: dict | None = None):
    """
        Args:
          directory: ``<workdir>/<stage>/checkpoints`` (local path or any path etils.epath knows,
            e.g. ``gs://``); created if missing.
          keep: number of newest checkpoints preserved (>= 1); older ones are deleted after each save.
          save_interval_steps: ``save(step, ...)`` writes when ``step % save_interval_steps == 0``.
          config_fingerprint: JSON-able dict of the config fields that determine array shapes;
            stored with every checkpoint and compared on restore and before the first save.
        """
    for name, value in (('keep', keep), ('save_interval_steps', save_interval_steps)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{name}={value!r} must be a positive integer')
    if config_fingerprint is not None:
      if not isinstance(config_fingerprint, dict):
        raise ValueError(f'config_fingerprint must be a dict, got {type(config_fingerprint).__name__}')
      config_fingerprint = json.loads(json.dumps(_jsonable(config_fingerprint, 'config_fingerprint')))
    self._directory = epath.Path(directory)
    self._fingerprint = config_fingerprint
    self._interval = int(save_interval_steps)
    self._keep = int(keep)
    self._prepared_for_save = False
    self._damaged: dict[int, str] = {}  # step -> what is wrong with it (found by this Checkpointer)
    self._warned: set[tuple] = set()
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=checkpoint_managers.AnySavePolicy([
            checkpoint_managers.FixedIntervalPolicy(self._interval),
            checkpoint_managers.PreemptionCheckpointingPolicy(),
        ]),
        preservation_policy=checkpoint_managers.LatestN(self._keep),
        enable_async_checkpointing=True,
        create=True,
    )
    self._manager = ocp.CheckpointManager(self._directory, options=options, item_names=(_STATE, _META))

  @property
  def directory(self) -> str:
    return str(self._directory)

  # -- discovery --------------------------------------------------------------------------

  def _step_dirs(self) -> tuple[list[int], list[epath.Path]]:
    """(sorted complete steps, incomplete integer-named step directories)."""
    return _scan(self._directory)

  def all_steps(self) -> list[int]:
    """Steps with a complete checkpoint on disk, ascending (waits for this process's pending save)."""
    self._manager.wait_until_finished()
    return self._step_dirs()[0]

  def latest_step(self) -> int | None:
    """Newest step with a complete checkpoint on disk, or None.  Incomplete directories are skipped."""
    steps = self.all_steps()
    return steps[-1] if steps else None

  def latest_intact_step(self) -> int | None:
    """Newest step whose checkpoint reads back completely (meta and every array), or None.

        Reads the newest step in full (host memory); a damaged one is skipped for the previous step with
        one warning naming both (see the module docstring).  None when there is no checkpoint or every
        one is damaged.
        """
    steps = self.all_steps()
    for step in reversed(steps):
      if self._damage(step) is None:
        self._warn_fallback(step)
        return step
    return None

  # -- damage -------------------------------------------------------------------------------

  def _damage(self, step: int) -> str | None:
    """None when step's checkpoint reads back completely, else what is wrong (cached per step)."""
    if step in self._damaged:
      return self._damaged[step]
    try:
      self._read_meta(step)
    except Exception as e:  # noqa: BLE001  (orbax/JSON/tensorstore raise anything, even bare Exception)
      return self._mark_damaged(step, f'meta: {_short(e)}')
    try:
      _read_state_numpy(self._directory / str(step) / _STATE)
    except Exception as e:  # noqa: BLE001
      return self._mark_damaged(step, f'state: {_short(e)}')
    return None

  def _mark_damaged(self, step: int, problem: str) -> str:
    self._damaged[step] = problem
    return problem

  def _warn_fallback(self, used: int) -> None:
    """One warning naming the damaged steps newer than `used` and `used` itself (once per Checkpointer)."""
    bad = sorted((s for s in self._damaged if s > used), reverse=True)
    if not bad or (tuple(bad), used) in self._warned:
      return
    self._warned.add((tuple(bad), used))
    what = '; '.join(f'step {s}: {self._damaged[s]}' for s in bad) if len(bad) > 1 else self._damaged[bad[0]]
    steps = ', '.join(str(s) for s in bad)
    _log.warning(
        'checkpoint step%s %s in %s %s damaged (%s); using step %d, the newest intact one (the '
        'damaged files are left in place; a run that saves here first moves them to %s/)', 's' if len(bad) > 1 else '',
        steps, self._directory, 'are' if len(bad) > 1 else 'is', what, used, self._directory / _DAMAGED_DIR)

  def _all_damaged_error(self, steps: list[int]) -> ValueError:
    """The error when every one of `steps` (newest first) is damaged."""
    what = '; '.join(f'step {s}: {self._damaged.get(s, "unreadable")}' for s in steps)
    return ValueError(f'every checkpoint in {self._directory} is damaged ({what}); move {self._directory} aside '
                      'to train this stage from scratch (or restore it from a backup)')

  def _move_damaged_aside(self) -> None:
    """Moves each damaged step directory found so far to <directory>/damaged/<step> (never deletes it)."""
    present = [s for s in sorted(self._damaged) if (self._directory / str(s)).exists()]
    if not present:
      return
    if jax.process_index() == 0:
      target_dir = self._directory / _DAMAGED_DIR
      target_dir.mkdir(parents=True, exist_ok=True)
      for step in present:
        target = target_dir / str(step)
        if target.exists():
          target = target_dir / f'{step}-{time.strftime("%Y%m%d-%H%M%S")}'
        (self._directory / str(step)).rename(target)
        _log.warning(
            'moved damaged checkpoint step %d to %s (kept for you to inspect or delete); the step is '
            'written afresh if training reaches it again', step, target)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes('stylex_checkpointing_damaged')

  def metadata(self, step: int | None = None) -> dict:
    """The `metadata` dict saved with the latest (or the given) complete checkpoint, without its arrays; a step
    whose meta does not read is skipped for the previous one, as restore does (errors as `_candidates`, or
    ValueError when every candidate's meta is damaged)."""
    candidates = self._candidates(step)
    for s in candidates:
      try:
        return self._read_meta(s).get('metadata', {})
      except Exception as e:  # noqa: BLE001  (orbax/JSON raise anything for a truncated file)
        self._mark_damaged(s, f'meta: {_short(e)}')
    raise self._all_damaged_error(candidates)

  # -- fingerprint --------------------------------------------------------------------------

  def _read_meta(self, step: int) -> dict:
    self._manager.reload()
    restored = self._manager.restore(step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))
    meta = restored[_META]
    if not isinstance(meta, dict):
      raise ValueError(f'checkpoint step {step} in {self._directory} has unreadable metadata; move '
                       f'{self._directory / str(step)} aside to use the previous checkpoint')
    return meta

  def _check_fingerprint(self, meta: dict) -> None:
    if self._fingerprint is None:
      return
    saved = meta.get('config_fingerprint')
    if saved is None:
      _log.warning('checkpoint in %s has no config fingerprint; cannot verify it matches this config', self._directory)
      return
    saved_flat, now_flat = _flatten(saved), _flatten(self._fingerprint)
    differing = sorted(
        k for k in set(saved_flat) | set(now_flat) if saved_flat.get(k, '<missing>') != now_flat.get(k, '<missing>'))
    if differing:
      details = ', '.join(f"{k}: {saved_flat.get(k, '<missing>')!r} (checkpoint) vs "
                          f"{now_flat.get(k, '<missing>')!r} (now)" for k in differing)
      raise ValueError(f'checkpoint in {self._directory} was written by another config: {details}; '
                       'use a new --workdir or the original config')

  def _prepare_for_first_save(self) -> None:
    """Before the first save: refuse another config's directory; move incomplete step dirs aside."""
    complete, incomplete = self._step_dirs()
    for step in reversed(complete):  # the newest readable meta decides; a damaged step never does
      if step in self._damaged:
        continue
      try:
        meta = self._read_meta(step)
      except Exception as e:  # noqa: BLE001
        self._mark_damaged(step, f'meta: {_short(e)}')
        continue
      self._check_fingerprint(meta)
      break
    self._move_damaged_aside()
    if incomplete:
      if jax.process_index() == 0:
        stamp = time.strftime('%Y%m%d-%H%M%S')
        for path in incomplete:
          target = path.parent / f'{path.name}.incomplete-{stamp}'
          _log.warning('moving incomplete checkpoint %s aside to %s', path, target)
          path.rename(target)
      if jax.process_count() > 1:
        ocp.multihost.sync_global_processes('stylex_checkpointing_quarantine')
    self._manager.reload()
    self._prepared_for_save = True

  # -- save / restore ---------------------------------------------------------------------

  def reached_preemption(self, step: int) -> bool:
    """True once a preemption notice was received (SIGTERM flag, or orbax/JAX's multi-host sync point).

        With several processes call it at the same steps on every process (it may be a collective).
        """
    return preemption.requested() or bool(self._manager.reached_preemption(int(step)))

  def save(self, step: int, state: Any, *, metadata: dict | None = None, force: bool = False) -> bool:
    """Starts an asynchronous save of ``state`` at ``step`` if it is due; returns whether it saves.

        Due when ``step % save_interval_steps == 0``, ``force``, or after a preemption notice.  A step
        that already has a checkpoint is not rewritten (returns False).  Must be called by every
        process with the same step.  Metadata must be JSON-able (numbers, strings, lists, dicts).
        A due save of a state with NaN/Inf values raises ``NonFiniteError`` and writes nothing.

        Args:
          step: non-negative training step (the number of optimiser updates applied to ``state``).
          state: pytree of jax/numpy arrays, typed PRNG keys and python scalars.
          metadata: returned by ``restore`` next to the state (e.g. data position, config summary).
          force: save regardless of the interval.
        """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
      raise ValueError(f'step={step!r} must be a non-negative integer')
    step = int(step)
    meta = {
        'step': step,
        'config_fingerprint': self._fingerprint,
        'metadata': _jsonable(metadata or {}, 'metadata'),
        'saved_at': time.time(),
    }
    if not self._prepared_for_save:
      self._prepare_for_first_save()
    preempted = preemption.requested()
    if not (force or preempted) and not self._manager.should_save(step):
      return False
    if step in self._manager.all_steps():
      _log.info('checkpoint for step %d already exists in %s; not rewriting it', step, self._directory)
      return False
    bad = nonfinite_leaves(state)
    if bad:
      shown = ', '.join(bad[:5]) + (f' and {len(bad) - 5} more' if len(bad) > 5 else '')
      raise NonFiniteError(f'refusing to write checkpoint step {step} in {self._directory}: the state holds NaN/Inf '
                           f'values in {shown} (training diverged); the checkpoints already there are kept. '
                           f'Rerun to resume from the last one after a fix: {NONFINITE_HINTS}')
    if preempted:
      _log.warning('preemption: saving checkpoint at step %d', step)
    return bool(
        self._manager.save(
            step, force=True, args=ocp.args.Composite(**{
                _STATE: ocp.args.StandardSave(state),
                _META: ocp.args.JsonSave(meta)
            })))

  def _candidates(self, step: int | None) -> list[int]:
    """Steps to try, newest first: every complete step (step None), or just `step`; else FileNotFoundError."""
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f'no checkpoint in {self._directory}; train this stage first (or point '
                                '--workdir at the run that has it)')
      return list(reversed(steps))
    if int(step) not in steps:
      raise FileNotFoundError(f'no complete checkpoint for step {step} in {self._directory}; '
                              f"available steps: {steps or 'none'}")
    return [int(step)]

  def _restore_first_intact(self, step: int | None, restore_fn, mismatch) -> tuple[Any, dict]:
    """restore_fn(s) of the latest (or the given) step, falling back past damaged steps (see the module
        docstring); a failure on an intact step is a mismatch: ValueError(mismatch(step, cause))."""
    candidates = self._candidates(step)
    failed_read_noise.install()
    for s in candidates:
      if s in self._damaged:
        continue
      try:
        meta = self._read_meta(s)
      except Exception as e:  # noqa: BLE001  (a truncated meta/metadata: JSONDecodeError, or anything orbax raises)
        self._mark_damaged(s, f'meta: {_short(e)}')
        continue
      self._check_fingerprint(meta)  # another config's checkpoint is refused, never skipped
      try:
        restored = restore_fn(s)
      except Exception as e:  # noqa: BLE001  (orbax may raise a bare Exception for unreadable array data)
        if self._damage(s) is None:
          raise ValueError(mismatch(s, _short(e))) from e
        continue
      self._warn_fallback(s)
      return restored, meta.get('metadata', {})
    if step is not None:
      raise ValueError(f'checkpoint step {step} in {self._directory} is damaged ({self._damaged[int(step)]}); '
                       f'restore another step (available: {self.all_steps()})')
    raise self._all_damaged_error(candidates)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores the latest (or the given) intact checkpoint into ``abstract_state``'s shardings.

        A damaged latest checkpoint falls back to the previous intact one with one warning naming both steps.

        Args:
          abstract_state: pytree like the saved state, with ``jax.ShapeDtypeStruct`` leaves that
            carry a sharding (see ``abstract_like``); arrays come back with exactly that sharding.
          step: a specific step (no fallback), or None for the latest intact one.

        Returns:
          (state, metadata): the restored pytree and the ``metadata`` dict given to ``save``.

        Raises:
          FileNotFoundError: no (complete) checkpoint.  ValueError: written by another config, the
          checkpoint does not match ``abstract_state``, or every checkpoint is damaged.
        """
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(abstract_state)})
    restored, meta = self._restore_first_intact(
        step, lambda s: self._manager.restore(s, args=args)[_STATE],
        lambda s, error: f'checkpoint step {s} in {self._directory} does not match the state to restore into '
        f'({error}); if the model or optimiser changed use a new --workdir (or the original config and code)')
    return restored, meta

  def restore_fields(self, abstract_fields: dict, step: int | None = None) -> tuple[dict, dict]:
    """Restores only some top-level fields of the saved state (orbax partial restore): what a later stage
        needs (e.g. G_ema and w_avg of a GAN state), never reading the optimiser or augmentation state.
        A damaged latest checkpoint falls back to the previous intact one with one warning naming both steps.

        Args:
          abstract_fields: {field name: pytree of ``jax.ShapeDtypeStruct`` with shardings (``abstract_like``)},
            each laid out as that field of the saved state.
          step: a specific step (no fallback), or None for the latest intact one.

        Returns:
          ({field name: restored pytree}, metadata). Errors as ``restore``.
        """
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), abstract_fields)
    args = ocp.args.PyTreeRestore(item=abstract_fields, restore_args=restore_args, partial_restore=True)
    restored, meta = self._restore_first_intact(
        step, lambda s: self._manager.restore(s, args=ocp.args.Composite(**{_STATE: args}))[_STATE],
        lambda s, error: f'checkpoint step {s} in {self._directory} lacks the fields {sorted(abstract_fields)} or '
        f'they do not match ({error}); if the model changed use a new --workdir (or the original config)')
    return dict(restored), meta

  # -- lifecycle ----------------------------------------------------------------------------

  def wait_until_finished(self) -> None:
    """Blocks until every pending asynchronous save of this process is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
