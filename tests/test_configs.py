"""Every config loads (all variants), mirrors the constructors it feeds, and rejects unknown keys and variants."""
import importlib
import os
import subprocess
import sys

import ml_collections
import pytest

from stylex_jax import stages

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


def test_launch_rejects_unknown_config_key_with_its_name(tmp_path):
  proc = subprocess.run([
      sys.executable,
      os.path.join(ROOT, 'launch', 'train.py'), '--config',
      os.path.join(ROOT, 'configs', 'demo.py'), '--config.classifier.bogus_key=3', '--workdir',
      str(tmp_path)
  ], capture_output=True, text=True, timeout=120, env={
      **os.environ, 'JAX_PLATFORMS': 'cpu'
  })
  assert proc.returncode != 0
  assert 'bogus_key' in proc.stderr
  assert not os.listdir(tmp_path)


@pytest.mark.parametrize('res,gpus,batch,group,base_ch', [(256, 8, 64, 4, 16384), (128, 8, 64, 4, 16384),
                                                          (1024, 8, 32, 4, 32768), (256, 1, 16, 4, 16384)])
def test_nvidia_auto_rule(res, gpus, batch, group, base_ch):
  from configs import base
  config = base.get_config()
  base.nvidia_auto_gan(config, res, num_gpus=gpus, num_kimg=100)
  g = config.gan
  assert (g.batch_size, g.discriminator.mbstd_group_size, g.generator.channel_base) == (batch, group, base_ch)
  assert g.ema_kimg == pytest.approx(batch * 10 / 32) and g.num_steps == 100_000 // batch
