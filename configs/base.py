"""Shared defaults for every experiment, grouped exactly as the constructors and stages consume them.

Experiment configs (`demo.py`, `kl_xray.py`, `pcam.py`) start from `get_config()` here and override fields.
Groups:
  config.data                 -> stylex_jax.data.pipeline.Pipeline(data_config, ...)
  config.classifier.model     -> stylex_jax.models.classifier.create_classifier(**model, num_classes=data.num_classes)
  config.classifier.optimizer -> the optax warmup-cosine AdamW in stylex_jax.train.classifier
  config.classifier.*         -> the classifier stage's loop (steps, batch, logging, checkpoints)
  config.gan.generator        -> stylex_jax.models.stylegan2.Generator(**generator, resolution=data.image_size,
                                 channels=data.channels)
  config.gan.discriminator    -> stylex_jax.models.stylegan2.Discriminator(**discriminator, resolution=..., channels=...)
  config.gan.*                -> the gan stage (StyleGAN2-ADA losses, lazy regularisation, EMA, ADA, logging)
  config.encoder.model        -> stylex_jax.models.encoder.Encoder(**model, num_ws=..., w_dim=...)
  config.encoder.*            -> the encoder stage (synthetic pairs + real reconstructions, losses, logging)
  config.invert               -> stylex_jax.explain.invert.Inverter (projector steps, lr, space, noise, losses)
  config.explain              -> the explain stage and launch/explain.py (stylex_jax.stages.explain)
  config.evaluate             -> the evaluate stage and launch/evaluate.py (stylex_jax.stages.evaluate)
  config.shortcut             -> the shortcut experiment (stylex_jax.stages.shortcut)
Imports nothing but ml_collections.
"""
import ml_collections


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  del arg
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Comma-separated stages run in order by launch/train.py, each resumable from its checkpoint.
  config.stages = 'classifier'
  # Devices to use (0 = all visible devices, across all hosts).
  config.num_devices = 0
  # Persistent XLA compilation cache (stylex_jax/stages/compile_cache.py): 'workdir' = <workdir>/xla_cache/ for a
  # local workdir (stages and reruns reuse compiled programs), '' = off, or a folder only you can write.
  config.compile_cache = 'workdir'

  config.data = ml_collections.ConfigDict(
      dict(
          dataset='synthetic_knee',  # TFDS name (registered or catalog) or 'image_folder'
          builder_config='64',  # TFDS builder config ('' = the builder's default)
          data_dir='',  # TFDS data_dir ('' = TFDS default, ~/tensorflow_datasets)
          manual_dir='',  # kl_xray: folder with train|val|test/0..4/*.png; image_folder: its root
          image_size=64,  # images are resized to image_size x image_size
          channels=1,  # 1 (radiographs) or 3 (histology)
          num_classes=2,  # classifier outputs; checked against the data (after label_threshold)
          label_threshold=2,  # >= 0: binary label = (label >= threshold), e.g. KL >= 2; -1 keeps labels
          hflip=True,  # random horizontal flips when training
          train_split='train',
          eval_split='validation',
          test_split='test',
      ))

  config.classifier = ml_collections.ConfigDict(
      dict(
          model=dict(preset='demo'),  # create_classifier(**model): preset + ResNet field overrides
          optimizer=dict(
              learning_rate=1e-3,  # peak learning rate after warmup
              warmup_steps=100,
              end_learning_rate_factor=0.01,  # cosine decays to learning_rate * this
              weight_decay=1e-4,  # decoupled (AdamW); not applied to biases and norm parameters
              b1=0.9,
              b2=0.999,
              grad_clip_norm=1.0,  # 0 disables clipping
          ),
          batch_size=64,  # global batch, split over all devices
          num_steps=1000,
          class_balanced=False,  # weight the loss by inverse class frequency of the train split
          label_smoothing=0.0,
          log_every=20,
          eval_every=250,
          checkpoint_every=250,
          keep_checkpoints=3,
          # non-finite guard: a NaN/Inf loss or gradient skips that step's update (counted in metrics.jsonl)
          nonfinite_patience=10,  # more than this many skipped steps in a row -> on_nonfinite
          on_nonfinite='stop',  # 'stop' (clear error, last checkpoint kept) | 'restore' (reload it, lr x factor)
          nonfinite_lr_factor=0.5,  # 'restore': the learning rate(s) are multiplied by this at each restore
          nonfinite_max_restores=3,  # 'restore': stop after this many restores
      ))

  # StyleGAN2-ADA. Defaults are NVIDIA's `paper256`-style settings; experiment configs scale them.
  config.gan = ml_collections.ConfigDict(
      dict(
          generator=dict(z_dim=512, w_dim=512, mapping_layers=8, channel_base=16384, channel_max=512,
                         mapping_lr_multiplier=0.01, fused_modconv=False),
          discriminator=dict(channel_base=16384, channel_max=512, mbstd_group_size=4, mbstd_num_features=1),
          compute_dtype='float32',  # 'bfloat16' on GPU/TPU: bf16 compute, float32 params and optimiser state
          reg_convolutions='auto',  # R1 / path-length steps: 'im2col' (slices + dots; 2-4x faster second-order
          #   derivatives on XLA:CPU, ~2x the step memory), 'native', 'auto' = im2col on CPU
          main_convolutions='auto',  # G main / D main steps: the same choice ('im2col' also makes up-convolutions
          #   one dot + overlap-add); pays for wide models at batch 16 on CPU (channel_max 256: 1.9x), not for the
          #   demo's (64, batch 4: 0.7x), so 'auto' = im2col on CPU for >= 256 channels at batch >= 16 only
          batch_size=32,  # global batch
          num_steps=10000,  # iterations (kimg = num_steps * batch_size / 1000)
          g_lr=0.0025,
          d_lr=0.0025,
          beta1=0.0,
          beta2=0.99,
          r1_gamma=-1.0,  # < 0: NVIDIA's `auto` rule 0.0002 * res^2 / batch
          r1_interval=16,  # lazy R1 every 16 steps (0 disables)
          pl_weight=2.0,  # path-length regularisation weight (0 disables)
          pl_interval=4,
          pl_decay=0.01,
          pl_batch_shrink=2,
          style_mixing_prob=0.9,
          ema_kimg=10.0,  # G_ema half-life in thousands of images
          ema_rampup=0.05,  # half-life <= rampup * images seen (0 disables the ramp-up)
          augment='bgc',  # ADA pipeline preset: 'bgc', 'bg', 'b', 'c' or 'none'
          augment_antialias=True,  # ADA geometric ops resample through the reference's 2x filter (False: ~10x
          #   cheaper plain bilinear, aliases when shrinking — the CPU demo's choice)
          augment_p=0.0,  # initial augmentation probability (fixed when ada_target == 0)
          ada_target=0.6,  # target E[sign(D(real))]; 0 disables adaptation
          ada_interval=4,
          ada_kimg=500.0,  # p can move 0 -> 1 in this many thousand images
          log_every=50,
          sample_every=500,  # G_ema grid at fixed latents into <workdir>/gan/samples/
          num_samples=16,
          eval_every=2000,  # realism metrics (FID/KID on classifier features, phantom oracles)
          eval_images=512,
          inception_weights='',  # optional .npz of the FID InceptionV3 (see models/inception.py) for fid/kid
          checkpoint_every=1000,
          keep_checkpoints=3,
          # non-finite guard: a NaN/Inf loss or gradient skips that step's update (counted in metrics.jsonl)
          nonfinite_patience=10,  # more than this many skipped steps in a row -> on_nonfinite
          on_nonfinite='stop',  # 'stop' (clear error, last checkpoint kept) | 'restore' (reload it, lr x factor)
          nonfinite_lr_factor=0.5,  # 'restore': the learning rate(s) are multiplied by this at each restore
          nonfinite_max_restores=3,  # 'restore': stop after this many restores
      ))

  # Image -> W+ encoder (stage `encoder`): models.encoder.Encoder(**model, num_ws=G.num_ws, w_dim=G.w_dim).
  config.encoder = ml_collections.ConfigDict(
      dict(
          model=dict(width=32, channel_max=256, hidden=512, noise=False),  # noise: also predict the noise maps
          batch_size=16,  # real images per step (global)
          synthetic_fraction=0.5,  # share of each step's images that are synthetic (w, G(w)) pairs
          num_steps=5000,
          lr=1e-3,  # Adam, cosine decay to 1% after a 5% linear warm-up
          truncation_psi=0.7,  # of the synthetic pairs' w
          latent_weight=1.0,  # synthetic pairs: mean squared error of E(G(w)) against w - w_avg
          # reconstruction terms on real images (explain.reconstruction.LOSS_TERMS)
          loss=dict(mse=1.0, l1=0.0, ssim=1.0, ms_ssim=0.0, perceptual=0.5, kl=1.0, delta=0.1, w_l2=0.0),
          perceptual_layers=('stem', 'stage1'),  # classifier layers of the perceptual term
          log_every=50,
          checkpoint_every=1000,
          keep_checkpoints=3,
          # non-finite guard: a NaN/Inf loss or gradient skips that step's update (counted in metrics.jsonl)
          nonfinite_patience=10,  # more than this many skipped steps in a row -> on_nonfinite
          on_nonfinite='stop',  # 'stop' (clear error, last checkpoint kept) | 'restore' (reload it, lr x factor)
          nonfinite_lr_factor=0.5,  # 'restore': the learning rate(s) are multiplied by this at each restore
          nonfinite_max_restores=3,  # 'restore': stop after this many restores
          eval_images=64,  # held-out images for the encoder-only metrics at the end
          eval_refine_images=16,  # of those, inverted with the projector (config.invert) too
      ))

  # The projector (explain.invert.Inverter): encoder start + Adam refinement of W+ and the noise maps.
  config.invert = ml_collections.ConfigDict(
      dict(
          start='encoder',  # 'encoder' (w_avg when there is no encoder checkpoint) | 'w_avg'
          space='w+',  # 'w+' (one w per layer) | 'w' (one w for all layers)
          steps=100,
          lr=0.1,
          lr_schedule='cosine',  # 'constant' | 'cosine' | 'nvidia' (projector.py's ramps)
          lr_rampup=0.05,  # fraction of the steps with a linear warm-up
          lr_rampdown=0.25,  # 'nvidia': fraction of the steps with the cosine ramp-down
          w_noise=0.0,  # NVIDIA: 0.05 -> Gaussian noise of 0.05 w_std on w, decaying over w_noise_ramp
          w_noise_ramp=0.75,
          optimize_noise=True,  # optimise the per-layer noise maps (re-normalised each step)
          noise_lr_multiplier=1.0,  # the noise maps' learning rate = lr x this (NVIDIA: 1)
          noise_regularize=0.0,  # NVIDIA: 1e5 (auto-correlation regulariser; keeps noise white, so it cannot
          #   carry image detail — with a weak G that costs most of the SSIM)
          loss=dict(mse=1.0, l1=0.0, ssim=1.0, ms_ssim=0.0, perceptual=0.0, kl=1.0, delta=0.0, w_l2=0.0),
          perceptual_layers=('stem', 'stage1'),
          batch_size=16,  # images per jitted chunk (the last chunk is padded)
      ))

  # The explain stage / launch/explain.py (stylex_jax.stages.explain). Shifts are multiples of the latent scale
  # (median ||w - w_avg|| of mapping-network latents), so they carry over between generators.
  config.explain = ml_collections.ConfigDict(
      dict(
          split='test',  # split explained by the stage (launch/explain.py --split / --images override)
          num_images=64,  # first N images of the split (0 = all)
          batch_size=16,  # images inverted and explained per jitted batch
          target='auto',  # 'auto' (binary: log-odds of the positive class; K > 2: expected grade),
          #   'log_odds' / 'logit' (of class_index) or 'expected_grade'
          class_index=-1,  # class for 'log_odds' / 'logit' (-1: the positive = last class)
          class_names=[],  # names shown in the report ([] = from the dataset)
          mode='gradient',  # 'gradient' (jax.grad through G and the classifier) or 'blackbox' (linear probe
          #   on the classifier's predictions of generated images; any predict callable)
          scope='global',  # 'global' (one direction for the dataset, Schutte et al.) or 'local' (per image)
          space='w',  # direction in 'w' (shared by all layers) or 'w+' (per layer)
          num_directions=1,  # k orthonormal global directions (the series follow the first)
          direction_latents=256,  # mapping-network latents the global direction is optimised on
          direction_steps=100,  # Adam steps of the gradient-mode direction
          direction_lr=0.1,
          step_size=0.5,  # shift (x latent scale) at which the gradient mode measures the target change
          proximity_weight=0.0,  # weight of the mean squared pixel change in the gradient-mode objective
          probe_samples=1024,  # black-box mode: generated images labelled by the classifier
          probe_l2=1e-3,  # black-box mode: L2 strength of the logistic / ridge fit
          num_frames=9,  # images per series
          auto_range=True,  # per-image shift range from the image's prediction across the boundary
          max_shift=3.0,  # largest |shift| (x latent scale); the fixed grid when auto_range=False
          margin=0.25,  # auto range: go this fraction beyond the crossing
          gradcam_layer='stage3',  # classifier layer GradCAM explains ('stem', 'stage1'..'stage4')
          chunk_size=64,  # latents per jitted rendering / direction chunk (bounds memory)
          examples_per_shard=256,  # TFRecord examples per shard
          report_max_images=100,  # rows in report.html (all images still go to the TFRecords)
      ))

  # The evaluate stage / launch/evaluate.py (stylex_jax.stages.evaluate): the fidelity scorecard of an export.
  config.evaluate = ml_collections.ConfigDict(
      dict(
          real_images=256,  # test images (class-balanced) for realism (KID) and, on phantoms, the attribute
          #   statistics (dataset std, the direction the labels imply)
      ))

  # The shortcut stage (stylex_jax.stages.shortcut): does the explanation reveal a planted shortcut, does GradCAM?
  # Knee phantoms only; runs its own sub-pipelines in <workdir>/shortcut/<kind>/{confounded,clean}.
  config.shortcut = ml_collections.ConfigDict(
      dict(
          kinds=('marker', 'scanner'),  # 'marker' (LOCAL: the corner "R" tag), 'scanner' (GLOBAL: scanner B)
          confounded=dict(marker='64_marker', scanner='64_scanner'),  # builder config with the shortcut planted
          clean='64',  # builder config of the clean classifier (no shortcut)
          probe_images=256,  # fresh phantoms rendered with and without the artefact for the accuracy drop
          probe_seed=1000,  # their seeds: probe_seed * 2**32 + i (disjoint from the builders' seeds)
          scanner_threshold=0.5,  # scanner shown: |noise_level or sharpness change| (anchor -> far end of the
          #   series) above this many dataset stds (a full A -> B switch of one patient is ~1.1-1.9 std at 64 px)
      ))
  return config


