"""stylex_jax: StyleGAN-based visual explanations of medical image classifiers, in JAX/Flax.

Subpackages, top to bottom of the dependency rule (tests/test_layering.py): `stages` (the pipeline's stages, the
only code that knows the workdir layout), `train` (training math), `explain` (inversion, directions, series,
GradCAM, export, report), `evaluate` (metrics), then `models` (pure Flax modules) and `data` (phantoms, oracles,
the image reader; TFDS builders and the input pipeline, the only TensorFlow users), with `checkpointing`,
`sharding`, `writers` and `tfrecord`.
"""

__version__ = '0.1.0'
