"""Importing the numpy/JAX-only modules must not pull in TensorFlow or TFDS (checked in a fresh process)."""
import os
import subprocess
import sys

import pytest

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
]
HEAVY = ('tensorflow', 'tensorflow_datasets')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # this checkout's stylex_jax wins


@pytest.mark.parametrize('module', LIGHT_MODULES)
def test_module_imports_without_tensorflow(module):
  code = (f'import sys, importlib; importlib.import_module({module!r}); '
          f'print(",".join(m for m in {HEAVY!r} if m in sys.modules))')
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                          check=False, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.strip() == '', f'importing {module} imported {result.stdout.strip()}'
