"""Benchmark of one StyleGAN2 training iteration of the `gan` stage: compile time, throughput, memory, FLOPs.

Builds the architecture of NVIDIA's stylegan2-ada-pytorch reference as timed by the peer script
(`shared/bench/peer_stylegan2_step.py`): z = w = 512, `--map` mapping layers, skip generator, residual
discriminator with minibatch-stddev group 4, R1 gamma `auto` (0.0002 res^2 / batch) every 16 iterations,
path length (weight 2, batch shrink 2) every 4, style mixing 0.9, no augmentation unless `--augment bgc`
(ADA preset 'bgc' from p = 0). It goes through the real code only: `configs/base.get_config()` plus
overrides, `gan.build_models`, `gan.create_state` and `gan.StepFunctions` (the four jitted steps and
`iteration`); nothing is re-implemented here. Imports no TensorFlow; runs on CPU, GPU and TPU.

Usage (the comparison with the peer, same arguments):
  python benchmarks/gan_step.py --res 64 --channels 1 --channel-base 4096 --channel-max 256 --batch 16
  python benchmarks/gan_step.py ... --no-reg        # G main + D main only
  python benchmarks/gan_step.py ... --fused         # grouped-conv modulated convolution
  python benchmarks/gan_step.py ... --per-step      # also time g_main / g_reg / d_main / d_reg alone
  python benchmarks/gan_step.py ... --peer <checkout of NVlabs/stylegan2-ada-pytorch> \
      --peer-script <peer_stylegan2_step.py> --rounds 2   # the reference timed back to back, same arguments

Output: one figure per line, `name value unit`; lines starting with '#' are notes.
  compile_s             lower + compile of the four jitted steps (AOT, then reused by the jit call path;
                        `first_iter_s`, the warm-up iteration at step 16 which runs all four, shows it)
  img_per_s             images/s over consecutive iterations 1..16 (k*16 with --steps > 16): 16 G main,
                        4 path-length, 16 D main, 1 R1 — lazy regularisation amortised exactly as the
                        reference; with --no-reg, `--steps` iterations of the two main steps
  s_per_kimg            seconds per 1000 images at that rate
  peak_mem_mib          device memory_stats()['peak_bytes_in_use'] (max over the mesh devices) where the
                        backend has it, else the process's max RSS (on CPU this includes the compiler)
  xla_step_mem_mib      largest per-device footprint XLA planned for one step (arguments + outputs - aliased
                        + temporaries), from compiled.memory_analysis()
  gflop_per_img         XLA cost-analysis FLOPs of G main + D main (whole mesh) / batch
  gflop_per_img_with_reg  the same plus the amortised path-length (1/4) and R1 (1/16) steps
  achieved_gflops       gflop_per_img x img_per_s (main-step FLOPs only, while the time includes the regs)
  achieved_gflops_with_reg  gflop_per_img_with_reg x img_per_s
  matmul_peak_gflops    best of several jitted [n, n] @ [n, n] matmuls in --dtype on the first device
  fraction_of_peak      achieved_gflops / matmul_peak_gflops (and `_with_reg`)
  With --peer: each of --rounds rounds times our iterations, then runs the peer script in a subprocess with the
  same architecture and the same iterations (1..16 per period, so its lazy regularisation is amortised exactly
  like ours); the architectures are compared first (G and D parameter counts: the run stops, naming the field,
  when they differ).
  img_per_s_round_<i>, peer_img_per_s_round_<i>   each round's rates
  peer_img_per_s        median over the rounds of the reference's img/s
  speedup_vs_peer       median of ours / median of the reference's (goal >= 1.5 on the 2-core CPU, never < 1)
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import re
import resource
import subprocess
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import base  # noqa: E402
from stylex_jax import sharding  # noqa: E402
from stylex_jax.train import gan  # noqa: E402

PL_INTERVAL = 4
R1_INTERVAL = 16
STEP_NAMES = ('g_main', 'g_reg', 'd_main', 'd_reg')


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--res', type=int, default=64, help='image resolution (power of two, 16..1024)')
  p.add_argument('--channels', type=int, default=1, help='image channels: 1 or 3')
  p.add_argument('--channel-base', type=int, default=4096, help='channels at resolution r: min(base // r, max)')
  p.add_argument('--channel-max', type=int, default=256)
  p.add_argument('--batch', type=int, default=16, help='global batch (divisible by devices x 4)')
  p.add_argument('--map', type=int, default=2, help='mapping-network layers')
  p.add_argument('--steps', type=int, default=6,
                 help='timed iterations; with regularisation rounded up to whole periods of 16 (steps 1..16)')
  p.add_argument('--no-reg', action='store_true', help='main steps only (no path length, no R1)')
  p.add_argument('--dtype', default='float32', choices=tuple(gan.DTYPES), help='compute dtype (params stay f32)')
  p.add_argument('--fused', action='store_true', help='fused (grouped-conv) modulated convolution')
  p.add_argument('--main-convolutions', default=None, choices=('auto', 'native', 'im2col'),
                 help="config.gan.main_convolutions (default: the config's)")
  p.add_argument('--augment', default='none', choices=('none', 'bgc'),
                 help="ADA pipeline; the peer runs without augmentation ('none')")
  p.add_argument('--devices', type=int, default=None, help='devices in the data mesh (default: all)')
  p.add_argument('--per-step', action='store_true', help='also time each of the four steps alone (median of 3)')
  p.add_argument(
      '--peer', default=None, help='a checkout of NVlabs/stylegan2-ada-pytorch: also time the reference '
      '(needs torch and --peer-script)')
  p.add_argument('--peer-script', default=None, help='the peer timing script (peer_stylegan2_step.py)')
  p.add_argument('--rounds', type=int, default=1, help='with --peer: rounds of (ours, reference) back to back')
  p.add_argument('--peak-size', type=int, default=None,
                 help='matmul size n for the peak measurement (default 2048 on CPU, 8192 on accelerators)')
  a = p.parse_args(argv)
  for name in ('res', 'channels', 'channel_base', 'channel_max', 'batch', 'map', 'steps', 'rounds'):
    if getattr(a, name) < 1:
      p.error(f'--{name.replace("_", "-")}={getattr(a, name)} must be >= 1')
  if a.peer is not None:
    if not a.peer_script or not os.path.isfile(a.peer_script):
      p.error(f'--peer needs --peer-script, the peer timing script (got {a.peer_script!r})')
    if not os.path.isfile(os.path.join(a.peer, 'training', 'networks.py')):
      p.error(f'--peer {a.peer!r} is not a checkout of NVlabs/stylegan2-ada-pytorch (no training/networks.py)')
    differs = [(f, v, r) for f, v, r in (('--dtype', a.dtype, 'float32'), ('--fused', a.fused, False),
                                         ('--augment', a.augment, 'none')) if v != r]
    if differs:
      p.error('refusing to compare with the reference: ' +
              '; '.join(f'{f} is {v!r} here but {r!r} in the reference' for f, v, r in differs) +
              ' (drop these to compare)')
  elif a.rounds != 1:
    p.error('--rounds needs --peer')
  if a.peak_size is not None and a.peak_size < 64:
    p.error(f'--peak-size={a.peak_size} is too small to measure a peak; use >= 64 (e.g. 2048)')
  return a


def make_config(a: argparse.Namespace):
  """configs/base.get_config() with the peer's architecture and NVIDIA's training settings."""
  config = base.get_config()
  config.data.image_size = a.res
  config.data.channels = a.channels
  config.num_devices = a.devices or 0
  g = config.gan
  g.generator = dict(z_dim=512, w_dim=512, mapping_layers=a.map, channel_base=a.channel_base, channel_max=a.channel_max,
                     mapping_lr_multiplier=0.01, fused_modconv=bool(a.fused))
  g.discriminator = dict(channel_base=a.channel_base, channel_max=a.channel_max, mbstd_group_size=4,
                         mbstd_num_features=1)
  g.compute_dtype = a.dtype
  g.batch_size = a.batch
  g.style_mixing_prob = 0.9
  g.r1_gamma = 0.0 if a.no_reg else -1.0  # -1: auto rule
  g.r1_interval = R1_INTERVAL
  g.pl_weight = 0.0 if a.no_reg else 2.0
  g.pl_interval = PL_INTERVAL
  g.pl_batch_shrink = 2
  g.augment = a.augment
  if a.main_convolutions:
    g.main_convolutions = a.main_convolutions
  g.augment_p = 0.0
  return config


def _flops(compiled) -> float:
  """'flops' of compiled.cost_analysis() (a dict, or a list of dicts, one per program, in some versions)."""
  ca = compiled.cost_analysis()
  if ca is None:
    return float('nan')
  if isinstance(ca, dict):
    ca = [ca]
  return float(sum(max(float(d.get('flops', 0.0)), 0.0) for d in ca))


def _xla_mem_mib(compiled) -> float:
  m = compiled.memory_analysis()
  if m is None:
    return float('nan')
  total = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes
  return total / 2**20


def peak_memory(devices) -> tuple[float, str]:
  """(MiB, source): max device peak_bytes_in_use when the backend reports it, else the process's max RSS."""
  peaks = []
  for d in devices:
    try:
      stats = d.memory_stats()
    except Exception:  # noqa: BLE001 - backends without memory stats raise or return None
      stats = None
    if stats and 'peak_bytes_in_use' in stats:
      peaks.append(stats['peak_bytes_in_use'])
  if peaks:
    return max(peaks) / 2**20, 'device memory_stats peak_bytes_in_use (max over mesh devices)'
  rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
  return rss_kib / 1024, 'process max RSS (backend has no device memory_stats; includes XLA compiler memory)'


