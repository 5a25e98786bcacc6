"""Training math of StyleGAN2 as NVIDIA trains it, sharded over the 'data' mesh axis (the `gan` stage's steps).

One iteration = G main step, G path-length step (every `pl_interval`), D main step, D R1 step (every
`r1_interval`) — four undecorated pure functions, jitted at the call site with donation and shardings, chosen
by step count (lazy regularisation with the Adam correction). ADA augments every image D sees and adapts its
strength p from E[sign(D(real))]. G_ema follows G with a half-life in kimg and a ramp-up. Each step skips its
update when its loss or gradient is NaN/Inf (`train/nonfinite.py`; its state fields stay as they were) and
reports that as its own flag (`nonfinite_g`, `nonfinite_pl`, `nonfinite_d`, `nonfinite_r1`); an iteration's
`nonfinite` is 1 when any of its steps was skipped.

`GanState` holds everything a resume needs (step, params, G_ema, both optimiser states, w_avg, ADA p and its
accumulators, pl_mean; the data position is the step). The loop, checkpoints and outputs are
`stages/gan.py`'s.
"""
from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from stylex_jax import sharding
from stylex_jax.models import layers, stylegan2
from stylex_jax.train import augment as augment_lib
from stylex_jax.train import losses
from stylex_jax.train import nonfinite

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@flax.struct.dataclass
class GanState:
  """Everything a resume needs (the data position is `step`)."""
  step: jax.Array  # int32: iterations done
  g_params: Any
  g_stats: Any  # {'mapping_network': {'w_avg': [w_dim]}}; shared by G and G_ema as the reference
  g_ema: Any  # EMA of g_params
  d_params: Any
  g_opt_state: Any
  d_opt_state: Any
  ada_p: jax.Array  # float32 augmentation probability
  ada_sum: jax.Array  # float32 sum of sign(D(real)) since the last ADA update
  ada_count: jax.Array  # float32 number of logits summed
  pl_mean: jax.Array  # float32 running mean of path lengths


@flax.struct.dataclass
class Models:
  """The static pieces the steps close over (hashable modules and optimisers)."""
  generator: Any = flax.struct.field(pytree_node=False)
  discriminator: Any = flax.struct.field(pytree_node=False)
  g_tx: Any = flax.struct.field(pytree_node=False)
  d_tx: Any = flax.struct.field(pytree_node=False)
  augment: Any = flax.struct.field(pytree_node=False)  # AugmentConfig or None
  batch_sharding: Any = flax.struct.field(pytree_node=False)


def check_config(config: ml_collections.ConfigDict, mesh) -> None:
  """Fails before anything compiles on an impossible resolution, channel count or batch split."""
  gc, res, ch = config.gan, config.data.image_size, config.data.channels
  stylegan2.check_resolution_channels(res, ch, 'gan stage (config.data.image_size / channels)')
  group = gc.discriminator.get('mbstd_group_size') or 1
  sharding.check_global_batch(gc.batch_size, mesh, group_size=group)
  if gc.pl_weight > 0 and gc.pl_interval:
    pl_batch = gc.batch_size // gc.pl_batch_shrink
    if pl_batch * gc.pl_batch_shrink != gc.batch_size:
      raise ValueError(f'config.gan.batch_size={gc.batch_size} is not divisible by pl_batch_shrink='
                       f'{gc.pl_batch_shrink}; change one of them')
    sharding.check_global_batch(pl_batch, mesh)
  if gc.compute_dtype not in DTYPES:
    raise ValueError(f'config.gan.compute_dtype={gc.compute_dtype!r}; use one of {tuple(DTYPES)}')
  for name in ('reg_convolutions', 'main_convolutions'):
    if gc.get(name, 'native') not in REG_CONVOLUTIONS:
      raise ValueError(f'config.gan.{name}={gc.get(name)!r}; use one of {REG_CONVOLUTIONS}')


def r1_gamma(config: ml_collections.ConfigDict) -> float:
  """config.gan.r1_gamma, or NVIDIA's `auto` rule 0.0002·res²/batch when it is negative."""
  g = config.gan.r1_gamma
  return losses.r1_gamma_auto(config.data.image_size, config.gan.batch_size) if g < 0 else float(g)


