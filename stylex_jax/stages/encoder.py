"""The `encoder` stage: trains the encoder (image -> W+ offsets from w_avg) against the trained G and classifier.

`train_and_evaluate` runs `train/encoder.py`'s pure step (jitted here: images sharded over the 'data' axis,
state replicated, donated). At the end, held-out inversion metrics (SSIM, PSNR, prediction agreement, mean |Δp|,
||w - w_avg||) of the encoder alone (`encoder_*`, `eval_images` validation images; for an encoder that predicts
noise maps also `encoder_latents_*`, its latents with the constant maps) and of the projector (`refine_*`, encoder +
`config.invert` refinement on `eval_refine_images`) are written and printed.

Outputs in `<workdir>/encoder/`: `checkpoints/` (step, params, optimiser state; the data position is the step),
`metrics.jsonl` (with `nonfinite_steps`: the running count of updates skipped for a NaN/Inf loss or gradient, see
`stages/nonfinite.py`), `samples/` (originals over reconstructions) and `summary.json`. `load_encoder` and
`load_inverter` give the explain stage (and benchmarks) the trained encoder and a ready Inverter.
"""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stylex_jax import checkpointing, preemption, sharding, writers
from stylex_jax.explain import invert
from stylex_jax.explain import reconstruction
from stylex_jax.models import stylegan2
from stylex_jax.stages import classifier as classifier_stage
from stylex_jax.stages import checks, common
from stylex_jax.stages import gan as gan_stage
from stylex_jax.stages import nonfinite
from stylex_jax.train import encoder as encoder_train

STAGE = 'encoder'
LR_FIELDS = ('lr',)  # what config.encoder.on_nonfinite='restore' lowers


def config_fingerprint(config: ml_collections.ConfigDict) -> dict:
  """The encoder fields and the generator latent shape that fix the checkpoint's arrays and their meaning."""
  enc = encoder_train.build_encoder(config, *encoder_train.generator_shape(config))
  fields = {k: getattr(enc, k) for k in ('num_ws', 'w_dim', 'width', 'channel_max', 'hidden')}
  if enc.noise:  # only when on, so checkpoints written before the field existed keep their fingerprint
    fields['noise'] = True
  return dict(encoder=fields, image_size=config.data.image_size, channels=config.data.channels)


def check_config(config: ml_collections.ConfigDict) -> None:
  """One clear error for what the encoder stage would refuse late (batch split, synthetic fraction, loss terms,
  config.invert, the generator's resolution, loop intervals); cheap (no data, no compile), so `stages.run` calls
  it before the first stage."""
  ec = config.encoder
  checks.check_batch('encoder', ec.batch_size, config)
  invert.check_invert_config(config.invert)
  encoder_train.num_synthetic(ec)
  unknown = set(dict(ec.loss)) - set(reconstruction.LOSS_TERMS)
  if unknown:
    raise ValueError(f'config.encoder.loss has unknown term(s) {sorted(unknown)}; use {reconstruction.LOSS_TERMS}')
  stylegan2.check_resolution_channels(config.data.image_size, config.data.channels,
                                      'encoder stage (the generator of config.data.image_size / channels)')
  checks.check_positive('config.encoder', ec, ('num_steps', 'log_every', 'checkpoint_every', 'keep_checkpoints'))


def _frozen(config, workdir, mesh):
  generator, g_ema, g_stats = gan_stage.load_generator(workdir, config, mesh)
  model, variables = classifier_stage.load_classifier(workdir, config, mesh)
  # the constant maps cost a synthesis compile (~4 s on the demo G): only for an encoder that predicts noise
  template = stylegan2.constant_noise(generator, g_ema) if dict(config.encoder.model).get('noise') else None
  frozen = encoder_train.Frozen(g_params=g_ema, w_avg=g_stats['mapping_network']['w_avg'], mapping_vars={
      'params': g_ema,
      'stats': g_stats
  }, classifier_vars=variables, noise_template=template)
  return generator, g_ema, g_stats, model, variables, frozen


def eval_images(config, num: int) -> np.ndarray:
  """The first `num` images [num, H, W, C] in [-1, 1] of the eval split (held out from the encoder's training)."""
  from stylex_jax.data import pipeline as pipeline_lib  # TF lives in data/; imported only when evaluating
  data = pipeline_lib.Pipeline(config.data, config.data.eval_split, global_batch_size=min(num, 64) or 1,
                               seed=config.seed, train=False)
  images = []
  for batch in data.eval_batches():
    images.append(batch['image'][batch['mask'].astype(bool)] if 'mask' in batch else batch['image'])
    if sum(len(b) for b in images) >= num:
      break
  return np.concatenate(images)[:num]