def matmul_peak_gflops(n: int, dtype, device, reps: int) -> float:
  """Best-of-`reps` GFLOP/s of a jitted [n, n] @ [n, n] matmul (2 n^3 FLOPs) on `device`."""
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.device_put(jax.random.normal(ka, (n, n), jnp.float32).astype(dtype), device)
  b = jax.device_put(jax.random.normal(kb, (n, n), jnp.float32).astype(dtype), device)
  mm = jax.jit(jnp.matmul)
  jax.block_until_ready(mm(a, b))
  best = math.inf
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(mm(a, b))
    best = min(best, time.perf_counter() - t)
  return 2.0 * n**3 / best / 1e9


def run_peer(a: argparse.Namespace, n_iter: int, params: tuple[int, int]) -> float:
  """Times NVIDIA's reference (the peer script, a subprocess) on the same architecture; returns its img/s.

    Stops the benchmark, naming the field, when the reference's G or D parameter count differs from ours
    (params: (G, D) counts here), since the two would not be the same network.
    """
  cmd = [
      sys.executable, a.peer_script, '--res',
      str(a.res), '--channels',
      str(a.channels), '--channel-base',
      str(a.channel_base), '--channel-max',
      str(a.channel_max), '--map',
      str(a.map), '--batch',
      str(a.batch), '--steps',
      str(n_iter)
  ] + (['--no-reg'] if a.no_reg else [])
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, 'PEER': a.peer})
  if proc.returncode != 0:
    sys.exit(f'the reference failed (exit {proc.returncode}): {" ".join(cmd)}\n{proc.stderr[-2000:]}')
  sizes = re.search(r'G=([0-9.]+)M D=([0-9.]+)M', proc.stdout)
  rate = re.search(r'^img/s ([0-9.]+)$', proc.stdout, re.M)
  if not sizes or not rate:
    sys.exit(f'cannot read the reference\'s output (expected "G=..M D=..M" and "img/s ..."):\n{proc.stdout[-2000:]}')
  for field, theirs, ours in (('G parameters', float(sizes[1]), params[0]), ('D parameters', float(sizes[2]),
                                                                             params[1])):
    if abs(theirs - round(ours / 1e6, 2)) > 0.005:
      sys.exit(f'refusing to compare: the architectures differ: {field} {ours / 1e6:.2f}M here, {theirs:.2f}M in '
               'the reference (same --res/--channels/--channel-base/--channel-max/--map on both sides?)')
  print(f'# reference: {proc.stdout.strip().splitlines()[-2]}', flush=True)
  return float(rate[1])


