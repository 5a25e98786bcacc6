"""Config checks before anything runs: every constraint a stage would otherwise refuse only when it is reached
(after the earlier stages have trained), checked cheaply up front -- no data loading, no jax compile.

`check_stages(config, names)` (called by `stages.run` and the launchers before the first stage) checks
config.data and config.num_devices, then calls `check_config(config)` of each named stage module, and raises ONE
ValueError whose one line lists every problem found (each naming its config key and the fix).
"""
from __future__ import annotations

import importlib

import ml_collections


def check_positive(group: str, stage_config: ml_collections.ConfigDict, fields) -> None:
  """ValueError naming every field of `fields` in `stage_config` (config group `group`) that is not an int >= 1."""
  bad = [
      f'{f}={stage_config[f]!r}' for f in fields
      if isinstance(stage_config[f], bool) or not isinstance(stage_config[f], int) or stage_config[f] < 1
  ]
  if bad:
    raise ValueError(f'{group}: {", ".join(bad)} must be {"integers" if len(bad) > 1 else "an integer"} >= 1')


def check_batch(group: str, batch_size: int, config: ml_collections.ConfigDict) -> None:
  """sharding.check_global_batch of config.<group>.batch_size over config.num_devices, naming the key."""
  from stylex_jax import sharding  # pylint: disable=g-import-not-at-top
  try:
    sharding.check_global_batch(batch_size, sharding.make_mesh(config.num_devices or None))
  except ValueError as e:
    raise ValueError(f'config.{group}.batch_size={batch_size!r}: {e}') from None


def check_data(config: ml_collections.ConfigDict) -> None:
  """config.data and config.num_devices: what every stage relies on (the data itself is checked when it is read)."""
  d, problems = config.data, []
  if d.channels not in (1, 3) or isinstance(d.channels, bool):
    problems.append(f'channels={d.channels!r} must be 1 (grayscale, e.g. radiographs) or 3 (RGB, e.g. histology)')
  if isinstance(d.image_size, bool) or not isinstance(d.image_size, int) or d.image_size < 8:
    problems.append(f'image_size={d.image_size!r} must be an integer >= 8 (a power of two for the GAN)')
  if isinstance(d.num_classes, bool) or not isinstance(d.num_classes, int) or d.num_classes < 2:
    problems.append(f'num_classes={d.num_classes!r} must be an integer >= 2')
  elif d.label_threshold >= 0 and d.num_classes != 2:
    problems.append(f'label_threshold={d.label_threshold} makes binary labels (label >= {d.label_threshold}) but '
                    f'num_classes={d.num_classes}; set --config.data.num_classes=2, or '
                    '--config.data.label_threshold=-1 to keep the graded labels')
  for split in ('train_split', 'eval_split', 'test_split'):
    if not isinstance(d[split], str) or not d[split].strip():
      problems.append(f'{split}={d[split]!r} must name a split')
  if isinstance(config.num_devices, bool) or not isinstance(config.num_devices, int) or config.num_devices < 0:
    problems.append(f'num_devices={config.num_devices!r} must be an integer >= 0 (0 = all devices)')
  if problems:
    raise ValueError('config.data: ' + '; '.join(problems))


def check_stages(config: ml_collections.ConfigDict, names) -> None:
  """Checks config.data and every stage of `names` (registry names, e.g. ['classifier', 'gan']); one ValueError
  listing all problems, on one line, before any stage runs or any folder is created."""
  from stylex_jax.stages import STAGES  # the registry; stage modules are imported by name, never the reverse
  problems = []
  for name, check in [('data', check_data)] + [(n, importlib.import_module(STAGES[n]).check_config) for n in names]:
    try:
      check(config)
    except ValueError as e:
      message = ' '.join(str(e).split())  # one line, whatever the check wrote
      message = message if name == 'data' or message.startswith(f'{name} stage') else f'{name} stage: {message}'
      if message.split(': ', 1)[-1] not in (p.split(': ', 1)[-1] for p in problems):  # e.g. one mesh error
        problems.append(message)
  if problems:
    stages = ', '.join(names)
    raise ValueError(f'config check before running {stages}: ' + ' | '.join(problems))
