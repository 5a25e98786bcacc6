"""Data: phantoms with ground truth, their analytic measurements, TFDS builders, and the input pipeline.

This package (with `explain/export.py`) is the only place that may use TensorFlow / TFDS. Importing it
registers the TFDS builders `synthetic_knee`, `synthetic_histology` and `kl_xray` (TensorFlow itself is
imported lazily, only when a dataset is prepared). The training input pipeline is
`stylex_jax.data.pipeline.Pipeline`.
"""
from stylex_jax.data import builders  # noqa: F401  (registers the TFDS builders)
