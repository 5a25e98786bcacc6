"""The `encoder` stage: trains models.encoder.Encoder (image -> W+ offsets from w_avg) against the trained G.

Each step mixes (a) synthetic pairs: w from the mapping network (truncated by `truncation_psi`), x = G(w) with
the constant noise, latent loss mean((E(x) - (w - w_avg))^2), and (b) real training images: reconstruction
losses of G(w_avg + E(x)) against x (`explain.reconstruction`: pixel L1/L2, SSIM / MS-SSIM, a perceptual loss on
the classifier's intermediate features, prediction consistency KL(f(x) || f(G(E(x)))) and the e4e-style
`delta` penalty keeping W+ close to W). `config.encoder.synthetic_fraction` of each step's images are synthetic.
G (G_ema of the gan stage) and the classifier (classifier stage) are frozen and loaded from the same workdir.

The step is one undecorated pure function jitted at the call site (images sharded over the 'data' axis,
state replicated, donated). At the end, held-out inversion metrics (SSIM, PSNR, prediction agreement, mean
|Δp|, ||w - w_avg||) of the encoder alone (`encoder_*`, `eval_images` validation images) and of the projector
(`refine_*`, encoder + `config.invert` refinement on `eval_refine_images`) are written and printed.

Outputs in `<workdir>/encoder/`: `checkpoints/` (step, params, optimiser state; the data position is the step),
`metrics.jsonl`, `samples/` (originals over reconstructions) and `summary.json`.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stylex_jax import checkpointing, sharding, writers
from stylex_jax.explain import reconstruction
from stylex_jax.models import encoder as encoder_lib
from stylex_jax.train import stages

STAGE = 'encoder'


@flax.struct.dataclass
class EncoderState:
  """Everything a resume needs (the data position is `step`)."""
  step: jax.Array     # int32 optimiser steps done
  params: Any
  opt_state: Any


@flax.struct.dataclass
class Frozen:
  """The trained networks the step reads (arguments, not constants, so they are not baked into the program)."""
  g_params: Any
  w_avg: jax.Array
  mapping_vars: Any
  classifier_vars: Any


@flax.struct.dataclass
class Models:
  """Static modules and optimiser the step closes over."""
  encoder: Any = flax.struct.field(pytree_node=False)
  generator: Any = flax.struct.field(pytree_node=False)
  classifier: Any = flax.struct.field(pytree_node=False)
  tx: Any = flax.struct.field(pytree_node=False)


def build_encoder(config: ml_collections.ConfigDict, num_ws: int, w_dim: int) -> encoder_lib.Encoder:
  """The Encoder of `config.encoder.model` for a generator with `num_ws` x `w_dim` latents."""
  return encoder_lib.Encoder(num_ws=num_ws, w_dim=w_dim, **dict(config.encoder.model))


def _generator_shape(config: ml_collections.ConfigDict) -> tuple[Any, int, int]:
  from stylex_jax.train import gan
  g = gan.build_models(config).generator
  return g, g.num_ws, g.w_dim


def build_optimizer(ec: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with a 5% linear warm-up then cosine decay to 1% of `lr` over `num_steps`."""
  warmup = max(1, ec.num_steps // 20)
  schedule = optax.warmup_cosine_decay_schedule(0.0, ec.lr, warmup, max(ec.num_steps, warmup + 1), ec.lr * 0.01)
  return optax.adam(schedule)


def create_state(encoder, tx, image_shape: tuple[int, int, int], key: jax.Array) -> EncoderState:
  """Initial state (pure). image_shape: (H, W, C)."""
  params = encoder.init(key, jnp.zeros((1, *image_shape), jnp.float32))['params']
  return EncoderState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def num_synthetic(ec: ml_collections.ConfigDict) -> int:
  """Synthetic pairs per step: fraction f of the step's images -> round(f / (1 - f) * batch_size)."""
  f = float(ec.synthetic_fraction)
  if not 0.0 <= f < 1.0:
    raise ValueError(f'config.encoder.synthetic_fraction={f} must be in [0, 1)')
  return int(round(f / (1.0 - f) * ec.batch_size))


def train_step(state: EncoderState, frozen: Frozen, images: jax.Array, key: jax.Array, *, models: Models,
               num_syn: int, truncation_psi: float, latent_weight: float, weights: dict,
               perceptual_layers: tuple) -> tuple[EncoderState, dict]:
  """One step on real images [B, H, W, C] in [-1, 1] plus `num_syn` fresh synthetic pairs; step += 1."""
  g, enc = models.generator, models.encoder
  key = jax.random.fold_in(key, state.step)
  classify = lambda x: reconstruction.classifier_features(models.classifier, frozen.classifier_vars, x,
                                                          perceptual_layers)
  synth = lambda ws: g.apply({'params': frozen.g_params}, ws, method='synthesis', noise_mode='const')
  needs_classifier = weights.get('kl', 0) or weights.get('perceptual', 0)
  x_logits, x_feats = classify(images) if needs_classifier else (None, None)
  if num_syn:
    z = jax.random.normal(key, (num_syn, g.z_dim), jnp.float32)
    syn_ws = g.apply(frozen.mapping_vars, z, method='mapping', truncation_psi=truncation_psi)
    syn_images = jax.lax.stop_gradient(jnp.clip(synth(syn_ws), -1.0, 1.0))

  def loss_fn(params):
    offsets = enc.apply({'params': params}, images)
    ws = frozen.w_avg + offsets
    recon = synth(ws)
    per_image, terms = reconstruction.reconstruction_loss(images, recon, ws, frozen.w_avg, weights,
                                                          classify=classify, image_logits=x_logits,
                                                          image_features=x_feats)
    loss = jnp.mean(per_image)
    aux = {f'loss_{k}': jnp.mean(v) for k, v in terms.items()}
    if num_syn:
      syn_offsets = enc.apply({'params': params}, syn_images)
      latent = jnp.mean(jnp.square(syn_offsets - (syn_ws - frozen.w_avg)))
      loss = loss + latent_weight * latent
      aux['loss_latent'] = latent
    return loss, aux

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = models.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state), dict(loss=loss, **aux)


