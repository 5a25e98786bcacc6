"""Keeps a damaged checkpoint's read failure to the one line the caller prints.

When orbax reads a checkpoint whose array data are damaged, its asyncio loop stops at the first failed
array and closes; the other tensorstore reads finish afterwards on their own threads and report, each
with a full traceback, through three channels nobody reads: a ``concurrent.futures`` done-callback
("exception calling callback for ..." -> ``RuntimeError: Event loop is closed``, logged on the
``concurrent.futures`` logger), asyncio's "Task exception was never retrieved" for the abandoned
``async_deserialize`` tasks (``asyncio`` logger), and unraisable exceptions from callbacks run outside
Python frames (``sys.unraisablehook``).  ``checkpointing`` already turns the failure into one clear
message (fallback warning or "every checkpoint is damaged"); this module drops exactly those
after-the-fact reports and lets every other record and exception through.

Nothing here imports orbax or tensorstore; ``install()`` is idempotent and cheap, and is called by
``checkpointing`` before it reads a step that may be damaged.
"""
from __future__ import annotations

import logging
import sys
import threading

_installed = False
_lock = threading.Lock()


def is_closed_loop_error(e: BaseException | None) -> bool:
  """True for the RuntimeError asyncio raises when a late callback reaches a closed event loop."""
  return isinstance(e, RuntimeError) and str(e) == 'Event loop is closed'


class _DropFailedReadRecords(logging.Filter):
  """Drops log records about late reads of a failed checkpoint restore (see the module docstring)."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if is_closed_loop_error(exc):
      return False
    message = record.getMessage()
    return not (message.startswith('Task exception was never retrieved') and 'async_deserialize' in message)


def install() -> None:
  """Installs, once per process, the filters on the ``asyncio`` and ``concurrent.futures`` loggers and
  the ``sys.unraisablehook`` / ``threading.excepthook`` wrappers that drop the late-read reports; every
  other unraisable or thread exception goes to the hook that was there before."""
  global _installed
  with _lock:
    if _installed:
      return
    record_filter = _DropFailedReadRecords()
    for name in ('asyncio', 'concurrent.futures'):
      logging.getLogger(name).addFilter(record_filter)

    previous_unraisable = sys.unraisablehook

    def unraisable_hook(unraisable):
      if not is_closed_loop_error(unraisable.exc_value):
        previous_unraisable(unraisable)

    sys.unraisablehook = unraisable_hook

    previous_thread_hook = threading.excepthook

    def thread_hook(args):
      if not is_closed_loop_error(args.exc_value):
        previous_thread_hook(args)

    threading.excepthook = thread_hook
    _installed = True
