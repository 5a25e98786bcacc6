"""Data: phantoms with ground truth, their analytic measurements, image reading, TFDS builders, and the input pipeline.

This package (with `explain/export.py`) is the only place that may use TensorFlow / TFDS. Importing it imports
nothing heavy: `measure`, `phantoms` and `images` are numpy/Pillow only. The TFDS builders `synthetic_knee`,
`synthetic_histology` and `kl_xray` are registered by `import stylex_jax.data.builders` (the pipeline does this
itself when it opens a TFDS dataset). The training input pipeline is `stylex_jax.data.pipeline.Pipeline`.
"""
