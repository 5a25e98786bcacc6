"""Preemption notices: SIGTERM (and one Ctrl-C) become a flag that the stages read between steps and
`checkpointing.Checkpointer.save` honours (it writes a checkpoint at the next step whatever the interval), so a
preempted job saves and stops instead of dying. With several processes the flag is agreed by a collective.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import jax
import numpy as np

_log = logging.getLogger(__name__)

_FLAG = threading.Event()
_handler_lock = threading.Lock()
_python_handler_installed = False


def _on_sigterm_factory(previous: Any):

  def _on_sigterm(signum, frame):
    _FLAG.set()
    _log.warning('SIGTERM received: the next Checkpointer.save() writes a checkpoint, then the loop should exit')
    if callable(previous):
      previous(signum, frame)

  return _on_sigterm


def _on_sigint_factory(previous: Any):

  def _on_sigint(signum, frame):
    if _FLAG.is_set():  # the second Ctrl-C: stop now, as Python would
      if callable(previous):
        return previous(signum, frame)
      raise KeyboardInterrupt
    _FLAG.set()
    print('\nCtrl-C: saving a checkpoint at the next step, then stopping (Ctrl-C again to quit at once)',
          file=sys.stderr, flush=True)

  return _on_sigint


def install_handler() -> None:
  """Turns SIGTERM (and on one process the first SIGINT, Ctrl-C) into a "save at the next step and stop" flag
    instead of killing the process.

    Chains a previously installed Python SIGTERM handler (it is still called); a second Ctrl-C goes to the
    previous SIGINT handler (Python's KeyboardInterrupt).  Idempotent; must be called from the main thread.
    When ``jax.distributed`` is initialised with its preemption service (the multi-process default), JAX
    already handles SIGTERM natively and agrees on a save step across processes; installing a Python handler
    would replace it, so this is then a no-op.
    """
  global _python_handler_installed
  if threading.current_thread() is not threading.main_thread():
    raise RuntimeError('preemption.install_handler() must be called from the main thread '
                       '(Python only installs signal handlers there); call it at program start')
  with _handler_lock:
    if _python_handler_installed:
      return
    if jax.distributed.is_initialized() and getattr(jax.config, 'jax_enable_preemption_service', False):
      _log.info('jax.distributed preemption service handles SIGTERM; not installing a Python handler')
      return
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _on_sigterm_factory(previous))
    if jax.process_count() == 1:  # one Ctrl-C on one host of several would leave the others running
      signal.signal(signal.SIGINT, _on_sigint_factory(signal.getsignal(signal.SIGINT)))
    _python_handler_installed = True


def request() -> None:
  """Raises the preemption flag as SIGTERM would (the next Checkpointer.save() checkpoints, then the stages stop)."""
  _FLAG.set()


def clear() -> None:
  """Lowers the preemption flag, so a process that goes on after a preempted run can train again."""
  _FLAG.clear()


def requested() -> bool:
  """Whether a preemption notice (SIGTERM, Ctrl-C, request) was received; with several processes, whether any
    process got one (a collective: call it at the same points on every process)."""
  local = _FLAG.is_set()
  if jax.process_count() > 1 and _python_handler_installed:
    from jax.experimental import multihost_utils
    return bool(np.max(multihost_utils.process_allgather(np.int32(local))))
  return local
