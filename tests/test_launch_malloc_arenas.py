"""launch/malloc_arenas.limit: glibc's own arena count (malloc_info's heaps) in a fresh process with 8 threads that
allocate at once, against the same process without the limit; the environment's MALLOC_ARENA_MAX wins; the
launcher calls it before anything that could start a thread."""
import ast
import os
import platform
import subprocess
import sys

import pytest

from launch import malloc_arenas

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != 'glibc', reason='glibc only')

# Eight threads each malloc while all are alive (a barrier), then glibc reports its arenas (<heap nr=...>).
_PROBE = r'''
import ctypes, os, sys, tempfile, threading
sys.path.insert(0, sys.argv[2])
if sys.argv[1] == 'limit':
  from launch import malloc_arenas
  print(malloc_arenas.limit())
else:
  print('no limit')
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.fopen.restype, libc.fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
barrier, kept = threading.Barrier(9), []
def work():
  kept.append(libc.malloc(4096))
  barrier.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
  t.start()
barrier.wait()
path = os.path.join(tempfile.mkdtemp(), 'info.xml')
fp = libc.fopen(path.encode(), b'w')
libc.malloc_info(0, fp)
libc.fclose(fp)
print(open(path).read().count('<heap nr='))
print(os.environ.get('MALLOC_ARENA_MAX', '-'))
'''


def _probe(mode: str, env_arenas: str | None = None) -> tuple[str, int, str]:
  env = {k: v for k, v in os.environ.items() if k != malloc_arenas.ENV}
  if env_arenas is not None:
    env[malloc_arenas.ENV] = env_arenas
  out = subprocess.run([sys.executable, '-c', _PROBE, mode, ROOT], capture_output=True, text=True, env=env, check=True,
                       timeout=60).stdout.splitlines()
  return out[0], int(out[1]), out[2]


def test_limit_caps_the_arenas_that_threads_would_create():
  said, heaps_free, _ = _probe('none')
  assert said == 'no limit'
  assert heaps_free > 3, f'8 allocating threads made only {heaps_free} arenas without a limit: the probe proves nothing'
  said, heaps, exported = _probe('limit')
  assert said == 'set to 2'
  assert heaps <= 2, f'{heaps} arenas with the limit (without: {heaps_free})'
  assert exported == '2', 'child processes must inherit the limit'


def test_the_environment_wins():
  said, heaps, exported = _probe('limit', env_arenas='3')
  assert said == 'kept MALLOC_ARENA_MAX=3 from the environment'
  assert heaps <= 3 and exported == '3'


@pytest.mark.parametrize('bad', [0, -2, 2.5, True, '2'])
def test_bad_count_is_refused(bad):
  with pytest.raises(ValueError, match='give an integer >= 1'):
    malloc_arenas.limit(bad)


def test_the_explain_launcher_limits_before_any_other_import():
  """Only os/sys and the path insert may come before limit(): absl, numpy, jax or TensorFlow could start threads."""
  body = ast.parse(open(os.path.join(ROOT, 'launch', 'explain.py')).read()).body
  calls = [
      i for i, node in enumerate(body) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and
      ast.unparse(node.value.func) == 'malloc_arenas.limit'
  ]
  assert calls, 'launch/explain.py does not call malloc_arenas.limit()'
  for node in body[:calls[0]]:
    if isinstance(node, ast.Import):
      assert {a.name for a in node.names} <= {'os', 'sys'}, ast.unparse(node)
    elif isinstance(node, ast.ImportFrom):
      assert ast.unparse(node) == 'from launch import malloc_arenas', ast.unparse(node)