def build_generator(config: ml_collections.ConfigDict) -> stylegan2.Generator:
  """The Generator of `config.gan.generator` for `config.data`'s resolution and channels."""
  return stylegan2.Generator(**dict(config.gan.generator), resolution=config.data.image_size,
                             channels=config.data.channels, dtype=DTYPES[config.gan.compute_dtype])


def build_models(config: ml_collections.ConfigDict, mesh=None) -> Models:
  """G, D, their lazy-regularisation Adam optimisers and the ADA config of `config.gan`."""
  gc = config.gan
  dtype = DTYPES[gc.compute_dtype]
  generator = build_generator(config)
  discriminator = stylegan2.Discriminator(**dict(gc.discriminator), resolution=config.data.image_size,
                                          channels=config.data.channels, dtype=dtype)

  def adam(lr, interval):
    lr, b1, b2 = losses.lazy_regularization_adam(lr, gc.beta1, gc.beta2, interval)
    return optax.adam(lr, b1=b1, b2=b2, eps=1e-8)

  g_tx = adam(gc.g_lr, gc.pl_interval if gc.pl_weight > 0 else 0)
  d_tx = adam(gc.d_lr, gc.r1_interval if r1_gamma(config) > 0 else 0)
  aug = (None
         if gc.augment == 'none' else augment_lib.AugmentConfig.from_preset(gc.augment, antialias=gc.augment_antialias))
  batch_sharding = sharding.data_sharding(mesh) if mesh is not None else None
  return Models(generator, discriminator, g_tx, d_tx, aug, batch_sharding)


def create_state(models: Models, key: jax.Array, initial_p: float = 0.0) -> GanState:
  """Initial state (pure; jit with out_shardings to create it replicated)."""
  g, d = models.generator, models.discriminator
  kg, kd, kn = jax.random.split(key, 3)
  z = jnp.zeros((1, g.z_dim), jnp.float32)
  g_vars = g.init({'params': kg, 'noise': kn}, z)
  d_params = d.init(kd, jnp.zeros((1, d.resolution, d.resolution, d.channels), jnp.float32))['params']
  g_params = g_vars['params']
  return GanState(step=jnp.zeros((), jnp.int32), g_params=g_params, g_stats=g_vars['stats'],
                  g_ema=jax.tree.map(jnp.copy, g_params), d_params=d_params, g_opt_state=models.g_tx.init(g_params),
                  d_opt_state=models.d_tx.init(d_params), ada_p=jnp.float32(initial_p), ada_sum=jnp.float32(0),
                  ada_count=jnp.float32(0), pl_mean=jnp.float32(0))


def _constrain(x, models: Models):
  return x if models.batch_sharding is None else jax.lax.with_sharding_constraint(x, models.batch_sharding)


def _latents(models: Models, key, batch: int):
  return _constrain(jax.random.normal(key, (batch, models.generator.z_dim), jnp.float32), models)


def _mapping(models: Models, g_params, g_stats, key, batch: int, mixing_prob: float, update_w_avg: bool):
  """ws [batch, num_ws, w_dim] with style mixing (one cutoff per batch, as the reference), and new stats."""
  g = models.generator
  kz, kz2, kc, kp = jax.random.split(key, 4)
  variables = {'params': g_params, 'stats': g_stats}
  ws, mutated = g.apply(variables, _latents(models, kz, batch), method='mapping', update_w_avg=update_w_avg,
                        mutable=['stats'])
  if mixing_prob > 0:
    ws2 = g.apply(variables, _latents(models, kz2, batch), method='mapping')
    cutoff = jax.random.randint(kc, (), 1, g.num_ws)
    cutoff = jnp.where(jax.random.uniform(kp) < mixing_prob, cutoff, g.num_ws)
    ws = stylegan2.style_mix(ws, ws2, cutoff)
  return ws, mutated['stats']


def _synthesis(models: Models, g_params, ws, key):
  return models.generator.apply({'params': g_params}, ws, method='synthesis', noise_mode='random', rngs={'noise': key})