def config_fingerprint(config: ml_collections.ConfigDict) -> dict:
  """The encoder fields and the generator latent shape that fix the checkpoint's arrays and their meaning."""
  _, num_ws, w_dim = _generator_shape(config)
  enc = build_encoder(config, num_ws, w_dim)
  return dict(encoder={k: getattr(enc, k) for k in ('num_ws', 'w_dim', 'width', 'channel_max', 'hidden')},
              image_size=config.data.image_size, channels=config.data.channels)


def _frozen(config, workdir, mesh):
  from stylex_jax.train import classifier as classifier_stage
  from stylex_jax.train import gan
  gan_models, g_ema, g_stats = gan.load_generator(config, workdir, mesh)
  model, variables = classifier_stage.load_classifier(config, workdir, mesh)
  frozen = Frozen(g_params=g_ema, w_avg=g_stats['mapping_network']['w_avg'],
                  mapping_vars={'params': g_ema, 'stats': g_stats}, classifier_vars=variables)
  return gan_models.generator, g_ema, g_stats, model, variables, frozen


def _eval_images(config, num: int) -> np.ndarray:
  from stylex_jax.data import pipeline as pipeline_lib
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
  (the projector of config.invert) on the first `num_refine` of them."""
  from stylex_jax.explain import invert
  out = {}
  images = _eval_images(config, max(num_encoder, num_refine))
  if num_encoder:
    enc_only = ml_collections.ConfigDict(config.invert.to_dict())
    enc_only.steps, enc_only.start = 0, 'encoder'
    s = invert.summarize(inverter_factory(enc_only)(images[:num_encoder]))
    out.update({f'encoder_{k}': v for k, v in s.items()})
  if num_refine:
    s = invert.summarize(inverter_factory(config.invert)(images[:num_refine]))
    out.update({f'refine_{k}': v for k, v in s.items()})
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       max_steps_this_run: int | None = None) -> dict:
  """Trains (or resumes) the encoder in `<workdir>/encoder/`; a finished stage is not retrained. Returns its summary."""
  from stylex_jax.data import pipeline as pipeline_lib  # TF lives in data/; imported only when training
  from stylex_jax.explain import invert

  ec = config.encoder
  mesh = sharding.make_mesh(config.num_devices or None)
  sharding.check_global_batch(ec.batch_size, mesh)
  invert.check_invert_config(config.invert)
  num_syn = num_synthetic(ec)
  unknown = set(dict(ec.loss)) - set(reconstruction.LOSS_TERMS)
  if unknown:
    raise ValueError(f'config.encoder.loss has unknown term(s) {sorted(unknown)}; use {reconstruction.LOSS_TERMS}')
  stage = stages.open_stage(STAGE, workdir, ec, config_fingerprint(config))
  if stage.completed is not None:
    return stage.completed
  stage_dir, summary_path, ckpt = stage.directory, stage.summary_path, stage.ckpt
  generator, g_ema, g_stats, cls_model, cls_vars, frozen = _frozen(config, workdir, mesh)

  data = pipeline_lib.Pipeline(config.data, config.data.train_split, global_batch_size=ec.batch_size,
                               seed=config.seed, train=True)
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  if data.image_shape != shape:
    raise ValueError(f'the data gives images of shape {data.image_shape} but the generator makes {shape}; '
                     f'use the config the gan stage was trained with')
  enc = build_encoder(config, generator.num_ws, generator.w_dim)
  models = Models(enc, generator, cls_model, build_optimizer(ec))
  rep, data_sh = sharding.replicated(mesh), sharding.data_sharding(mesh)
  init_fn = jax.jit(functools.partial(create_state, enc, models.tx, shape), out_shardings=rep)
  key = jax.random.fold_in(jax.random.key(config.seed), 3)
  init_key, train_key = jax.random.split(key)
  state = stage.restore_or_init(init_fn, init_key, rep)

  step_fn = jax.jit(functools.partial(
      train_step, models=models, num_syn=num_syn, truncation_psi=ec.truncation_psi,
      latent_weight=ec.latent_weight, weights=dict(ec.loss), perceptual_layers=tuple(ec.perceptual_layers)),
      in_shardings=(rep, rep, data_sh, rep), out_shardings=(rep, rep), donate_argnums=0)

  writer = writers.MetricWriter(stage_dir)
  checkpointing.install_preemption_handler()
  start = int(state.step)
  stop = ec.num_steps if max_steps_this_run is None else min(ec.num_steps, start + max_steps_this_run)
  progress = writers.Progress(ec.num_steps, start, ec.batch_size, every=ec.log_every, name=STAGE)
  t_log, n_log = time.perf_counter(), 0
  for step, batch in zip(range(start + 1, stop + 1), data.iterate(start)):
    images = sharding.shard_batch({'image': batch['image']}, mesh)['image']
    state, metrics = step_fn(state, frozen, images, train_key)
    n_log += 1
    if step % ec.log_every == 0 or step == stop:
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      dt = time.perf_counter() - t_log
      scalars['images_per_sec'] = n_log * (ec.batch_size + num_syn) / dt
      writer.write_scalars(step, scalars)
      progress.update(step, dict(loss=scalars['loss']))
      t_log, n_log = time.perf_counter(), 0
    if stage.save(step, state, last=step == stop):
      break
  ckpt.wait_until_finished()
  ckpt.close()
  step = int(state.step)
  if step < ec.num_steps:
    writer.close()
    return dict(stage=STAGE, step=step, complete=False)

  factory = lambda ic: invert.Inverter(generator, g_ema, g_stats, cls_model, cls_vars, ic, encoder=enc,
                                       encoder_params=state.params, mesh=mesh)
  t0 = time.perf_counter()
  results = evaluate_inversion(config, factory, ec.eval_images, ec.eval_refine_images)
  results['eval_seconds'] = time.perf_counter() - t0
  writer.write_scalars(step, results)
  sample = _eval_images(config, min(8, max(ec.eval_images, 1)))
  recon = factory(ml_collections.ConfigDict({**config.invert.to_dict(), 'steps': 0}))(sample)['reconstructions']
  writer.write_images(step, {'samples': np.concatenate([sample, recon])})
  writer.close()
  summary = dict(stage=STAGE, step=step, **results, checkpoints=ckpt.directory,
                 metrics=os.path.join(stage_dir, 'metrics.jsonl'), samples=os.path.join(stage_dir, 'samples'))
  summary = writers.write_json(summary_path, summary)
  line = lambda p: ' '.join(f'{k[len(p):]}={results[k]:.3g}' for k in results if k.startswith(p))
  print(f'[encoder] done at step {step}\n  held-out, encoder only: {line("encoder_")}\n'
        f'  held-out, encoder + {config.invert.steps} refinement steps: {line("refine_")}\n'
        f'  checkpoints: {ckpt.directory}\n  summary: {summary_path}')
  return summary


def load_encoder(config: ml_collections.ConfigDict, workdir: str, mesh=None):
  """Restores the latest encoder of `<workdir>/encoder/checkpoints`: returns (model, params), params replicated
  on `mesh`, ready for `model.apply({'params': params}, images)` -> offsets [B, num_ws, w_dim]. No checkpoint ->
  FileNotFoundError naming the stage to run."""
  mesh = mesh or sharding.make_mesh(config.num_devices or None)
  _, num_ws, w_dim = _generator_shape(config)
  enc = build_encoder(config, num_ws, w_dim)
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  abstract = jax.eval_shape(functools.partial(create_state, enc, build_optimizer(config.encoder), shape),
                            jax.random.key(0))
  state = stages.restore_latest(STAGE, workdir, config_fingerprint(config),
                                checkpointing.abstract_like(abstract, sharding.replicated(mesh)),
                                'with the same --config and --workdir')
  return enc, state.params
