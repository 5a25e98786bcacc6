"""Latent directions that change a classifier's prediction: gradient mode (jax.grad through G) and black-box mode.

Everything here is a pure function of arrays plus two callables:
  synthesize(ws: [B, num_ws, w_dim] float32) -> images [B, H, W, C] in [-1, 1]   (jax-traceable)
  classify(images: [B, H, W, C]) -> logits [B, K]                                (jax-traceable; gradient mode)
  predict(images: np.ndarray [B, H, W, C] in [-1, 1]) -> np.ndarray probs [B, K] (black-box mode: numpy in and
                                                                                  out, e.g. a TF SavedModel)

Targets (`make_target`): the scalar per image whose change the direction maximises; 'auto' = the log-odds of the
positive class for a binary classifier (logit[1] - logit[0] for K = 2, logit[0] for K = 1), the expected grade
sum_k k p_k for K > 2 (ordinal labels such as Kellgren-Lawrence).

Directions and their scale (shared by `series.py`):
  * A direction d always has shape [num_ws, w_dim] (local directions: [B, num_ws, w_dim]) and unit norm over ALL
    its elements, ||d||_F = 1. A shifted latent is w + alpha * d, so alpha is a Euclidean distance in W+.
  * space='w+': every layer has its own component. space='w': one [w_dim] vector u broadcast to every layer,
    d[l] = u / sqrt(num_ws) (so ||d||_F = 1; each layer moves by alpha / sqrt(num_ws)).
  * Scale guidance: `latent_scale(ws, w_avg)` is the median ||w_i - w_avg||_F of a batch; shifts of about
    0.5-2 x that scale are large, visible edits (`alpha_scale`: pass alphas as multiples of it).

Gradient mode (`GradientDirection`, `gradient_direction`, `top_k_directions`): for a fixed step size a, maximise
  mean_i [target(f(G(w_i + a d))) - target(f(G(w_i)))] - lambda * mean_i mean_pixels (G(w_i + a d) - G(w_i))^2
over unit d (parametrised unconstrained, normalised inside the loss), with Adam for `steps` steps inside one
jitted `lax.scan`; latents processed as one batch (optionally in rematerialised chunks). Global mode: one d for
all latents (as Schutte et al. 2021); local mode: one d per latent with the same per-latent loss. The direction
increases the target; negative alphas decrease it. Earlier directions are projected out inside the loss, so the
k-th direction is the best one orthogonal to the first k - 1 (Gram-Schmidt).

Black-box mode (`LinearProbe`, `probe_direction`): label G(w) of sampled latents with `predict`, fit an
L2-regularised logistic regression (binary / one-vs-rest targets, on soft probabilities) or ridge regression
(expected grade) on the latents, and take the normalised coefficient vector as d. Earlier directions are
projected out of the features. No gradients of the classifier are needed; sklearn is not required.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.optimize

TARGET_KINDS = ('auto', 'logit', 'log_odds', 'expected_grade')
SPACES = ('w', 'w+')

# ------------------------------------------------------------------------------------------------------------
# Targets
# ------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
  """A scalar per image computed from logits; see `make_target`. Call it: target(logits [B, K]) -> [B].

  kind is the resolved kind ('logit', 'log_odds' or 'expected_grade'; 'auto' is resolved by make_target).
  """
  kind: str
  num_classes: int
  class_index: int | None

  def check_logits(self, logits) -> None:
    shape = tuple(logits.shape)
    if len(shape) != 2:
      raise ValueError(f'classify must return logits [B, K]; got shape {shape}.')
    if shape[1] != self.num_classes:
      raise ValueError(f'classifier returns K={shape[1]} classes but config.data.num_classes={self.num_classes}; '
                       'explain with the classifier trained for this config (or fix num_classes).')

  def __call__(self, logits) -> jax.Array:
    """logits [B, K] -> target [B] float32."""
    self.check_logits(logits)
    logits = jnp.asarray(logits, jnp.float32)
    k, c = self.num_classes, self.class_index
    if self.kind == 'expected_grade':
      return jnp.sum(jax.nn.softmax(logits, axis=-1) * jnp.arange(k, dtype=jnp.float32), axis=-1)
    if k == 1:  # one logit = log-odds of the positive class (sigmoid head)
      return logits[:, 0]
    if self.kind == 'logit':
      return logits[:, c]
    others = jnp.where(jnp.arange(k) == c, -jnp.inf, logits)  # log_odds: class c vs the rest
    return logits[:, c] - jax.nn.logsumexp(others, axis=-1)

  @property
  def has_boundary(self) -> bool:
    return self.kind != 'logit' or self.num_classes == 1

  def boundary(self, values) -> np.ndarray:
    """Decision boundary on the target's scale for images whose target is `values` [B] -> [B] float32.

    log-odds: 0 (p = 0.5). expected grade: the boundary to the next grade up (round(t) + 0.5), or down
    (round(t) - 0.5) for images at the top grade. A class logit has no boundary (ValueError: give a threshold).
    """
    values = np.asarray(values, np.float32)
    if self.kind == 'expected_grade':
      g = np.clip(np.round(values), 0, self.num_classes - 1)
      return np.where(g < self.num_classes - 1, g + 0.5, g - 0.5).astype(np.float32)
    if not self.has_boundary:
      raise ValueError("target kind 'logit' has no decision boundary; pass threshold= (on the logit scale) or use "
                       "kind='log_odds' (class vs rest, boundary p = 0.5).")
    return np.zeros_like(values)

  def probe_labels(self, probs: np.ndarray) -> tuple[np.ndarray, str]:
    """Black-box labels from probabilities [n, K]: (y [n], 'logistic' with y = p_class in [0, 1]) for log-odds and
    logit targets, (y = sum_k k p_k, 'ridge') for the expected grade."""
    if self.kind == 'expected_grade':
      return probs @ np.arange(self.num_classes, dtype=np.float64), 'ridge'
    return probs[:, 0 if self.num_classes == 1 else self.class_index].astype(np.float64), 'logistic'


def make_target(kind: str = 'auto', num_classes: int = 2, class_index: int | None = None) -> Target:
  """The target explained: returns target(logits [B, K]) -> [B] (a frozen, hashable `Target`).

  kind: 'auto'           K <= 2: log-odds of the positive class (logit[1] - logit[0], or logit[0] for K = 1);
                         K > 2: expected grade sum_k k softmax(logits)_k.
        'logit'          the logit of `class_index`.
        'log_odds'       log p_c - log(1 - p_c) of class c = `class_index` vs the rest.
        'expected_grade' sum_k k p_k (ordinal labels, K >= 2).
  class_index: required for 'logit'/'log_odds' when K > 2; defaults to the positive class (K - 1) for K <= 2.
  """
  if kind not in TARGET_KINDS:
    raise ValueError(f'unknown target kind {kind!r}; choose one of {TARGET_KINDS}.')
  if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 1:
    raise ValueError(f'num_classes must be an int >= 1; got {num_classes!r}.')
  num_classes = int(num_classes)
  if kind == 'auto':
    kind = 'log_odds' if num_classes <= 2 else 'expected_grade'
  if kind == 'expected_grade':
    if num_classes < 2:
      raise ValueError("target kind 'expected_grade' needs num_classes >= 2 (one logit has no grades); "
                       "use kind='log_odds'.")
    if class_index is not None:
      raise ValueError("target kind 'expected_grade' uses all classes; leave class_index=None.")
    return Target(kind, num_classes, None)
  if class_index is None:
    if num_classes > 2:
      raise ValueError(f'target kind {kind!r} with num_classes={num_classes} needs class_index in '
                       f"[0, {num_classes - 1}] (the class explained); or use kind='expected_grade'.")
    class_index = num_classes - 1
  if (not isinstance(class_index, (int, np.integer)) or isinstance(class_index, bool) or
      not 0 <= class_index < num_classes):
    raise ValueError(f'class_index must be an int in [0, {num_classes - 1}] for num_classes={num_classes}; '
                     f'got {class_index!r}.')
  return Target(kind, num_classes, int(class_index))


# ------------------------------------------------------------------------------------------------------------
# Shapes, norms, projections
# ------------------------------------------------------------------------------------------------------------


def check_latents(ws, name: str = 'ws') -> jax.Array:
  """ws: [B, num_ws, w_dim] float -> float32 array; anything else -> one ValueError."""
  shape = tuple(np.shape(ws))
  if len(shape) != 3 or shape[0] < 1:
    raise ValueError(f'{name} must be latents [B, num_ws, w_dim] with B >= 1 (W+; broadcast W latents with '
                     f'w[:, None, :].repeat(num_ws, 1)); got shape {shape}.')
  ws = jnp.asarray(ws, jnp.float32)
  return ws


def check_space(space: str) -> str:
  if space not in SPACES:
    raise ValueError(f"space must be 'w' (one w_dim vector for every layer) or 'w+' (per layer); got {space!r}.")
  return space


def normalize(d, axes=(-2, -1)) -> jax.Array:
  """d / ||d|| over `axes` (default: the [num_ws, w_dim] axes); a zero d stays zero."""
  n = jnp.sqrt(jnp.sum(jnp.square(d), axis=axes, keepdims=True))
  return d / jnp.maximum(n, 1e-12)


def project_out(d, previous) -> jax.Array:
  """d [..., num_ws, w_dim] minus its components along the orthonormal rows of previous [k, num_ws, w_dim]
  (zero rows are ignored, so previous may be zero-padded). Applied twice for numerical orthogonality."""
  if previous is None or previous.shape[0] == 0:
    return d
  for _ in range(2):
    coef = jnp.einsum('...lw,klw->...k', d, previous)
    d = d - jnp.einsum('...k,klw->...lw', coef, previous)
  return d


def broadcast_w(u, num_ws: int) -> jax.Array:
  """A W-space vector u [..., w_dim] -> the W+ direction [..., num_ws, w_dim] with ||.||_F = ||u||."""
  u = jnp.asarray(u, jnp.float32)
  return jnp.broadcast_to(u[..., None, :], u.shape[:-1] + (num_ws, u.shape[-1])) / math.sqrt(num_ws)


def latent_scale(ws, w_avg=None) -> float:
  """Typical size of a latent's offset, median_i ||w_i - w_avg||_F over the batch (w_avg [w_dim], or the batch
  mean when None). ws: [B, num_ws, w_dim]. Use alphas = alpha_scale * latent_scale(ws, w_avg)."""
  ws = np.asarray(check_latents(ws))
  centre = ws.mean(axis=0) if w_avg is None else np.broadcast_to(np.asarray(w_avg, np.float32), ws.shape[1:])
  return float(np.median(np.sqrt(np.sum((ws - centre)**2, axis=(1, 2)))))


def _check_previous(previous, num_ws: int, w_dim: int):
  if previous is None:
    return jnp.zeros((0, num_ws, w_dim), jnp.float32)
  previous = jnp.asarray(previous, jnp.float32)
  if previous.ndim == 2:
    previous = previous[None]
  if previous.ndim != 3 or previous.shape[1:] != (num_ws, w_dim):
    raise ValueError(f'previous directions must be [k, num_ws, w_dim] = [k, {num_ws}, {w_dim}]; '
                     f'got shape {tuple(previous.shape)}.')
  return previous


# ------------------------------------------------------------------------------------------------------------
# Gradient mode
# ------------------------------------------------------------------------------------------------------------


class DirectionFit(NamedTuple):
  """Result of gradient mode. direction: [num_ws, w_dim] (global) or [B, num_ws, w_dim] (local), unit norm.
  gain: mean target change target(f(G(w + a d))) - target(f(G(w))) at the step size a: scalar (global) or [B]
  (local), for the final d; initial_gain: the same for the initial d; proximity: mean squared pixel change
  (same shape as gain); history: [steps] mean gain before each Adam step."""
  direction: Any
  gain: Any
  initial_gain: Any
  proximity: Any
  history: Any


class GradientDirection:
  """Jitted gradient-mode optimiser; create once, call many times (same shapes do not retrace).

  Args:
    synthesize, classify: see the module docstring (pure, jax-traceable).
    target: a `Target` (make_target).
    space: 'w' or 'w+' (see module docstring for the scale convention).
    local: False -> one direction for all latents; True -> one direction per latent.
    step_size: a, the shift at which the target change is measured (alpha units, ||d|| = 1).
    proximity_weight: lambda, weight of the mean squared pixel change G(w + a d) - G(w).
    steps: Adam steps; learning_rate: the change of the unit direction per step (cosine-decayed to 0).
    init: 'gradient' (the normalised gradient of the target at the latents, plus a little noise) or 'random'.
    chunk_size: latents per chunk inside the loss (rematerialised, to bound memory); None = all at once.

  __call__(ws [B, num_ws, w_dim], key=None, previous=None [k, num_ws, w_dim] orthonormal, zero rows ignored;
  in space 'w' they must be W directions too, i.e. the same vector on every layer) -> DirectionFit.
  The initial direction, the Adam loop and the final evaluation are one jitted program.
  `trace_count` counts traces of the jitted optimiser (for tests).
  """

  def __init__(self, synthesize: Callable, classify: Callable, target: Target, *, space: str = 'w', local: bool = False,
               step_size: float = 1.0, proximity_weight: float = 0.0, steps: int = 100, learning_rate: float = 0.1,
               init: str = 'gradient', chunk_size: int | None = None):
    if not isinstance(target, Target):
      raise ValueError(f'target must be a Target from make_target(kind, num_classes, class_index); got {target!r}.')
    if init not in ('gradient', 'random'):
      raise ValueError(f"init must be 'gradient' or 'random'; got {init!r}.")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
      raise ValueError(f'steps must be an int >= 1; got {steps!r}.')
    if chunk_size is not None and (not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
      raise ValueError(f'chunk_size must be None or an int >= 1; got {chunk_size!r}.')
    self.synthesize, self.classify, self.target = synthesize, classify, target
    self.space, self.local = check_space(space), bool(local)
    self.step_size, self.proximity_weight = float(step_size), float(proximity_weight)
    self.steps, self.learning_rate, self.init = int(steps), float(learning_rate), init
    self.chunk_size = chunk_size
    self.trace_count = 0
    self._fit = jax.jit(self._fit_impl)

  # -- pieces ---------------------------------------------------------------------------------------------
  def _to_direction(self, p, previous, num_ws):
    d = broadcast_w(p, num_ws) if self.space == 'w' else p
    return normalize(project_out(d, previous))

  def _terms(self, d, ws, base_images, base_t):
    """Per-latent gain [c] and proximity [c] for latents ws [c, ...] and d [num_ws, w_dim] or [c, ...]."""
    images = self.synthesize(ws + self.step_size * d)
    t = self.target(self.classify(images))
    prox = jnp.mean(jnp.square(images - base_images).reshape(images.shape[0], -1), axis=1)
    return t - base_t, prox

  def _chunked(self, fn, *arrays):
    """fn over the leading axis in chunks (lax.map, rematerialised); arrays padded; returns outputs [n, ...]."""
    n = arrays[0].shape[0]
    c = self.chunk_size
    if c is None or c >= n:
      return fn(*arrays)
    m = -(-n // c)
    padded = [
        jnp.concatenate([a, jnp.broadcast_to(a[:1], (m * c - n,) + a.shape[1:])]).reshape((m, c) + a.shape[1:])
        for a in arrays
    ]
    out = jax.lax.map(jax.checkpoint(lambda xs: fn(*xs)), padded)
    return jax.tree.map(lambda o: o.reshape((m * c,) + o.shape[2:])[:n], out)

  def _fit_impl(self, ws, key, previous):
    self.trace_count += 1
    p0 = self.initial(ws, key)
    n, num_ws, _ = ws.shape
    base_images, base_t = self._chunked(lambda w: (lambda im: (im, self.target(self.classify(im))))(self.synthesize(w)),
                                        ws)
    base_images = jax.lax.stop_gradient(base_images)
    base_t = jax.lax.stop_gradient(base_t)

    def per_latent(p):
      d = self._to_direction(p, previous, num_ws)
      if self.local:
        return self._chunked(lambda dd, w, bi, bt: self._terms(dd, w, bi, bt), d, ws, base_images, base_t)
      return self._chunked(lambda w, bi, bt: self._terms(d, w, bi, bt), ws, base_images, base_t)

    def loss(p):
      gain, prox = per_latent(p)
      per = -gain + self.proximity_weight * prox
      return (jnp.sum(per) if self.local else jnp.mean(per)), (gain, prox)

    axes = (-1,) if self.space == 'w' else (-2, -1)
    size = p0.shape[-1] if self.space == 'w' else p0.shape[-1] * p0.shape[-2]
    schedule = optax.cosine_decay_schedule(self.learning_rate / math.sqrt(size), self.steps)
    tx = optax.adam(schedule)

    def renorm(p):
      if self.space == 'w':
        p = project_out(broadcast_w(p, num_ws), previous)[..., 0, :] * math.sqrt(num_ws)
      else:
        p = project_out(p, previous)
      return normalize(p, axes)

    # steps + 1 evaluations of the loss (one compiled gradient program): evaluation i is at the parameters after
    # i Adam steps, so evaluation 0 gives the initial gain and evaluation `steps` the final one (its update is
    # discarded).
    def step(carry, _):
      p, opt, _ = carry
      (_, terms), grad = jax.value_and_grad(loss, has_aux=True)(p)
      updates, opt = tx.update(grad, opt, p)
      return (renorm(optax.apply_updates(p, updates)), opt, p), terms

    p0 = renorm(p0)
    (_, _, p), (gains, proxs) = jax.lax.scan(step, (p0, tx.init(p0), p0), None, length=self.steps + 1)
    d = self._to_direction(p, previous, num_ws)
    gain, prox, init_gain = gains[-1], proxs[-1], gains[0]
    history = jnp.mean(gains[:-1], axis=1)
    if not self.local:
      gain, prox, init_gain = jnp.mean(gain), jnp.mean(prox), jnp.mean(init_gain)
    return DirectionFit(d, gain, init_gain, prox, history)

  def initial(self, ws, key):
    """Initial unconstrained parameter: [w_dim] or [num_ws, w_dim] (local: with a leading B); traceable."""
    n, num_ws, w_dim = ws.shape
    shape = (w_dim,) if self.space == 'w' else (num_ws, w_dim)
    if self.local:
      shape = (n,) + shape
    noise = jax.random.normal(key, shape, jnp.float32)
    if self.init == 'random':
      return noise

    # Gradient of the summed target w.r.t. a shift of every latent (global: shared shift, local: own shift).
    def total(shift):
      s = broadcast_w(shift, num_ws) * math.sqrt(num_ws) if self.space == 'w' else shift
      if self.local:
        t = self._chunked(lambda w, ss: self.target(self.classify(self.synthesize(w + ss))), ws, s)
      else:
        t = self._chunked(lambda w: self.target(self.classify(self.synthesize(w + s))), ws)
      return jnp.sum(t)

    g = jax.grad(total)(jnp.zeros(shape, jnp.float32))
    axes = (-1,) if self.space == 'w' else (-2, -1)
    return normalize(g, axes) + 1e-3 * normalize(noise, axes)

  def __call__(self, ws, key=None, previous=None) -> DirectionFit:
    ws = check_latents(ws)
    _, num_ws, w_dim = ws.shape
    previous = _check_previous(previous, num_ws, w_dim)
    key = jax.random.key(0) if key is None else key
    return self._fit(ws, key, previous)


def gradient_direction(synthesize: Callable, classify: Callable, ws, target: Target, *, key=None, previous=None,
                       **options) -> DirectionFit:
  """One-shot gradient mode: GradientDirection(synthesize, classify, target, **options)(ws, key, previous).
  Builds (and so traces) a new optimiser each call; keep a GradientDirection to reuse the compiled one."""
  return GradientDirection(synthesize, classify, target, **options)(ws, key=key, previous=previous)


def top_k_directions(optimiser: 'GradientDirection | LinearProbe', ws, k: int, key=None) -> np.ndarray:
  """The k best global directions [k, num_ws, w_dim], orthonormal: direction j is optimised (or fitted) with
  directions 0..j-1 projected out. Works with a global GradientDirection (one trace: the earlier directions are
  passed zero-padded to k - 1 rows) or a LinearProbe (ws = the sampled latents)."""
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f'k must be an int >= 1; got {k!r}.')
  ws = check_latents(ws)
  _, num_ws, w_dim = ws.shape
  if isinstance(optimiser, GradientDirection) and optimiser.local:
    raise ValueError('top_k_directions needs a global optimiser (GradientDirection(..., local=False)).')
  key = jax.random.key(0) if key is None else key
  found = np.zeros((max(k - 1, 1), num_ws, w_dim), np.float32)
  out = []
  for j in range(k):
    prev = found if isinstance(optimiser, GradientDirection) else found[:j]
    fit = optimiser(ws, key=jax.random.fold_in(key, j), previous=prev)
    d = np.asarray(fit.direction, np.float32)
    out.append(d)
    if j < k - 1:
      found[j] = d
  return np.stack(out)


# ------------------------------------------------------------------------------------------------------------
# Black-box mode
# ------------------------------------------------------------------------------------------------------------


def perturb_latents(ws, key, num_samples: int, sigma: float, space: str = 'w') -> jax.Array:
  """num_samples latents [n, num_ws, w_dim]: ws[i mod B] + sigma * noise; the noise is shared by all layers in
  space 'w' (the sample stays a W latent if ws was) and per layer in 'w+'. ws: [B, num_ws, w_dim]."""
  ws = check_latents(ws)
  check_space(space)
  b, num_ws, w_dim = ws.shape
  base = ws[jnp.arange(num_samples) % b]
  if space == 'w':
    noise = jnp.broadcast_to(jax.random.normal(key, (num_samples, 1, w_dim)), base.shape)
  else:
    noise = jax.random.normal(key, base.shape)
  return base + sigma * noise


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
  """L2-regularised logistic regression on soft labels: minimises
  mean_i [softplus(z_i) - y_i z_i] + l2/2 ||beta||^2, z = x beta + b (intercept not penalised).
  x: [n, p], y: [n] in [0, 1]. Returns (beta [p], b). L-BFGS (scipy) on the convex objective."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  n, p = x.shape

  def fun(theta):
    beta, b = theta[:p], theta[p]
    z = x @ beta + b
    f = np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * beta @ beta
    r = (1.0 / (1.0 + np.exp(-z)) - y) / n
    return f, np.concatenate([x.T @ r + l2 * beta, [r.sum()]])

  res = scipy.optimize.minimize(fun, np.zeros(p + 1), jac=True, method='L-BFGS-B',
                                options=dict(maxiter=2000, gtol=1e-10, ftol=1e-14))
  return res.x[:p], float(res.x[p])


