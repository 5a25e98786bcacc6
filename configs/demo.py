"""Demo: synthetic knee radiograph phantoms at 64², tiny models, all on a 2-core CPU in minutes.

Launch (trains the classifier to explain, ~3 minutes on 2 CPU cores):
  python launch/train.py --config configs/demo.py --workdir /tmp/stylex_demo

Task: Kellgren–Lawrence grade >= 2 (osteoarthritis) vs < 2 on `synthetic_knee/64`, binary.
Expected: validation accuracy >= 0.9 and AUC >= 0.95 (see README for measured numbers).

Variants (`--config configs/demo.py:<variant>`):
  smoke   a few steps on 32² 'tiny' data: checks the whole path end to end in seconds (tests, CI).
  grades  the same phantoms, all five KL grades (multi-class; goal QWK >= 0.8).
  marker  phantoms with a spurious corner marker correlated with the label (strength 0.9).
"""
import ml_collections

from configs import base

VARIANTS = ('', 'smoke', 'grades', 'marker')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  if arg not in VARIANTS:
    raise ValueError(f'unknown demo variant {arg!r}; choose one of {VARIANTS}')
  config = base.get_config()
  config.stages = 'classifier'
  config.data.dataset = 'synthetic_knee'
  config.data.builder_config = '64'
  config.data.image_size = 64
  config.data.channels = 1
  config.data.num_classes = 2
  config.data.label_threshold = 2

  c = config.classifier
  c.model = dict(preset='demo')
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 50
  c.batch_size = 64
  c.num_steps = 600
  c.log_every = 25
  c.eval_every = 200
  c.checkpoint_every = 200

  if arg == 'smoke':
    config.data.builder_config = 'tiny'
    config.data.image_size = 32
    c.batch_size = 16
    c.num_steps = 6
    c.optimizer.warmup_steps = 2
    c.log_every = 2
    c.eval_every = 3
    c.checkpoint_every = 3
  elif arg == 'grades':
    config.data.num_classes = 5
    config.data.label_threshold = -1
    c.num_steps = 1200
  elif arg == 'marker':
    config.data.builder_config = '64_marker'
  return config
