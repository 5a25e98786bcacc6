"""Preemption stops the whole pipeline (`stages.Preempted`): a real SIGTERM during the gan stage of launch/train.py
saves, exits 0 with one `incomplete:` line and runs no later stage, and the same command resumes; a notice between
stages stops before the next one. "Already done" covers provenance: an encoder trained against another GAN step is
retrained, an export made from other checkpoints is recomputed."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from conftest import smoke_config
from stylex_jax import checkpointing, preemption, stages, writers
from stylex_jax.stages import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sigterm_during_gan_stops_the_pipeline_and_the_same_command_resumes(smoke_stages, tmp_path, preempt_at):
  config, work = smoke_stages(str(tmp_path / 'work'), ('classifier',))  # the classifier is done: gan runs first
  command = [
      sys.executable,
      os.path.join(ROOT, 'launch', 'train.py'), '--config',
      os.path.join(ROOT, 'configs', 'demo.py:smoke'), f'--config.data.data_dir={config.data.data_dir}',
      '--config.num_devices=2', f'--config.stages={config.stages}', '--workdir', work
  ]
  env = {
      **os.environ,
      'JAX_PLATFORMS': 'cpu',
      'PYTHONPATH': ROOT,
      'STYLEX_TEST_PREEMPT_AT': 'gan:2',  # the gan stage sends itself a real SIGTERM at step 2
      'JAX_COMPILATION_CACHE_DIR': jax.config.jax_compilation_cache_dir,
      'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0.5',
      'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0'
  }
  proc = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = [l for l in proc.stdout.splitlines() if l.startswith('incomplete:')]
  assert len(lines) == 1, proc.stdout[-3000:]
  assert 'preempted in the gan stage at step 2' in lines[0] and lines[0].endswith(f'--workdir {work}')
  assert checkpointing.latest_step(os.path.join(work, 'gan', 'checkpoints')) == 2
  assert not os.path.exists(os.path.join(work, 'encoder')) and not os.path.exists(os.path.join(work, 'explain'))

  # The same command again, in-process (compiled programs are cached). A resumed GAN equals the uninterrupted one
  # (test_train_gan), so the session's encoder, trained against gan step 4, is up to date once the gan is back at
  # step 4: copied in to keep the test fast, it is recognised as done by its recorded upstream steps.
  smoke_stages(str(tmp_path / 'session'), ('encoder',))
  os.rename(tmp_path / 'session' / 'encoder', os.path.join(work, 'encoder'))
  results = stages.run(config, work)
  assert list(results) == ['classifier', 'gan', 'encoder', 'explain']
  assert results['gan']['step'] == config.gan.num_steps and results['explain']['images'] == config.explain.num_images
  assert results['encoder']['upstream'] == {'classifier': config.classifier.num_steps, 'gan': config.gan.num_steps}
  rows = writers.read_metrics(os.path.join(work, 'gan', 'metrics.jsonl'))
  logged = [r['step'] for r in rows if 'g_loss' in r]
  assert logged == sorted(set(logged)) == [2, 4]  # each step once across the two runs


def test_a_notice_between_stages_stops_before_the_next_one(tmp_path, preempt_at):
  preemption.request()  # as the handler does on SIGTERM / Ctrl-C
  with pytest.raises(stages.Preempted, match='in the classifier stage at step 0 .before it started'):
    stages.run(smoke_config(tmp_path / 'tfds', 'classifier,gan'), str(tmp_path / 'work'))
  assert not os.path.exists(tmp_path / 'work' / 'classifier')


def test_encoder_trained_against_another_gan_step_is_retrained(tmp_path, capsys):
  stage_config = ml_collections.ConfigDict(dict(keep_checkpoints=3, checkpoint_every=2, num_steps=4))
  upstream = {'classifier': 6, 'gan': 4}
  stage = common.open_stage('encoder', str(tmp_path), stage_config, {'width': 8}, upstream)
  stage.save(4, {'w': jnp.ones(2)}, last=True)
  stage.ckpt.close()
  writers.write_json(stage.summary_path, {'stage': 'encoder', 'step': 4, 'upstream': upstream})
  assert common.open_stage('encoder', str(tmp_path), stage_config, {'width': 8}, dict(upstream)).completed['step'] == 4
  capsys.readouterr()

  moved = common.open_stage('encoder', str(tmp_path), stage_config, {'width': 8}, {'classifier': 6, 'gan': 8})
  assert moved.completed is None and moved.ckpt.latest_step() is None  # starts afresh
  moved.ckpt.close()
  out = capsys.readouterr().out
  assert 'gan step 4 -> 8' in out and 'retraining from scratch' in out and out.count('\n') == 1
  stale = [p for p in os.listdir(tmp_path / 'encoder') if p.startswith('checkpoints.stale-')]
  assert len(stale) == 1 and {'4', 'summary.json'} <= set(os.listdir(tmp_path / 'encoder' / stale[0]))
  assert not os.path.exists(stage.summary_path)

  missing = common.open_stage('encoder', str(tmp_path / 'other'), stage_config, {'width': 8}, {'gan': None})
  missing.ckpt.close()  # an upstream stage missing: nothing judged or moved (its loader names the stage to run)


def test_export_made_from_other_checkpoints_is_recomputed(tmp_path, capsys):
  config = smoke_config(tmp_path / 'tfds')
  out = tmp_path / 'explain'
  out.mkdir()
  made_from = {'classifier': 6, 'gan': 4, 'encoder': 4}
  schema = {'config': json.loads(json.dumps(config.to_dict(), default=str)), 'provenance': made_from}
  (out / 'schema.json').write_text(json.dumps(schema))
  (out / 'summary.json').write_text(json.dumps({'stage': 'explain', 'images': 4}))
  assert common.open_export_stage('explain', str(tmp_path), config, dict(made_from)).completed['images'] == 4
  capsys.readouterr()
  assert common.open_export_stage('explain', str(tmp_path), config, {**made_from, 'gan': 8}).completed is None
  line = capsys.readouterr().out
  assert 'gan step 4 -> 8' in line and 'recomputing' in line
  del schema['provenance']  # an export made before provenance was recorded
  (out / 'schema.json').write_text(json.dumps(schema))
  assert common.open_export_stage('explain', str(tmp_path), config, made_from).completed is None
