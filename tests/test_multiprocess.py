"""Multi-process training equals single-process training: the classifier and gan stages run as 2 jax processes x
4 CPU devices on localhost (jax.distributed, gloo CPU collectives; each process feeds its own rows of every global
batch through sharding.shard_batch) and as this one process x 8 devices, on the same data and config.

The 2-process run is interrupted after step 1 (a checkpoint both processes write together, orbax) and resumed for
step 2 (where the GAN's R1 and path-length steps and the ADA update run), so one comparison covers both claims:
its step-1 and step-2 checkpoints (every array of the training state) and its metrics.jsonl rows equal the
uninterrupted single-process run's. Also: process 0 alone writes metrics, samples, TensorBoard events and
summaries (process 1 opens no file for writing outside the checkpoints, traced with a Python audit hook), and
process 1 does write its part of every checkpoint.

Tolerance: the two runs execute the same XLA programs on the same 8-device mesh; only the cross-device reductions
run differently (in-process vs gloo between processes), so they may round differently. Arrays and metrics must
agree to rtol=1e-5, atol=1e-6 (float32 rounding of a few reduction orders; a real difference such as another
batch, a missing gradient mean or another key is orders of magnitude larger), sample PNGs to 1 grey level.
One exception, found by this test: a parameter whose gradient is analytically zero (a BatchNorm bias that feeds
the next BatchNorm) gets rounding noise as gradient (Adam's first moment ~1e-8 against ~1e-3 for the others), and
Adam normalises noise into a full +-learning-rate step whose sign depends on the rounding. Such elements (|mu| below
1e-6 x the largest |mu| of their array, or 1e-9) are held only to the learning-rate budget of the steps taken
(|difference| <= 2 x peak learning rate x step); their Adam moments are compared at the tight tolerance like the rest.
What is computed with those parameters inherits the perturbation: the classifier's evaluations from step 2 (its
eval rows and summary) and the GAN's FID/KID on the classifier's features, held to rtol=1e-2 (measured: log_loss
4.6e-5 relative, fid_classifier 1.1e-3 relative; a wrong batch, key or reduction moves them by far more).
Skipped, with the reason, where multi-process jax cannot start.

COST: ~4 min of the 2 cores (measured 2026-11-30 on the idle 2-core machine: 240 s for the whole test, the
2-process half included) -- the slowest test of the suite, run by CI on its own xdist worker.
"""
import json
import os

import jax
import numpy as np
from PIL import Image

from configs import demo
from stylex_jax import checkpointing
from stylex_jax.stages import classifier as classifier_stage
from stylex_jax.stages import gan as gan_stage

RTOL, ATOL = 1e-5, 1e-6
EVAL_RTOL = 1e-2  # what the classifier's noise-gradient parameters perturb (module docstring)
TIMING_KEYS = ('images_per_sec',)


def multiprocess_config(data_dir):
  """demo:smoke shrunk to 16² images and 2 steps of each stage, checkpointed and logged at every step; step 2
  runs the GAN's lazy regularisers and ADA update. num_devices=None: every device of every process."""
  config = demo.get_config('smoke')
  config.data.image_size = 16
  config.data.data_dir = str(data_dir)
  config.num_devices = None
  config.stages = 'classifier,gan'
  c = config.classifier
  c.num_steps, c.log_every, c.eval_every, c.checkpoint_every, c.keep_checkpoints = 2, 1, 2, 1, 3
  c.optimizer.warmup_steps = 1
  g = config.gan
  g.generator = dict(z_dim=16, w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)
  g.discriminator = dict(channel_base=128, channel_max=16, mbstd_group_size=2)
  g.batch_size, g.num_steps, g.keep_checkpoints = 16, 2, 3
  g.log_every = g.sample_every = g.checkpoint_every = 1
  g.eval_every, g.eval_images = 2, 16
  g.ada_interval = g.r1_interval = g.pl_interval = 2
  return config


_CHILD = '''
import json, os, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
from stylex_jax import sharding
pid, port, workdir, data_dir, tests = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
try:
    sharding.initialize_distributed(f"127.0.0.1:{port}", 2, pid)
    sharding.make_mesh()
except Exception as e:  # the platform cannot run multi-process jax
    print("INIT_FAILED", repr(e), flush=True)
    sys.exit(3)
print("INIT_OK", flush=True)
writes = []

def audit(event, args):
    """Every file this process opens for writing, renames or removes under the workdir."""
    if event == "open":
        path, mode, flags = args
        writing = (any(c in mode for c in "wax+") if isinstance(mode, str)
                   else bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
        paths = [path] if writing else []
    elif event in ("os.rename", "os.remove", "os.truncate"):
        paths = [args[0]]
    else:
        return
    for p in paths:
        p = os.fsdecode(p) if isinstance(p, (str, bytes)) else ""
        if p.startswith(workdir):
            writes.append(f"{event} {p}")

sys.addaudithook(audit)
sys.path.insert(0, tests)
from test_multiprocess import multiprocess_config
from stylex_jax.stages import classifier, gan
config = multiprocess_config(data_dir)
summaries = {}
for stage in (classifier, gan):
    part = stage.train_and_evaluate(config, workdir, max_steps_this_run=1)  # stops after step 1, checkpointed
    full = stage.train_and_evaluate(config, workdir)  # resumes from the 2-process checkpoint for step 2
    summaries[stage.STAGE] = [part["step"], part.get("complete"), full["step"]]
outside = [w for w in writes if f"{os.sep}checkpoints" not in w]
print("RESULT", json.dumps({"pid": pid, "os_pid": os.getpid(), "processes": jax.process_count(),
                            "devices": jax.device_count(), "local_devices": jax.local_device_count(),
                            "summaries": summaries, "writes": outside}), flush=True)
'''


