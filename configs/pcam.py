"""PatchCamelyon histology (TFDS catalog `patch_camelyon`), 96² RGB tiles, tumour vs normal, ResNet-18, GPU/TPU.

Launch (TFDS downloads and prepares patch_camelyon on first use, ~7 GB):
  python launch/train.py --config configs/pcam.py --workdir gs://bucket/pcam
Expected: ~30 min on 8 A100-class devices; ResNet baselines reach AUC ≈ 0.90–0.95 on the test split.

Variants: smoke (a few steps with a small net).
"""
import ml_collections

from configs import base

VARIANTS = ('', 'smoke')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'unknown pcam variant {arg!r}; choose one of {VARIANTS}')
  config = base.get_config()
  config.stages = 'classifier'
  config.data.dataset = 'patch_camelyon'
  config.data.builder_config = ''
  config.data.image_size = 96
  config.data.channels = 3
  config.data.num_classes = 2
  config.data.label_threshold = -1

  c = config.classifier
  c.model = dict(preset='resnet18', stem='small')
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 1000
  c.batch_size = 256
  c.num_steps = 20000
  c.log_every = 100
  c.eval_every = 2000
  c.checkpoint_every = 2000

  if arg == 'smoke':
    c.model = dict(preset='demo')
    c.batch_size = 16
    c.num_steps = 10
    c.eval_every = 10
    c.checkpoint_every = 10
  return config
