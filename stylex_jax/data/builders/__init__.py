"""TFDS builders of stylex_jax, registered with TFDS on import, and the image-folder source.

Registered names (use with `tfds.builder(name)`, `tfds.data_source(name)`, or config.data.dataset):
  synthetic_knee       procedural knee radiographs, KL0-KL4, with ground-truth attributes (generated locally)
  synthetic_histology  procedural histology tiles, normal/tumour, with ground-truth attributes (generated locally)
  kl_xray              the public Kellgren-Lawrence knee radiograph dataset (manual download)
  medmnist             the 2D single-label MedMNIST+ datasets, <name>_<size> configs (manual download of the .npz)
Not a TFDS builder: `image_folder.ImageFolder`, users' own root/<class_name>/*.png folders, read with
random access by the pipeline (config.data.dataset='image_folder').
PatchCamelyon comes from the TFDS catalog as `patch_camelyon`.
"""
from stylex_jax.data.builders import image_folder
from stylex_jax.data.builders import kl_xray
from stylex_jax.data.builders import medmnist
from stylex_jax.data.builders import synthetic_histology
from stylex_jax.data.builders import synthetic_knee
from stylex_jax.data.builders.kl_xray import KlXray
from stylex_jax.data.builders.medmnist import MedMnist, MedMnistConfig
from stylex_jax.data.builders.synthetic_histology import SyntheticHistology, SyntheticHistologyConfig
from stylex_jax.data.builders.synthetic_knee import SyntheticKnee, SyntheticKneeConfig

REGISTERED = ('synthetic_knee', 'synthetic_histology', 'kl_xray', 'medmnist')

__all__ = [
    'image_folder', 'kl_xray', 'medmnist', 'synthetic_histology', 'synthetic_knee', 'KlXray', 'MedMnist',
    'MedMnistConfig', 'SyntheticHistology', 'SyntheticHistologyConfig', 'SyntheticKnee', 'SyntheticKneeConfig',
    'REGISTERED'
]
