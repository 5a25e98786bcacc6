"""Inversion of real images into the generator's W+ (or W): encoder initialisation + batched Adam refinement.

`Inverter(...)(images) -> dict` is the projector the explainer uses: for images [B, H, W, C] in [-1, 1] it
starts from the trained encoder (`start='encoder'`) or from w_avg (`start='w_avg'`), then runs
`config.invert.steps` Adam steps on the latents (space 'w+' = one w per synthesis layer, or 'w' = one w
broadcast to every layer) and, with `optimize_noise`, on the per-layer noise maps of the synthesis network
(NVIDIA's projector: maps re-normalised after every step, their auto-correlation regularised). The loss is
`explain.reconstruction.reconstruction_loss` (pixel, SSIM/MS-SSIM, classifier-feature perceptual, prediction
consistency KL(f(x) || f(G(w))), W+ penalties) with the weights of `config.invert.loss`.

The optimisation is three jitted pure functions — start (encoder pass), one Adam step (called `steps` times
from python with donated buffers: on CPU this runs about twice as fast as a `lax.fori_loop`), report — each
compiled once per batch shape: images are processed in chunks of `config.invert.batch_size` (the last chunk is
padded), so any number of images compiles once; `Inverter.trace_count` counts the traces. With a mesh, chunks
are sharded over its 'data' axis (batch_size must be divisible by the number of devices, else they are
replicated); every image's loss and Adam state are its own, so results do not depend on the chunking.

NVIDIA's projector recipe (`projector.py` of StyleGAN2-ADA) is the configuration `nvidia_recipe(config.invert)`:
start w_avg, space 'w', 1000 steps, lr 0.1 with a 5% cosine ramp-up and 25% ramp-down, Gaussian noise on w
(0.05 w_std, decaying to 0 over the first 75% of steps), noise maps optimised with weight 1e5 on their
regulariser; our loss replaces LPIPS (no VGG weights offline).

Bad input: images whose size or channel count differ from the generator's are resized (bilinear, antialiased)
/ converted (grey -> RGB by repetition, RGB -> grey by the channel mean) with a warning; NaN/Inf pixels or
values far outside [-1, 1] raise ValueError naming the image.

Noise: with `optimize_noise`, or from an encoder trained with noise=True (`models.encoder`: its predicted maps
start the optimisation, and are held fixed without `optimize_noise`), the reconstruction is G(ws, noise) with
the returned per-image `noise` maps; `synthesize(ws, noise)` reproduces it, `synthesize(ws)` uses the
generator's constant noise instead.
"""
from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stylex_jax import sharding
from stylex_jax.data import images as images_lib
from stylex_jax.evaluate import similarity
from stylex_jax.explain import reconstruction
from stylex_jax.models import stylegan2

SPACES = ('w+', 'w')
STARTS = ('encoder', 'w_avg')
SCHEDULES = ('constant', 'cosine', 'nvidia')


def nvidia_recipe(invert_config: ml_collections.ConfigDict, steps: int = 1000) -> ml_collections.ConfigDict:
  """A copy of `invert_config` set to NVIDIA's projector recipe (see the module docstring), `steps` steps."""
  c = ml_collections.ConfigDict(invert_config.to_dict())
  c.start, c.space, c.steps, c.lr, c.lr_schedule = 'w_avg', 'w', int(steps), 0.1, 'nvidia'
  c.lr_rampup, c.lr_rampdown = 0.05, 0.25
  c.w_noise, c.w_noise_ramp = 0.05, 0.75
  c.optimize_noise, c.noise_regularize = True, 1e5
  return c


def learning_rate(t: jax.Array, lr: float, schedule: str, rampup: float, rampdown: float) -> jax.Array:
  """Learning rate at progress t = step / steps in [0, 1): 'constant'; 'cosine' (half-cosine decay to 0 with a
  linear ramp-up over `rampup`); 'nvidia' (the projector's: cosine ramp-down over the last `rampdown`, linear
  ramp-up over the first `rampup`)."""
  up = jnp.minimum(1.0, t / rampup) if rampup > 0 else 1.0
  if schedule == 'constant':
    return lr * up
  if schedule == 'cosine':
    return lr * up * 0.5 * (1 + jnp.cos(jnp.pi * t))
  ramp = jnp.minimum(1.0, (1.0 - t) / rampdown) if rampdown > 0 else 1.0
  return lr * up * (0.5 - 0.5 * jnp.cos(ramp * jnp.pi))


