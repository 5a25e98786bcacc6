"""Tests for stylex_jax.stages.common with a toy state (no model, no data): a stage whose newest checkpoint is
damaged is not complete and resumes from the previous intact one, a later stage loading it falls back the same
way, an unreadable summary.json is recomputed with one line naming it, and nothing damaged is deleted; then the
same with the real checkpoints of the session's trained smoke stages (conftest.smoke_stages)."""
import json
import os
import shutil
import subprocess
import sys

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


def _damaged_copy_of_latest(ckpt_dir, new_step):
  """Copies the latest step directory of `ckpt_dir` to `new_step` (a newer checkpoint) and truncates its array
  data: a damaged newest checkpoint in front of an intact one."""
  latest = max(int(n) for n in os.listdir(ckpt_dir) if n.isdigit())
  shutil.copytree(os.path.join(ckpt_dir, str(latest)), os.path.join(ckpt_dir, str(new_step)))
  _truncate_data(os.path.join(ckpt_dir, str(new_step)))
  return latest


def test_real_stages_fall_back_past_a_damaged_newest_checkpoint(tmp_path, smoke_stages, caplog, capsys):
  from stylex_jax.stages import classifier as classifier_stage
  from stylex_jax.stages import gan as gan_stage
  config, work = smoke_stages(str(tmp_path / 'work'), ('classifier', 'gan'))
  ckpt_dir = os.path.join(work, 'gan', 'checkpoints')
  intact = _damaged_copy_of_latest(ckpt_dir, 1000)
  before = _snapshot(os.path.join(ckpt_dir, '1000'))
  caplog.set_level('WARNING', logger='stylex_jax.checkpointing')

  # a later stage loads G_ema of the previous checkpoint, with one warning naming both steps
  _, g_ema, _ = gan_stage.load_generator(work, config)
  assert jax.tree.leaves(g_ema)
  warnings = _fallback_warnings(caplog)
  assert len(warnings) == 1 and 'step 1000' in warnings[0] and f'using step {intact}' in warnings[0], warnings

  # the stage itself: its intact checkpoint is at num_steps, so it is complete (one warning, no retraining)
  caplog.clear()
  capsys.readouterr()
  summary = gan_stage.train_and_evaluate(config, work)
  assert summary['step'] == config.gan.num_steps
  assert len(_fallback_warnings(caplog)) == 1 and 'already trained' in capsys.readouterr().out
  assert _snapshot(os.path.join(ckpt_dir, '1000')) == before  # left for the user, byte for byte

  # an unreadable classifier summary.json: one line naming it, recomputed from the checkpoint (no training)
  summary_path = os.path.join(work, 'classifier', 'summary.json')
  with open(summary_path) as f:
    saved = json.load(f)
  with open(summary_path, 'w') as f:
    f.write('{"stage": "classif')
  summary = classifier_stage.train_and_evaluate(config, work)
  out = capsys.readouterr().out
  assert sum('summary.json' in line and 'recomputing' in line for line in out.splitlines()) == 1, out
  assert summary['step'] == saved['step'] and summary['accuracy'] == pytest.approx(saved['accuracy'])
  with open(summary_path) as f:
    assert json.load(f)['step'] == saved['step']


def test_launch_with_every_checkpoint_damaged_is_one_line(tmp_path, smoke_stages):
  config, work = smoke_stages(str(tmp_path / 'work'), ('classifier',))
  ckpt_dir = os.path.join(work, 'classifier', 'checkpoints')
  for step in os.listdir(ckpt_dir):
    if step.isdigit():
      _truncate_data(os.path.join(ckpt_dir, step))
  os.remove(os.path.join(work, 'classifier', 'summary.json'))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([
      sys.executable,
      os.path.join(root, 'launch', 'train.py'), '--config',
      os.path.join(root, 'configs', 'demo.py:smoke'), '--config.stages=classifier',
      f'--config.data.data_dir={config.data.data_dir}', '--config.num_devices=1', '--workdir', work
  ], capture_output=True, text=True, timeout=300, env={
      **os.environ, 'JAX_PLATFORMS': 'cpu'
  })
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert proc.returncode != 0 and len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert errors[0].startswith('error: every checkpoint in') and 'is damaged' in errors[0]