def _d_logits(models: Models, d_params, images, key, p):
  if models.augment is not None:
    images = augment_lib.augment(images, key, p, models.augment)
  return models.discriminator.apply({'params': d_params}, images).reshape(images.shape[0])


def g_main_step(state: GanState, key: jax.Array, *, models: Models, batch_size: int, mixing_prob: float,
                ema_kimg: float, ema_rampup: float | None) -> tuple[GanState, dict]:
  """G non-saturating step on `batch_size` fresh latents, w_avg update, then the G_ema update."""
  key = jax.random.fold_in(key, state.step)
  km, ks, ka = jax.random.split(key, 3)

  def loss_fn(g_params):
    ws, stats = _mapping(models, g_params, state.g_stats, km, batch_size, mixing_prob, update_w_avg=True)
    fakes = _synthesis(models, g_params, ws, ks)
    logits = _d_logits(models, state.d_params, fakes, ka, state.ada_p)
    return losses.g_nonsaturating_loss(logits), (stats, logits)

  (loss, (stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
  ok = nonfinite.finite(loss, optax.tree.norm(grads))
  updates, opt_state = models.g_tx.update(grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, updates)
  beta = losses.ema_beta(batch_size, ema_kimg, ema_rampup, (state.step + 1) * batch_size)
  g_ema = jax.tree.map(lambda p, e: p + beta * (e - p), g_params, state.g_ema)
  new_state = state.replace(g_params=g_params, g_stats=stats, g_ema=g_ema, g_opt_state=opt_state)
  return nonfinite.keep_if(ok, new_state, state), dict(g_loss=loss, fake_logits=jnp.mean(logits), ema_beta=beta,
                                                       nonfinite_g=nonfinite.flag(ok))


def g_reg_step(state: GanState, key: jax.Array, *, models: Models, batch_size: int, mixing_prob: float,
               pl_weight: float, pl_interval: int, pl_decay: float) -> tuple[GanState, dict]:
  """Path-length regularisation on `batch_size` (already shrunk) latents, weighted ×interval (lazy)."""
  key = jax.random.fold_in(jax.random.fold_in(key, state.step), 1)
  km, ks, ky = jax.random.split(key, 3)

  def loss_fn(g_params):
    ws, _ = _mapping(models, g_params, state.g_stats, km, batch_size, mixing_prob, update_w_avg=False)
    penalty, pl_mean, lengths = losses.path_length_penalty(lambda w: _synthesis(models, g_params, w, ks), ws, ky,
                                                           state.pl_mean, pl_decay)
    return jnp.mean(penalty) * pl_weight * pl_interval, (jnp.mean(penalty), pl_mean, jnp.mean(lengths))

  (loss, (penalty, pl_mean, length)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g_params)
  ok = nonfinite.finite(loss, optax.tree.norm(grads))
  updates, opt_state = models.g_tx.update(grads, state.g_opt_state, state.g_params)
  new_state = state.replace(g_params=optax.apply_updates(state.g_params, updates), g_opt_state=opt_state,
                            pl_mean=pl_mean)
  return nonfinite.keep_if(ok, new_state, state), dict(pl_penalty=penalty, pl_length=length,
                                                       nonfinite_pl=nonfinite.flag(ok))


def d_main_step(state: GanState, reals: jax.Array, key: jax.Array, *, models: Models, mixing_prob: float,
                ada_interval: int, ada_target: float, ada_kimg: float) -> tuple[GanState, dict]:
  """D logistic step on reals [B, H, W, C] in [-1, 1] and fresh fakes; ADA bookkeeping; step += 1 (also when a
  non-finite loss or gradient skips the update: D, its optimiser and the ADA state then stay as they were)."""
  batch_size = reals.shape[0]
  key = jax.random.fold_in(jax.random.fold_in(key, state.step), 2)
  km, ks, kf, kr = jax.random.split(key, 4)
  ws, _ = _mapping(models, state.g_params, state.g_stats, km, batch_size, mixing_prob, update_w_avg=False)
  fakes = jax.lax.stop_gradient(_synthesis(models, state.g_params, ws, ks))

  def loss_fn(d_params):
    fake_logits = _d_logits(models, d_params, fakes, kf, state.ada_p)
    real_logits = _d_logits(models, d_params, reals, kr, state.ada_p)
    return losses.d_logistic_loss(real_logits, fake_logits), (real_logits, fake_logits)

  (loss, (real_logits, fake_logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
  ok = nonfinite.finite(loss, optax.tree.norm(grads))
  updates, opt_state = models.d_tx.update(grads, state.d_opt_state, state.d_params)
  step = state.step + 1
  ada_sum = state.ada_sum + jnp.sum(jnp.sign(real_logits))
  ada_count = state.ada_count + batch_size
  ada_p = state.ada_p
  if models.augment is not None and ada_target > 0:
    due = step % ada_interval == 0
    rt = ada_sum / jnp.maximum(ada_count, 1.0)
    new_p = augment_lib.update_p(ada_p, rt, batch_size, ada_interval, ada_target, ada_kimg)
    ada_p = jnp.where(due, new_p, ada_p)
    ada_sum = jnp.where(due, 0.0, ada_sum)
    ada_count = jnp.where(due, 0.0, ada_count)
  metrics = dict(d_loss=loss, real_logits=jnp.mean(real_logits), fake_logits_d=jnp.mean(fake_logits),
                 rt=jnp.mean(jnp.sign(real_logits)), nonfinite_d=nonfinite.flag(ok))
  new_state = state.replace(step=step, d_params=optax.apply_updates(state.d_params, updates), d_opt_state=opt_state,
                            ada_p=ada_p, ada_sum=ada_sum, ada_count=ada_count)
  return nonfinite.keep_if(ok, new_state, state.replace(step=step)), metrics


def d_reg_step(state: GanState, reals: jax.Array, key: jax.Array, *, models: Models, gamma: float,
               r1_interval: int) -> tuple[GanState, dict]:
  """R1 on (augmented) reals, gradient taken w.r.t. the un-augmented images, weighted γ/2 × interval."""
  key = jax.random.fold_in(jax.random.fold_in(key, state.step), 3)

  def loss_fn(d_params):
    penalty, _ = losses.r1_penalty(lambda x: _d_logits(models, d_params, x, key, state.ada_p), reals)
    return jnp.mean(penalty) * (gamma / 2) * r1_interval, jnp.mean(penalty)

  (loss, penalty), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.d_params)
  ok = nonfinite.finite(loss, optax.tree.norm(grads))
  updates, opt_state = models.d_tx.update(grads, state.d_opt_state, state.d_params)
  new_state = state.replace(d_params=optax.apply_updates(state.d_params, updates), d_opt_state=opt_state)
  return nonfinite.keep_if(ok, new_state, state), dict(r1_penalty=penalty, nonfinite_r1=nonfinite.flag(ok))


def generate(models: Models, g_ema, g_stats, z: jax.Array, truncation_psi: float = 1.0,
             noise_mode: str = 'const') -> jax.Array:
  """G_ema images [B, R, R, C] (clipped to [-1, 1]) for latents z [B, z_dim]. Pure; jit at the call site."""
  g = models.generator
  variables = {'params': g_ema, 'stats': g_stats}
  ws = g.apply(variables, z, method='mapping', truncation_psi=truncation_psi)
  return jnp.clip(g.apply({'params': g_ema}, ws, method='synthesis', noise_mode=noise_mode), -1.0, 1.0)


REG_CONVOLUTIONS = ('auto', 'native', 'im2col')

# 'auto' for the main steps: im2col only where it was measured to pay on XLA:CPU (benchmarks/README.md, "GAN
# training step"): widest layer 256 channels at batch 16, 1.9x the native main steps; the demo's 64 channels at
# batch 4 run 0.7x as fast with it, so narrower or smaller-batch models keep the native convolution.
AUTO_MAIN_IM2COL_MIN_CHANNELS = 256
AUTO_MAIN_IM2COL_MIN_BATCH = 16


def uses_im2col(config: ml_collections.ConfigDict, key: str = 'reg_convolutions') -> bool:
  """Whether the R1 / path-length steps (key='reg_convolutions') or the G / D main steps (key='main_convolutions';
  their up-convolutions then as one dot + overlap-add) trace their convolutions as im2col: config.gan.<key>
  'im2col', or 'auto' on XLA:CPU (where the native convolution's second-order derivatives are 2-4x slower); for the
  main steps 'auto' also needs the widest layer (min(channel_base / 4, channel_max) of G and D) to have >= 256
  channels and the global batch to be >= 16."""
  gc = config.gan
  mode = gc.get(key, 'native')
  if mode == 'im2col':
    return True
  if mode != 'auto' or jax.default_backend() != 'cpu':
    return False
  if key != 'main_convolutions':
    return True
  widest = min(min(net.channel_base // 4, net.channel_max) for net in (gc.generator, gc.discriminator))
  return widest >= AUTO_MAIN_IM2COL_MIN_CHANNELS and gc.batch_size >= AUTO_MAIN_IM2COL_MIN_BATCH


def _traced_with_im2col(step_fn, enabled: bool, transposed_dot: bool = False):
  """`step_fn` whose tracing happens inside layers.im2col_convolutions(enabled) (and, with transposed_dot,
  layers.dot_transposed_convolutions()): how the convolutions are computed, never what they compute."""

  def traced(*args):
    with layers.im2col_convolutions(enabled), layers.dot_transposed_convolutions(transposed_dot):
      return step_fn(*args)

  return traced


class StepFunctions:
  """The four steps jitted once each with donation and shardings (the call site of the pure steps)."""

  def __init__(self, config: ml_collections.ConfigDict, models: Models, mesh):
    gc = config.gan
    rep, data = sharding.replicated(mesh), sharding.data_sharding(mesh)
    im2col, main_im2col = uses_im2col(config), uses_im2col(config, 'main_convolutions')
    jit = lambda fn, in_sh: jax.jit(fn, in_shardings=in_sh, out_shardings=(rep, rep), donate_argnums=0)
    self.g_main = jit(
        _traced_with_im2col(
            functools.partial(g_main_step, models=models, batch_size=gc.batch_size, mixing_prob=gc.style_mixing_prob,
                              ema_kimg=gc.ema_kimg, ema_rampup=gc.ema_rampup or None), main_im2col, main_im2col),
        (rep, rep))
    self.g_reg = None
    if gc.pl_weight > 0 and gc.pl_interval:
      self.g_reg = jit(
          _traced_with_im2col(
              functools.partial(g_reg_step, models=models, batch_size=gc.batch_size // gc.pl_batch_shrink,
                                mixing_prob=gc.style_mixing_prob, pl_weight=gc.pl_weight, pl_interval=gc.pl_interval,
                                pl_decay=gc.pl_decay), im2col), (rep, rep))
    self.d_main = jit(
        _traced_with_im2col(
            functools.partial(d_main_step, models=models, mixing_prob=gc.style_mixing_prob,
                              ada_interval=gc.ada_interval, ada_target=gc.ada_target, ada_kimg=gc.ada_kimg),
            main_im2col, main_im2col), (rep, data, rep))
    gamma = r1_gamma(config)
    self.d_reg = None
    if gamma > 0 and gc.r1_interval:
      self.d_reg = jit(
          _traced_with_im2col(functools.partial(d_reg_step, models=models, gamma=gamma, r1_interval=gc.r1_interval),
                              im2col), (rep, data, rep))
    self.pl_interval, self.r1_interval = gc.pl_interval, gc.r1_interval

  def iteration(self, state: GanState, reals: jax.Array, key: jax.Array, step: int):
    """One full iteration (1-based `step` decides the lazy regularisers, as the reference's phase counter).

    metrics: the steps' scalars, their `nonfinite_*` flags and `nonfinite` (int32 0/1: any step skipped)."""
    metrics = {}
    state, m = self.g_main(state, key)
    metrics.update(m)
    if self.g_reg is not None and step % self.pl_interval == 0:
      state, m = self.g_reg(state, key)
      metrics.update(m)
    state, m = self.d_main(state, reals, key)
    metrics.update(m)
    if self.d_reg is not None and step % self.r1_interval == 0:
      state, m = self.d_reg(state, reals, key)
      metrics.update(m)
    metrics['nonfinite'] = functools.reduce(jnp.maximum, [v for k, v in metrics.items() if k.startswith('nonfinite_')])
    return state, metrics
