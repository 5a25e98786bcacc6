"""SSIM's cost as a loss: value + gradient of `evaluate.similarity.ssim` against the depthwise-convolution form.

SSIM is a term of the projector's and the encoder's losses (`config.invert.loss.ssim`, `config.encoder.loss.ssim`),
so its value and gradient run at every projector step. `similarity` filters with two banded-matrix products; the
form it replaced filtered with two depthwise 'valid' convolutions of the 11-tap Gaussian (kept here, only as the
reference). Both are jitted `jax.value_and_grad` of the summed SSIM of a batch; the script checks that they agree
and prints one line per shape and form: milliseconds per call (median of --repeats after a warm-up call).

  python benchmarks/ssim.py                       # 16 images at 64x64x1, 256x256x1, 256x256x3
  python benchmarks/ssim.py --shapes 16x64x64x1
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from stylex_jax.evaluate import similarity  # noqa: E402


def depthwise_ssim(a: jax.Array, b: jax.Array) -> jax.Array:
  """SSIM per image [B] with the Gaussian applied as two depthwise convolutions (the replaced form)."""
  window = jnp.asarray(similarity.gaussian_window())
  k, c = window.shape[0], a.shape[-1]
  kernels = (jnp.tile(window.reshape(k, 1, 1, 1), (1, 1, 1, c)), jnp.tile(window.reshape(1, k, 1, 1), (1, 1, 1, c)))

  def filt(x):
    for kernel in kernels:
      x = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                       feature_group_count=c, precision=jax.lax.Precision.HIGHEST)
    return x

  c1, c2 = (similarity.K1 * similarity.DATA_RANGE)**2, (similarity.K2 * similarity.DATA_RANGE)**2
  mu_a, mu_b = filt(a), filt(b)
  var_a, var_b, cov = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2, filt(a * b) - mu_a * mu_b
  cs = (2 * cov + c2) / (var_a + var_b + c2)
  return jnp.mean((2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs, axis=(1, 2, 3))


def parse_shape(text: str) -> tuple[int, int, int, int]:
  """'16x64x64x1' -> (16, 64, 64, 1); ValueError naming the fix."""
  try:
    shape = tuple(int(v) for v in text.split('x'))
  except ValueError:
    shape = ()
  if len(shape) != 4 or min(shape) < 1 or min(shape[1:3]) < similarity.WINDOW_SIZE:
    raise ValueError(f'--shapes {text!r}: write BxHxWxC with H, W >= {similarity.WINDOW_SIZE}, e.g. 16x64x64x1')
  return shape


def time_ms(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return 1000 * float(np.median(times))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--shapes', nargs='+', default=['16x64x64x1', '16x256x256x1', '16x256x256x3'])
  parser.add_argument('--repeats', type=int, default=10)
  args = parser.parse_args(argv)
  shapes = [parse_shape(s) for s in args.shapes]
  print(f'# backend {jax.default_backend()}, {jax.device_count()} device(s); value + gradient of the summed SSIM')
  for shape in shapes:
    a = jax.random.uniform(jax.random.key(0), shape, minval=-1.0, maxval=1.0)
    b = jnp.clip(a + 0.1 * jax.random.normal(jax.random.key(1), shape), -1.0, 1.0)
    results = {}
    for name, fn in (('banded', similarity.ssim), ('depthwise', depthwise_ssim)):
      grad_fn = jax.jit(jax.value_and_grad(lambda x, fn=fn: jnp.sum(fn(x, b))))
      results[name] = grad_fn(a)
      print(
          f'ssim_value_and_grad_ms_{name}_{"x".join(map(str, shape))} '
          f'{time_ms(grad_fn, a, repeats=args.repeats):.2f} ms', flush=True)
    (v1, g1), (v2, g2) = results['banded'], results['depthwise']
    if not (np.allclose(v1, v2, rtol=1e-4) and np.allclose(g1, g2, rtol=1e-3, atol=1e-6)):
      raise SystemExit(f'the two forms disagree at {shape}: SSIM sums {float(v1)} vs {float(v2)}')


if __name__ == '__main__':
  main()
