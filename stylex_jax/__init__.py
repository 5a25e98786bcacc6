"""stylex_jax: StyleGAN-based visual explanations of medical image classifiers, in JAX/Flax.

Subpackages: `data` (phantoms, oracles, TFDS builders, input pipeline; the only place with
TensorFlow besides `explain/export.py`), `models` (pure Flax modules), `train` (one module per
stage), `explain`, `evaluate`; plus `sharding`, `checkpointing` and `writers`.
"""

__version__ = "0.1.0"