def evaluate_inversion(config, inverter_factory, num_encoder: int, num_refine: int) -> dict:
  """Held-out metrics: `encoder_*` (encoder only, steps=0) on `num_encoder` validation images and `refine_*`
  (the projector of config.invert) on the first `num_refine` of them. An encoder that predicts noise maps also
  gets `encoder_latents_*`: its latents alone with the generator's constant maps (what an explanation moves).
  inverter_factory(invert_config, use_encoder_noise=True) -> Inverter."""
  out = {}
  images = eval_images(config, max(num_encoder, num_refine))
  if num_encoder:
    enc_only = ml_collections.ConfigDict(config.invert.to_dict())
    enc_only.steps, enc_only.start = 0, 'encoder'
    inverter = inverter_factory(enc_only)
    s = invert.summarize(inverter(images[:num_encoder]))
    out.update({f'encoder_{k}': v for k, v in s.items()})
    if inverter.encoder_noise:
      s = invert.summarize(inverter_factory(enc_only, use_encoder_noise=False)(images[:num_encoder]))
      out.update({f'encoder_latents_{k}': v for k, v in s.items()})
  if num_refine:
    s = invert.summarize(inverter_factory(config.invert)(images[:num_refine]))
    out.update({f'refine_{k}': v for k, v in s.items()})
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       max_steps_this_run: int | None = None) -> dict:
  """Trains (or resumes) the encoder in `<workdir>/encoder/`; a finished stage is not retrained. Returns its summary.

  More than `config.encoder.nonfinite_patience` NaN/Inf steps in a row: `on_nonfinite` ('stop' raises
  `checkpointing.NonFiniteError`, 'restore' resumes from the last checkpoint at a lower learning rate).
  """
  return nonfinite.train_with_restores(STAGE, config, LR_FIELDS,
                                       lambda c: _train_and_evaluate(c, workdir, max_steps_this_run))


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, max_steps_this_run: int | None) -> dict:
  from stylex_jax.data import pipeline as pipeline_lib  # TF lives in data/; imported only when training

  ec = config.encoder
  check_config(config)
  mesh = sharding.make_mesh(config.num_devices or None)
  num_syn = encoder_train.num_synthetic(ec)
  upstream = common.checkpoint_steps(workdir, (classifier_stage.STAGE, gan_stage.STAGE))
  stage = common.open_stage(STAGE, workdir, ec, config_fingerprint(config), upstream)
  if stage.completed is not None:
    return stage.completed
  stage_dir, summary_path, ckpt = stage.directory, stage.summary_path, stage.ckpt
  generator, g_ema, g_stats, cls_model, cls_vars, frozen = _frozen(config, workdir, mesh)

  data = pipeline_lib.Pipeline(config.data, config.data.train_split, global_batch_size=ec.batch_size, seed=config.seed,
                               train=True)
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  if data.image_shape != shape:
    raise ValueError(f'the data gives images of shape {data.image_shape} but the generator makes {shape}; '
                     f'use the config the gan stage was trained with')
  enc = encoder_train.build_encoder(config, generator.num_ws, generator.w_dim)
  models = encoder_train.Models(enc, generator, cls_model, encoder_train.build_optimizer(ec))
  rep, data_sh = sharding.replicated(mesh), sharding.data_sharding(mesh)
  init_fn = sharding.jit_init(functools.partial(encoder_train.create_state, enc, models.tx, shape), rep)
  key = jax.random.fold_in(jax.random.key(config.seed), 3)
  init_key, train_key = jax.random.split(key)
  state = stage.restore_or_init(init_fn, init_key, rep)

  step_fn = jax.jit(
      functools.partial(encoder_train.train_step, models=models, num_syn=num_syn, truncation_psi=ec.truncation_psi,
                        latent_weight=ec.latent_weight, weights=dict(ec.loss),
                        perceptual_layers=tuple(ec.perceptual_layers)), in_shardings=(rep, rep, data_sh, rep),
      out_shardings=(rep, rep), donate_argnums=0)

  preemption.install_handler()
  start = int(state.step)
  writer = writers.MetricWriter(stage_dir, resume_step=start)  # drops rows an interrupted run wrote after `start`
  stop = ec.num_steps if max_steps_this_run is None else min(ec.num_steps, start + max_steps_this_run)
  progress = writers.Progress(ec.num_steps, start, ec.batch_size, every=ec.log_every, name=STAGE)
  t_log, n_log = time.perf_counter(), 0
  guard = nonfinite.Monitor(stage, ec, LR_FIELDS, closing=(writer, ckpt))
  for step, batch in zip(range(start + 1, stop + 1), data.iterate(start)):
    images = sharding.shard_batch({'image': batch['image']}, mesh)['image']
    state, metrics = step_fn(state, frozen, images, train_key)
    guard.observe(step, metrics['nonfinite'])
    n_log += 1
    if step % ec.log_every == 0 or step == stop:
      guard.flush()
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      dt = time.perf_counter() - t_log
      scalars.update(images_per_sec=n_log * (ec.batch_size + num_syn) / dt, nonfinite_steps=guard.total)
      writer.write_scalars(step, scalars)
      progress.update(step, dict(loss=scalars['loss']))
      t_log, n_log = time.perf_counter(), 0
    if stage.save(step, state, last=step == stop):
      break
  guard.flush()
  ckpt.wait_until_finished()
  ckpt.close()
  step = int(state.step)
  if step < ec.num_steps:
    writer.close()
    stage.raise_if_preempted(step, ec.num_steps)
    return dict(stage=STAGE, step=step, complete=False)

  factory = lambda ic, use_encoder_noise=True: invert.Inverter(generator, g_ema, g_stats, cls_model, cls_vars, ic,
                                                               encoder=enc, encoder_params=state.params, mesh=mesh,
                                                               use_encoder_noise=use_encoder_noise)
  t0 = time.perf_counter()
  results = evaluate_inversion(config, factory, ec.eval_images, ec.eval_refine_images)
  results['eval_seconds'] = time.perf_counter() - t0
  writer.write_scalars(step, results)
  sample = eval_images(config, min(8, max(ec.eval_images, 1)))
  recon = factory(ml_collections.ConfigDict({**config.invert.to_dict(), 'steps': 0}))(sample)['reconstructions']
  writer.write_images(step, {'samples': np.concatenate([sample, recon])})
  writer.close()
  summary = dict(stage=STAGE, step=step, **results, upstream=upstream, checkpoints=ckpt.directory,
                 metrics=os.path.join(stage_dir, 'metrics.jsonl'), samples=os.path.join(stage_dir, 'samples'))
  summary = writers.write_json(summary_path, summary)
  groups = ('encoder_latents_', 'encoder_', 'refine_')  # longest prefix first: each figure prints once
  group = lambda k: next((p for p in groups if k.startswith(p)), None)
  line = lambda p: ' '.join(f'{k[len(p):]}={results[k]:.3g}' for k in results if group(k) == p)
  w_only = ''
  if 'encoder_latents_ssim' in results:
    w_only = f'\n  held-out, its latents alone (constant noise maps): {line("encoder_latents_")}'
  print(f'[encoder] done at step {step}\n  held-out, encoder only: {line("encoder_")}{w_only}\n'
        f'  held-out, encoder + {config.invert.steps} refinement steps: {line("refine_")}\n'
        f'  checkpoints: {ckpt.directory}\n  summary: {summary_path}')
  return summary