def check_invert_config(c: ml_collections.ConfigDict) -> None:
  """ValueError on an unknown space / start / schedule, or non-positive steps / lr / batch size."""
  if c.space not in SPACES:
    raise ValueError(f'config.invert.space={c.space!r}; use one of {SPACES}')
  if c.start not in STARTS:
    raise ValueError(f'config.invert.start={c.start!r}; use one of {STARTS}')
  if c.lr_schedule not in SCHEDULES:
    raise ValueError(f'config.invert.lr_schedule={c.lr_schedule!r}; use one of {SCHEDULES}')
  if c.steps < 0 or c.lr <= 0 or c.batch_size < 1:
    raise ValueError(f'config.invert needs steps >= 0, lr > 0 and batch_size >= 1, got steps={c.steps}, '
                     f'lr={c.lr}, batch_size={c.batch_size}')
  unknown = set(dict(c.loss)) - set(reconstruction.LOSS_TERMS)
  if unknown:
    raise ValueError(f'config.invert.loss has unknown term(s) {sorted(unknown)}; use {reconstruction.LOSS_TERMS}')


def conform_images(images: Any, size: int, channels: int, ids=None, who: str = 'invert') -> np.ndarray:
  """images [B, H, W, C] in [-1, 1] -> float32 [B, size, size, channels] (see the module docstring for the
  conversions and errors; other sizes are centre-cropped and resized by `stylex_jax.data.images.resize_square`,
  the training pipeline's rule). ids: optional names used in error messages."""
  x = np.asarray(images, np.float32)
  if x.ndim == 3:
    x = x[..., None] if channels == 1 and x.shape[-1] not in (1, 3) else x[None]
  if x.ndim != 4 or x.shape[0] == 0:
    raise ValueError(f'{who}: images must be a non-empty [B, H, W, C] array in [-1, 1], got shape {x.shape}')
  finite = np.isfinite(x).reshape(x.shape[0], -1).all(axis=1)
  name = lambda i: repr(ids[i]) if ids is not None else f'#{i}'
  if not finite.all():
    bad = [name(i) for i in np.flatnonzero(~finite)]
    raise ValueError(f'{who}: image(s) {", ".join(bad[:10])} contain NaN or Inf pixels; fix or drop them')
  extent = np.abs(x).reshape(x.shape[0], -1).max(axis=1)
  if (extent > 1.5).any():
    i = int(np.argmax(extent))
    raise ValueError(f'{who}: image {name(i)} has values up to {extent[i]:.3g}; images must be float in [-1, 1] '
                     f'(uint8 images: x / 127.5 - 1)')
  if x.shape[-1] != channels:
    if x.shape[-1] == 1 and channels == 3:
      x = np.repeat(x, 3, axis=-1)
    elif x.shape[-1] == 3 and channels == 1:
      x = x.mean(axis=-1, keepdims=True)
    else:
      raise ValueError(f'{who}: images have {x.shape[-1]} channels; the generator makes {channels} (1 or 3)')
    warnings.warn(f'{who}: converted images to {channels} channel(s) for the generator', stacklevel=3)
  if x.shape[1:3] != (size, size):
    warnings.warn(
        f'{who}: centre-cropped and resized images of {x.shape[1]}x{x.shape[2]} px to the generator\'s '
        f'{size}x{size}', stacklevel=3)
    x = np.stack([images_lib.resize_square(image, size) for image in x])  # the pipeline's crop + resize rule
  return np.clip(x, -1.0, 1.0)


