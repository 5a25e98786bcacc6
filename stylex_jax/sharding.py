"""Device layout for every training and explanation stage: the ONLY device-aware module.

One 1-D mesh with axis ``'data'`` (``DATA_AXIS``) over all devices of all processes.  Batches
are split over it along their leading axis, parameters and optimiser states are replicated.
Steps are written over the *global* batch and jitted with these shardings (the modern form of
pjit); there is no pmap / axis_name / pmean anywhere in the package.

Multi-host (TPU pods, multi-node GPU, or N CPU processes on one machine for tests):
``initialize_distributed()`` first, then every process builds the same mesh and feeds its own
process-local slice of the global batch to ``shard_batch``, which assembles global
``jax.Array`` s with ``jax.make_array_from_process_local_data``.

Typical use::

    initialize_distributed()                 # no-op on a single process
    mesh = make_mesh()
    check_global_batch(config.batch_size, mesh, group_size=config.mbstd_group)
    state = replicate(state, mesh)
    step = jax.jit(train_step, in_shardings=(replicated(mesh), data_sharding(mesh)), ...)
    for local_batch in pipeline:             # numpy, leading axis = this process's share
        state, metrics = step(state, shard_batch(local_batch, mesh))
"""
from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = 'data'

_log = logging.getLogger(__name__)


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or value.strip() == '':
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f'environment variable {name}={value!r} is not an integer; unset it or set a number') from None


def _multi_process_environment() -> str | None:
  """Names the launcher environment that implies more than one process, or None."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    return 'JAX_COORDINATOR_ADDRESS'
  if (_env_int('SLURM_NTASKS') or 1) > 1 and os.environ.get('SLURM_JOB_ID'):
    return 'SLURM'
  if (_env_int('OMPI_COMM_WORLD_SIZE') or 1) > 1:
    return 'Open MPI'
  if os.environ.get('MEGASCALE_COORDINATOR_ADDRESS'):
    return 'TPU multislice'
  hosts = os.environ.get('TPU_WORKER_HOSTNAMES', '')
  if len([h for h in hosts.split(',') if h.strip()]) > 1:
    return 'TPU pod'
  return None


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Joins this process to a multi-process JAX run; a no-op for a single process. Idempotent.

    Calls ``jax.distributed.initialize`` when any argument is given, or when the environment says
    the job has several processes: ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and
    ``JAX_PROCESS_ID`` for a manual launch), SLURM with more than one task, Open MPI, or a TPU pod
    (``TPU_WORKER_HOSTNAMES`` / multislice).  JAX auto-detects whatever is not given on
    SLURM / Open MPI / TPU.  Must run before anything touches a device (``jax.devices()``, any
    computation); call it first in every entry point, then ``preemption.install_handler``.

    Args:
      coordinator_address: ``'host:port'`` of process 0, reachable from every process.
      num_processes: total number of processes (>= 1).
      process_id: this process's index in ``[0, num_processes)``.
    """
  if jax.distributed.is_initialized():
    return
  if num_processes is None:
    num_processes = _env_int('JAX_NUM_PROCESSES')
  if process_id is None:
    process_id = _env_int('JAX_PROCESS_ID')
  explicit = coordinator_address is not None or num_processes is not None or process_id is not None
  environment = _multi_process_environment()
  if not explicit and environment is None:
    return  # single process: nothing to join
  if num_processes == 1 and coordinator_address is None and environment is None:
    return  # explicitly one process
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'num_processes={num_processes} must be >= 1')
  if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
    raise ValueError(f'process_id={process_id} must be in [0, num_processes={num_processes}); '
                     'give every process a distinct id starting at 0')
  _log.info('initialising jax.distributed (coordinator=%s, processes=%s, id=%s, environment=%s)', coordinator_address,
            num_processes, process_id, environment or 'arguments')
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  except ValueError as e:
    raise ValueError(f"cannot join the multi-process run ({environment or 'arguments'}): {e}. Pass "
                     'coordinator_address/num_processes/process_id, or set JAX_COORDINATOR_ADDRESS, '
                     'JAX_NUM_PROCESSES and JAX_PROCESS_ID') from e
  except RuntimeError as e:
    raise RuntimeError(f'jax.distributed.initialize failed: {e}. Check that process 0 is reachable at the '
                       'coordinator address, and that initialize_distributed() runs at program start, before '
                       'any jax.devices() call or computation') from e


