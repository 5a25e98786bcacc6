"""Importing the numpy/JAX-only modules must not pull in TensorFlow or TFDS (checked in a fresh process)."""
import os
import subprocess
import sys

LIGHT_MODULES = [
    'stylex_jax.data',
    'stylex_jax.data.images',
    'stylex_jax.data.measure',
    'stylex_jax.data.phantoms',
    'stylex_jax.models',
    'stylex_jax.models.layers',
    'stylex_jax.models.stylegan2',
    'stylex_jax.models.classifier',
    'stylex_jax.models.encoder',
    'stylex_jax.explain.invert',
    'stylex_jax.explain.direction',
    'stylex_jax.explain.series',
    'stylex_jax.explain.gradcam',
    'stylex_jax.explain.image_files',
    'stylex_jax.explain.export',
    'stylex_jax.explain.report',
    'stylex_jax.evaluate.metrics',
    'stylex_jax.evaluate.realism',
    'stylex_jax.evaluate.explanations',
    'stylex_jax.evaluate.fidelity',
    'stylex_jax.evaluate.shortcut',
    'stylex_jax.train.classifier',
    'stylex_jax.train.gan',
    'stylex_jax.train.encoder',
    'stylex_jax.storage',
    'stylex_jax.tfrecord',
    'stylex_jax.writers',
    'stylex_jax.checkpointing',
    'stylex_jax.preemption',
    'stylex_jax.sharding',
    'stylex_jax.stages',
    'stylex_jax.stages.classifier',
    'stylex_jax.stages.gan',
    'stylex_jax.stages.encoder',
    'stylex_jax.stages.explain',
    'stylex_jax.stages.shortcut',
]
HEAVY = ('tensorflow', 'tensorflow_datasets')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout's stylex_jax wins


def test_modules_import_without_tensorflow():
  """One fresh process imports the modules in order and names the first that brought in TensorFlow or TFDS."""
  code = ('import sys, importlib\n'
          f'for m in {LIGHT_MODULES!r}:\n'
          '  importlib.import_module(m)\n'
          f'  heavy = [h for h in {HEAVY!r} if h in sys.modules]\n'
          '  if heavy:\n'
          '    print(m, "imported", ",".join(heavy)); break\n')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, check=False,
                          cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '', result.stdout.strip()


def test_the_check_sees_tensorflow():
  """Not vacuous: the TFDS builders do import TFDS."""
  code = ('import sys, stylex_jax.data.builders\n'
          f'print(",".join(m for m in {HEAVY!r} if m in sys.modules))')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300, check=False,
                          cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'tensorflow_datasets' in result.stdout