def _noise_elements(flat: dict, name: str) -> np.ndarray | None:
  """For a parameter `name` ('params/...', 'g_params/...'): the elements whose Adam first moment is rounding noise
  (see the module docstring), or None when it has no Adam state."""
  suffix = name.split('/', 1)[1]
  mus = [k for k in flat if k.endswith('/mu/' + suffix)]
  if len(mus) != 1:
    return None
  mu = np.abs(flat[mus[0]].astype(np.float64))
  return mu < max(1e-6 * mu.max(), 1e-9)


def _rows(workdir, stage):
  with open(os.path.join(workdir, stage, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def _after_noise(stage, key, row=None):
  """Whether a logged value was computed with the classifier's noise-gradient parameters (module docstring): the
  classifier's evaluations from step 2 on (row None: its summary) and the GAN's classifier-feature FID/KID."""
  if stage == 'classifier':
    return row is None or (row['step'] >= 2 and 'num_examples' in row)
  return key.endswith('_classifier')


def _close(a, b, what, rtol=RTOL):
  if isinstance(a, (list, float, int)) and not isinstance(a, bool):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=rtol, atol=ATOL, err_msg=what)
  else:
    assert a == b, what


def test_two_processes_train_like_one_and_resume(tmp_path):
  from test_sharding import run_two_processes
  config = multiprocess_config(tmp_path / 'tfds')
  one, two = str(tmp_path / 'one'), str(tmp_path / 'two')
  assert jax.device_count() == 8
  for stage in (classifier_stage, gan_stage):  # uninterrupted, 1 process x 8 devices (also prepares the data)
    assert stage.train_and_evaluate(config, one)['step'] == 2

  outputs = run_two_processes(_CHILD, tmp_path, devices_per_process=4, timeout=600,
                              extra_args=(two, str(tmp_path / 'tfds'), os.path.dirname(os.path.abspath(__file__))))
  results = sorted((json.loads(next(l for l in o.splitlines() if l.startswith('RESULT '))[7:]) for o in outputs),
                   key=lambda r: r['pid'])
  for r in results:
    assert (r['processes'], r['devices'], r['local_devices']) == (2, 8, 4)
    assert r['summaries'] == {'classifier': [1, False, 2], 'gan': [1, False, 2]}
  assert results[1]['writes'] == [], 'process 1 wrote outside the checkpoints'
  assert results[0]['writes'], 'the audit hook saw no write of process 0'

  # the checkpoints: both processes wrote their part (orbax OCDBT: one sub-database per process)
  for stage in ('classifier', 'gan'):
    for step in (1, 2):
      state_dir = os.path.join(two, stage, 'checkpoints', str(step), 'state')
      assert {'ocdbt.process_0', 'ocdbt.process_1'} <= set(os.listdir(state_dir)), (stage, step)

  # every array of the training state at steps 1 and 2 (step 2: resumed from the 2-process checkpoint)
  for stage in ('classifier', 'gan'):
    lr = config.classifier.optimizer.learning_rate if stage == 'classifier' else max(config.gan.g_lr, config.gan.d_lr)
    for step in (1, 2):
      a = checkpointing.read_numpy(os.path.join(one, stage, 'checkpoints'), step)
      b = checkpointing.read_numpy(os.path.join(two, stage, 'checkpoints'), step)
      assert a.keys() == b.keys(), (stage, step)
      for name in a:
        x, y = a[name].astype(np.float64), b[name].astype(np.float64)
        noise = _noise_elements(a, name) if name.split('/', 1)[0].endswith('params') else None
        if noise is not None and noise.any():
          assert np.abs(x - y)[noise].max() <= 2 * lr * step, f'{stage} step {step} {name} (noise-gradient part)'
          x, y = x[~noise], y[~noise]
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=f'{stage} step {step} {name}')

  # metrics, summaries and samples: written once (by process 0), equal to the single-process run's
  for stage in ('classifier', 'gan'):
    rows_one, rows_two = _rows(one, stage), _rows(two, stage)
    assert [r['step'] for r in rows_one] == [r['step'] for r in rows_two]
    for r1, r2 in zip(rows_one, rows_two):
      assert set(r1) == set(r2)
      for k in set(r1) - set(TIMING_KEYS):
        _close(r1[k], r2[k], f'{stage} metrics step {r1["step"]} {k}',
               EVAL_RTOL if _after_noise(stage, k, r1) else RTOL)
    with open(os.path.join(one, stage, 'summary.json')) as f1, open(os.path.join(two, stage, 'summary.json')) as f2:
      s1, s2 = json.load(f1), json.load(f2)
    for k in set(s1) | set(s2):
      if k not in ('checkpoints', 'metrics', 'samples'):
        _close(s1.get(k), s2.get(k), f'{stage} summary {k}', EVAL_RTOL if _after_noise(stage, k) else RTOL)
    events = os.listdir(os.path.join(two, stage, 'tensorboard'))
    assert len(events) == 2 and all(f'.{results[0]["os_pid"]}.' in e for e in events), events  # 2 calls, 1 writer
  samples = sorted(os.listdir(os.path.join(one, 'gan', 'samples')))
  assert samples == sorted(os.listdir(os.path.join(two, 'gan', 'samples'))) and len(samples) == 2
  for name in samples:
    a, b = (np.asarray(Image.open(os.path.join(d, 'gan', 'samples', name)), np.int16) for d in (one, two))
    assert np.abs(a - b).max() <= 1, name