def emit(name: str, value: float, unit: str) -> None:
  if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
    text = 'nan'
  elif isinstance(value, int) or (isinstance(value, float) and abs(value) >= 100):
    text = f'{value:.1f}' if isinstance(value, float) else str(value)
  else:
    text = f'{value:.4g}'
  print(f'{name} {text} {unit}', flush=True)


def main(argv=None) -> dict:
  a = parse_args(argv)
  config = make_config(a)
  mesh = sharding.make_mesh(a.devices)
  gan.check_config(config, mesh)
  devices = list(mesh.devices.flat)
  ndev = len(devices)
  dev0 = devices[0]
  print(f'device {dev0.device_kind} x{ndev} platform={dev0.platform} jax={jax.__version__} '
        f'flax={flax.__version__}', flush=True)
  print(
      f'# res={a.res} channels={a.channels} channel_base={a.channel_base} channel_max={a.channel_max} '
      f'batch={a.batch} map={a.map} dtype={a.dtype} fused_modconv={a.fused} augment={a.augment} '
      f'main_convolutions={config.gan.main_convolutions}'
      f'({"im2col" if gan.uses_im2col(config, "main_convolutions") else "native"}) '
      f'reg_convolutions={config.gan.reg_convolutions}({"im2col" if gan.uses_im2col(config) else "native"}) '
      f'reg={"off" if a.no_reg else f"pl/{PL_INTERVAL} r1/{R1_INTERVAL} gamma={gan.r1_gamma(config):.4g}"}', flush=True)

  models = gan.build_models(config, mesh)
  rep = sharding.replicated(mesh)
  state = sharding.jit_init(functools.partial(gan.create_state, models, initial_p=0.0), rep)(jax.random.key(0))
  n_g = sum(x.size for x in jax.tree.leaves(state.g_params))
  n_d = sum(x.size for x in jax.tree.leaves(state.d_params))
  print(f'# G={n_g / 1e6:.2f}M D={n_d / 1e6:.2f}M parameters', flush=True)
  reals_np = np.random.default_rng(0).uniform(-1, 1, (a.batch, a.res, a.res, a.channels)).astype(np.float32)
  reals = sharding.shard_batch({'image': reals_np}, mesh)['image']
  key = jax.random.key(1)
  steps = gan.StepFunctions(config, models, mesh)

  # Compile ahead of time (the jit call path reuses these executables); FLOPs and memory from the same.
  jitted = dict(g_main=(steps.g_main, (state, key)), g_reg=(steps.g_reg, (state, key)),
                d_main=(steps.d_main, (state, reals, key)), d_reg=(steps.d_reg, (state, reals, key)))
  compiled, compile_times = {}, {}
  for name in STEP_NAMES:
    fn, args = jitted[name]
    if fn is None:
      continue
    t = time.perf_counter()
    compiled[name] = fn.lower(*args).compile()
    compile_times[name] = time.perf_counter() - t
  emit('compile_s', sum(compile_times.values()), 's')
  for name, s in compile_times.items():
    emit(f'compile_{name}_s', s, 's')

  period = 1 if a.no_reg else math.lcm(PL_INTERVAL, R1_INTERVAL)
  t = time.perf_counter()
  state, _ = steps.iteration(state, reals, key, period)  # step 16: all four steps run once
  jax.block_until_ready(state)
  emit('first_iter_s', time.perf_counter() - t, 's')

  n_iter = a.steps if a.no_reg else period * -(-a.steps // period)
  ours, theirs = [], []
  for rnd in range(a.rounds):
    t = time.perf_counter()
    for step in range(1, n_iter + 1):
      state, _ = steps.iteration(state, reals, key, step)
    jax.block_until_ready(state)
    ours.append(n_iter * a.batch / (time.perf_counter() - t))
    if a.peer is not None:
      theirs.append(run_peer(a, n_iter, (n_g, n_d)))
      if a.rounds > 1:
        emit(f'img_per_s_round_{rnd + 1}', ours[-1], 'img/s')
        emit(f'peer_img_per_s_round_{rnd + 1}', theirs[-1], 'img/s')
  img_per_s = float(np.median(ours))
  emit('timed_iterations', n_iter, 'it')
  emit('s_per_iter', a.batch / img_per_s, 's')
  emit('img_per_s', img_per_s, 'img/s')
  emit('s_per_kimg', 1000.0 / img_per_s, 's/kimg')
  if theirs:
    peer = float(np.median(theirs))
    emit('peer_img_per_s', peer, 'img/s')
    speedup = img_per_s / peer
    emit('speedup_vs_peer', speedup, 'x')
    print(
        f'# speedup_vs_peer goal >= 1.5 on the 2-core CPU (never < 1): '
        f'{"met" if speedup >= 1.5 else "missed"}; medians over {a.rounds} round(s), back to back', flush=True)

  mem, source = peak_memory(devices)
  emit('peak_mem_mib', mem, 'MiB')
  print(f'# peak_mem_mib from {source}', flush=True)
  emit('xla_step_mem_mib', max(_xla_mem_mib(c) for c in compiled.values()), 'MiB')

  # cost_analysis describes one device's (partitioned) program: x ndev for the whole mesh.
  flops = {name: _flops(c) * ndev for name, c in compiled.items()}
  main_per_img = (flops['g_main'] + flops['d_main']) / a.batch
  emit('gflop_per_img', main_per_img / 1e9, 'GFLOP/img')
  achieved = main_per_img * img_per_s / 1e9
  emit('achieved_gflops', achieved, 'GFLOP/s')
  print('# achieved_gflops counts the G main + D main FLOPs only (the timed iterations also ran the regs)', flush=True)
  achieved_reg = None
  if not a.no_reg:
    reg_per_img = (flops['g_reg'] / PL_INTERVAL + flops['d_reg'] / R1_INTERVAL) / a.batch
    emit('gflop_per_img_with_reg', (main_per_img + reg_per_img) / 1e9, 'GFLOP/img')
    achieved_reg = (main_per_img + reg_per_img) * img_per_s / 1e9
    emit('achieved_gflops_with_reg', achieved_reg, 'GFLOP/s')
  for name, f in flops.items():
    emit(f'gflop_{name}', f / 1e9, 'GFLOP')

  results = {}
  if a.per_step:
    # Each step alone, already compiled: median of 3 synchronised calls.
    for name in STEP_NAMES:
      fn, _ = jitted[name]
      if fn is None:
        continue
      times = []
      for _ in range(4):
        t = time.perf_counter()
        if name.startswith('g'):
          state, _ = fn(state, key)
        else:
          state, _ = fn(state, reals, key)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - t)
      results[f'{name}_ms'] = float(np.median(times[1:])) * 1e3
      emit(f'{name}_ms', results[f'{name}_ms'], 'ms')
    amortised = results['g_main_ms'] + results['d_main_ms']
    if not a.no_reg:
      amortised += results['g_reg_ms'] / PL_INTERVAL + results['d_reg_ms'] / R1_INTERVAL
    emit('amortised_iter_ms', amortised, 'ms')
    for name in STEP_NAMES:
      if f'{name}_ms' in results:
        share = results[f'{name}_ms'] / (PL_INTERVAL if name == 'g_reg' else R1_INTERVAL if name == 'd_reg' else 1)
        print(f'# {name}: {100 * share / amortised:.1f}% of the amortised iteration', flush=True)

  n = a.peak_size or (2048 if dev0.platform == 'cpu' else 8192)
  peak = matmul_peak_gflops(n, gan.DTYPES[a.dtype], dev0, reps=5 if dev0.platform == 'cpu' else 20)
  emit('matmul_peak_gflops', peak, 'GFLOP/s')
  print(f'# matmul peak: best of jitted [{n}, {n}] @ [{n}, {n}] {a.dtype} on one device', flush=True)
  emit('fraction_of_peak', achieved / (peak * ndev), 'ratio')
  if achieved_reg is not None:
    emit('fraction_of_peak_with_reg', achieved_reg / (peak * ndev), 'ratio')
  results.update(compile_s=sum(compile_times.values()), img_per_s=img_per_s, peak_mem_mib=mem,
                 gflop_per_img=main_per_img / 1e9, achieved_gflops=achieved, matmul_peak_gflops=peak)
  return results


if __name__ == '__main__':
  main()
