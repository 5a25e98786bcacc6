"""failed_read_noise: the late reports of a failed checkpoint read are dropped, everything else still printed.

Run in subprocesses (the hooks are process-wide), once with and once without install(), through the real
channels: a concurrent.futures done-callback reaching a closed asyncio loop, asyncio's "never retrieved"
log record, and an exception escaping a thread."""
import os
import subprocess
import sys

_SCRIPT = r'''
import asyncio, concurrent.futures, logging, sys, threading
sys.path.insert(0, {root!r})
from stylex_jax import failed_read_noise
if {install}:
  failed_read_noise.install()
logging.basicConfig(stream=sys.stderr, level=logging.INFO)

# 1. a late result reaching a closed loop: the done-callback's call_soon_threadsafe raises (what
#    asyncio.wrap_future's callback does when the loop closes between its is_closed check and the call),
#    concurrent.futures logs it
loop = asyncio.new_event_loop()
cf = concurrent.futures.Future()
cf.add_done_callback(lambda f: loop.call_soon_threadsafe(print))
loop.close()
cf.set_result(1)

# 2. the abandoned orbax read, and an unrelated never-retrieved task
try:
  raise ValueError('OUT_OF_RANGE: byte range not valid')
except ValueError:
  logging.getLogger('asyncio').error(
      'Task exception was never retrieved\nfuture: <Task finished coro=<async_deserialize() done>>', exc_info=True)
try:
  raise KeyError('UNRELATED-TASK')
except KeyError:
  logging.getLogger('asyncio').error('Task exception was never retrieved\nfuture: <Task coro=<mine()>>',
                                     exc_info=True)

# 3. threads
def closed():
  raise RuntimeError('Event loop is closed')
def other():
  raise RuntimeError('UNRELATED-THREAD')
for target in (closed, other):
  t = threading.Thread(target=target)
  t.start()
  t.join()
logging.getLogger('concurrent.futures').warning('UNRELATED-RECORD')
print('done', flush=True)
'''


def _run(install):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, '-c', _SCRIPT.format(root=root, install=install)], capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0 and 'done' in proc.stdout, proc.stderr
  return proc.stderr


def test_without_install_the_late_reports_are_printed():
  # the control: the three channels really print what install() is to drop
  err = _run(False)
  assert err.count('Event loop is closed') >= 2, err
  assert 'async_deserialize' in err and 'OUT_OF_RANGE' in err


def test_install_drops_exactly_the_failed_read_reports():
  err = _run(True)
  assert 'Event loop is closed' not in err and 'async_deserialize' not in err and 'OUT_OF_RANGE' not in err, err
  for kept in ('UNRELATED-TASK', 'UNRELATED-THREAD', 'UNRELATED-RECORD'):
    assert kept in err, (kept, err)