def load_encoder(workdir: str, config: ml_collections.ConfigDict, mesh=None):
  """Restores the latest encoder of `<workdir>/encoder/checkpoints` (its parameters only; partial restore): returns
  (model, params), params replicated on `mesh`, ready for `model.apply({'params': params}, images)` -> offsets
  [B, num_ws, w_dim]. No checkpoint -> FileNotFoundError naming the stage to run."""
  mesh = mesh or sharding.make_mesh(config.num_devices or None)
  enc = encoder_train.build_encoder(config, *encoder_train.generator_shape(config))
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  params = jax.eval_shape(lambda k: enc.init(k, jnp.zeros((1, *shape), jnp.float32))['params'], jax.random.key(0))
  fields = common.restore_latest(STAGE, workdir, config_fingerprint(config),
                                 {'params': checkpointing.abstract_like(params, sharding.replicated(mesh))},
                                 'with the same --config and --workdir')
  return enc, fields['params']


def load_inverter(workdir: str, config: ml_collections.ConfigDict, mesh=None,
                  invert_config: ml_collections.ConfigDict | None = None) -> invert.Inverter:
  """An Inverter of G_ema, the classifier and (when its checkpoint exists) the encoder of `workdir`;
  `config.invert` options unless `invert_config` is given. Missing G or classifier -> FileNotFoundError naming
  the stage to run."""
  mesh = mesh or sharding.make_mesh(config.num_devices or None)
  generator, g_ema, g_stats = gan_stage.load_generator(workdir, config, mesh)
  model, variables = classifier_stage.load_classifier(workdir, config, mesh)
  invert_config = invert_config or config.invert
  enc = enc_params = None
  if invert_config.start == 'encoder':
    try:
      enc, enc_params = load_encoder(workdir, config, mesh)
    except FileNotFoundError:
      pass
  return invert.Inverter(generator, g_ema, g_stats, model, variables, invert_config, encoder=enc,
                         encoder_params=enc_params, mesh=mesh)