def make_smoke(config: ml_collections.ConfigDict, num_steps: int = 10, channel_base: int = 2048, channel_max: int = 128,
               latent_dim: int = 128, mbstd_group_size: int = 4) -> None:
  """Turns an experiment config into its `smoke` variant in place: a tiny classifier, GAN and encoder, `num_steps`
  steps of each, evaluated and checkpointed once at the end, and 4 images explained with 3-frame series — a quick
  check that data, stages and outputs work."""
  c, g = config.classifier, config.gan
  c.model = dict(preset='demo')
  c.batch_size = 16
  c.num_steps = c.eval_every = c.checkpoint_every = num_steps
  c.log_every = max(1, num_steps // 3)
  c.optimizer.warmup_steps = max(1, num_steps // 3)
  g.generator = dict(z_dim=latent_dim, w_dim=latent_dim, mapping_layers=2, channel_base=channel_base,
                     channel_max=channel_max, mapping_lr_multiplier=0.01, fused_modconv=False)
  g.discriminator = dict(channel_base=channel_base, channel_max=channel_max, mbstd_group_size=mbstd_group_size,
                         mbstd_num_features=1)
  g.batch_size = 16
  g.num_steps = g.eval_every = g.checkpoint_every = num_steps
  g.log_every = g.sample_every = max(1, num_steps // 2)
  g.eval_images = 4 * g.batch_size
  en = config.encoder
  en.model = dict(width=8, channel_max=32, hidden=64, noise=config.encoder.model.noise)
  en.batch_size = 8
  en.num_steps = en.checkpoint_every = num_steps
  en.log_every = max(1, num_steps // 2)
  en.eval_images, en.eval_refine_images = 8, 4
  config.invert.steps = 5
  e = config.explain
  e.num_images = e.batch_size = 4
  e.direction_latents, e.direction_steps, e.probe_samples = 16, 4, 32
  e.num_frames, e.chunk_size = 3, 16
  config.evaluate.real_images = 16


def nvidia_auto_gan(config: ml_collections.ConfigDict, resolution: int, num_gpus: int = 8,
                    num_kimg: float = 5000) -> None:
  """Sets config.gan to NVIDIA's StyleGAN2-ADA `auto` configuration for `resolution` on `num_gpus` devices:
  batch max(min(gpus * min(4096 // res, 32), 64), gpus), minibatch-stddev group min(batch // gpus, 4),
  channel_base 32768 * (1 if res >= 512 else 0.5), lr 0.002 at >= 1024 else 0.0025, gamma 0.0002 res² / batch
  (r1_gamma = -1), EMA batch * 10 / 32 kimg with ramp-up 0.05, 2 mapping layers; `num_kimg` thousand images."""
  batch = max(min(num_gpus * min(4096 // resolution, 32), 64), num_gpus)
  channel_base = 32768 if resolution >= 512 else 16384
  g = config.gan
  g.generator = dict(z_dim=512, w_dim=512, mapping_layers=2, channel_base=channel_base, channel_max=512,
                     mapping_lr_multiplier=0.01, fused_modconv=False)
  g.discriminator = dict(channel_base=channel_base, channel_max=512, mbstd_group_size=min(batch // num_gpus, 4),
                         mbstd_num_features=1)
  g.batch_size = batch
  g.g_lr = g.d_lr = 0.002 if resolution >= 1024 else 0.0025
  g.r1_gamma = -1.0
  g.ema_kimg = batch * 10 / 32
  g.ema_rampup = 0.05
  g.num_steps = int(num_kimg * 1000 // batch)
