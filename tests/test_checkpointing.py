"""Tests for stylex_jax.checkpointing: round trips, sharded restore, retention, interval, config
fingerprints, SIGTERM preemption and robustness to incomplete step directories."""
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from stylex_jax import checkpointing, preemption
from stylex_jax.checkpointing import Checkpointer, abstract_like


def _state(seed=0):
  rng = np.random.default_rng(seed)
  params = {
      'dense': {
          'kernel': jnp.asarray(rng.normal(size=(8, 4)), jnp.float32),
          'bias': jnp.asarray(rng.normal(size=(4,)), jnp.float32)
      },
      'scale': jnp.asarray(rng.normal(size=()), jnp.float32)
  }
  opt = optax.adam(1e-2)
  opt_state = opt.init(params)
  grads = jax.tree.map(lambda p: jnp.ones_like(p) * 0.5, params)
  _, opt_state = opt.update(grads, opt_state, params)  # non-trivial mu/nu/count
  return {
      'params': params,
      'opt_state': opt_state,
      'step': 7,
      'rng': jax.random.key(seed + 3),
      'rng_data': jax.random.key_data(jax.random.key(11)),
      'ada_p': np.float32(0.25)
  }


def _assert_tree_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      assert jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key)
      assert jax.random.key_impl(x) == jax.random.key_impl(y)
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _snapshot(root):
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
      path = os.path.join(dirpath, name)
      st = os.stat(path)
      out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns)
  return out


def test_round_trip_exact(tmp_path):
  state = _state()
  with Checkpointer(str(tmp_path / 'ck'), save_interval_steps=5, config_fingerprint={
      'res': 8,
      'model': {
          'width': 4
      }
  }) as ck:
    assert ck.latest_step() is None
    assert ck.save(5, state, metadata={'data_position': np.int64(5), 'note': 'x'})
    ck.wait_until_finished()
    assert ck.latest_step() == 5
    restored, meta = ck.restore(abstract_like(state, checkpointing_replicated()))
    # an eval_shape abstract state (python ints become int32 structs) restores the same values
    from_eval_shape, _ = ck.restore(abstract_like(jax.eval_shape(lambda: state), checkpointing_replicated()))
  assert meta == {'data_position': 5, 'note': 'x'}
  assert isinstance(restored['step'], int) and restored['step'] == 7
  _assert_tree_equal(restored, state)
  assert int(from_eval_shape['step']) == 7
  _assert_tree_equal(from_eval_shape['params'], state['params'])
  _assert_tree_equal(from_eval_shape['rng'], state['rng'])
  # the restored optimiser state is usable: one more update matches the original's
  opt = optax.adam(1e-2)
  g = jax.tree.map(jnp.ones_like, state['params'])
  u1, _ = opt.update(g, state['opt_state'], state['params'])
  u2, _ = opt.update(g, restored['opt_state'], restored['params'])
  _assert_tree_equal(u1, u2)


def checkpointing_replicated():
  mesh = jax.make_mesh((1,), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1])
  return NamedSharding(mesh, P())


def test_restore_into_sharded_abstract_state(tmp_path):
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  state = {
      'w': jnp.arange(32, dtype=jnp.float32).reshape(8, 4),
      'b': jnp.arange(4, dtype=jnp.float32),
      'key': jax.random.key(5)
  }
  with Checkpointer(str(tmp_path / 'ck'), save_interval_steps=1) as ck:
    assert ck.save(1, state)
    ck.wait_until_finished()
    abstract = abstract_like(state, {'w': split, 'b': rep, 'key': rep})
    restored, meta = ck.restore(abstract)
  assert meta == {}
  assert restored['w'].sharding.is_equivalent_to(split, 2) and restored['w'].sharding.spec == P('data')
  assert restored['b'].sharding.is_equivalent_to(rep, 1)
  assert len(restored['w'].addressable_shards) == 8
  assert all(s.data.shape == (1, 4) for s in restored['w'].addressable_shards)
  np.testing.assert_array_equal(np.asarray(restored['w']), np.arange(32).reshape(8, 4))
  np.testing.assert_array_equal(jax.random.key_data(restored['key']), jax.random.key_data(state['key']))


def test_keep_newest_two(tmp_path):
  state = {'x': jnp.zeros(3)}
  with Checkpointer(str(tmp_path / 'ck'), keep=2, save_interval_steps=1) as ck:
    for s in range(1, 6):
      assert ck.save(s, {'x': jnp.full(3, float(s))})
    ck.wait_until_finished()
    assert ck.all_steps() == [4, 5]
    restored, _ = ck.restore(abstract_like(state, checkpointing_replicated()), step=4)
    np.testing.assert_array_equal(np.asarray(restored['x']), [4.0, 4.0, 4.0])
  assert sorted(p for p in os.listdir(tmp_path / 'ck') if p.isdigit()) == ['4', '5']


