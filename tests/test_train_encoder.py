"""The `encoder` stage on configs/demo.py:smoke: needs G and the classifier, trains, stops and resumes to the same
state (metrics rows an interrupted run wrote after its checkpoint dropped), writes held-out inversion metrics and
the upstream checkpoint steps, is not retrained when complete, and feeds load_inverter."""
import json
import os

import jax
import numpy as np
import pytest

from stylex_jax.stages import encoder


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, smoke_stages):
  """A workdir with copies of the session's smoke classifier and GAN (2 devices); returns (config, root)."""
  root = tmp_path_factory.mktemp('encoder_stage')
  config, _ = smoke_stages(str(root / 'work'), ('classifier', 'gan'))
  return config, root


def test_missing_generator_is_a_clear_error(tmp_path, workdir):
  config, _ = workdir
  with pytest.raises(FileNotFoundError, match='gan stage'):
    encoder.train_and_evaluate(config, str(tmp_path))


def test_stage_trains_resumes_and_reports(workdir):
  config, root = workdir
  work = str(root / 'work')
  part = encoder.train_and_evaluate(config, work, max_steps_this_run=2)
  assert part == dict(stage='encoder', step=2, complete=False)
  with open(os.path.join(work, 'encoder', 'metrics.jsonl'), 'a') as f:  # rows a crashed run logged after step 2
    f.write('{"step": 3, "loss": 99.0}\n{"step": 4, "loss": 99.0}\n')
  summary = encoder.train_and_evaluate(config, work)
  assert summary['step'] == config.encoder.num_steps
  assert summary['upstream'] == {'classifier': config.classifier.num_steps, 'gan': config.gan.num_steps}
  assert 'encoder_latents_ssim' not in summary  # only for an encoder that predicts noise maps
  for prefix in ('encoder_', 'refine_'):
    for k in ('ssim', 'psnr', 'agreement', 'prob_delta', 'w_distance'):
      assert np.isfinite(summary[prefix + k]), prefix + k
  assert summary['encoder_num_images'] == 4 and summary['refine_num_images'] == 4
  rows = [json.loads(l) for l in open(os.path.join(work, 'encoder', 'metrics.jsonl'))]
  assert [r['step'] for r in rows if 'loss' in r] == [2, 4] and 99.0 not in [r.get('loss') for r in rows]
  assert any('refine_ssim' in r for r in rows) and os.listdir(os.path.join(work, 'encoder', 'samples'))
  assert encoder.train_and_evaluate(config, work) == summary  # complete: not retrained

  # the resumed run equals an uninterrupted one
  other = str(root / 'other')
  os.makedirs(other)
  for stage in ('classifier', 'gan'):
    os.symlink(os.path.join(work, stage), os.path.join(other, stage))
  encoder.train_and_evaluate(config, other)
  _, p1 = encoder.load_encoder(work, config)
  model, p2 = encoder.load_encoder(other, config)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), p1, p2)

  inv = encoder.load_inverter(work, config)
  assert inv.start == 'encoder' and inv.encoder is not None
  images = np.zeros((2, 32, 32, 1), np.float32)
  offsets = model.apply({'params': p1}, images)
  out = inv(images)
  assert offsets.shape == out['ws'].shape == (2, inv.num_ws, inv.w_dim)


def test_an_encoder_with_noise_maps_trains_and_reports_its_latents_alone(workdir):
  config, root = workdir
  config = config.copy_and_resolve_references()
  config.encoder.model = dict(config.encoder.model, noise=True)
  config.encoder.num_steps = 2
  work = str(root / 'noise')
  os.makedirs(work)
  for stage in ('classifier', 'gan'):
    os.symlink(os.path.join(str(root / 'work'), stage), os.path.join(work, stage))
  summary = encoder.train_and_evaluate(config, work)
  for prefix in ('encoder_', 'encoder_latents_', 'refine_'):
    assert np.isfinite(summary[prefix + 'ssim']), prefix
  inv = encoder.load_inverter(work, config)  # its start from the maps: tests/test_invert.py, against numpy
  assert inv.encoder_noise
  inv.use_encoder_noise = False
  assert not inv.encoder_noise


def test_noise_split_gives_every_other_image_the_predicted_maps():
  """train.encoder.noise_split against a numpy reference: images 1, 3, ... get the predicted maps (normalised per
  map), images 0, 2, ... the constant maps."""
  from stylex_jax.train import encoder as encoder_train
  rng = np.random.default_rng(0)
  b = 5
  template = {
      'synthesis_network': {
          f'b{r}': {
              c: {
                  'noise': {
                      'noise': rng.normal(size=(1, r, r, 1)).astype(np.float32)
                  }
              } for c in (['conv1'] if r == 4 else ['conv0', 'conv1'])
          } for r in (4, 8)
      }
  }
  residuals = {r: rng.normal(size=(b, r, r, 2)).astype(np.float32) for r in (4, 8)}
  noise, with_noise = encoder_train.noise_split(residuals, template)
  np.testing.assert_array_equal(np.asarray(with_noise), [False, True, False, True, False])
  for block, convs in template['synthesis_network'].items():
    r = int(block[1:])
    for conv, leaf in convs.items():
      k = int(conv[-1])
      got = np.asarray(noise['synthesis_network'][block][conv]['noise']['noise'])
      for i in range(b):
        if i % 2:
          m = leaf['noise']['noise'][0] + residuals[r][i, ..., k:k + 1]
          m = (m - m.mean()) / np.sqrt(np.mean((m - m.mean())**2))
        else:
          m = leaf['noise']['noise'][0]
        np.testing.assert_allclose(got[i], m, rtol=1e-4, atol=1e-5)
