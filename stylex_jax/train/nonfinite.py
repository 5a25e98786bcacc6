"""The non-finite guard of every pure train step: a NaN/Inf loss or gradient skips the update.

Inside a jitted step, `finite(loss, grad_norm)` is one scalar test of values the step already has, and
`keep_if(ok, new, old)` selects the new state where it is finite and the old one otherwise (an elementwise
`jnp.where` that XLA fuses into the optimiser update: nothing extra on the happy path, and it works unchanged on
states sharded over a mesh, since the predicate is a replicated scalar). The step reports `flag(ok)` as its
`nonfinite` metric (0/1); the stages count the flags and act on a run of them (`stages/nonfinite.py`).
No I/O.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def finite(loss: jax.Array, grad_norm: jax.Array) -> jax.Array:
  """bool scalar: the scalar `loss` and the global gradient norm `grad_norm` (e.g. `optax.tree.norm(grads)`)
  are both finite. A NaN/Inf anywhere in the gradients makes the norm NaN/Inf (so does an overflowing one)."""
  return jnp.isfinite(loss) & jnp.isfinite(grad_norm)


def keep_if(ok: jax.Array, new: Any, old: Any) -> Any:
  """`new` where the bool scalar `ok` holds, else `old` (two pytrees of the same structure, e.g. a whole train
  state; the caller puts into `old` what must change anyway, such as the step counter). Exact: every leaf is
  one of the two, bit for bit."""
  return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def flag(ok: jax.Array) -> jax.Array:
  """int32 scalar metric: 1 when the step was skipped (`ok` false), else 0."""
  return jnp.logical_not(ok).astype(jnp.int32)
