"""Explanations: inversion, latent directions, image series, GradCAM and export."""
