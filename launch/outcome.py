"""How every launcher ends: bad input as one `error:` line (exit 1); a preempted run (SIGTERM, Ctrl-C) as one
`incomplete:` line with the command that resumes it (exit 0: the stage saved, it is not an error for the scheduler).
STYLEX_DEBUG=1 shows the traceback of an `error:` instead.

  with outcome.one_line('later stages not run'):
    stages.run(config, workdir)
"""
import contextlib
import os
import shlex
import sys


@contextlib.contextmanager
def one_line(not_run: str = ''):
  """Turns ValueError / FileNotFoundError (bad input) and stages.Preempted inside the block into the one-line
  endings above; `not_run` is appended to the `incomplete:` line (e.g. 'later stages not run')."""
  from stylex_jax.stages import common  # pylint: disable=g-import-not-at-top
  try:
    yield
  except common.Preempted as e:
    print(
        f'incomplete: {e}{"; " + not_run if not_run else ""}. Resume with: '
        f'{shlex.join([sys.executable, *sys.argv])}', flush=True)
    sys.exit(0)
  except (ValueError, FileNotFoundError) as e:
    if os.environ.get('STYLEX_DEBUG'):
      raise
    sys.exit(f'error: {e}')
