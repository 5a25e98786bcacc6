"""TFDS builder `synthetic_histology`: procedural H&E-like histology tiles (`histology_phantoms.histology_tile`).

Same pattern as `synthetic_knee` (shared `PhantomBuilder` machinery, local generation, disjoint
seeds per split, parallel workers): features `image` uint8 (R, R, 3) PNG, `label`
ClassLabel(['normal', 'tumour']), `id` Text '<split>/<index:06d>', and one float32 Scalar per name in
`phantoms.HISTOLOGY_ATTRIBUTES` (nuclear count/size/darkness, pleomorphism, stain shift, blur,
background fraction, spurious marker). Splits train/validation/test.

    import stylex_jax.data.builders  # registers the builders
    tfds.builder('synthetic_histology/96', data_dir=...)   # PatchCamelyon-sized tiles
    tfds.builder('synthetic_histology', config=SyntheticHistologyConfig(name='custom', resolution=48))
"""
from __future__ import annotations

import dataclasses

from stylex_jax.data import phantoms
from stylex_jax.data.builders.synthetic_knee import PhantomBuilder, PhantomConfig


@dataclasses.dataclass(eq=False)
class SyntheticHistologyConfig(PhantomConfig):
  """`PhantomConfig` for `synthetic_histology` (see `PhantomConfig` for the fields)."""


def _histology_config(name: str, resolution: int, num_train=4000, num_validation=500, num_test=500, marker_strength=0.0,
                      seed=0) -> SyntheticHistologyConfig:
  marker = f', spurious marker tied to the label with strength {marker_strength}' if marker_strength else ''
  return SyntheticHistologyConfig(
      name=name, resolution=resolution, num_train=num_train, num_validation=num_validation, num_test=num_test,
      marker_strength=marker_strength, seed=seed,
      description=f'{resolution}x{resolution} histology tiles, {num_train}/{num_validation}/{num_test} '
      f'train/validation/test{marker}.')


class SyntheticHistology(PhantomBuilder):
  """Procedural histology tiles, normal vs tumour, with the ground-truth attributes that generated them."""

  KIND = 'histology'
  CHANNELS = 3
  ATTRIBUTES = tuple(phantoms.HISTOLOGY_ATTRIBUTES)
  CLASS_NAMES = tuple(phantoms.HISTOLOGY_CLASS_NAMES)
  BUILDER_CONFIGS = [
      _histology_config('64', 64),
      _histology_config('32', 32),
      _histology_config('96', 96),
      _histology_config('128', 128),
      _histology_config('256', 256),
      _histology_config('64_marker', 64, marker_strength=0.9),
      _histology_config('tiny', 32, num_train=48, num_validation=16, num_test=16),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = '64'
