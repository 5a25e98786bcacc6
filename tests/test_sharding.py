"""Tests for stylex_jax.sharding on the 8 fake CPU devices, plus a 2-process CPU run on localhost."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from stylex_jax import sharding

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('n', [1, 8])
def test_make_mesh(n):
  mesh = sharding.make_mesh(n)
  assert mesh.axis_names == ('data',)
  assert mesh.devices.shape == (n,)
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices()[:n])
  assert tuple(mesh.axis_types) == (jax.sharding.AxisType.Auto,)
  assert sharding.data_sharding(mesh).spec == P('data')
  assert sharding.replicated(mesh).spec == P()


def test_make_mesh_default_and_errors():
  assert sharding.make_mesh().devices.size == jax.device_count() == 8
  with pytest.raises(ValueError, match='only 8 cpu device'):
    sharding.make_mesh(9)
  with pytest.raises(ValueError, match='positive integer'):
    sharding.make_mesh(0)


def test_shard_batch_shapes_shardings_values():
  mesh = sharding.make_mesh(8)
  rng = np.random.default_rng(0)
  batch = {
      'image': rng.uniform(-1, 1, size=(16, 4, 4, 1)).astype(np.float32),
      'label': np.arange(16, dtype=np.int32),
      'id': np.array([f'img{i}'.encode() for i in range(16)]),
      'meta': {
          'weight': np.linspace(0, 1, 16, dtype=np.float32)
      },
      'source': 'phantoms'
  }
  out = sharding.shard_batch(batch, mesh)
  for key, x in (('image', out['image']), ('label', out['label']), ('weight', out['meta']['weight'])):
    assert isinstance(x, jax.Array), key
    assert x.sharding.spec == P('data')
    assert len(x.addressable_shards) == 8
    assert all(s.data.shape[0] == 2 for s in x.addressable_shards)
  assert out['image'].shape == (16, 4, 4, 1) and out['image'].dtype == np.float32
  np.testing.assert_array_equal(np.asarray(out['image']), batch['image'])
  np.testing.assert_array_equal(np.asarray(out['label']), batch['label'])
  np.testing.assert_array_equal(np.asarray(out['meta']['weight']), batch['meta']['weight'])
  # shard k holds rows [2k, 2k+2)
  for s in out['label'].addressable_shards:
    np.testing.assert_array_equal(np.asarray(s.data), batch['label'][s.index])
  assert out['id'] is batch['id'] and out['source'] == 'phantoms'


def test_jitted_sum_over_sharded_batch_matches_numpy():
  mesh = sharding.make_mesh(8)
  x = np.random.default_rng(1).normal(size=(32, 5)).astype(np.float32)
  xs = sharding.shard_batch({'x': x}, mesh)['x']
  total = jax.jit(lambda a: jnp.sum(a, axis=0), out_shardings=sharding.replicated(mesh))(xs)
  np.testing.assert_allclose(np.asarray(total), x.astype(np.float64).sum(0), rtol=1e-5, atol=1e-5)
  assert total.sharding.spec == P()


def test_shard_batch_errors():
  mesh = sharding.make_mesh(8)
  with pytest.raises(ValueError, match="'x' has local batch 6, not divisible by the 8 local devices"):
    sharding.shard_batch({'x': np.zeros((6, 2), np.float32)}, mesh)
  with pytest.raises(ValueError, match='different leading'):
    sharding.shard_batch({'a': np.zeros((8,)), 'b': np.zeros((16,))}, mesh)
  for scalar in (np.zeros((), np.float32), np.float32(1.0)):
    with pytest.raises(ValueError, match="'a' is a scalar"):
      sharding.shard_batch({'a': scalar}, mesh)
  with pytest.raises(ValueError, match='dict'):
    sharding.shard_batch([np.zeros(8)], mesh)


def test_check_global_batch():
  mesh = sharding.make_mesh(8)
  sharding.check_global_batch(32, mesh)
  sharding.check_global_batch(32, mesh, group_size=4)
  with pytest.raises(ValueError, match='global batch size 30 is not divisible by the 8 devices.*24 or 32'):
    sharding.check_global_batch(30, mesh)
  with pytest.raises(ValueError, match=r'per-device batch 6 \(global 48 / 8 devices\).*group_size 4.*8x4=32'):
    sharding.check_global_batch(48, mesh, group_size=4)
  with pytest.raises(ValueError, match='positive integer'):
    sharding.check_global_batch(0, mesh)
  sharding.check_global_batch(6, sharding.make_mesh(1), group_size=3)


def test_replicate():
  mesh = sharding.make_mesh(8)
  tree = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'k': jax.random.key(0), 'n': 3}
  out = sharding.replicate(tree, mesh)
  for x in (out['w'], out['k'], out['n']):
    assert x.sharding.spec == P() and len(x.addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(out['w']), tree['w'])
  np.testing.assert_array_equal(jax.random.key_data(out['k']), jax.random.key_data(tree['k']))


def test_jit_init_matches_plain_jit_and_traces():
  """jit_init (compiled without LLVM optimisation on CPU) gives plain jit's values to float rounding, with the
  requested sharding, and traces under eval_shape like jit."""

  def init(key):
    k1, k2 = jax.random.split(key)
    return {'w': jax.random.normal(k1, (64, 32)) * 0.1, 'b': jax.random.uniform(k2, (32,)), 'step': jnp.int32(0)}

  mesh = sharding.make_mesh(8)
  rep = sharding.replicated(mesh)
  key = jax.random.key(4)
  expected = jax.jit(init, out_shardings=rep)(key)
  got = sharding.jit_init(init, rep)(key)
  for name in expected:
    np.testing.assert_allclose(np.asarray(got[name]), np.asarray(expected[name]), rtol=1e-6, atol=1e-7)
    assert got[name].sharding.is_equivalent_to(rep, got[name].ndim)
  assert np.asarray(got['w']).std() == pytest.approx(0.1, rel=0.1)  # the normal draw itself, not just agreement
  shapes = jax.eval_shape(sharding.jit_init(init, rep), key)
  assert shapes['w'].shape == (64, 32) and shapes['step'].dtype == jnp.int32


def test_initialize_distributed_single_process_is_noop(monkeypatch):
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'SLURM_JOB_ID', 'SLURM_NTASKS',
               'OMPI_COMM_WORLD_SIZE', 'MEGASCALE_COORDINATOR_ADDRESS', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('SLURM_JOB_ID', '1')
  monkeypatch.setenv('SLURM_NTASKS', '1')  # a one-task SLURM job is a single process
  sharding.initialize_distributed()
  sharding.initialize_distributed()
  assert not jax.distributed.is_initialized() and jax.process_count() == 1
  monkeypatch.setenv('JAX_NUM_PROCESSES', 'two')
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
    sharding.initialize_distributed()


_CHILD = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import jax, jax.numpy as jnp
    from stylex_jax import sharding
    pid, port = int(sys.argv[1]), sys.argv[2]
    try:
        sharding.initialize_distributed(f"127.0.0.1:{port}", 2, pid)
        mesh = sharding.make_mesh()
    except Exception as e:  # the platform cannot run multi-process jax
        print("INIT_FAILED", repr(e), flush=True)
        sys.exit(3)
    print("INIT_OK", flush=True)
    sharding.initialize_distributed(f"127.0.0.1:{port}", 2, pid)  # idempotent
    sharding.check_global_batch(8, mesh)
    local = {"x": (np.arange(12, dtype=np.float32).reshape(4, 3) + 100 * pid), "id": [f"p{pid}"] * 4}
    b = sharding.shard_batch(local, mesh)
    x = b["x"]
    total = jax.jit(lambda a: a.sum(0), out_shardings=sharding.replicated(mesh))(x)
    gathered = jax.jit(lambda a: a, out_shardings=sharding.replicated(mesh))(x)
    rep = sharding.replicate({"w": np.full(3, 2.0, np.float32), "k": jax.random.key(7)}, mesh)
    w_sum = jax.jit(lambda r, a: (a * r["w"]).sum(), out_shardings=sharding.replicated(mesh))(rep, x)
    print("RESULT", json.dumps({
        "pid": pid, "processes": jax.process_count(), "devices": jax.device_count(),
        "shape": list(x.shape), "spec_ok": x.sharding.spec == jax.sharding.PartitionSpec("data"), "ids": b["id"],
        "local_rows": sorted(int(s.index[0].start) for s in x.addressable_shards),
        "sum": np.asarray(total.addressable_data(0)).tolist(),
        "global": np.asarray(gathered.addressable_data(0)).tolist(),
        "w_sum": float(np.asarray(w_sum.addressable_data(0))),
        "rep_ok": rep["w"].sharding.spec == jax.sharding.PartitionSpec(),
        "key_is_key": bool(jax.dtypes.issubdtype(rep["k"].dtype, jax.dtypes.prng_key)),
    }), flush=True)
""")


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_two_processes(script: str, tmp_path, extra_args=(), timeout=90, devices_per_process=2):
  """Runs ``script`` as 2 jax processes (``devices_per_process`` CPU devices each) on localhost; returns their
    outputs. The children share this session's persistent XLA compilation cache (conftest.py) and its PRNG
    setting (threefry_partitionable), so their numbers are comparable with this process's.

    Skips the test when the platform cannot initialise multi-process jax.
    """
  path = tmp_path / 'child.py'
  path.write_text(script)
  flags = [f for f in os.environ.get('XLA_FLAGS', '').split() if 'device_count' not in f]  # e.g. conftest's opt level
  flags.append(f'--xla_force_host_platform_device_count={devices_per_process}')
  env = dict(os.environ, XLA_FLAGS=' '.join(flags), JAX_PLATFORMS='cpu',
             PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''), TF_CPP_MIN_LOG_LEVEL='2',
             JAX_THREEFRY_PARTITIONABLE=str(jax.config.jax_threefry_partitionable).lower(),
             JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')
  if jax.config.jax_compilation_cache_dir:
    env.update(JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=str(jax.config.jax_persistent_cache_min_compile_time_secs),
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=str(jax.config.jax_persistent_cache_min_entry_size_bytes))
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    env.pop(name, None)
  port = str(_free_port())
  procs = [
      subprocess.Popen([sys.executable, str(path), str(i), port, *extra_args], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True) for i in range(2)
  ]
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=timeout)[0])
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    outputs = [p.communicate()[0] for p in procs]
    if not all('INIT_OK' in o for o in outputs):
      pytest.skip('multi-process jax could not start on this platform (timed out)')
    pytest.fail('2-process run timed out after initialisation:\n' + '\n'.join(o[-2000:] for o in outputs))
  if any('INIT_FAILED' in o for o in outputs):
    pytest.skip('multi-process jax unsupported here: ' + next(o for o in outputs if 'INIT_FAILED' in o)[-300:])
  for p, o in zip(procs, outputs):
    assert p.returncode == 0, o[-3000:]
  return outputs


def _result(output):
  return json.loads(next(line for line in output.splitlines() if line.startswith('RESULT '))[len('RESULT '):])


def test_two_process_shard_batch(tmp_path):
  outputs = run_two_processes(_CHILD, tmp_path)
  results = sorted((_result(o) for o in outputs), key=lambda r: r['pid'])
  local = [np.arange(12, dtype=np.float32).reshape(4, 3) + 100 * pid for pid in range(2)]
  expected_global = np.concatenate(local, axis=0)  # process 0's rows first, then process 1's
  for r in results:
    assert r['processes'] == 2 and r['devices'] == 4
    assert r['shape'] == [8, 3] and r['spec_ok']
    assert r['ids'] == [f"p{r['pid']}"] * 4  # non-array fields stay process-local
    np.testing.assert_array_equal(np.array(r['global']), expected_global)
    np.testing.assert_allclose(r['sum'], expected_global.sum(0))
    assert r['w_sum'] == pytest.approx(2.0 * expected_global.sum())
    assert r['rep_ok'] and r['key_is_key']
  assert results[0]['local_rows'] == [0, 2] and results[1]['local_rows'] == [4, 6]
