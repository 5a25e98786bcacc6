"""stages.compile_cache: where the persistent XLA cache goes, when a folder is refused, and that a second process
reuses the first one's compiled program (a cache hit counted by jax.monitoring, the same result)."""
import os
import re
import subprocess
import sys

import pytest

from stylex_jax.stages import compile_cache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT = r'''
import sys
import jax, jax.numpy as jnp
from stylex_jax.stages import compile_cache
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name) if name.endswith('/cache_hits') else None)
folder = compile_cache.enable('workdir', sys.argv[1])
value = jax.jit(lambda x: jnp.sum(jnp.sin(x) @ jnp.cos(x).T))(jnp.arange(64.0).reshape(8, 8))
print('FOLDER', folder)
print('HITS', len(hits))
print('VALUE', float(value))
'''


def test_machine_id_names_the_architecture_and_a_cpu_hash():
  assert re.fullmatch(r'[\w.-]+-[0-9a-f]{12}', compile_cache.machine_id())
  assert compile_cache.machine_id() == compile_cache.machine_id()


def test_cache_dir_for_each_setting(tmp_path):
  w = str(tmp_path / 'w')
  assert compile_cache.cache_dir('workdir', w) is None  # no such workdir (yet): nothing created for it
  os.makedirs(w)
  folder, root = compile_cache.cache_dir('workdir', w)
  assert (folder, root) == (os.path.join(w, 'xla_cache', compile_cache.machine_id()), w)
  assert compile_cache.cache_dir('workdir', 'gs://bucket/run') is None
  assert compile_cache.cache_dir('gs://bucket/xla/',
                                 w) == (f'gs://bucket/xla/{compile_cache.machine_id()}', 'gs://bucket/xla/')
  assert compile_cache.cache_dir('', w) is None
  assert compile_cache.cache_dir(str(tmp_path / 'c'),
                                 w) == (str(tmp_path / 'c' / compile_cache.machine_id()), str(tmp_path / 'c'))


@pytest.mark.skipif(not hasattr(os, 'getuid'), reason='POSIX ownership')
def test_folders_others_may_write_are_refused(tmp_path):
  root = tmp_path / 'w'
  folder = root / 'xla_cache' / 'm'
  os.makedirs(folder)
  for path in (root, root / 'xla_cache', folder):
    os.chmod(path, 0o755)
  assert compile_cache.untrusted_reason(str(folder), str(root)) is None
  os.chmod(root, 0o777)
  assert 'writable by other users' in compile_cache.untrusted_reason(str(folder), str(root))
  os.chmod(root, 0o1777)  # sticky, like /tmp: others cannot replace what is ours in it
  assert compile_cache.untrusted_reason(str(folder), str(root)) is None
  os.chmod(folder, 0o1777)  # but the cache folder itself must be ours alone
  assert 'writable by other users' in compile_cache.untrusted_reason(str(folder), str(root))
  os.chmod(folder, 0o700)
  if os.getuid() == 0:
    os.chown(folder, 12345, -1)
    assert 'another user' in compile_cache.untrusted_reason(str(folder), str(root))


def _run(workdir, extra_env=None):
  env = {k: v for k, v in os.environ.items() if not k.startswith('JAX_COMPILATION_CACHE')}
  env.update(PYTHONPATH=ROOT, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0', JAX_PLATFORMS='cpu',
             XLA_FLAGS='--xla_force_host_platform_device_count=1', **(extra_env or {}))
  out = subprocess.run([sys.executable, '-c', _SCRIPT, str(workdir)], env=env, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return dict(
      line.split(' ', 1)
      for line in out.stdout.splitlines()
      if line.split(' ')[0] in ('FOLDER', 'HITS', 'VALUE')), out.stdout


def test_a_second_process_reuses_the_first_ones_compilation(tmp_path):
  first, _ = _run(tmp_path)
  folder = os.path.join(str(tmp_path), 'xla_cache', compile_cache.machine_id())
  assert first['FOLDER'] == folder and first['HITS'] == '0' and os.listdir(folder)
  assert oct(os.stat(folder).st_mode & 0o777) == oct(0o700)
  second, _ = _run(tmp_path)
  assert int(second['HITS']) >= 1 and second['VALUE'] == first['VALUE']  # the jitted sum (and the small ops)
  # a cache folder JAX already has (JAX_COMPILATION_CACHE_DIR) wins
  other = tmp_path / 'mine'
  third, _ = _run(tmp_path, {'JAX_COMPILATION_CACHE_DIR': str(other)})
  assert third['FOLDER'] == str(other) and third['HITS'] == '0'


def test_an_unsafe_workdir_runs_without_a_cache_and_says_why(tmp_path):
  os.chmod(tmp_path, 0o777)
  got, stdout = _run(tmp_path)
  assert got['FOLDER'] == 'None' and 'not used' in stdout and 'writable by other users' in stdout
  assert not os.path.exists(tmp_path / 'xla_cache')
