"""Training math of the encoder (image -> W+ offsets from w_avg, `models/encoder.py`) against a frozen G.

Each step mixes (a) synthetic pairs: w from the mapping network (truncated by `truncation_psi`), x = G(w) with
the constant noise, latent loss mean((E(x) - (w - w_avg))^2), and (b) real training images: reconstruction
losses of G(w_avg + E(x)) against x (`explain.reconstruction`: pixel L1/L2, SSIM / MS-SSIM, a perceptual loss on
the classifier's intermediate features, prediction consistency KL(f(x) || f(G(E(x)))) and the e4e-style
`delta` penalty keeping W+ close to W). `config.encoder.synthetic_fraction` of each step's images are synthetic.
An encoder with `noise=True` (`models.encoder`) splits each step's real images (`noise_split`): half are
reconstructed from its latents alone, half from its latents and its noise maps, so the latents stay the image's
and the maps add the detail left over; the synthetic pairs train the latents.
G (G_ema) and the classifier are frozen: `Frozen`, passed to the step as an argument.

`train_step` is one undecorated pure function jitted at the call site (`stages/encoder.py`: images sharded over
the 'data' axis, state replicated, donated).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax

from stylex_jax.explain import reconstruction
from stylex_jax.models import encoder as encoder_lib
from stylex_jax.train import gan as gan_train
from stylex_jax.train import nonfinite


@flax.struct.dataclass
class EncoderState:
  """Everything a resume needs (the data position is `step`)."""
  step: jax.Array  # int32 optimiser steps done
  params: Any
  opt_state: Any


@flax.struct.dataclass
class Frozen:
  """The trained networks the step reads (arguments, not constants, so they are not baked into the program)."""
  g_params: Any
  w_avg: jax.Array
  mapping_vars: Any
  classifier_vars: Any
  noise_template: Any = None  # the synthesis network's constant noise maps (stylegan2.constant_noise)


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


def generator_shape(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(num_ws, w_dim) of the generator `config` builds: the shape of the latents the encoder predicts."""
  g = gan_train.build_generator(config)
  return g.num_ws, g.w_dim


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


def noise_split(residuals: dict, template: Any) -> tuple[Any, jax.Array]:
  """The noise maps an encoder with noise=True reconstructs its real images with: (maps, with_noise [B]).

  Every other image (1, 3, ...) is made from the encoder's latents and its noise maps (normalised per map); the
  others from the latents alone with the constant maps, so the latents must draw the image by themselves.
  Trained on the predicted maps only, the encoder learns to paint the whole image through the 64 px noise map and
  its W draws nothing (measured on the demo: SSIM 0.02 from its latents with constant noise, flip rate 0.875),
  which an explanation that moves W cannot change. Holding the latents fixed (stop_gradient) on the noise half
  instead left the maps untrained (SSIM +0.001 from them). residuals {R: [B, R, R, 2]}; template: the constant
  maps (`stylegan2.constant_noise`); the maps go to one G call on the whole batch.
  """
  b = next(iter(residuals.values())).shape[0]
  with_noise = jnp.arange(b) % 2 == 1
  predicted = reconstruction.encoder_noise(template, residuals)
  pick = lambda p, c: jnp.where(with_noise[:, None, None, None], p, jnp.broadcast_to(c, p.shape))
  noise = jax.tree.map(pick, predicted, template)
  return noise, with_noise


def train_step(state: EncoderState, frozen: Frozen, images: jax.Array, key: jax.Array, *, models: Models, num_syn: int,
               truncation_psi: float, latent_weight: float, weights: dict,
               perceptual_layers: tuple) -> tuple[EncoderState, dict]:
  """One step on real images [B, H, W, C] in [-1, 1] plus `num_syn` fresh synthetic pairs; step += 1.

  Metrics: loss, loss_<term> and nonfinite (1 when a NaN/Inf loss or gradient skipped the update: params and
  optimiser state unchanged, the step still advances).
  """
  g, enc = models.generator, models.encoder
  key = jax.random.fold_in(key, state.step)
  classify = lambda x: reconstruction.classifier_features(models.classifier, frozen.classifier_vars, x,
                                                          perceptual_layers)

  def synth(ws, noise=None):
    variables = {'params': frozen.g_params} if noise is None else {'params': frozen.g_params, 'noise_inputs': noise}
    return g.apply(variables, ws, method='synthesis', noise_mode='const')

  needs_classifier = weights.get('kl', 0) or weights.get('perceptual', 0)
  x_logits, x_feats = classify(images) if needs_classifier else (None, None)
  if num_syn:
    z = jax.random.normal(key, (num_syn, g.z_dim), jnp.float32)
    syn_ws = g.apply(frozen.mapping_vars, z, method='mapping', truncation_psi=truncation_psi)
    syn_images = jax.lax.stop_gradient(jnp.clip(synth(syn_ws), -1.0, 1.0))

  def loss_fn(params):
    if enc.noise:
      offsets, residuals = enc.apply({'params': params}, images, return_noise=True)
      ws = frozen.w_avg + offsets
      noise, with_noise = noise_split(residuals, frozen.noise_template)
      recon = synth(ws, noise)
    else:
      ws = frozen.w_avg + enc.apply({'params': params}, images)
      recon = synth(ws)
    per_image, terms = reconstruction.reconstruction_loss(images, recon, ws, frozen.w_avg, weights, classify=classify,
                                                          image_logits=x_logits, image_features=x_feats)
    loss = jnp.mean(per_image)
    aux = {f'loss_{k}': jnp.mean(v) for k, v in terms.items()}
    if enc.noise:  # the reconstruction loss of each half: W alone (constant noise), W + the predicted maps
      aux['loss_w_only'] = jnp.sum(jnp.where(with_noise, 0.0, per_image)) / jnp.maximum(jnp.sum(~with_noise), 1)
      aux['loss_with_noise'] = jnp.sum(jnp.where(with_noise, per_image, 0.0)) / jnp.maximum(jnp.sum(with_noise), 1)
    if num_syn:
      syn_offsets = enc.apply({'params': params}, syn_images)
      latent = jnp.mean(jnp.square(syn_offsets - (syn_ws - frozen.w_avg)))
      loss = loss + latent_weight * latent
      aux['loss_latent'] = latent
    return loss, aux

  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  ok = nonfinite.finite(loss, optax.tree.norm(grads))
  updates, opt_state = models.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
  return nonfinite.keep_if(ok, new_state, state.replace(step=new_state.step)), dict(loss=loss, **aux,
                                                                                    nonfinite=nonfinite.flag(ok))
