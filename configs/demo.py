"""Demo: synthetic knee radiograph phantoms at 64², tiny models, all stages on a 2-core CPU in minutes.

Launch — ONE command: generates the phantoms, trains the classifier to explain, a small StyleGAN2 and the
image -> W+ encoder, then explains 16 test phantoms (a seeded class-balanced sample) and writes
/tmp/stylex_demo/explain/report.html (with TFRecords, PNG strips and GIFs beside it), then scores the explanations
(/tmp/stylex_demo/evaluate/scorecard.json, also at the top of the report); about 11-13 minutes on 2 CPU cores,
see benchmarks/README.md for measured times:
  python launch/train.py --config configs/demo.py --workdir /tmp/stylex_demo

Classifier task: Kellgren–Lawrence grade >= 2 (osteoarthritis) vs < 2 on `synthetic_knee/64`, binary.
Expected: validation accuracy >= 0.9 within a minute of training. The demo GAN (6.4 kimg of the recipe measured
in benchmarks/README.md, "GAN recipes") draws knees with a joint space; `demo:long` trains the earlier, wider GAN
96 kimg (~2 h).

Other images with the same recipe, only the data flags changed (an image folder root/{train,test}/<class>/*.png):
  python launch/train.py --config configs/demo.py --config.data.dataset=image_folder \
      --config.data.manual_dir=DIR --config.data.label_threshold=-1 --workdir W

Variants (`--config configs/demo.py:<variant>`):
  smoke   a few steps on 32² 'tiny' data: checks the whole path end to end in seconds (tests, CI).
  grades  the same phantoms, all five KL grades (multi-class; goal QWK >= 0.8).
  marker  phantoms with a spurious corner marker correlated with the label (strength 0.9).
  long    the earlier demo GAN (128 channels from 16², batch 16, path length on) trained 96 kimg (~2 h).
  histology  the same recipe on RGB histology phantoms (`synthetic_histology/64`, normal vs tumour; causal:
          nuclear density, size and darkness), the path PatchCamelyon users take; scored with the histology oracles.
  shortcut  the shortcut experiment (stage `shortcut`, stylex_jax/stages/shortcut.py): for the planted LOCAL
          shortcut (corner marker, `64_marker`) and the GLOBAL one (scanner B, `64_scanner`), a classifier trained
          on the confounded data and one on clean `64` data, both explained with the confounded run's GAN + encoder
          on the same test images; does the series show the artefact, does GradCAM point at it, how much accuracy
          does removing it cost? -> /tmp/stylex_shortcut/evaluate/shortcut.json (full run time not yet measured:
          about two demo pipelines plus two classifiers per kind):
            python launch/train.py --config configs/demo.py:shortcut --workdir /tmp/stylex_shortcut
  shortcut_smoke  the same at the smoke sizes on 32² `tiny_marker` / `tiny_scanner` / `tiny` data (tests).
"""
import ml_collections

from configs import base

