"""PatchCamelyon histology (TFDS catalog `patch_camelyon`), RGB tiles, tumour vs normal, ResNet-18, GPU/TPU.

The 96² tiles are resized to 128² (StyleGAN2 needs a power-of-two resolution; the classifier sees the same images).

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
  config.stages = 'classifier,gan,encoder,explain,evaluate'
  config.data.dataset = 'patch_camelyon'
  config.data.builder_config = ''
  config.data.image_size = 128
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

  # StyleGAN2, NVIDIA `auto` settings for 128² on 8 devices (batch 64, gamma 0.0512, EMA 20 kimg); ~5 Mimg.
  base.nvidia_auto_gan(config, 128, num_gpus=8, num_kimg=5000)
  g = config.gan
  g.log_every = 100
  g.sample_every = 2000
  g.eval_every = 10000
  g.eval_images = 5000
  g.checkpoint_every = 2000

  if arg == 'smoke':
    base.make_smoke(config)
  return config
