"""Real medical images at 64²: PneumoniaMNIST, BreastMNIST and PathMNIST (MedMNIST+, manual download), all five
stages with configs/demo.py's tiny models, sized for a 2-core CPU.

Data: the official MedMNIST+ files from Zenodo (record 10519652, https://zenodo.org/records/10519652), e.g.
pneumoniamnist_64.npz, breastmnist_64.npz, pathmnist_64.npz, in one folder passed as config.data.manual_dir (TFDS
builder `medmnist`, see stylex_jax/data/builders/medmnist.py; prepared once into data_dir on first use). Without
the file (or without manual_dir) the run stops at once with one line naming the file, the folder and the record.

Launch — one command per dataset (trains the classifier to explain, a small StyleGAN2 and the image -> W+ encoder,
then explains the first 16 test images in <workdir>/explain/report.html):
  python launch/train.py --config configs/medmnist.py:pneumonia --workdir /tmp/stylex_pneumonia \
      --config.data.manual_dir=/data/medmnist
Expected: wall time not yet measured on the real files. The model sizes and step counts are configs/demo.py's
(under 15 minutes on 2 CPU cores on the phantoms), plus preparing the dataset once; pathmnist_64's train split
(90k RGB tiles, 1.1 GB at 64²) is over the pipeline's 1 GiB in-memory cache, so it is read per batch (slower).

Variants (`--config configs/medmnist.py:<variant>`):
  pneumonia  ('' too) pneumoniamnist_64, grey, normal vs pneumonia; explains the log-odds of pneumonia.
  breast     breastmnist_64, grey, malignant vs normal/benign; explains the log-odds of malignant (class 0).
  path       pathmnist_64, RGB, 9 tissue classes; explains one class vs the rest: the log-odds of colorectal
             adenocarcinoma epithelium (class 8) against the other 8 tissue types.
  <name>_smoke (and `smoke` = pneumonia_smoke)  the same data read at 32², a few steps of tiny models (as
             demo.py:smoke): checks a real-data install end to end; mostly XLA compilation (path_smoke on a
             synthetic 12/4/4-image file: 12.5 min on a busy, shared 2-core CPU with a cold compilation cache).
"""
import ml_collections

from configs import base

DATASETS = ('pneumonia', 'breast', 'path')
VARIANTS = ('', 'smoke') + DATASETS + tuple(f'{name}_smoke' for name in DATASETS)


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'unknown medmnist variant {arg!r}; choose one of {VARIANTS}')
  name = arg.removesuffix('_smoke') if arg not in ('', 'smoke') else 'pneumonia'
  smoke = arg.endswith('smoke')
  config = base.get_config()
  config.stages = 'classifier,gan,encoder,explain,evaluate'
  d = config.data
  d.dataset = 'medmnist'
  d.manual_dir = ''  # REQUIRED: --config.data.manual_dir=<folder holding <name>_64.npz>
  d.image_size = 64
  d.label_threshold = -1  # the datasets' own classes
  e = config.explain
  if name == 'pneumonia':
    d.builder_config, d.channels, d.num_classes = 'pneumoniamnist_64', 1, 2  # (normal, pneumonia)
    e.target, e.class_index = 'log_odds', 1  # pneumonia
  elif name == 'breast':
    d.builder_config, d.channels, d.num_classes = 'breastmnist_64', 1, 2  # (malignant, normal/benign)
    e.target, e.class_index = 'log_odds', 0  # malignant
  else:
    d.builder_config, d.channels, d.num_classes = 'pathmnist_64', 3, 9
    e.target, e.class_index = 'log_odds', 8  # colorectal adenocarcinoma epithelium vs the other 8 tissue types

  c = config.classifier
  # configs/demo.py's sizes; every field listed so it can be overridden on the command line
  c.model = dict(preset='demo', stem='imagenet', width=16, norm='batch')
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 50
  c.batch_size = 64
  c.num_steps = 500
  c.class_balanced = name != 'path'  # pneumonia ~3:1, breast ~1:3 in train; PathMNIST's classes are near-balanced
  c.log_every = 25
  c.eval_every = 250
  c.checkpoint_every = 250

  g = config.gan
  g.generator = dict(z_dim=128, w_dim=128, mapping_layers=2, channel_base=2048, channel_max=128,
                     mapping_lr_multiplier=0.01, fused_modconv=False)  # non-fused: ~40x faster grads on CPU
  g.discriminator = dict(channel_base=2048, channel_max=128, mbstd_group_size=4, mbstd_num_features=1)
  g.batch_size = 16
  g.num_steps = 400  # 6.4 kimg
  g.ema_kimg = 16 * 10 / 32  # NVIDIA's `auto` rule: batch * 10 / 32
  g.augment_antialias = False
  g.ada_kimg = 100.0  # short runs: let p adapt within the run
  g.log_every = 20
  g.sample_every = 100
  g.eval_every = 400
  g.eval_images = 256
  g.checkpoint_every = 200

  e.num_images = 16  # the first 16 test images in the report
  e.direction_latents = 32
  e.direction_steps = 10
  e.chunk_size = 16  # small chunks are fastest on CPU
  e.gradcam_layer = 'stage2'  # 8x8 at 64 px

  en = config.encoder
  en.model = dict(width=16, channel_max=128, hidden=256)
  en.batch_size = 8
  en.synthetic_fraction = 0.5
  en.num_steps = 150
  en.lr = 2e-3
  en.loss = dict(mse=1.0, l1=0.0, ssim=1.0, ms_ssim=0.0, perceptual=0.0, kl=0.0, delta=0.1, w_l2=0.0)
  en.log_every = 25
  en.checkpoint_every = 75
  en.eval_images = 64
  en.eval_refine_images = 16
  inv = config.invert
  inv.steps = 200
  inv.noise_lr_multiplier = 3.0
  inv.lr_schedule = 'constant'
  inv.loss = dict(mse=1.0, l1=0.0, ssim=1.0, ms_ssim=0.0, perceptual=0.0, kl=0.01, delta=0.0, w_l2=0.0)

  if smoke:  # as demo.py:smoke, on the real 64² file read at 32²
    d.image_size = 32
    base.make_smoke(config, num_steps=6, channel_base=256, channel_max=32, latent_dim=32, mbstd_group_size=2)
    c.model = dict(preset='demo', stem='imagenet', width=16, norm='batch')
    c.eval_every = c.checkpoint_every = 3
    g.num_steps = g.eval_every = 4
    g.checkpoint_every = g.sample_every = g.log_every = 2
    g.eval_images = 32
    en.model = dict(width=8, channel_max=16, hidden=32)
    en.batch_size, en.num_steps, en.checkpoint_every, en.log_every = 4, 4, 2, 2
    en.eval_images, en.eval_refine_images = 4, 4
    inv.steps, inv.batch_size = 3, 4
  return config
