"""Knee radiographs graded Kellgren–Lawrence 0–4 (manual download), 256², ResNet-50-style, for 8 GPU/TPU devices.

Data: the public KL-graded knee radiograph dataset (Chen 2019) laid out as
  <manual_dir>/{train,val,test}/{0,1,2,3,4}/*.png
Launch:
  python launch/train.py --config configs/kl_xray.py --workdir gs://bucket/kl_xray \
      --config.data.manual_dir=/data/kl_xray
Expected: ~20 min on 8 A100-class devices for the classifier stage; published ResNet baselines on this data reach
QWK ≈ 0.85–0.88 and 5-class accuracy ≈ 0.65–0.70. The gan stage (NVIDIA `auto` settings at 256², ~5 Mimg) takes
on the order of a day on 8 A100-class devices; see the README benchmark table.

Variants: smoke (a few steps at 64² with a small net, to check a real-data install quickly);
binary (KL >= 2 vs < 2).
"""
import ml_collections

from configs import base

VARIANTS = ('', 'smoke', 'binary')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'unknown kl_xray variant {arg!r}; choose one of {VARIANTS}')
  config = base.get_config()
  config.stages = 'classifier,gan,encoder,explain,evaluate'
  config.data.dataset = 'kl_xray'
  config.data.builder_config = ''
  config.data.image_size = 256
  config.data.channels = 1
  config.data.num_classes = 5
  config.data.label_threshold = -1

  c = config.classifier
  c.model = dict(preset='resnet50')
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 500
  c.optimizer.weight_decay = 5e-5
  c.batch_size = 128
  c.num_steps = 12000
  c.class_balanced = True
  c.label_smoothing = 0.05
  c.log_every = 50
  c.eval_every = 1000
  c.checkpoint_every = 1000

  # StyleGAN2 with NVIDIA's `auto` settings for 256² on 8 devices (batch 64, channel_base 16384, gamma 0.2048,
  # EMA 20 kimg); ADA 'bgc' (the data are a few thousand images); ~5 Mimg.
  base.nvidia_auto_gan(config, 256, num_gpus=8, num_kimg=5000)
  g = config.gan
  g.log_every = 100
  g.sample_every = 2000
  g.eval_every = 10000
  g.eval_images = 5000
  g.checkpoint_every = 2000

  if arg == 'binary':
    config.data.num_classes = 2
    config.data.label_threshold = 2
  elif arg == 'smoke':
    config.data.image_size = 64
    base.make_smoke(config)
  return config
