"""The `gan` stage: StyleGAN2-ADA trained on the classifier's images (`train/gan.py`'s steps), and sampling.

Outputs in `<workdir>/gan/`: `checkpoints/` (the whole `GanState`: step, params, G_ema, both optimiser states,
w_avg, ADA p and its accumulators, pl_mean; the data position is the step), `metrics.jsonl` (losses, R1,
path-length penalty, ADA p, r_t, kimg, images/s, `nonfinite_steps`: the running count of iterations with an
update skipped for a NaN/Inf loss or gradient, see `stages/nonfinite.py`; realism metrics at eval steps, on the
trained classifier's features when its checkpoint exists), `samples/` (G_ema grids at fixed latents) and `summary.json`.
`load_generator` gives later stages G_ema; `images_from_seeds` / `style_mixing_grid` serve launch/generate.py.
"""
from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from stylex_jax import checkpointing, preemption, sharding, storage, writers
from stylex_jax.evaluate import realism
from stylex_jax.stages import classifier as classifier_stage
from stylex_jax.stages import checks, common, nonfinite
from stylex_jax.train import gan as gan_train

STAGE = 'gan'
LR_FIELDS = ('g_lr', 'd_lr')  # what config.gan.on_nonfinite='restore' lowers


def config_fingerprint(config: ml_collections.ConfigDict) -> dict:
  """The effective G/D fields that fix the checkpoint's arrays and their meaning (defaults included, so a
  config that spells out a default matches one that omits it); compute-only fields (fused_modconv, dtype,
  conv_clamp, mbstd group size) may change between runs."""
  models = gan_train.build_models(config)
  g, d = models.generator, models.discriminator
  return dict(
      generator={
          k: getattr(g, k) for k in ('z_dim', 'c_dim', 'w_dim', 'resolution', 'channels', 'mapping_layers',
                                    'channel_base', 'channel_max', 'mapping_lr_multiplier')
      }, discriminator={
          k: getattr(d, k) for k in ('c_dim', 'channel_base', 'channel_max', 'mbstd_num_features', 'mapping_layers')
      })