def test_save_interval_and_force(tmp_path):
  with Checkpointer(str(tmp_path / 'ck'), keep=10, save_interval_steps=3) as ck:
    saved = [ck.save(s, {'x': jnp.ones(2)}) for s in range(8)]
    assert saved == [True, False, False, True, False, False, True, False]
    assert ck.save(7, {'x': jnp.ones(2)}, force=True)
    assert not ck.save(7, {'x': jnp.ones(2)}, force=True)  # never rewrites an existing step
    ck.wait_until_finished()
    assert ck.all_steps() == [0, 3, 6, 7]


def test_fingerprint_mismatch_raises_and_touches_nothing(tmp_path):
  directory = str(tmp_path / 'ck')
  state = {'x': jnp.ones(2)}
  with Checkpointer(directory, save_interval_steps=1, config_fingerprint={'res': 8, 'ch': 1}) as ck:
    ck.save(1, state)
  before = _snapshot(directory)
  other = Checkpointer(directory, save_interval_steps=1, config_fingerprint={'res': 16, 'ch': 1})
  with pytest.raises(ValueError, match=r'another config: res: 8 \(checkpoint\) vs 16 \(now\).*new --workdir'):
    other.restore(abstract_like(state, checkpointing_replicated()))
  with pytest.raises(ValueError, match='another config'):
    other.save(2, state)
  other.close()
  assert _snapshot(directory) == before
  # the original config still restores
  with Checkpointer(directory, config_fingerprint={'ch': 1, 'res': 8}) as same:
    restored, _ = same.restore(abstract_like(state, checkpointing_replicated()))
  np.testing.assert_array_equal(np.asarray(restored['x']), [1.0, 1.0])


def test_missing_checkpoint_and_wrong_structure(tmp_path):
  state = {'x': jnp.ones(2)}
  with Checkpointer(str(tmp_path / 'ck'), save_interval_steps=1) as ck:
    with pytest.raises(FileNotFoundError, match='no checkpoint in'):
      ck.restore(abstract_like(state, checkpointing_replicated()))
    ck.save(1, state)
    with pytest.raises(FileNotFoundError, match='step 3.*available steps: \\[1\\]'):
      ck.restore(abstract_like(state, checkpointing_replicated()), step=3)
    with pytest.raises(ValueError, match='does not match the state'):
      ck.restore(abstract_like({'y': jnp.ones(2), 'z': jnp.ones(1)}, checkpointing_replicated()))


def test_sigterm_sets_preemption_and_forces_save(tmp_path, monkeypatch):
  calls = []
  original = signal.getsignal(signal.SIGTERM)
  monkeypatch.setattr(preemption, '_FLAG', threading.Event())
  monkeypatch.setattr(preemption, '_python_handler_installed', False)
  try:
    signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))  # a previous handler
    preemption.install_handler()
    preemption.install_handler()  # idempotent: no double chaining
    with Checkpointer(str(tmp_path / 'ck'), save_interval_steps=1000) as ck:
      assert not ck.reached_preemption(3)
      assert not ck.save(3, {'x': jnp.ones(2)})
      os.kill(os.getpid(), signal.SIGTERM)
      deadline = time.monotonic() + 5
      while not preemption._FLAG.is_set() and time.monotonic() < deadline:
        time.sleep(0.01)
      assert ck.reached_preemption(4)
      assert ck.save(4, {'x': jnp.ones(2)})
      ck.wait_until_finished()
      assert ck.latest_step() == 4
    assert calls == [signal.SIGTERM]  # the previous handler was chained exactly once
  finally:
    signal.signal(signal.SIGTERM, original)


def test_handler_refuses_non_main_thread():
  errors = []
  t = threading.Thread(target=lambda: errors.append(_capture(preemption.install_handler)))
  t.start()
  t.join()
  assert isinstance(errors[0], RuntimeError) and 'main thread' in str(errors[0])


def _capture(fn):
  try:
    fn()
  except Exception as e:  # noqa: BLE001
    return e
  return None


