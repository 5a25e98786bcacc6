"""Tests for stylex_jax.stages.common with a toy state (no model, no data): a stage whose newest checkpoint is
damaged is not complete and resumes from the previous intact one, a later stage loading it falls back the same
way, an unreadable summary.json is recomputed with one line naming it, and nothing damaged is deleted."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import struct

from stylex_jax import checkpointing
from stylex_jax.stages import common
from test_checkpointing import _fallback_warnings, _snapshot, _truncate_data, checkpointing_replicated

FINGERPRINT = {'toy': 1}


@struct.dataclass
class _ToyState:
  step: jax.Array
  params: dict
  opt: dict


def _init(key):
  return _ToyState(step=jnp.zeros((), jnp.int32), params={'w': jax.random.normal(key, (16, 8))},
                   opt={'m': jnp.zeros((16, 8))})


def _stage_config(num_steps=2):
  return ml_collections.ConfigDict(dict(num_steps=num_steps, checkpoint_every=1, keep_checkpoints=3))


def _train(workdir, num_steps=2):
  """The toy stage's loop: resume, 'train' (params += 1 per step), checkpoint every step, write summary.json."""
  stage = common.open_stage('toy', workdir, _stage_config(num_steps), FINGERPRINT)
  if stage.completed is not None:
    return stage.completed, None
  state = stage.restore_or_init(_init, jax.random.key(0), checkpointing_replicated())
  start = int(state.step)
  for step in range(start + 1, num_steps + 1):
    state = state.replace(step=jnp.asarray(step, jnp.int32), params={'w': state.params['w'] + 1.0})
    stage.save(step, state, last=step == num_steps)
  stage.ckpt.close()
  summary = dict(stage='toy', step=int(state.step))
  with open(stage.summary_path, 'w') as f:
    json.dump(summary, f)
  return summary, start


def test_damaged_newest_checkpoint_is_not_complete_and_resumes_from_the_previous(tmp_path, caplog, capsys):
  workdir = str(tmp_path)
  assert _train(workdir) == ({'stage': 'toy', 'step': 2}, 0)
  assert _train(workdir)[1] is None  # complete: not retrained
  ckpt_dir = os.path.join(workdir, 'toy', 'checkpoints')
  _truncate_data(os.path.join(ckpt_dir, '2'))
  before = _snapshot(os.path.join(ckpt_dir, '2'))
  caplog.set_level('WARNING', logger='stylex_jax.checkpointing')
  capsys.readouterr()

  # a later stage loading the damaged stage's fields: the previous step, one warning, nothing moved
  abstract = checkpointing.abstract_like(jax.eval_shape(_init, jax.random.key(0)).params, checkpointing_replicated())
  fields = common.restore_latest('toy', workdir, FINGERPRINT, {'params': abstract}, 'with the same --workdir')
  assert float(fields['params']['w'][0, 0] - _init(jax.random.key(0)).params['w'][0, 0]) == pytest.approx(1.0)
  warnings = _fallback_warnings(caplog)
  assert len(warnings) == 1 and 'step 2' in warnings[0] and 'using step 1' in warnings[0]
  assert _snapshot(os.path.join(ckpt_dir, '2')) == before

  # the stage itself: not complete, resumes from step 1, retrains step 2, the damaged step is kept aside
  caplog.clear()
  summary, start = _train(workdir)
  assert start == 1 and summary['step'] == 2
  assert len(_fallback_warnings(caplog)) == 1
  assert _snapshot(os.path.join(ckpt_dir, 'damaged', '2')) == before
  assert 'already trained' not in capsys.readouterr().out
  caplog.clear()
  assert _train(workdir)[1] is None  # complete again, silently
  assert not _fallback_warnings(caplog)


def test_unreadable_summary_is_recomputed_with_one_line(tmp_path, capsys):
  workdir = str(tmp_path)
  _train(workdir)
  summary_path = os.path.join(workdir, 'toy', 'summary.json')
  with open(summary_path, 'w') as f:
    f.write('{"stage": "toy", "st')  # truncated
  capsys.readouterr()
  summary, start = _train(workdir)
  out = capsys.readouterr().out.strip().splitlines()
  assert start == 2 and summary == {'stage': 'toy', 'step': 2}  # resumed at the end: nothing retrained
  about = [line for line in out if 'summary.json' in line]
  assert len(about) == 1 and summary_path in about[0] and 'recomputing' in about[0], out
  assert out[1:] == [f'[toy] resumed from step 2 ({os.path.dirname(summary_path)}/checkpoints)']
  with open(summary_path) as f:
    assert json.load(f) == summary
