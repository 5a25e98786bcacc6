"""A small explanation export written through the real `export.ExplanationWriter`, for tests that score exports
whose series content is known (the phantom families' oracle scoring in benchmarks/)."""
import numpy as np

from stylex_jax.explain import export


def write_series_export(directory, series, class_names, target_description=''):
  """series: [B, S, H, W, 1] in [-1, 1], alphas linspace(-1, 1, S), p = 0.5 everywhere; the middle frame is the
  image and its reconstruction."""
  b, s = series.shape[:2]
  series = np.asarray(series, np.float32)
  probs = np.full((b, s, 2), 0.5, np.float32)
  writer = export.ExplanationWriter(directory, num_classes=2, class_names=class_names, image_shape=series.shape[2:],
                                    num_ws=2, w_dim=4, config={'seed': 0}, target_description=target_description)
  writer.add({
      'id': np.array([f'x{i}' for i in range(b)]),
      'image': series[:, s // 2],
      'reconstruction': series[:, s // 2],
      'series': series,
      'alphas': np.tile(np.linspace(-1, 1, s, dtype=np.float32), (b, 1)),
      'probs': probs,
      'original_probs': probs[:, s // 2],
      'reconstruction_probs': probs[:, s // 2],
      'latent': np.zeros((b, 2, 4), np.float32),
      'gradcam': np.zeros((b,) + series.shape[2:4], np.float32),
      'label': np.zeros(b, np.int64),
      'metrics': {},
  })
  writer.close({})
