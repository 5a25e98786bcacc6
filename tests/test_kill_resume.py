"""kill -9 at a bad moment, then the same stage again: it resumes from the last complete checkpoint and ends equal
to the uninterrupted run (every array of the final checkpoint, every metrics row but the timing ones, each step
logged once).

One subprocess of launch/train.py per training stage, killed with SIGKILL (no handler runs, nothing is flushed)
by a watcher that polls the stage's checkpoint folder:
  classifier  during its first checkpoint write (orbax's temporary step folder exists at the kill; nothing complete
              yet, so the rerun starts from scratch over the half-written folder),
  gan         at a seeded random moment within a second after its first complete checkpoint (mid-step, mid-log,
              mid-sample, or after the end if the run is faster: the equality must hold wherever it lands),
  encoder     during its second checkpoint write (resumes from step 2 over a half-written step 4).
The rerun is this test process's stages.run (the "next start"; its compiled programs are cached); the reference is
the session's uninterrupted smoke run (`smoke_stages`), same config and devices.

And an explain export of users' files (launch/explain.py --images, 3 batches of 2 in 3 shards) killed right after
its first commit to `.export-partial/`: the rerun keeps the finished shard, explains the rest and ends byte-identical
to an uninterrupted export (TFRecords, index.jsonl, strips, GIFs).
"""
import math
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from stylex_jax import checkpointing, stages, writers
from stylex_jax.explain import export
from stylex_jax.stages import explain as explain_stage
from test_explain_stage import _tree_bytes, random_scans

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMING = ('images_per_sec', 'seconds', 'wall')
UPSTREAM = {'classifier': (), 'gan': ('classifier',), 'encoder': ('classifier', 'gan')}


def _writing(ckpt_dir):
  """True while orbax writes a step: its temporary folder ('<step>.orbax-checkpoint-tmp-<n>') exists."""
  try:
    return any('tmp' in name for name in os.listdir(ckpt_dir))
  except FileNotFoundError:
    return False


def _env():
  return {
      **os.environ, 'JAX_PLATFORMS': 'cpu',
      'PYTHONPATH': ROOT,
      'JAX_COMPILATION_CACHE_DIR': jax.config.jax_compilation_cache_dir,
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0.5',
      'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'
  }


def _kill_when(proc, ready, deadline_s=300):
  """Polls every 2 ms until ready() is true, then SIGKILLs proc; returns whether it was killed while running."""
  end = time.monotonic() + deadline_s
  while proc.poll() is None and time.monotonic() < end:
    if ready():
      os.kill(proc.pid, signal.SIGKILL)
      proc.wait()
      return True
    time.sleep(0.002)
  return False


def _after(seconds, condition):
  """A ready() for _kill_when: true once `seconds` have passed since condition() first held."""
  since = []

  def ready():
    if not since and condition():
      since.append(time.monotonic())
    return bool(since) and time.monotonic() - since[0] >= seconds

  return ready


def _rows(path):
  """metrics.jsonl rows without their timing keys: comparable across runs."""
  return [{k: v for k, v in row.items() if not any(t in k for t in TIMING)} for row in writers.read_metrics(path)]


def _assert_rows_equal(got, want):
  assert [r['step'] for r in got] == [r['step'] for r in want]
  for g, w in zip(got, want):
    assert g.keys() == w.keys(), (g.keys(), w.keys())
    for k in g:
      if isinstance(w[k], float) and isinstance(g[k], float) and not (math.isnan(w[k]) and math.isnan(g[k])):
        assert g[k] == pytest.approx(w[k], rel=1e-6, abs=1e-7), (g['step'], k)
      else:
        assert g[k] == w[k], (g['step'], k)