def check_config(config: ml_collections.ConfigDict) -> None:
  """One clear error for what the gan stage would refuse late (resolution not a power of two, channels, batch
  split over the devices and minibatch-stddev groups, dtypes, loop intervals); cheap (no data, no compile), so
  `stages.run` calls it before the first stage."""
  checks.check_batch('gan', config.gan.batch_size, config)
  gan_train.check_config(config, sharding.make_mesh(config.num_devices or None))
  checks.check_positive(
      'config.gan', config.gan,
      ('num_steps', 'log_every', 'sample_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints'))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       max_steps_this_run: int | None = None) -> dict:
  """Trains (or resumes) the GAN in `<workdir>/gan/`; a finished stage is not retrained. Returns its summary.

  More than `config.gan.nonfinite_patience` iterations in a row with a NaN/Inf loss or gradient: `on_nonfinite`
  ('stop' raises `checkpointing.NonFiniteError`, 'restore' resumes from the last checkpoint at lower g_lr, d_lr).
  """
  return nonfinite.train_with_restores(STAGE, config, LR_FIELDS,
                                       lambda c: _train_and_evaluate(c, workdir, max_steps_this_run))


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, max_steps_this_run: int | None) -> dict:
  from stylex_jax.data import pipeline as pipeline_lib  # TF lives in data/; imported only when training

  gc = config.gan
  check_config(config)
  mesh = sharding.make_mesh(config.num_devices or None)
  stage = common.open_stage(STAGE, workdir, gc, config_fingerprint(config))
  if stage.completed is not None:
    return stage.completed
  stage_dir, summary_path, ckpt = stage.directory, stage.summary_path, stage.ckpt

  data = pipeline_lib.Pipeline(config.data, config.data.train_split, global_batch_size=gc.batch_size, seed=config.seed,
                               train=True)
  if data.image_shape != (config.data.image_size, config.data.image_size, config.data.channels):
    raise ValueError(f'the data gives images of shape {data.image_shape} but the GAN is configured for '
                     f'{(config.data.image_size, config.data.image_size, config.data.channels)}; set '
                     f'--config.data.channels={data.image_shape[-1]}')
  models = gan_train.build_models(config, mesh)
  rep = sharding.replicated(mesh)
  init_fn = sharding.jit_init(functools.partial(gan_train.create_state, models, initial_p=gc.augment_p), rep)
  key = jax.random.key(config.seed)
  init_key, train_key, sample_key = jax.random.split(jax.random.fold_in(key, 1), 3)
  state = stage.restore_or_init(init_fn, init_key, rep)

  steps = gan_train.StepFunctions(config, models, mesh)
  gen_fn = jax.jit(functools.partial(gan_train.generate, models, noise_mode='const'), out_shardings=rep)
  sample_z = jax.random.normal(sample_key, (gc.num_samples, models.generator.z_dim), jnp.float32)
  evaluator = realism.RealismEvaluator(config, data, num_images=gc.eval_images,
                                       features=_classifier_features(config, workdir, gc.eval_images))

  preemption.install_handler()
  start = int(state.step)
  writer = writers.MetricWriter(stage_dir, resume_step=start)  # drops rows an interrupted run wrote after `start`
  stop = gc.num_steps if max_steps_this_run is None else min(gc.num_steps, start + max_steps_this_run)
  progress = writers.Progress(gc.num_steps, start, gc.batch_size, every=gc.log_every, name=STAGE)
  t_log, n_log, last_eval = time.perf_counter(), 0, {}
  guard = nonfinite.Monitor(stage, gc, LR_FIELDS, closing=(writer, ckpt))
  for step, batch in zip(range(start + 1, stop + 1), data.iterate(start)):
    reals = sharding.shard_batch({'image': batch['image']}, mesh)['image']
    state, metrics = steps.iteration(state, reals, train_key, step)
    guard.observe(step, metrics['nonfinite'])
    n_log += 1
    if step % gc.log_every == 0 or step == stop:
      guard.flush()
      scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
      dt = time.perf_counter() - t_log
      scalars.update(ada_p=float(state.ada_p), pl_mean=float(state.pl_mean), kimg=step * gc.batch_size / 1000,
                     images_per_sec=n_log * gc.batch_size / dt, nonfinite_steps=guard.total)
      writer.write_scalars(step, scalars)
      progress.update(step, dict(g=scalars['g_loss'], d=scalars['d_loss'], p=scalars['ada_p']))
      t_log, n_log = time.perf_counter(), 0
    if step % gc.sample_every == 0 or step == stop:
      writer.write_images(step, {'samples': np.asarray(gen_fn(state.g_ema, state.g_stats, sample_z))})
    if step % gc.eval_every == 0 or step == gc.num_steps:
      last_eval = evaluator(lambda z: gen_fn(state.g_ema, state.g_stats, z), jax.random.fold_in(key, 7))
      writer.write_scalars(step, last_eval)
    if stage.save(step, state, last=step == stop):
      break
  guard.flush()
  ckpt.wait_until_finished()
  step = int(state.step)
  if start >= gc.num_steps:  # resumed at the end (e.g. an unreadable summary.json): the final eval again
    last_eval = evaluator(lambda z: gen_fn(state.g_ema, state.g_stats, z), jax.random.fold_in(key, 7))
    writer.write_scalars(step, last_eval)
  writer.close()
  ckpt.close()
  stage.raise_if_preempted(step, gc.num_steps)
  if step < gc.num_steps:
    return dict(stage=STAGE, step=step, complete=False)
  summary = dict(stage=STAGE, step=step, kimg=step * gc.batch_size / 1000, ada_p=float(state.ada_p), **last_eval,
                 checkpoints=ckpt.directory, metrics=os.path.join(stage_dir, 'metrics.jsonl'),
                 samples=os.path.join(stage_dir, 'samples'))
  summary = writers.write_json(summary_path, summary)
  print(f'[gan] done at step {step} ({summary["kimg"]:.1f} kimg): ' +
        ' '.join(f'{k}={v:.3g}' for k, v in last_eval.items() if isinstance(v, float)) +
        f'\n  samples: {summary["samples"]}\n  checkpoints: {ckpt.directory}\n  summary: {summary_path}')
  return summary


def load_generator(workdir: str, config: ml_collections.ConfigDict, mesh=None):
  """Restores G_ema and w_avg of the latest `<workdir>/gan/checkpoints` (partial restore: never G's raw
  parameters, D, the optimisers or ADA state).

  Returns (generator, g_ema params, g_stats) replicated on `mesh`: `generator.apply({'params': g_ema, 'stats':
  g_stats}, z)` gives images [B, R, R, C] in about [-1, 1]. No checkpoint -> FileNotFoundError naming the stage.
  """
  mesh = mesh or sharding.make_mesh(config.num_devices or None)
  generator = gan_train.build_generator(config)
  variables = jax.eval_shape(
      lambda k: generator.init({
          'params': k,
          'noise': k
      }, jnp.zeros((1, generator.z_dim), jnp.float32)), jax.random.key(0))
  abstract = checkpointing.abstract_like({
      'g_ema': variables['params'],
      'g_stats': variables['stats']
  }, sharding.replicated(mesh))
  fields = common.restore_latest(STAGE, workdir, config_fingerprint(config), abstract,
                                 'with the same --config and --workdir')
  return generator, fields['g_ema'], fields['g_stats']


