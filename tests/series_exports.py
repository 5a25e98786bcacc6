"""A small explanation export written through the real `export.ExplanationWriter`, for tests that score exports
whose series content is known (the phantom families' oracle scoring in benchmarks/), and chest-phantom series
rendered at given cardiothoracic ratios."""
import numpy as np

from benchmarks import chest_phantoms
from stylex_jax.explain import export


def chest_series(ctr_series, size=64):
  """Chest phantoms at the CTRs [B, S] (the other attributes fixed: thorax 0.8, centred, noise 0.01; seed 5):
  [B, S, size, size, 1] float32 in [-1, 1]."""
  frames = []
  for row in np.asarray(ctr_series, np.float64):
    s = len(row)
    rng = np.random.default_rng(5)
    attrs = chest_phantoms.draw_attributes(rng, s)
    attrs.update(ctr=row, thorax=np.full(s, 0.8), shift=np.zeros(s), noise=np.full(s, 0.01))
    frames.append(np.stack([chest_phantoms.render(attrs, i, size, rng) for i in range(s)]) * 2 - 1)
  return np.stack(frames)[..., None].astype(np.float32)


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