def make_mesh(num_devices: int | None = None) -> Mesh:
  """1-D device mesh with axis ``'data'`` over the first ``num_devices`` global devices (all by default).

    With several processes the mesh must span every device (each process feeds its own devices).
    """
  devices = jax.devices()
  available = len(devices)
  if num_devices is None:
    num_devices = available
  if isinstance(num_devices, bool) or not isinstance(num_devices, (int, np.integer)) or num_devices < 1:
    raise ValueError(f'num_devices={num_devices!r} must be a positive integer (or None for all {available})')
  num_devices = int(num_devices)
  if num_devices > available:
    raise ValueError(f'num_devices={num_devices} but only {available} {devices[0].platform} device(s) are '
                     f'available; use num_devices <= {available} (or None for all of them)')
  if jax.process_count() > 1 and num_devices != available:
    raise ValueError(f'num_devices={num_devices} with {jax.process_count()} processes: a multi-process mesh '
                     f'must use all {available} devices; leave num_devices=None')
  return jax.make_mesh((num_devices,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=devices[:num_devices])


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch: leading (batch) axis split over ``'data'``, other axes whole."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding of parameters, optimiser states and scalars: a full copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


# XLA:CPU compiler options for one-off initialisers: no LLVM optimisation passes (see `jit_init`)
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def jit_init(init_fn, out_shardings):
  """`init_fn` (key -> state, pure) jitted with `out_shardings`, for an initialiser that runs once per stage.

    On XLA:CPU it is compiled with INIT_COMPILER_OPTIONS: parameter initialisation unrolls thousands of threefry
    rounds whose LLVM optimisation dominates its compile time (the demo:smoke GAN's create_state: 211 s -> 47 s on
    the loaded 2-core CPU) and buys nothing for a function that runs once. The random bits are the same; the float transforms of them may
    round differently by an ulp or so (tests/test_sharding.py checks against plain jit). Elsewhere it is plain
    `jax.jit`.
    Under tracing (`jax.eval_shape(init, key)`) it traces like `jax.jit`.
    """
  jitted = jax.jit(init_fn, out_shardings=out_shardings)
  if jax.default_backend() != 'cpu':
    return jitted

  def init(key):
    if isinstance(key, jax.core.Tracer):
      return jitted(key)
    return jitted.lower(key).compile(compiler_options=INIT_COMPILER_OPTIONS)(key)

  return init


def check_global_batch(global_batch_size: int, mesh: Mesh, group_size: int = 1) -> None:
  """Fails fast unless the global batch splits evenly over the mesh devices and into groups.

    Requires ``global_batch_size % num_devices == 0`` and ``(global_batch_size / num_devices) %
    group_size == 0``, so that per-device groups (e.g. the discriminator's minibatch-stddev
    groups) never straddle a device shard and every process gets the same share.

    Raises:
      ValueError naming the sizes and what to change.
    """
  n = int(mesh.devices.size)
  for name, value in (('global_batch_size', global_batch_size), ('group_size', group_size)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'{name}={value!r} must be a positive integer')
  if global_batch_size % n:
    lower = (global_batch_size // n) * n
    upper = lower + n
    raise ValueError(f'global batch size {global_batch_size} is not divisible by the {n} devices of the mesh; '
                     f'use a multiple of {n} (e.g. {lower or upper} or {upper})')
  per_device = global_batch_size // n
  if per_device % group_size:
    multiple = n * group_size
    raise ValueError(f'per-device batch {per_device} (global {global_batch_size} / {n} devices) is not divisible '
                     f'by group_size {group_size}; use a global batch that is a multiple of {n}x{group_size}='
                     f'{multiple} (e.g. {max(multiple, (global_batch_size // multiple) * multiple)}), '
                     f'or a group_size that divides {per_device}')


def _is_batch_array(x: Any) -> bool:
  """Numeric arrays are sharded; strings, bytes, objects and python scalars pass through."""
  if isinstance(x, jax.Array):
    return True
  if isinstance(x, (np.ndarray, np.generic)):
    return x.dtype.kind in 'biufc'
  return False


def shard_batch(batch: dict[str, Any], mesh: Mesh) -> dict[str, Any]:
  """Process-local numpy batch -> global ``jax.Array`` s split over ``'data'``.

    Args:
      batch: dict (nested dicts allowed) of numpy arrays whose leading axis is this process's
        share of the global batch, e.g. ``{'image': [B_local, H, W, C] float32 in [-1, 1],
        'label': [B_local] int32, 'id': [B_local] bytes}``.  All numeric arrays must share
        ``B_local``, divisible by the number of local devices.  Non-numeric fields (strings,
        bytes, objects, python values) are returned untouched.
      mesh: from ``make_mesh``.

    Returns:
      Same structure; numeric fields are ``jax.Array`` of global shape ``[B_local * process_count,
      ...]`` with sharding ``NamedSharding(mesh, P('data'))``.
    """
  if not isinstance(batch, dict):
    raise ValueError(f'shard_batch expects a dict of arrays, got {type(batch).__name__}')
  sharding = data_sharding(mesh)
  local_devices = len(mesh.local_devices)
  sizes: dict[str, int] = {}

  def visit(tree: dict, prefix: str) -> dict:
    out = {}
    for key, value in tree.items():
      name = f'{prefix}{key}'
      if isinstance(value, dict):
        out[key] = visit(value, f'{name}/')
      elif _is_batch_array(value):
        if np.ndim(value) == 0:
          raise ValueError(f"batch field '{name}' is a scalar and has no batch axis to shard; give it a "
                           'leading batch axis or keep it out of the batch')
        sizes[name] = value.shape[0]
        if value.shape[0] % local_devices:
          raise ValueError(f"batch field '{name}' has local batch {value.shape[0]}, not divisible by the "
                           f'{local_devices} local devices; make the per-process batch a multiple of '
                           f'{local_devices} (see check_global_batch)')
        out[key] = jax.make_array_from_process_local_data(sharding, value)
      else:
        out[key] = value
    return out

  result = visit(batch, '')
  if len(set(sizes.values())) > 1:
    raise ValueError(f'batch fields have different leading (batch) sizes {sizes}; every array field must hold '
                     'the same examples')
  return result


def _replicate_leaf(x: Any, sharding: NamedSharding) -> Any:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return jax.device_put(x, sharding)  # already global: reshard if needed
  host = np.asarray(x)
  if host.dtype.kind not in 'biufc':
    raise ValueError(f'cannot replicate a leaf of dtype {host.dtype}; keep strings/objects out of device state')
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, mesh: Mesh) -> Any:
  """``device_put`` a pytree (params, optimiser state, ...) fully replicated on every mesh device.

    Every process must pass the same values (they are not checked across processes).  Typed PRNG
    keys are supported.  Leaves come back as ``jax.Array`` with sharding ``NamedSharding(mesh, P())``.
    """
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def leaf(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      impl = jax.random.key_impl(x)
      return jax.random.wrap_key_data(_replicate_leaf(jax.random.key_data(x), sharding), impl=impl)
    return _replicate_leaf(x, sharding)

  return jax.tree.map(leaf, tree)
