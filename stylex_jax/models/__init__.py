"""Pure Flax (Linen) modules: the classifier to explain, StyleGAN2 and the encoder. Imports only jax/flax/numpy."""