class Inverter:
  """Inverts images into the generator's latent space (see the module docstring).

  Constructor (pieces directly, e.g. a tiny G and classifier in tests):
    generator: stylegan2.Generator; g_params: its (G_ema) params; g_stats: {'mapping_network': {'w_avg'}}.
    classifier: a Flax module with apply(variables, images, train=False) -> logits [B, K] (sowing
      'intermediates' for the perceptual term); classifier_vars: its variables.
    invert_config: `config.invert`.
    encoder, encoder_params: models.encoder.Encoder and its params, or None (start from w_avg).
    mesh: optional jax Mesh; chunks are sharded over its 'data' axis.
    use_encoder_noise: start from the encoder's noise maps when it predicts them (False: the constant maps,
      e.g. to measure what its latents alone draw).
  Attributes: num_ws, w_dim, w_avg [w_dim], trace_count, synthesize(ws, noise=None), classify(images).
  """

  def __init__(self, generator, g_params, g_stats, classifier, classifier_vars,
               invert_config: ml_collections.ConfigDict, *, encoder=None, encoder_params=None, mesh=None,
               use_encoder_noise: bool = True):
    check_invert_config(invert_config)
    self.config = invert_config
    self.generator, self.g_params, self.g_stats = generator, g_params, g_stats
    self.classifier, self.classifier_vars = classifier, classifier_vars
    self.encoder, self.encoder_params = encoder, encoder_params
    self.mesh = mesh
    self.num_ws, self.w_dim = generator.num_ws, generator.w_dim
    self.resolution, self.channels = generator.resolution, generator.channels
    self.w_avg = jnp.asarray(g_stats['mapping_network']['w_avg'])
    self.start = invert_config.start
    self.use_encoder_noise = use_encoder_noise
    if self.start == 'encoder' and encoder is None:
      print('[invert] no trained encoder: starting the optimisation from w_avg (train the `encoder` stage for '
            'faster, better inversions)')
      self.start = 'w_avg'
    self.trace_count = 0
    self._w_std = None
    self._noise_template = None
    self._start_fn = jax.jit(self._start)
    self._step_fn = jax.jit(self._step, donate_argnums=(0, 1))
    self._finish_fn = jax.jit(self._finish)

  # ------------------------------------------------------------------ pure pieces the explainer reuses
  def synthesize(self, ws: jax.Array, noise=None) -> jax.Array:
    """ws [B, num_ws, w_dim] (+ noise maps from an inversion) -> images [B, R, R, C] clipped to [-1, 1]."""
    return jnp.clip(self._synthesize_raw(ws, noise), -1.0, 1.0)

  def classify(self, images: jax.Array) -> jax.Array:
    """images [B, H, W, C] in [-1, 1] -> logits [B, K]."""
    return self.classifier.apply(self.classifier_vars, images, train=False)

  def _synthesize_raw(self, ws, noise=None):
    variables = {'params': self.g_params}
    if noise is not None:
      variables['noise_inputs'] = noise
    return self.generator.apply(variables, ws, method='synthesis', noise_mode='const')

  def _classify_features(self, images):
    """(logits [B, K], {layer: features}) with the classifier's sown intermediates in `perceptual_layers`."""
    return reconstruction.classifier_features(self.classifier, self.classifier_vars, images,
                                              self.config.perceptual_layers)

  def noise_template(self):
    """The synthesis network's constant noise maps as a pytree of [1, H, W, 1] (the optimisation's start)."""
    if self._noise_template is None:
      self._noise_template = stylegan2.constant_noise(self.generator, self.g_params)
    return self._noise_template

  def w_std(self, num_samples: int = 10000) -> float:
    """sqrt(E||w - w_avg||^2) over `num_samples` mapped latents (NVIDIA's w_std for the w noise)."""
    if self._w_std is None:
      z = jax.random.normal(jax.random.key(123), (num_samples, self.generator.z_dim), jnp.float32)
      ws = jax.jit(lambda z: self.generator.apply({
          'params': self.g_params,
          'stats': self.g_stats
      }, z, method='mapping'))(z)[:, 0]
      self._w_std = float(jnp.sqrt(jnp.sum(jnp.square(ws - self.w_avg)) / num_samples))
    return self._w_std

  # ------------------------------------------------------------------ the optimisation
  @property
  def encoder_noise(self) -> bool:
    """Whether the start's noise maps come from the encoder (an encoder trained with noise=True)."""
    return self.start == 'encoder' and self.use_encoder_noise and bool(getattr(self.encoder, 'noise', False))

  def initial_latents(self, images: jax.Array):
    """Start of the optimisation. images [B, R, R, C] -> (ws [B, num_ws, w_dim], noise maps or None): w_avg
    (+ the encoder's offsets) and, from an encoder with noise=True, its noise maps (`reconstruction.encoder_noise`);
    None means the generator's constant maps."""
    b = images.shape[0]
    ws = jnp.broadcast_to(self.w_avg, (b, self.num_ws, self.w_dim))
    if self.start != 'encoder':
      return ws, None
    if not self.encoder_noise:
      return ws + self.encoder.apply({'params': self.encoder_params}, images), None
    offsets, residuals = self.encoder.apply({'params': self.encoder_params}, images, return_noise=True)
    return ws + offsets, reconstruction.encoder_noise(self.noise_template(), residuals)

  def _expand(self, w):
    return w if w.ndim == 3 else jnp.broadcast_to(w[:, None], (w.shape[0], self.num_ws, self.w_dim))

  def _start(self, images: jax.Array):
    """images [B, R, R, C] -> (optimised variables, Adam state, the images' logits and features). Pure."""
    self.trace_count += 1
    c = self.config
    weights = dict(c.loss)
    b = images.shape[0]
    needs_classifier = weights.get('kl', 0) or weights.get('perceptual', 0)
    x_logits, x_feats = self._classify_features(images) if needs_classifier else (None, None)
    ws0, noise0 = self.initial_latents(images)
    params = {'w': ws0 if c.space == 'w+' else jnp.mean(ws0, axis=1)}
    if noise0 is None and c.optimize_noise:
      noise0 = jax.tree.map(lambda n: jnp.broadcast_to(n, (b,) + n.shape[1:]), self.noise_template())
    if noise0 is not None:  # optimised with `optimize_noise`, else the encoder's maps held fixed
      params['noise'] = noise0
    return params, self._adam().init(self._optimised(params)), x_logits, x_feats

  def _optimised(self, params):
    """The part of the variables Adam moves: w, and the noise maps with `optimize_noise`."""
    return params if self.config.optimize_noise else {'w': params['w']}

  def _adam(self):
    return optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)

  def _step(self, params, opt_state, images, x_logits, x_feats, i, key, w_std):
    """One Adam step of every image's variables at step i (int32 scalar). Pure; jitted with donation."""
    self.trace_count += 1
    c = self.config
    weights = dict(c.loss)
    t = i.astype(jnp.float32) / max(int(c.steps), 1)

    fixed_noise = None if c.optimize_noise else params.get('noise')

    def loss_fn(p):
      ws = self._expand(p['w'])
      if c.w_noise > 0:
        scale = w_std * c.w_noise * jnp.square(jnp.maximum(0.0, 1.0 - t / c.w_noise_ramp))
        ws = ws + scale * jax.random.normal(jax.random.fold_in(key, i), ws.shape)
      noise = p['noise'] if c.optimize_noise else fixed_noise
      recon = self._synthesize_raw(ws, noise)
      loss, _ = reconstruction.reconstruction_loss(images, recon, ws, self.w_avg, weights,
                                                   classify=self._classify_features, image_logits=x_logits,
                                                   image_features=x_feats)
      if c.optimize_noise and c.noise_regularize > 0:
        loss = loss + c.noise_regularize * reconstruction.noise_regularization(noise)
      return jnp.sum(loss)

    moving = self._optimised(params)
    grads = jax.grad(loss_fn)(moving)
    updates, opt_state = self._adam().update(grads, opt_state, moving)
    lr = learning_rate(t, c.lr, c.lr_schedule, c.lr_rampup, c.lr_rampdown)
    scaled = dict(updates)
    if 'noise' in scaled:
      scaled['noise'] = jax.tree.map(lambda u: u * c.noise_lr_multiplier, scaled['noise'])
    params = dict(jax.tree.map(lambda v, u: v - lr * u, moving, scaled))
    if c.optimize_noise:
      params['noise'] = reconstruction.normalize_noise(params['noise'])
    elif fixed_noise is not None:
      params['noise'] = fixed_noise
    return params, opt_state

  def _finish(self, params, images):
    """The per-image report of the optimised variables (see __call__). Pure."""
    self.trace_count += 1
    ws = self._expand(params['w'])
    noise = params.get('noise')
    recon = self.synthesize(ws, noise)
    px = jax.nn.softmax(self.classify(images))
    py = jax.nn.softmax(self.classify(recon))
    report = dict(ws=ws, reconstructions=recon, original_probs=px, reconstruction_probs=py,
                  mse=jnp.mean(jnp.square(recon - images), axis=(1, 2, 3)), ssim=similarity.ssim(recon, images),
                  psnr=similarity.psnr(recon, images), prob_delta=0.5 * jnp.sum(jnp.abs(px - py), axis=-1),
                  w_distance=reconstruction.w_distance(ws, self.w_avg), agree=jnp.argmax(px, -1) == jnp.argmax(py, -1))
    if noise is not None:
      report['noise'] = noise
    return report

  def invert_chunk(self, images: jax.Array, key: jax.Array, w_std: jax.Array) -> dict:
    """One chunk [B, R, R, C] (already conformed, on device) -> the report as jax arrays."""
    params, opt_state, x_logits, x_feats = self._start_fn(images)
    for i in range(int(self.config.steps)):
      params, opt_state = self._step_fn(params, opt_state, images, x_logits, x_feats, jnp.int32(i), key, w_std)
    return self._finish_fn(params, images)

  def _place(self, chunk: np.ndarray) -> jax.Array:
    """A chunk [batch_size, R, R, C] on device: sharded over the mesh's 'data' axis when the chunk divides over it."""
    if self.mesh is not None and chunk.shape[0] % self.mesh.devices.size == 0:
      return jax.device_put(chunk, sharding.data_sharding(self.mesh))
    return jnp.asarray(chunk)

  def warmup(self) -> float:
    """Compiles the start, step and report functions for one chunk (one step on blank images, result
    discarded), so later calls run without compiling. Returns the seconds it took."""
    import time
    t0 = time.perf_counter()
    self.noise_template()
    x = self._place(np.zeros((int(self.config.batch_size), self.resolution, self.resolution, self.channels),
                             np.float32))  # placed as __call__ places chunks, or the first call compiles again
    params, opt_state, x_logits, x_feats = self._start_fn(x)
    w_std = jnp.float32(self.w_std() if self.config.w_noise > 0 else 0.0)
    params, opt_state = self._step_fn(params, opt_state, x, x_logits, x_feats, jnp.int32(0), jax.random.key(0), w_std)
    jax.block_until_ready(self._finish_fn(params, x))
    return time.perf_counter() - t0

  def __call__(self, images: np.ndarray, ids=None, *, seed: int = 0) -> dict:
    """Inverts images [B, H, W, C] in [-1, 1] (see the module docstring for conversions and errors).

    Returns numpy arrays: ws [B, num_ws, w_dim]; reconstructions [B, R, R, C] in [-1, 1]; original_probs,
    reconstruction_probs [B, K]; per image mse, ssim, psnr (dB), prob_delta (total variation 0.5·sum|Δp|, = |Δp|
    of either class when K = 2), w_distance (||mean_layers(w) - w_avg||) [B]; agree [B] bool (same argmax);
    with optimize_noise also `noise` (pytree of [B, H, W, 1] maps for `synthesize(ws, noise)`); ids if given.
    """
    x = conform_images(images, self.resolution, self.channels, ids)
    self.noise_template()  # concrete before tracing
    n, bs = x.shape[0], int(self.config.batch_size)
    w_std = jnp.float32(self.w_std() if self.config.w_noise > 0 else 0.0)
    outs = []
    for start in range(0, n, bs):
      chunk = x[start:start + bs]
      m = chunk.shape[0]
      if m < bs:
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - m, axis=0)])
      out = self.invert_chunk(self._place(chunk), jax.random.fold_in(jax.random.key(seed), start), w_std)
      outs.append(jax.tree.map(lambda a: np.asarray(a)[:m], out))
    result = jax.tree.map(lambda *a: np.concatenate(a), *outs)
    if ids is not None:
      result['ids'] = np.asarray(ids)
    return result


def summarize(result: dict) -> dict:
  """Held-out metrics of an inversion result: means of ssim, psnr, mse, prob_delta (mean |Δp|), w_distance and
  agreement (share of images whose reconstruction keeps the argmax), and the image count."""
  return dict(num_images=int(len(result['ssim'])), ssim=float(np.mean(result['ssim'])),
              psnr=float(np.mean(result['psnr'])), mse=float(np.mean(result['mse'])),
              agreement=float(np.mean(result['agree'])), prob_delta=float(np.mean(result['prob_delta'])),
              w_distance=float(np.mean(result['w_distance'])))