def test_incomplete_step_dirs_are_skipped_and_moved_aside(tmp_path):
  directory = tmp_path / 'ck'
  state = {'x': jnp.ones(2)}
  with Checkpointer(str(directory), keep=2, save_interval_steps=1) as ck:
    ck.save(5, {'x': jnp.full(2, 5.0)})
    ck.save(6, {'x': jnp.full(2, 6.0)})
  (directory / '9').mkdir()  # empty step dir
  (directory / '12' / 'state').mkdir(parents=True)  # half-copied step
  (directory / '13').write_text('not a checkpoint')  # stray file with a step name
  (directory / '14.orbax-checkpoint-tmp-1').mkdir()  # interrupted orbax temporary
  (directory / 'notes').mkdir()
  with Checkpointer(str(directory), keep=2, save_interval_steps=1) as ck:
    assert ck.latest_step() == 6
    restored, _ = ck.restore(abstract_like(state, checkpointing_replicated()))
    np.testing.assert_array_equal(np.asarray(restored['x']), [6.0, 6.0])
    assert ck.save(7, {'x': jnp.full(2, 7.0)})
    ck.wait_until_finished()
    assert ck.all_steps() == [6, 7]  # keep=2 counts only real checkpoints
  names = os.listdir(directory)
  assert not {'9', '12', '13'} & set(names)
  assert sum(n.startswith(('9.incomplete-', '12.incomplete-', '13.incomplete-')) for n in names) == 3


def test_abstract_like_prefix_tree_and_errors():
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  rep, split = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  tree = {'params': {'a': np.zeros((8, 2), np.float32), 'b': np.zeros(3, np.int32)}, 'step': 3}
  out = abstract_like(tree, {'params': split, 'step': rep})
  assert out['params']['a'] == jax.ShapeDtypeStruct((8, 2), np.float32, sharding=split)
  assert out['params']['b'].sharding == split and out['params']['b'].dtype == np.int32
  assert out['step'] == 3
  with pytest.raises(ValueError, match='prefix'):
    abstract_like(tree, {'other': rep})
  with pytest.raises(ValueError, match='positive integer'):
    Checkpointer('/tmp/unused-ck', keep=0)
  with pytest.raises(ValueError, match='not JSON-able'):
    Checkpointer('/tmp/unused-ck', config_fingerprint={'f': object()})


_CHILD = '''
import os, signal, sys, json, time
import numpy as np
import jax
from jax.experimental import multihost_utils
from stylex_jax import sharding, checkpointing, preemption
pid, port, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    sharding.initialize_distributed(f"127.0.0.1:{port}", 2, pid)
    mesh = sharding.make_mesh()
except Exception as e:
    print("INIT_FAILED", repr(e), flush=True)
    sys.exit(3)
print("INIT_OK", flush=True)
preemption.install_handler()  # leaves jax's native SIGTERM notifier in place
local = np.arange(8, dtype=np.float32).reshape(4, 2) + 100 * pid
state = {"x": sharding.shard_batch({"x": local}, mesh)["x"],
         "w": sharding.replicate(np.arange(3, dtype=np.float32), mesh), "step": 0}
ck = checkpointing.Checkpointer(directory, keep=2, save_interval_steps=1000, config_fingerprint={"n": 8})
saved0 = ck.save(0, state)
if pid == 1:
    os.kill(os.getpid(), signal.SIGTERM)
preempt_step, saved = None, False
for step in range(1, 200):
    multihost_utils.sync_global_devices(f"train-step-{step}")  # stands in for a training step's collective
    time.sleep(0.01)
    state["step"] = step
    if ck.reached_preemption(step):
        preempt_step, saved = step, ck.save(step, state)
        break
steps = ck.all_steps()
abstract = checkpointing.abstract_like(state, {"x": sharding.data_sharding(mesh), "w": sharding.replicated(mesh),
                                                "step": None})
restored, meta = ck.restore(abstract)
ck.close()
shards_ok = all(np.array_equal(np.asarray(s.data), np.asarray(o.data))
                for s, o in zip(restored["x"].addressable_shards, state["x"].addressable_shards))
print("RESULT", json.dumps({"pid": pid, "saved0": saved0, "preempt_step": preempt_step, "saved": saved,
                            "steps": steps, "restored_step": restored["step"], "shards_ok": shards_ok,
                            "x_spec_ok": restored["x"].sharding.spec == jax.sharding.PartitionSpec("data"),
                            "w": np.asarray(restored["w"].addressable_data(0)).tolist()}), flush=True)
'''