def _classifier_features(config: ml_collections.ConfigDict, workdir: str, num_images: int):
  """images [B, H, W, C] in [-1, 1] -> the trained classifier's penultimate features [B, F] (float64 numpy), the
  features realism is measured with; None when no classifier was trained in `workdir` (or it does not load)."""
  if num_images <= 0 or not storage.isdir(os.path.join(workdir, classifier_stage.STAGE, 'checkpoints')):
    return None
  try:
    model, variables = classifier_stage.load_classifier(workdir, config)
  except (FileNotFoundError, ValueError):
    return None
  # the variables are an argument, not a closure: with several processes they are global arrays, which a jitted
  # function may not capture as constants; the features come back replicated (readable on every process)
  rep = sharding.replicated(sharding.make_mesh(config.num_devices or None))
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False, return_features=True)[1], in_shardings=(rep, rep),
                  out_shardings=rep)
  return lambda x: np.asarray(apply(variables, np.asarray(x, np.float32)), np.float64)


# ------------------------------------------------------------------------------------------------------------
# Sampling from a trained generator (launch/generate.py)
# ------------------------------------------------------------------------------------------------------------


def seed_latents(seeds, z_dim: int) -> jax.Array:
  """z [len(seeds), z_dim]: one standard-normal latent per integer seed, independent of the other seeds."""
  return jnp.stack([jax.random.normal(jax.random.key(int(s)), (z_dim,), jnp.float32) for s in seeds])


def images_from_seeds(generator, g_ema, g_stats, seeds, truncation_psi: float = 1.0,
                      truncation_cutoff: int | None = None, batch_size: int = 32) -> np.ndarray:
  """G_ema images [len(seeds), R, R, C] in [-1, 1] with 'const' noise: the same seed gives the same image."""
  g = generator
  fn = jax.jit(lambda z: jnp.clip(
      g.apply({
          'params': g_ema,
          'stats': g_stats
      }, z, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff, noise_mode='const'), -1.0, 1.0))
  z = seed_latents(seeds, g.z_dim)
  return np.concatenate([np.asarray(fn(z[i:i + batch_size])) for i in range(0, len(z), batch_size)])


def style_mixing_grid(generator, g_ema, g_stats, row_seeds, col_seeds, mix_layers,
                      truncation_psi: float = 1.0) -> np.ndarray:
  """Style-mixing grid [1 + rows, 1 + cols, R, R, C] in [-1, 1] (NVIDIA's layout).

  Cell (0, 0) is blank (-1); row 0 holds the column seeds' images, column 0 the row seeds' images; cell
  (i, j) is row seed i's W+ with the layers in `mix_layers` (e.g. range(0, 4) = coarse styles) taken from
  column seed j.
  """
  g = generator
  layers = np.asarray(sorted(set(int(i) for i in mix_layers)))
  if layers.size == 0 or layers.min() < 0 or layers.max() >= g.num_ws:
    raise ValueError(f'mix_layers must be in [0, {g.num_ws}) for this generator (num_ws={g.num_ws}), '
                     f'got {list(mix_layers)}')
  variables = {'params': g_ema, 'stats': g_stats}
  mapping = jax.jit(lambda z: g.apply(variables, z, method='mapping', truncation_psi=truncation_psi))
  synth = jax.jit(
      lambda ws: jnp.clip(g.apply({'params': g_ema}, ws, method='synthesis', noise_mode='const'), -1.0, 1.0))
  w_rows = mapping(seed_latents(row_seeds, g.z_dim))
  w_cols = mapping(seed_latents(col_seeds, g.z_dim))
  take = np.zeros(g.num_ws, bool)
  take[layers] = True
  mixed = jnp.where(take[None, None, :, None], w_cols[None, :], w_rows[:, None])  # [rows, cols, num_ws, w]
  r, c = len(row_seeds), len(col_seeds)
  cells = np.asarray(synth(mixed.reshape(r * c, *mixed.shape[2:]))).reshape(r, c, *g_shape(generator))
  grid = np.full((r + 1, c + 1, *g_shape(generator)), -1.0, np.float32)
  grid[0, 1:] = np.asarray(synth(w_cols))
  grid[1:, 0] = np.asarray(synth(w_rows))
  grid[1:, 1:] = cells
  return grid


def g_shape(generator) -> tuple[int, int, int]:
  """(R, R, C) of the generator's images."""
  return (generator.resolution, generator.resolution, generator.channels)
