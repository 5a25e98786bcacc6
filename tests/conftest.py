"""Test setup: 8 fake CPU devices (set before jax is imported) so sharded code is exercised, a persistent XLA
compilation cache for the session (shared by the pytest-xdist workers), so stage tests that train, stop and resume
(and so re-jit the same steps in a new call) compile each program once, and the xdist grouping: each test module
runs on one worker (its module fixtures are built once), and every test using `smoke_stages` on the same worker
(the session's smoke run is trained once).

XLA's CPU backend runs at optimisation level 0 in tests (STYLEX_TEST_XLA_OPT=1 keeps the default): at the tests'
tiny shapes compiling dominates, and level 0 halves it (the GAN's 1-vs-8-device iteration test: 176 s -> 91 s of
one core); it changes only LLVM code generation, not XLA's graph passes, so every comparison stays within its
tolerance. Subprocesses the tests start inherit the flag, so their programs equal this process's.
Production runs keep XLA's default."""
import os
import tempfile

_OPT = '' if os.environ.get('STYLEX_TEST_XLA_OPT') == '1' else ' --xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8' + _OPT).strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import jax  # noqa: E402

jax.config.update('jax_threefry_partitionable', True)


def _cache_dir() -> str:
  """STYLEX_TEST_JAX_CACHE, else one folder per test run, shared by its xdist workers."""
  if os.environ.get('STYLEX_TEST_JAX_CACHE'):
    return os.environ['STYLEX_TEST_JAX_CACHE']
  run = os.environ.get('PYTEST_XDIST_TESTRUNUID')
  if run:
    path = os.path.join(tempfile.gettempdir(), f'stylex_jax_cache_{run}')
    os.makedirs(path, exist_ok=True)
    return path
  return tempfile.mkdtemp(prefix='stylex_jax_cache_')


jax.config.update('jax_compilation_cache_dir', _cache_dir())
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

import shutil  # noqa: E402

import pytest  # noqa: E402


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
  """xdist --dist loadgroup: tests of `smoke_stages` in group 'smoke', every other test in its module's group."""
  for item in items:
    group = 'smoke' if 'smoke_stages' in getattr(item, 'fixturenames', ()) else item.module.__name__
    item.add_marker(pytest.mark.xdist_group(group))


def smoke_config(data_dir, stages: str = 'classifier,gan,encoder,explain'):
  """configs/demo.py:smoke on 2 devices with its phantoms in `data_dir` (the config of `smoke_stages`)."""
  from configs import demo
  config = demo.get_config('smoke')
  config.data.data_dir = str(data_dir)
  config.num_devices = 2
  config.stages = stages
  return config


@pytest.fixture(scope='session')
def smoke_stages(tmp_path_factory):
  """One session-wide run of the classifier, gan and encoder stages on `smoke_config` (the slowest set-up of the
    suite, shared by the encoder- and explain-stage tests). Returns copy(dst, stages) -> (config, dst): a fresh
    workdir `dst` (str) holding copies of the named trained stages, so tests may add stages without touching the
    shared run."""
  from stylex_jax import stages as stages_lib
  root = tmp_path_factory.mktemp('smoke_stages')
  stages_lib.run(smoke_config(root / 'tfds', 'classifier,gan,encoder'), str(root / 'work'))

  def copy(dst, names=('classifier', 'gan', 'encoder')):
    os.makedirs(dst, exist_ok=True)
    for name in names:
      shutil.copytree(root / 'work' / name, os.path.join(dst, name))
    return smoke_config(root / 'tfds'), dst  # a fresh config per call: tests may change it

  return copy


@pytest.fixture
def preempt_at(monkeypatch):
  """preempt_at('gan:2'): the stages send this process a real SIGTERM when that stage reaches that step (the
    STYLEX_TEST_PREEMPT_AT hook of stylex_jax/stages/common.py); the preemption flag is lowered afterwards, so the
    rest of the session trains normally."""
  from stylex_jax import preemption
  yield lambda where: monkeypatch.setenv('STYLEX_TEST_PREEMPT_AT', where)
  preemption.clear()