def test_two_process_save_restore_and_preemption_sync(tmp_path):
  """2 jax processes: sharded save/restore, and SIGTERM on one process -> both save at the same step."""
  import json

  from test_sharding import run_two_processes
  outputs = run_two_processes(_CHILD, tmp_path, extra_args=(str(tmp_path / 'ck'),))
  results = [json.loads(next(l for l in o.splitlines() if l.startswith('RESULT '))[7:]) for o in outputs]
  assert results[0]['preempt_step'] is not None
  for r in results:
    assert r['saved0'] and r['saved']
    assert r['preempt_step'] == results[0]['preempt_step']  # agreed across processes
    assert r['steps'] == [0, r['preempt_step']] and r['restored_step'] == r['preempt_step']
    assert r['shards_ok'] and r['x_spec_ok'] and r['w'] == [0.0, 1.0, 2.0]


# ---------------------------------------------------------------------------------------------
# Damaged checkpoints: fall back to the previous intact step, never delete the damaged one
# ---------------------------------------------------------------------------------------------


def _two_steps(directory):
  """Checkpoints at steps 1 and 2 of a small state (values = step) with metadata {'pos': step}."""
  with Checkpointer(directory, keep=3, save_interval_steps=1, config_fingerprint={'res': 8}) as ck:
    for s in (1, 2):
      ck.save(s, {
          'w': jnp.full((32, 16), float(s)),
          'b': jnp.arange(5.0) + s,
          'key': jax.random.key(s)
      }, metadata={'pos': s})


def _truncate_data(step_dir):
  """Truncates every array data file of the step's OCDBT database (state/d/*) to half its size."""
  files = [os.path.join(step_dir, 'state', 'd', f) for f in os.listdir(os.path.join(step_dir, 'state', 'd'))]
  assert files
  for f in files:
    with open(f, 'r+b') as fh:
      fh.truncate(os.path.getsize(f) // 2)


def _garble_data(step_dir):
  """Overwrites every array data file of the step with random bytes of the same length."""
  for f in os.listdir(os.path.join(step_dir, 'state', 'd')):
    path = os.path.join(step_dir, 'state', 'd', f)
    with open(path, 'r+b') as fh:
      fh.write(np.random.default_rng(0).bytes(os.path.getsize(path)))


def _truncate_meta(step_dir):
  path = os.path.join(step_dir, 'meta', 'metadata')
  with open(path, 'r+b') as fh:
    fh.truncate(10)


_ABSTRACT = {'w': jax.ShapeDtypeStruct((32, 16), jnp.float32), 'b': jax.ShapeDtypeStruct((5,), jnp.float32)}


def _fallback_warnings(caplog):
  return [r.getMessage() for r in caplog.records if r.levelname == 'WARNING' and 'damaged (' in r.getMessage()]


@pytest.mark.parametrize('damage', [_truncate_data, _garble_data, _truncate_meta])
def test_damaged_latest_falls_back_with_one_warning_and_keeps_the_files(tmp_path, caplog, damage):
  directory = str(tmp_path / 'ck')
  _two_steps(directory)
  damage(os.path.join(directory, '2'))
  before = _snapshot(os.path.join(directory, '2'))
  rep = checkpointing_replicated()
  abstract = abstract_like({**_ABSTRACT, 'key': jax.eval_shape(lambda: jax.random.key(0))}, rep)
  caplog.set_level('WARNING', logger='stylex_jax.checkpointing')

  # a later stage loading the fields (restore_latest's path)
  with Checkpointer(directory, config_fingerprint={'res': 8}) as ck:
    fields, meta = ck.restore_fields({'w': abstract['w']})
  np.testing.assert_array_equal(np.asarray(fields['w']), np.full((32, 16), 1.0))
  assert meta == {'pos': 1}
  warnings = _fallback_warnings(caplog)
  assert len(warnings) == 1, warnings
  assert 'step 2' in warnings[0] and 'using step 1' in warnings[0] and directory in warnings[0]
  assert '\n' not in warnings[0]

  # the stage resuming itself: complete check, restore, then training saves step 2 again
  caplog.clear()
  with Checkpointer(directory, keep=3, save_interval_steps=1, config_fingerprint={'res': 8}) as ck:
    assert ck.latest_step() == 2  # complete on disk ...
    assert ck.latest_intact_step() == 1  # ... but damaged
    state, meta = ck.restore(abstract)
    assert meta == {'pos': 1} and float(state['w'][0, 0]) == 1.0
    assert len(_fallback_warnings(caplog)) == 1  # said once, though two calls met the damaged step
    assert _snapshot(os.path.join(directory, '2')) == before  # nothing deleted or modified
    assert ck.save(2, {**state, 'w': jnp.full((32, 16), 22.0)}, metadata={'pos': 22})
    ck.wait_until_finished()
    assert ck.all_steps() == [1, 2]
  moved = [r.getMessage() for r in caplog.records if 'moved damaged checkpoint step 2' in r.getMessage()]
  assert len(moved) == 1 and os.path.join(directory, 'damaged', '2') in moved[0]
  assert _snapshot(os.path.join(directory, 'damaged', '2')) == before  # moved intact, byte for byte

  caplog.clear()
  with Checkpointer(directory, config_fingerprint={'res': 8}) as ck:
    assert ck.latest_intact_step() == 2
    state, meta = ck.restore(abstract)
  assert meta == {'pos': 22} and float(state['w'][0, 0]) == 22.0
  assert not _fallback_warnings(caplog)


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path):
  directory = str(tmp_path / 'ck')
  _two_steps(directory)
  _truncate_meta(os.path.join(directory, '2'))
  _truncate_data(os.path.join(directory, '1'))
  before = _snapshot(directory)
  with Checkpointer(directory, config_fingerprint={'res': 8}) as ck:
    assert ck.latest_intact_step() is None
    with pytest.raises(ValueError, match=r'every checkpoint in .* is damaged \(step 2: meta: .*step 1: state: .*'
                       r'move .* aside'):
      ck.restore(abstract_like(_ABSTRACT, checkpointing_replicated()))
    with pytest.raises(ValueError, match=r'step 1 .* is damaged'):
      ck.restore_fields({'w': abstract_like(_ABSTRACT, checkpointing_replicated())['w']}, step=1)
  assert _snapshot(directory) == before