def fit_ridge(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
  """Ridge regression: minimises mean_i (y_i - x_i beta - b)^2 / 2 + l2/2 ||beta||^2 (intercept not penalised).
  x: [n, p], y: [n]. Closed form, primal (p <= n) or dual (p > n). Returns (beta [p], b)."""
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  n, p = x.shape
  xm, ym = x.mean(0), y.mean()
  xc, yc = x - xm, y - ym
  if p <= n:
    beta = np.linalg.solve(xc.T @ xc + n * l2 * np.eye(p), xc.T @ yc)
  else:
    beta = xc.T @ np.linalg.solve(xc @ xc.T + n * l2 * np.eye(n), yc)
  return beta, float(ym - xm @ beta)


class ProbeFit(NamedTuple):
  """Result of black-box mode. direction: [num_ws, w_dim], unit norm; coef: [p] the fitted coefficients on the
  features (W: [w_dim] = layer mean; W+: [num_ws * w_dim]); intercept; model: 'logistic' | 'ridge';
  labels: [n] the fitted labels (p_class or expected grade); score: accuracy (logistic, thresholded at 0.5) or
  R^2 (ridge) of the fit on its own samples."""
  direction: np.ndarray
  coef: np.ndarray
  intercept: float
  model: str
  labels: np.ndarray
  score: float


class LinearProbe:
  """Gradient-free direction: label G(w) with `predict`, fit a linear model on w, return its normalised normal.

  Args:
    synthesize: ws [B, num_ws, w_dim] -> images [B, H, W, C] (jitted once here, fixed batch size).
    predict: numpy images [B, H, W, C] in [-1, 1] -> numpy probabilities [B, K] (any Python callable).
    target: a `Target`; 'log_odds'/'logit' kinds fit a logistic regression on p_class (soft, or thresholded at
      0.5 with soft=False), 'expected_grade' a ridge regression on sum_k k p_k.
    space: 'w' (features = mean over layers, the W component; d broadcast) or 'w+' (all num_ws * w_dim).
    l2: regularisation strength (see fit_logistic / fit_ridge). batch_size: images per synthesize/predict call.

  __call__(ws [n, num_ws, w_dim] sampled latents, key=None, previous=None [k, num_ws, w_dim]) -> ProbeFit.
  Sample ws with `perturb_latents` (around given latents) or from the mapping network of random z.
  """

  def __init__(self, synthesize: Callable, predict: Callable, target: Target, *, space: str = 'w', l2: float = 1e-3,
               batch_size: int = 64, soft: bool = True):
    if not isinstance(target, Target):
      raise ValueError(f'target must be a Target from make_target(kind, num_classes, class_index); got {target!r}.')
    if not callable(predict):
      raise ValueError(f'predict must be a callable images -> probabilities; got {type(predict).__name__}.')
    self.predict, self.target, self.space = predict, target, check_space(space)
    self.l2, self.batch_size, self.soft = float(l2), int(batch_size), bool(soft)
    self._synthesize = jax.jit(lambda ws: jnp.clip(synthesize(ws), -1.0, 1.0))

  def label(self, ws) -> np.ndarray:
    """Probabilities [n, K] of predict(G(ws)), in batches of batch_size (the last one padded)."""
    ws = np.asarray(check_latents(ws))
    n, bs = ws.shape[0], self.batch_size
    out = []
    for i in range(0, n, bs):
      chunk = ws[i:i + bs]
      m = chunk.shape[0]
      if m < bs and n > bs:
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], bs - m, 0)])
      probs = np.asarray(self.predict(np.asarray(self._synthesize(chunk), np.float32)))
      if probs.ndim != 2 or probs.shape[0] != chunk.shape[0]:
        raise ValueError(f'predict must return probabilities [B, K] for images [B, H, W, C]; got shape '
                         f'{probs.shape} for B={chunk.shape[0]}.')
      if probs.shape[1] != self.target.num_classes:
        raise ValueError(f'classifier returns K={probs.shape[1]} classes but config.data.num_classes='
                         f'{self.target.num_classes}; explain with the classifier trained for this config.')
      if not np.all(np.isfinite(probs)) or probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
        raise ValueError('predict must return probabilities in [0, 1] (apply softmax/sigmoid to logits); got '
                         f'values in [{np.nanmin(probs):.3g}, {np.nanmax(probs):.3g}].')
      out.append(probs[:m])
    return np.concatenate(out).astype(np.float64)

  def features(self, ws) -> np.ndarray:
    ws = np.asarray(ws, np.float64)
    return ws.mean(axis=1) if self.space == 'w' else ws.reshape(ws.shape[0], -1)

  def _feature_basis(self, previous, num_ws) -> np.ndarray:
    """Orthonormal rows [k', p] spanning the earlier directions in feature space (zero rows dropped)."""
    prev = np.asarray(previous, np.float64)
    if self.space == 'w':
      rows = prev[:, 0, :] * math.sqrt(num_ws)
    else:
      rows = prev.reshape(prev.shape[0], prev.shape[1] * prev.shape[2])
    rows = rows[np.linalg.norm(rows, axis=1) > 1e-8]
    if rows.shape[0] == 0:
      return rows
    q, _ = np.linalg.qr(rows.T)
    return q.T

  def __call__(self, ws, key=None, previous=None) -> ProbeFit:
    del key  # deterministic given ws
    ws = check_latents(ws)
    n, num_ws, w_dim = ws.shape
    previous = np.asarray(_check_previous(previous, num_ws, w_dim))
    probs = self.label(ws)
    y, model = self.target.probe_labels(probs)
    if not self.soft and model == 'logistic':
      y = (y > 0.5).astype(np.float64)
    if np.std(y) < 1e-6:
      raise ValueError(f'the classifier gives the same prediction (mean {y.mean():.3g}) for all {n} sampled latents; '
                       'sample a wider spread (larger sigma in perturb_latents, or latents from several images).')
    x = self.features(ws)
    basis = self._feature_basis(previous, num_ws)
    if basis.shape[0]:
      x = x - (x @ basis.T) @ basis
    beta, b = fit_logistic(x, y, self.l2) if model == 'logistic' else fit_ridge(x, y, self.l2)
    if basis.shape[0]:
      beta = beta - (beta @ basis.T) @ basis
    z = x @ beta + b
    score = (float(np.mean((z > 0) == (y > 0.5)))
             if model == 'logistic' else float(1 - np.sum((y - z)**2) / max(np.sum((y - y.mean())**2), 1e-30)))
    if self.space == 'w':
      d = np.asarray(broadcast_w(beta.astype(np.float32), num_ws))
    else:
      d = beta.reshape(num_ws, w_dim).astype(np.float32)
    norm = np.linalg.norm(d)
    if norm < 1e-12:
      raise ValueError('the fitted linear model has zero coefficients (labels carry no linear signal in w); '
                       'lower l2 or sample more varied latents.')
    return ProbeFit((d / norm).astype(np.float32), beta, b, model, y, score)


def probe_direction(synthesize: Callable, predict: Callable, ws, target: Target, *, previous=None,
                    **options) -> ProbeFit:
  """One-shot black-box mode: LinearProbe(synthesize, predict, target, **options)(ws, previous=previous)."""
  return LinearProbe(synthesize, predict, target, **options)(ws, previous=previous)