# ADA as configs/base.py sets it: what smoke, long and configs/medmnist.py train with (and were measured with)
ADA_ON = {'augment': 'bgc', 'ada_target': 0.6}
VARIANTS = ('', 'smoke', 'grades', 'marker', 'long', 'histology', 'shortcut', 'shortcut_smoke')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'unknown demo variant {arg!r}; choose one of {VARIANTS}')
  config = base.get_config()
  config.stages = 'classifier,gan,encoder,explain,evaluate'
  config.data.dataset = 'synthetic_knee'
  config.data.builder_config = '64'
  config.data.image_size = 64
  config.data.channels = 1
  config.data.num_classes = 2
  config.data.label_threshold = 2

  c = config.classifier
  # every field listed so it can be overridden on the command line (--config.classifier.model.width=32)
  c.model = dict(preset='demo', stem='imagenet', width=16, norm='batch')
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 50
  c.batch_size = 64
  c.num_steps = 500
  c.log_every = 25
  c.eval_every = 250
  c.checkpoint_every = 250

  g = config.gan
  # The recipe measured for GAN quality per CPU-minute (benchmarks/gan_recipe.py, learning curves in
  # benchmarks/README.md): StyleGAN2 unchanged in architecture, at half the channels from 16² up, batch 4, no
  # path-length regularisation (NVIDIA's small-resolution configs); a joint space in every sample from ~5 kimg.
  g.generator = dict(z_dim=128, w_dim=128, mapping_layers=2, channel_base=1024, channel_max=64,
                     mapping_lr_multiplier=0.01, fused_modconv=False)  # non-fused: ~40x faster grads on CPU
  g.discriminator = dict(channel_base=1024, channel_max=64, mbstd_group_size=4, mbstd_num_features=1)
  g.batch_size = 4
  g.num_steps = 1600  # 6.4 kimg
  g.pl_weight = 0.0
  g.ema_kimg = 4 * 10 / 32  # NVIDIA's `auto` rule: batch * 10 / 32
  # No ADA in the demo: on its 4,000 phantoms p only reaches ~0.04 by 6.4 kimg, and over three seeds the GAN
  # without it is as good or better at 6.4 kimg (FID 6.08 / 3.60 / 2.66 vs 5.97 / 5.97 / 3.40, JSW 0.58 / 0.74 /
  # 0.82 px vs 0.55 / 0.77 / 1.09) and finds the joint sooner (benchmarks/README.md, "The demo without ADA").
  # smoke and long keep it on.
  g.augment = 'none'
  g.ada_target = 0.0
  g.augment_antialias = False
  g.ada_kimg = 100.0  # where ADA is on (smoke, long, configs/medmnist.py): let p adapt within a short run
  g.log_every = 100
  g.sample_every = 400
  g.eval_every = 1600
  g.eval_images = 256
  g.checkpoint_every = 800

  e = config.explain
  e.num_images = 16  # 16 test phantoms (seeded, class-balanced) in the report
  # The black-box probe (Schutte et al.'s method): 1024 generated knees labelled by the classifier, a logistic
  # regression on their W. Measured on the same demo models (benchmarks/README.md, "Which direction"): its series
  # narrow the joint space in 16 of 16 (median Spearman -1.0); the gradient mode's brighten the image and narrow
  # it in 7 of 16 (median +0.15), 10-15 of 16 with a proximity term or in W+, still brightening. The probe is
  # fitted on generated images, so it follows what the classifier does on the image manifold rather than the
  # cheapest change of G's output that moves its logit. `--config.explain.mode=gradient` for the other.
  e.mode = 'blackbox'
  e.direction_latents = 32  # latents for the latent scale (and, in gradient mode, x 10 Adam steps through G)
  e.direction_steps = 10
  e.chunk_size = 16  # small chunks are fastest on CPU (64 on accelerators)
  e.gradcam_layer = 'stage2'  # 8x8 at 64 px (stage3 is 4x4)

  en = config.encoder  # the encoder stage: ~3-4 minutes on 2 CPU cores, 80 s of it the held-out evaluation
  # W+ only: an encoder that also predicts the noise maps (model.noise=True) trained 500 steps reaches SSIM 0.61
  # alone and 0.97 with 50 projector steps, against 0.98 with the demo's 200 steps (both at a constant lr 0.1 then),
  # and costs ~2.5 more minutes (benchmarks/README.md, "Inversion"): the demo keeps the W+ encoder.
  en.model = dict(width=16, channel_max=128, hidden=256, noise=False)
  en.batch_size = 8
  en.synthetic_fraction = 0.5  # + 8 synthetic (w, G(w)) pairs per step
  en.num_steps = 150
  en.lr = 2e-3
  en.loss = dict(mse=1.0, l1=0.0, ssim=1.0, ms_ssim=0.0, perceptual=0.0, kl=0.0, delta=0.1, w_l2=0.0)
  en.log_every = 25
  en.checkpoint_every = 75
  en.eval_images = 64
  en.eval_refine_images = 16  # one projector chunk (8 would be padded to 16: same cost); the benchmark does 64
  inv = config.invert  # encoder + 200 Adam steps of W+ and the noise maps
  # NVIDIA's projector schedule (lr 0.1 held, then a cosine ramp-down over the last 25% of the steps): on 16
  # held-out phantoms SSIM 0.996 (worst 0.973), PSNR 39.6 dB against 0.986 (0.963), 38.6 dB with a constant lr at
  # the same cost. Fewer steps lose fidelity: 100 steps reach SSIM 0.97-0.99 but 3-9x the pixel error (MSE)
  # (benchmarks/README.md, "Projector schedule").
  inv.steps = 200
  inv.lr = 0.1
  inv.noise_lr_multiplier = 3.0
  inv.lr_schedule = 'nvidia'
  inv.loss = dict(mse=1.0, l1=0.0, ssim=1.0, ms_ssim=0.0, perceptual=0.0, kl=0.01, delta=0.0, w_l2=0.0)

  if arg in ('smoke', 'shortcut_smoke'):
    config.data.builder_config = 'tiny'
    config.data.image_size = 32
    base.make_smoke(config, num_steps=6, channel_base=256, channel_max=32, latent_dim=32, mbstd_group_size=2)
    c.model = dict(preset='demo', stem='imagenet', width=16, norm='batch')
    c.eval_every = c.checkpoint_every = 3
    g.num_steps = g.eval_every = 4
    g.pl_weight = 2.0  # the smoke run keeps every regularisation step and ADA on the path it checks
    g.update(ADA_ON)
    g.checkpoint_every = g.sample_every = g.log_every = 2
    g.eval_images = 32
    en.model = dict(width=8, channel_max=16, hidden=32, noise=False)
    en.batch_size, en.num_steps, en.checkpoint_every, en.log_every = 4, 4, 2, 2
    en.eval_images, en.eval_refine_images = 4, 4
    inv.steps, inv.batch_size = 3, 4
  elif arg == 'grades':
    config.data.num_classes = 5
    config.data.label_threshold = -1
    c.num_steps = 1200
  elif arg == 'marker':
    config.data.builder_config = '64_marker'
  elif arg == 'histology':
    config.data.dataset = 'synthetic_histology'
    config.data.builder_config = '64'
    config.data.channels = 3
    config.data.label_threshold = -1  # the builder's labels: normal (0) / tumour (1)
  elif arg == 'shortcut':
    config.stages = 'shortcut'
  elif arg == 'long':  # the earlier, wider demo GAN (128 channels from 16², batch 16) trained 96 kimg
    g.generator.update(channel_base=2048, channel_max=128)
    g.discriminator.update(channel_base=2048, channel_max=128)
    g.batch_size, g.ema_kimg, g.pl_weight, g.log_every = 16, 16 * 10 / 32, 2.0, 50
    g.update(ADA_ON)  # as it was measured
    g.num_steps = 6000  # 96 kimg
    g.sample_every = 500
    g.eval_every = 1000
    g.eval_images = 512
    g.checkpoint_every = 500
  if arg == 'shortcut_smoke':
    config.stages = 'shortcut'
    config.shortcut.confounded = dict(marker='tiny_marker', scanner='tiny_scanner')
    config.shortcut.clean = 'tiny'
    config.shortcut.probe_images = 16
  return config