def test_damaged_latest_does_not_hide_another_config(tmp_path):
  directory = str(tmp_path / 'ck')
  _two_steps(directory)
  _truncate_data(os.path.join(directory, '2'))
  with Checkpointer(directory, config_fingerprint={'res': 16}) as ck:
    with pytest.raises(ValueError, match=r'another config: res: 8 \(checkpoint\) vs 16 \(now\)'):
      ck.restore(abstract_like(_ABSTRACT, checkpointing_replicated()))


def test_intact_checkpoint_of_another_shape_is_a_mismatch_not_damage(tmp_path, caplog):
  directory = str(tmp_path / 'ck')
  _two_steps(directory)
  caplog.set_level('WARNING', logger='stylex_jax.checkpointing')
  wrong = abstract_like({'w': jax.ShapeDtypeStruct((4, 4), jnp.float32)}, checkpointing_replicated())
  with Checkpointer(directory, config_fingerprint={'res': 8}) as ck:
    with pytest.raises(ValueError, match=r'checkpoint step 2 .* lacks the fields \[.w.\] or they do not match'):
      ck.restore_fields(wrong)
  assert not _fallback_warnings(caplog)


def test_a_state_with_nan_or_inf_is_never_written(tmp_path):
  mesh = jax.make_mesh((8,), ('data',), axis_types=(jax.sharding.AxisType.Auto,))
  split = NamedSharding(mesh, P('data'))
  state = {'w': jax.device_put(jnp.ones((8, 4)), split), 'step': 3, 'key': jax.random.key(0), 'p': np.float32(0.5)}
  assert checkpointing.nonfinite_leaves(state) == []
  with Checkpointer(str(tmp_path / 'ck'), save_interval_steps=2) as ck:
    assert ck.save(2, state)
    ck.wait_until_finished()
    bad = {**state, 'w': jax.device_put(state['w'].at[5, 1].set(jnp.nan), split)}  # on one of the 8 shards
    assert not ck.save(3, bad)  # not due: nothing is checked or written
    with pytest.raises(checkpointing.NonFiniteError, match=r"step 4 .*NaN/Inf values in \['w'\]"):
      ck.save(4, bad)
    with pytest.raises(ValueError, match=r"\['p'\]"):
      ck.save(4, {**state, 'p': np.float32(np.inf)}, force=True)
    assert ck.all_steps() == [2]
  assert sorted(p for p in os.listdir(tmp_path / 'ck') if p.isdigit()) == ['2']


def test_metadata_of_the_newest_readable_step(tmp_path):
  """Checkpointer.metadata (what the encoder's upstream check reads): the newest step's, the previous one's when
  the newest meta is truncated, a clear error for a step that is not there."""
  directory = str(tmp_path / 'ck')
  _two_steps(directory)
  with Checkpointer(directory, config_fingerprint={'res': 8}) as ck:
    assert ck.metadata() == {'pos': 2} and ck.metadata(1) == {'pos': 1}
    with pytest.raises(FileNotFoundError, match='step 7'):
      ck.metadata(7)
  _truncate_meta(os.path.join(directory, '2'))
  with Checkpointer(directory, config_fingerprint={'res': 8}) as ck:
    assert ck.metadata() == {'pos': 1}
