"""Image series along a latent direction: images G(w + alpha d) and the classifier's probabilities, batched.

`SeriesRenderer(synthesize, classify)` holds jitted functions created once. Calling it with latents
ws [B, num_ws, w_dim], directions [num_ws, w_dim] (one for all) or [B, num_ws, w_dim] (one per image) and shifts
alphas [S] or [B, S] renders all B x S images and probabilities in one jitted, vmapped program per chunk of
`chunk_size` (B * S flattened; the last chunk is padded, so repeated calls of the same shape never retrace).

Shift units: alpha is a Euclidean distance in W+ (directions have unit norm over all elements; see
`direction.py`). `auto_alphas` chooses per image a range that starts at the image's own prediction (alpha = 0)
and crosses the decision boundary (p = 0.5 for binary targets, the next grade for the expected grade) with a
margin, searching both directions of travel; `fixed_alphas` gives a fixed symmetric grid instead.

Probabilities: softmax of the logits for K >= 2, sigmoid for a single logit (K = 1, then probs [..., 1]).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from stylex_jax import sharding
from stylex_jax.explain import direction as direction_lib


def probabilities(logits) -> jax.Array:
  """logits [..., K] -> probabilities [..., K]: softmax for K >= 2, sigmoid for K = 1."""
  logits = jnp.asarray(logits, jnp.float32)
  return jax.nn.sigmoid(logits) if logits.shape[-1] == 1 else jax.nn.softmax(logits, axis=-1)


def fixed_alphas(max_alpha: float, num_frames: int = 9, batch: int | None = None) -> np.ndarray:
  """Symmetric grid linspace(-max_alpha, max_alpha, num_frames) [S] (odd num_frames includes 0), or tiled to
  [batch, S]."""
  if not isinstance(num_frames, (int, np.integer)) or num_frames < 2:
    raise ValueError(f'num_frames must be an int >= 2; got {num_frames!r}.')
  a = np.linspace(-float(max_alpha), float(max_alpha), int(num_frames), dtype=np.float32)
  return a if batch is None else np.tile(a, (int(batch), 1))


class AutoAlphas(NamedTuple):
  """alphas: [B, S] sorted, 0 included, in direction units; crossed: [B] bool, whether the target crossed the
  boundary within |alpha| <= max_alpha; crossing: [B] the (interpolated) alpha of the crossing, or the end shift
  when not crossed; threshold: [B] the boundary used (target scale); start: [B] target at alpha = 0."""
  alphas: np.ndarray
  crossed: np.ndarray
  crossing: np.ndarray
  threshold: np.ndarray
  start: np.ndarray


class SeriesRenderer:
  """Renders series of images and probabilities along directions; see the module docstring.

  Args:
    synthesize: ws [N, num_ws, w_dim] -> images [N, H, W, C] in [-1, 1] (pure, jax-traceable); when calls pass
      `extras` (per-image inputs such as the noise maps of an inversion), synthesize(ws, extras) with every leaf
      of extras [N, ...].
    classify: images [N, H, W, C] -> logits [N, K] (pure, jax-traceable).
    chunk_size: latents rendered per jitted call (bounds memory; B * S is split into chunks of this size).
    num_classes: when given, a classifier with another K raises a clear ValueError.
    mesh: optional jax Mesh; each chunk is sharded over its 'data' axis when the chunk size is divisible by the
      number of devices (else it runs unsharded). Frames are independent, so results do not depend on it.
  `trace_count`: how many times the jitted functions were traced (tests check repeated calls do not retrace).
  """

  def __init__(self, synthesize: Callable, classify: Callable, chunk_size: int = 64, num_classes: int | None = None,
               mesh=None):
    if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
      raise ValueError(f'chunk_size must be an int >= 1; got {chunk_size!r}.')
    self.synthesize, self.classify = synthesize, classify
    self.chunk_size, self.num_classes, self.mesh = int(chunk_size), num_classes, mesh
    self.trace_count = 0
    self._render = jax.jit(self._render_impl)
    self._logits = jax.jit(self._logits_impl)

  # -- jitted bodies: one chunk of c latents (base w, direction, shift) -----------------------------------
  def _shifted(self, ws, ds, alphas):
    return jax.vmap(lambda w, d, a: w + a * d)(ws, ds, alphas)

  def _forward(self, ws, ds, alphas, extras=None):
    self.trace_count += 1
    shifted = self._shifted(ws, ds, alphas)
    images = self.synthesize(shifted) if extras is None else self.synthesize(shifted, extras)
    images = jnp.clip(images, -1.0, 1.0)
    logits = self.classify(images)
    if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
      raise ValueError(f'classify must return logits [B, K]; got shape {tuple(logits.shape)} for '
                       f'{images.shape[0]} images.')
    if self.num_classes is not None and logits.shape[1] != self.num_classes:
      raise ValueError(f'classifier returns K={logits.shape[1]} classes but config.data.num_classes='
                       f'{self.num_classes}; explain with the classifier trained for this config.')
    return images, logits.astype(jnp.float32)

  def _render_impl(self, ws, ds, alphas, extras=None):
    images, logits = self._forward(ws, ds, alphas, extras)
    return images, probabilities(logits)

  def _logits_impl(self, ws, ds, alphas, extras=None):
    return self._forward(ws, ds, alphas, extras)[1]

  # -- host side -----------------------------------------------------------------------------------------
  def _flatten(self, ws, directions, alphas, extras=None):
    """Validates and flattens to per-frame arrays: ws [B*S, ...], ds [B*S, ...], alphas [B*S] (+ extras leaves
    [B*S, ...], each image's repeated S times); returns (flat tuple, (B, S))."""
    ws = np.asarray(direction_lib.check_latents(ws))
    b, num_ws, w_dim = ws.shape
    d = np.asarray(directions, np.float32)
    if d.shape == (num_ws, w_dim):
      d = np.broadcast_to(d, (b, num_ws, w_dim))
    elif d.shape != (b, num_ws, w_dim):
      raise ValueError(f'directions must be [num_ws, w_dim] = [{num_ws}, {w_dim}] (one for all images) or '
                       f'[B, num_ws, w_dim] = [{b}, {num_ws}, {w_dim}] (one per image); got shape {d.shape}.')
    a = np.asarray(alphas, np.float32)
    if a.ndim == 1:
      a = np.broadcast_to(a, (b, a.shape[0]))
    if a.ndim != 2 or a.shape[0] != b or a.shape[1] < 1:
      raise ValueError(f'alphas must be [S] (the same shifts for every image) or [B, S] = [{b}, S]; got shape '
                       f'{a.shape}.')
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(d)) and np.all(np.isfinite(ws))):
      raise ValueError('ws, directions and alphas must be finite (found NaN/inf).')
    s = a.shape[1]
    flat_ws = np.broadcast_to(ws[:, None], (b, s, num_ws, w_dim)).reshape(b * s, num_ws, w_dim)
    flat_d = np.broadcast_to(d[:, None], (b, s, num_ws, w_dim)).reshape(b * s, num_ws, w_dim)
    flat = (flat_ws, flat_d, a.reshape(b * s))
    if extras is not None:
      leaves = jax.tree.leaves(extras)
      if any(np.shape(x)[:1] != (b,) for x in leaves):
        raise ValueError(f'every leaf of extras must have a leading batch axis of B={b}; got shapes '
                         f'{[np.shape(x) for x in leaves]}.')
      flat = flat + (jax.tree.map(lambda x: np.repeat(np.asarray(x), s, axis=0), extras),)
    return flat, (b, s)

  def _run(self, fn, flat):
    n = flat[2].shape[0]
    c = min(self.chunk_size, n)
    shard = None
    if self.mesh is not None and c % self.mesh.devices.size == 0:
      shard = sharding.data_sharding(self.mesh)
    outs = []
    for i in range(0, n, c):
      part = jax.tree.map(lambda x: x[i:i + c], flat)
      m = part[2].shape[0]
      if m < c:
        part = jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[:1], c - m, 0)]), part)
      if shard is not None:
        part = jax.tree.map(lambda x: jax.device_put(x, shard), part)
      out = fn(*part)
      outs.append(jax.tree.map(lambda o: np.asarray(o)[:m], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)

  def __call__(self, ws, directions, alphas, extras=None) -> tuple[np.ndarray, np.ndarray]:
    """ws [B, num_ws, w_dim], directions [num_ws, w_dim] or [B, num_ws, w_dim], alphas [S] or [B, S] ->
    (images [B, S, H, W, C] float32 in [-1, 1], probs [B, S, K] float32); image (b, s) = G(ws[b] + alphas[b, s] d)
    (synthesize(ws, extras[b]) when per-image `extras` are given, e.g. an inversion's noise maps)."""
    flat, (b, s) = self._flatten(ws, directions, alphas, extras)
    images, probs = self._run(self._render, flat)
    return (images.reshape((b, s) + images.shape[1:]).astype(np.float32), probs.reshape(b, s, -1).astype(np.float32))

  def logits(self, ws, directions, alphas, extras=None) -> np.ndarray:
    """Like __call__ but returns only logits [B, S, K] (no images leave the device)."""
    flat, (b, s) = self._flatten(ws, directions, alphas, extras)
    return self._run(self._logits, flat).reshape(b, s, -1)

  def auto_alphas(self, ws, directions, target: direction_lib.Target, *, num_frames: int = 9, max_alpha: float = 10.0,
                  grid_points: int = 9, refine_steps: int = 2, margin: float = 0.25, threshold=None,
                  extras=None) -> AutoAlphas:
    """Per-image shift ranges [B, num_frames] from alpha = 0 across the decision boundary and `margin` beyond.

    The target is evaluated on the grid linspace(-max_alpha, max_alpha, grid_points) (made odd, so 0 is a grid
    point) in one batched call; for each image the first sign change of target - threshold is searched on both
    sides of 0 and the nearer one taken. The bracketing grid interval is then narrowed by `refine_steps` rounds
    of regula falsi (one batched call of B latents each), and the crossing alpha a_c is the secant root of the
    final bracket (exact for a target linear in alpha). The series is linspace(0, a_c * (1 + margin),
    num_frames), the end capped at +-max_alpha. If neither side crosses, the series runs to the end
    (+-max_alpha) whose target is nearest the threshold and crossed=False. Cost per image: grid_points +
    refine_steps forward passes of G and the classifier.
    threshold: None (target.boundary: log-odds 0 = p 0.5; expected grade: the next grade up, or down at the top
    grade), a scalar or [B] on the target's scale. extras: per-image synthesis inputs, as in __call__.
    Returns AutoAlphas (alphas sorted ascending, 0 included).
    """
    if not isinstance(target, direction_lib.Target):
      raise ValueError(f'target must be a Target from direction.make_target; got {target!r}.')
    if not isinstance(num_frames, (int, np.integer)) or num_frames < 2:
      raise ValueError(f'num_frames must be an int >= 2; got {num_frames!r}.')
    if not isinstance(grid_points, (int, np.integer)) or grid_points < 3:
      raise ValueError(f'grid_points must be an int >= 3; got {grid_points!r}.')
    if not isinstance(refine_steps, (int, np.integer)) or refine_steps < 0:
      raise ValueError(f'refine_steps must be an int >= 0; got {refine_steps!r}.')
    if not max_alpha > 0 or margin < 0:
      raise ValueError(f'max_alpha must be > 0 and margin >= 0; got max_alpha={max_alpha}, margin={margin}.')
    grid_points = int(grid_points) | 1
    grid = np.linspace(-max_alpha, max_alpha, grid_points).astype(np.float32)
    mid = grid_points // 2
    grid[mid] = 0.0

    def targets(alphas):  # alphas [B, S] -> target [B, S]
      logits = self.logits(ws, directions, alphas, extras)
      b, s = logits.shape[:2]
      return np.asarray(target(jnp.asarray(logits.reshape(b * s, -1))), np.float64).reshape(b, s)

    t = targets(grid)  # [B, G]
    b = t.shape[0]
    rows = np.arange(b)
    start = t[:, mid]
    thr = target.boundary(start) if threshold is None else np.broadcast_to(np.asarray(threshold, np.float32),
                                                                           (b,)).astype(np.float32)
    side0 = np.where(start - thr >= 0, 1.0, -1.0)
    f = (t - thr[:, None]) * side0[:, None]  # > 0 on the image's own side

    # first sign change on each side of 0: bracket (prev, j) of grid indices
    brackets = []
    for order in (np.arange(mid + 1, grid_points), np.arange(mid - 1, -1, -1)):
      changed = f[:, order] < 0
      found = changed.any(axis=1)
      k = np.argmax(changed, axis=1)
      j = order[k]
      prev = np.where(k == 0, mid, order[np.maximum(k - 1, 0)])
      f0, f1 = f[rows, prev], f[rows, j]
      root = grid[prev] + (grid[j] - grid[prev]) * f0 / np.where(found, f0 - f1, 1.0)
      brackets.append((found, prev, j, root))
    (fp, pp, jp, rp), (fn, pn, jn, rn) = brackets
    use_pos = fp & (~fn | (np.abs(rp) <= np.abs(rn)))
    crossed = fp | fn
    lo_a = np.where(use_pos, grid[pp], grid[pn]).astype(np.float64)  # f(lo) > 0, f(hi) < 0
    hi_a = np.where(use_pos, grid[jp], grid[jn]).astype(np.float64)
    lo_f = np.where(use_pos, f[rows, pp], f[rows, pn])
    hi_f = np.where(use_pos, f[rows, jp], f[rows, jn])

    def secant():
      return lo_a + (hi_a - lo_a) * lo_f / np.where(crossed, lo_f - hi_f, 1.0)

    for _ in range(int(refine_steps) if crossed.any() else 0):
      a_new = np.where(crossed, secant(), 0.0)
      f_new = (targets(a_new[:, None].astype(np.float32))[:, 0] - thr) * side0
      pos = f_new > 0
      lo_a, lo_f = np.where(crossed & pos, a_new, lo_a), np.where(crossed & pos, f_new, lo_f)
      hi_a, hi_f = np.where(crossed & ~pos, a_new, hi_a), np.where(crossed & ~pos, f_new, hi_f)
    nearest_end = np.where(np.abs(t[:, -1] - thr) <= np.abs(t[:, 0] - thr), grid[-1], grid[0])
    crossing = np.where(crossed, secant(), nearest_end)
    step = float(grid[1] - grid[0])
    end = np.where(crossed, crossing * (1 + margin) + np.sign(crossing) * 1e-3 * step, crossing)
    end = np.clip(end, -max_alpha, max_alpha)
    end = np.where(end == 0, step, end)  # degenerate: crossing exactly at 0
    alphas = np.sort(np.linspace(0.0, end, int(num_frames), axis=1).astype(np.float32), axis=1)
    return AutoAlphas(alphas, crossed, crossing.astype(np.float32), thr.astype(np.float32), start.astype(np.float32))


def auto_alphas(renderer: SeriesRenderer, ws, directions, target: direction_lib.Target, **options) -> AutoAlphas:
  """Functional form of SeriesRenderer.auto_alphas (same arguments)."""
  return renderer.auto_alphas(ws, directions, target, **options)
