"""Every config loads (all variants), mirrors the constructors it feeds, and rejects unknown keys and variants."""
import importlib
import os
import subprocess
import sys

import ml_collections
import pytest

from stylex_jax import stages
from stylex_jax.stages import checks

CONFIGS = {
    'demo': ('', 'smoke', 'grades', 'marker', 'long', 'histology', 'shortcut', 'shortcut_smoke'),
    'kl_xray': ('', 'smoke', 'binary'),
    'pcam': ('', 'smoke'),
    'medmnist': ('', 'smoke', 'pneumonia', 'breast', 'path', 'pneumonia_smoke', 'breast_smoke', 'path_smoke')
}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('name,variant', [(n, v) for n, vs in CONFIGS.items() for v in vs])
def test_config_loads_and_is_consistent(name, variant):
  config = importlib.import_module(f'configs.{name}').get_config(variant)
  assert isinstance(config, ml_collections.ConfigDict)
  stages.parse_stages(config.stages)
  assert config.data.channels in (1, 3)
  assert config.data.num_classes >= 2
  if config.data.label_threshold >= 0:
    assert config.data.num_classes == 2
  assert config.classifier.batch_size > 0 and config.classifier.num_steps > 0
  # the model group builds the model it names (no unknown kwargs)
  from stylex_jax.models import classifier
  model = classifier.create_classifier(**dict(config.classifier.model), num_classes=config.data.num_classes)
  assert model.num_classes == config.data.num_classes
  if 'gan' in config.stages:
    from stylex_jax import sharding
    from stylex_jax.train import gan
    models = gan.build_models(config)  # constructs G and D from the groups: no unknown kwargs
    assert models.generator.resolution == config.data.image_size
    gan.check_config(config, sharding.make_mesh(1))
  # every shipped config passes the up-front checks of its stages (and of explain / evaluate, run by hand later)
  config.num_devices = 1
  checks.check_stages(config, sorted(set(stages.parse_stages(config.stages)) | {'explain', 'evaluate'}))


def test_unknown_variant_is_named():
  demo = importlib.import_module('configs.demo')
  with pytest.raises(ValueError, match='bogus'):
    demo.get_config('bogus')


def test_locked_config_rejects_unknown_key():
  config = importlib.import_module('configs.demo').get_config('')
  config.lock()
  with pytest.raises(AttributeError, match='learnin_rate'):
    config.classifier.optimizer.learnin_rate = 1.0


def test_parse_stages_errors():
  assert stages.parse_stages(' classifier ') == ['classifier']
  with pytest.raises(ValueError, match='unknown stage'):
    stages.parse_stages('classifier,ganz')
  with pytest.raises(ValueError, match='empty'):
    stages.parse_stages(' , ')


def _launch(script, *args, timeout=120):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'launch', script), *args], capture_output=True, text=True,
                        timeout=timeout, env={
                            **os.environ, 'JAX_PLATFORMS': 'cpu'
                        })


@pytest.mark.parametrize('script', ['train.py', 'explain.py', 'evaluate.py'])
def test_launch_rejects_unknown_config_key_in_one_line_with_the_valid_keys(tmp_path, script):
  workdir = tmp_path / 'work'
  proc = _launch(script, '--config', os.path.join(ROOT, 'configs', 'demo.py:smoke'), '--config.gan.foo=1', '--workdir',
                 str(workdir))
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1, proc.stderr
  assert "unknown config key 'gan.foo' (--config.gan.foo=1)" in lines[0]
  assert 'config.gan has no' in lines[0] and 'batch_size' in lines[0] and 'r1_gamma' in lines[0]
  assert not workdir.exists()


def test_launch_unknown_nested_key_suggests_the_close_one(tmp_path):
  proc = _launch('train.py', '--config', os.path.join(ROOT, 'configs', 'demo.py'),
                 '--config.classifier.optimizer.learnin_rate=3', '--workdir', str(tmp_path / 'work'))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1, proc.stderr
  assert "did you mean 'classifier.optimizer.learning_rate'?" in lines[0] and 'warmup_steps' in lines[0]


def test_launch_unknown_variant_is_one_line(tmp_path):
  proc = _launch('train.py', '--config', os.path.join(ROOT, 'configs', 'demo.py:bogus'), '--workdir',
                 str(tmp_path / 'work'))
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  assert "unknown demo variant 'bogus'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 2  # + usage hint


def test_every_stage_constraint_is_checked_before_the_first_stage(tmp_path):
  """image_size=48 trains a classifier fine but no GAN: refused before the classifier (or any folder) starts."""
  from conftest import smoke_config
  config = smoke_config(tmp_path / 'tfds', 'classifier,gan,encoder,explain,evaluate')
  config.data.image_size = 48
  workdir = tmp_path / 'work'
  with pytest.raises(ValueError) as info:
    stages.run(config, str(workdir))
  message = str(info.value)
  assert '\n' not in message and 'resolution=48' in message and 'power of two' in message
  assert not workdir.exists() and not (tmp_path / 'tfds').exists()  # no folder, no data generated


def test_launch_train_refuses_a_late_stage_constraint_in_one_line_before_anything_runs(tmp_path):
  workdir = tmp_path / 'work'
  proc = _launch('train.py', '--config', os.path.join(ROOT, 'configs', 'demo.py:smoke'), '--config.data.image_size=48',
                 f'--config.data.data_dir={tmp_path / "tfds"}', '--workdir', str(workdir))
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode != 0 and len(lines) == 1, proc.stderr
  assert lines[0].startswith('error: config check before running classifier, gan') and 'resolution=48' in lines[0]
  assert not workdir.exists() and not proc.stdout


def test_check_stages_lists_every_problem_on_one_line():
  from conftest import smoke_config
  config = smoke_config('/nonexistent')
  config.data.num_classes = 5  # with label_threshold=2 (binary labels)
  config.classifier.eval_every = 0
  config.explain.mode = 'bogus'
  config.evaluate.real_images = 0
  with pytest.raises(ValueError) as info:
    checks.check_stages(config, ['classifier', 'gan', 'explain', 'evaluate'])
  message = str(info.value)
  assert '\n' not in message
  for part in ('label_threshold=2 makes binary labels', '--config.data.num_classes=2',
               'config.classifier: eval_every=0', "mode='bogus'", 'config.evaluate.real_images=0'):
    assert part in message, message
  config = smoke_config('/nonexistent')
  config.num_devices = 2
  config.gan.batch_size = 3
  with pytest.raises(ValueError, match=r'gan stage: config.gan.batch_size=3: .*not divisible'):
    checks.check_stages(config, ['gan'])


@pytest.mark.parametrize('res,gpus,batch,group,base_ch', [(256, 8, 64, 4, 16384), (128, 8, 64, 4, 16384),
                                                          (1024, 8, 32, 4, 32768), (256, 1, 16, 4, 16384)])
def test_nvidia_auto_rule(res, gpus, batch, group, base_ch):
  from configs import base
  config = base.get_config()
  base.nvidia_auto_gan(config, res, num_gpus=gpus, num_kimg=100)
  g = config.gan
  assert (g.batch_size, g.discriminator.mbstd_group_size, g.generator.channel_base) == (batch, group, base_ch)
  assert g.ema_kimg == pytest.approx(batch * 10 / 32) and g.num_steps == 100_000 // batch