@pytest.mark.parametrize('stage', ['classifier', 'gan', 'encoder'])
def test_kill_9_then_rerun_equals_the_uninterrupted_run(stage, smoke_stages, tmp_path):
  config, work = smoke_stages(str(tmp_path / 'work'), UPSTREAM[stage])
  _, ref = smoke_stages(str(tmp_path / 'ref'), (stage,))
  ckpt_dir = os.path.join(work, stage, 'checkpoints')
  command = [
      sys.executable,
      os.path.join(ROOT, 'launch', 'train.py'), '--config',
      os.path.join(ROOT, 'configs', 'demo.py:smoke'), f'--config.data.data_dir={config.data.data_dir}',
      '--config.num_devices=2', f'--config.stages={stage}', '--workdir', work
  ]
  log = tmp_path / 'stderr.txt'  # a file, not a pipe: a full pipe would stall the child before the moment we wait for
  with open(log, 'w') as err:
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
  try:
    if stage == 'classifier':
      killed = _kill_when(proc, lambda: _writing(ckpt_dir))
      assert killed, 'the classifier finished before its first checkpoint write was seen'
      assert checkpointing.latest_step(ckpt_dir) is None
    elif stage == 'encoder':
      killed = _kill_when(proc, lambda: checkpointing.latest_step(ckpt_dir) == 2 and _writing(ckpt_dir))
      assert killed, 'the encoder finished before its second checkpoint write was seen'
    else:
      delay = random.Random(9).uniform(0.0, 1.0)
      killed = _kill_when(proc, _after(delay, lambda: checkpointing.latest_step(ckpt_dir) is not None))
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.wait()
  stderr = log.read_text()
  assert (proc.returncode == -signal.SIGKILL) == killed, stderr[-3000:]
  # the next start: this process, the same config and stage
  config.stages = stage
  results = stages.run(config, work)
  assert results[stage]['step'] == config[stage].num_steps

  want = checkpointing.read_numpy(os.path.join(ref, stage, 'checkpoints'))
  got = checkpointing.read_numpy(ckpt_dir)
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  assert checkpointing.latest_step(ckpt_dir) == checkpointing.latest_step(os.path.join(ref, stage, 'checkpoints'))
  _assert_rows_equal(_rows(os.path.join(work, stage, 'metrics.jsonl')), _rows(os.path.join(ref, stage,
                                                                                           'metrics.jsonl')))


def test_kill_9_during_an_images_export_then_rerun_gives_the_same_files(smoke_stages, tmp_path):
  config, work = smoke_stages(str(tmp_path / 'work'))
  config.explain.batch_size = config.explain.examples_per_shard = 2  # 3 batches, 3 shards, a commit after each
  config.explain.report_max_images = 3
  scans = random_scans(tmp_path / 'scans', 6, seed=5)
  whole = explain_stage.run(config, work, image_patterns=str(scans), output_dir=str(tmp_path / 'whole'))
  assert whole['images'] == 6

  out = tmp_path / 'out'
  command = [
      sys.executable,
      os.path.join(ROOT, 'launch', 'explain.py'), '--config',
      os.path.join(ROOT, 'configs', 'demo.py:smoke'), f'--config.data.data_dir={config.data.data_dir}',
      '--config.num_devices=2', '--config.explain.batch_size=2', '--config.explain.examples_per_shard=2',
      '--config.explain.report_max_images=3', '--workdir', work, '--images',
      str(scans), '--output_dir',
      str(out)
  ]
  log = tmp_path / 'stderr.txt'  # a file, not a pipe: a full pipe would stall the child before the moment we wait for
  with open(log, 'w') as err:
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
  try:
    killed = _kill_when(proc, lambda: (out / export.PARTIAL_DIR / export.MANIFEST).exists())
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.wait()
  stderr = log.read_text()
  assert killed and proc.returncode == -signal.SIGKILL, stderr[-3000:]
  assert not (out / 'schema.json').exists()

  resumed = explain_stage.run(config, work, image_patterns=str(scans), output_dir=str(out))
  assert resumed['images'] == 6 and not (out / export.PARTIAL_DIR).exists()
  got, want = _tree_bytes(out), _tree_bytes(tmp_path / 'whole')
  same = [k for k in want if k.startswith(('tfrecords/', 'strips/', 'gifs/')) or k == 'index.jsonl']
  assert len([k for k in same if k.startswith('tfrecords/')]) == 3
  assert {k: got.get(k) for k in same} == {k: want[k] for k in same}
