"""All four stages in one call on configs/demo.py:smoke (classifier, gan and encoder trained once per session, see
conftest.smoke_stages), then the explain stage's outputs (TFRecords parsed with plain TensorFlow, report, strips,
directions; the demo's black-box mode), the user-files path with a bad file among good ones in gradient mode, an interrupted --images
export resumed to the same TFRecords, bad input failing before any computation, and the evaluate stage's scorecard
of that export (and its bad-input lines)."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from configs import demo
from stylex_jax import stages
from stylex_jax.explain import export
from stylex_jax.stages import evaluate as evaluate_stage
from stylex_jax.stages import explain as stage


@pytest.fixture(scope='module')
def trained(tmp_path_factory, smoke_stages):
  """The session's smoke classifier, gan and encoder copied into a fresh workdir, then all four stages in one call
  (the first three are complete, so only `explain` computes)."""
  root = tmp_path_factory.mktemp('explain_stage')
  config, work = smoke_stages(str(root / 'work'))
  results = stages.run(config, work)
  return config, root, results


def test_one_call_trains_everything_and_writes_the_report(trained):
  config, root, results = trained
  assert list(results) == ['classifier', 'gan', 'encoder', 'explain']
  summary = results['explain']
  out = root / 'work' / 'explain'
  n = config.explain.num_images
  assert summary['images'] == n and summary['report'] == str(out / 'report.html')
  for k in ('ssim', 'psnr', 'agree', 'flip_rate', 'monotonicity', 'prob_delta'):
    assert np.isfinite(summary[k]), k
  assert 0 <= summary['flip_rate'] <= 1 and -1 <= summary['monotonicity'] <= 1

  import tensorflow as tf  # plain tf.data parsing of the shards, with the spec written in schema.json
  schema = json.load(open(out / 'schema.json'))
  spec = {}
  for key, f in schema['tf_feature_spec'].items():
    dtype = {'string': tf.string, 'float32': tf.float32, 'int64': tf.int64}[f['dtype']]
    spec[key] = tf.io.FixedLenFeature(f['shape'], dtype)
  files = sorted(str(out / 'tfrecords' / f) for f in os.listdir(out / 'tfrecords'))
  records = [tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files)]
  assert len(records) == n
  s = config.explain.num_frames
  num_ws, w_dim = schema['num_ws'], schema['w_dim']
  for r in records:
    assert tf.io.decode_png(r['image']).shape == (32, 32, 1)
    assert r['series'].shape == (s,) and r['alphas'].shape == (s,)
    assert r['probs'].shape == (s * config.data.num_classes,) and r['latent'].shape == (num_ws * w_dim,)
    probs = r['probs'].numpy().reshape(s, -1)
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    assert 0.0 in r['alphas'].numpy()  # the series starts at the image's own latent

  html = open(out / 'report.html').read()
  ids = [r['id'].numpy().decode() for r in records]
  assert all(i in html for i in ids)
  assert len(os.listdir(out / 'strips')) == len(os.listdir(out / 'gifs')) == n
  directions = np.load(out / 'directions.npz')
  d = directions['directions']
  assert d.shape == (1, num_ws, w_dim)
  np.testing.assert_allclose(np.linalg.norm(d.reshape(1, -1), axis=1), 1.0, rtol=1e-5)

  made_from = {
      'classifier': config.classifier.num_steps,
      'gan': config.gan.num_steps,
      'encoder': config.encoder.num_steps
  }
  assert schema['provenance'] == summary['provenance'] == made_from
  again = stage.train_and_evaluate(config, str(root / 'work'))  # complete with this config: not recomputed
  assert again == summary


def test_sigterm_in_explain_stops_between_batches_and_keeps_the_previous_export(trained, preempt_at):
  config, root, _ = trained
  out = root / 'work' / 'explain'
  before = _tree_bytes(out)
  preempt_at('explain:0')  # a real SIGTERM once the direction is fitted, before the first batch
  with pytest.raises(stages.Preempted, match='explain stage at step 0 .the previous export .* is unchanged'):
    stage.run(config, str(root / 'work'))
  assert _tree_bytes(out) == before and not [p for p in os.listdir(out) if p.startswith('.export-')]


def test_user_files_bad_one_rejected_rest_explained_gradient_mode(trained, tmp_path, capsys):
  config, root, _ = trained
  files = tmp_path / 'scans'
  files.mkdir()
  rng = np.random.default_rng(0)
  for name in ('a.png', 'b.png'):  # another size: converted with a note
    Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(files / name)
  (files / 'broken.png').write_bytes(b'not an image')
  assert config.explain.mode == 'blackbox'  # the demo's default; the other mode here
  config.explain.mode = 'gradient'
  summary = stage.run(config, str(root / 'work'), image_patterns=str(files / '*.png'), output_dir=str(tmp_path / 'out'))
  printed = capsys.readouterr().out
  assert summary['images'] == 2
  assert 'rejected' in printed and 'broken.png' in printed and '48x40' in printed
  assert summary['direction']['mode'] == 'gradient' and np.isfinite(summary['direction']['gain'])
  rows = list(export.read_explanations(str(tmp_path / 'out')))
  assert sorted(os.path.basename(r['id']) for r in rows) == ['a.png', 'b.png']
  assert all(r['label'] == -1 for r in rows)


def test_interrupted_images_export_resumes_to_the_same_tfrecords(smoke_stages, tmp_path, preempt_at, monkeypatch,
                                                                 capsys):
  """--images into the same output_dir, stopped by a real SIGTERM after 2 of 3 batches, then rerun: the finished
  shards are kept, only the last batch is explained (with the saved direction), and the export equals an
  uninterrupted one (TFRecords, index.jsonl, strips, GIFs byte for byte). Uses the smoke models directly (no
  explain run of the `trained` fixture)."""
  from stylex_jax import preemption
  config, work = smoke_stages(str(tmp_path / 'work'))
  config.explain.batch_size = config.explain.examples_per_shard = 2  # 3 batches, 3 shards of 2
  config.explain.report_max_images = 3
  scans = random_scans(tmp_path / 'scans', 6, seed=1)
  whole = stage.run(config, work, image_patterns=str(scans), output_dir=str(tmp_path / 'whole'))
  assert whole['images'] == 6 and len(whole['tfrecords']) == 3
  printed = capsys.readouterr().out
  assert '6/6 images explained' in printed and 'ETA' in printed

  out = tmp_path / 'resumed'
  preempt_at('explain:4')  # a real SIGTERM after the second batch (4 images, 2 finished shards)
  with pytest.raises(stages.Preempted, match='4 images explained so far are kept in .*continues from there'):
    stage.run(config, work, image_patterns=str(scans), output_dir=str(out))
  assert not (out / 'schema.json').exists() and (out / export.PARTIAL_DIR / export.MANIFEST).exists()
  monkeypatch.delenv('STYLEX_TEST_PREEMPT_AT')
  preemption.clear()
  explained = []
  real = stage.Explainer.explain_batch
  monkeypatch.setattr(stage.Explainer, 'explain_batch',
                      lambda self, images, *a: explained.append(len(images)) or real(self, images, *a))
  monkeypatch.setattr(stage.Explainer, 'fit_global_directions', lambda self: pytest.fail('direction refitted'))
  resumed = stage.run(config, work, image_patterns=str(scans), output_dir=str(out))
  assert explained == [2] and 'resuming: 4 images already explained' in capsys.readouterr().out
  assert resumed['images'] == 6 and not (out / export.PARTIAL_DIR).exists()
  for key in ('ssim', 'flip_rate', 'monotonicity'):
    assert resumed[key] == whole[key] or (np.isnan(resumed[key]) and np.isnan(whole[key])), key
  got, want = _tree_bytes(out), _tree_bytes(tmp_path / 'whole')
  assert got.keys() == want.keys()
  same = [k for k in want if k.startswith(('tfrecords/', 'strips/', 'gifs/')) or k == 'index.jsonl']
  assert len([k for k in same if k.startswith('tfrecords/')]) == 3
  assert {k: got[k] for k in same} == {k: want[k] for k in same}
  np.testing.assert_array_equal(
      np.load(out / 'directions.npz')['directions'],
      np.load(tmp_path / 'whole' / 'directions.npz')['directions'])  # (its fit time differs)


def test_bad_input_fails_before_any_computation(trained, tmp_path):
  config, root, _ = trained
  blocker = tmp_path / 'file'
  blocker.write_text('x')
  with pytest.raises(ValueError, match='cannot write explanations'):
    stage.run(config, str(root / 'work'), output_dir=str(blocker / 'out'))
  bad = demo.get_config('smoke')
  bad.explain.mode = 'oracle'
  with pytest.raises(ValueError, match='config.explain: mode'):
    stage.run(bad, str(tmp_path / 'nothing'))
  with pytest.raises(FileNotFoundError, match='gan'):
    stage.run(config, str(tmp_path / 'empty'))


def random_scans(folder, count: int, seed: int):
  """`count` 32x32 8-bit noise PNGs '0.png', '1.png', ... in a new `folder` (users' files for --images)."""
  folder.mkdir()
  rng = np.random.default_rng(seed)
  for i in range(count):
    Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(folder / f'{i}.png')
  return folder


def _tree_bytes(directory) -> dict:
  return {
      os.path.relpath(os.path.join(d, f), directory): open(os.path.join(d, f), 'rb').read()
      for d, _, files in os.walk(directory) for f in files
  }


def test_evaluate_stage_scores_the_export_and_puts_the_scorecard_in_the_report(trained, tmp_path, monkeypatch):
  config, root, _ = trained
  work = str(root / 'work')
  out = root / 'work' / 'explain'
  before = {k: v for k, v in _tree_bytes(out).items() if k != 'report.html'}
  result = evaluate_stage.run(config, work)
  assert _tree_bytes(out).keys() - {'report.html'} == before.keys()
  assert all(_tree_bytes(out)[k] == v for k, v in before.items())  # records, schema, media untouched
  card = json.load(open(root / 'work' / 'evaluate' / 'scorecard.json'))['scorecard']
  nan_free = lambda d: {
      k: {
          f: (None if isinstance(v, float) and np.isnan(v) else v) for f, v in e.items()
      } for k, e in d.items()
  }  # scorecard.json writes NaN as null
  assert card == json.loads(json.dumps(nan_free(result['scorecard'])))
  for name in ('flip_rate', 'monotonicity', 'proximity', 'proximity_ssim', 'sparsity', 'cout', 'frame_kid',
               'reconstruction_kid', 'kid_ratio', 'frame_knn_distance', 'reconstruction_knn_distance',
               'knn_distance_ratio', 'causal_right_direction', 'nuisance_change_max_std', 'causal_share'):
    assert name in card, name
    assert set(card[name]) >= {'value', 'low', 'high', 'goal', 'met', 'meaning'}, name
  # 4 reconstructions and 16 real images: their k-NN distance is defined (their KID need not be); the frames' and
  # the ratio exist where a series flips (the 6-step smoke models' series need not)
  assert card['reconstruction_knn_distance']['value'] > 0
  assert (card['knn_distance_ratio']['value'] is not None) == (card['flip_rate']['value'] > 0)
  assert card['flip_rate']['goal'] == ['>=', 0.95] and card['flip_rate']['met'] == (card['flip_rate']['value'] >= 0.95)
  assert card['flip_rate']['low'] <= card['flip_rate']['value'] <= card['flip_rate']['high']
  summary = json.load(open(out / 'summary.json'))
  np.testing.assert_allclose(card['flip_rate']['value'], summary['flip_rate'])  # same series, same verdict
  md = open(root / 'work' / 'evaluate' / 'scorecard.md').read()
  assert '| flip_rate |' in md and 'kid_ratio' in md
  html = open(out / 'report.html').read()
  top = html[:html.index('class="row"')]  # the scorecard opens the page, above the rows
  assert 'class="scorecard"' in top and 'causal_right_direction' in top and 'kid_ratio' in top
  assert html.count('class="scorecard"') == 1

  # the stage keeps this scorecard while it scores this very export, and recomputes once the export changed
  calls = []
  monkeypatch.setattr(evaluate_stage, 'run', lambda *a, **k: calls.append(a) or {'recomputed': True})
  assert evaluate_stage.train_and_evaluate(config, work)['scorecard'] == card and not calls
  schema = json.load(open(out / 'schema.json'))
  schema['provenance']['gan'] += 2  # as if re-exported with a GAN trained further
  json.dump(schema, open(out / 'schema.json', 'w'))
  try:
    assert evaluate_stage.train_and_evaluate(config, work) == {'recomputed': True} and len(calls) == 1
  finally:
    (out / 'schema.json').write_bytes(before['schema.json'])


def test_evaluate_bad_export_fails_with_one_line_naming_the_file(trained, tmp_path):
  config, root, _ = trained
  with pytest.raises(FileNotFoundError, match='no explanation export'):
    evaluate_stage.run(config, str(tmp_path / 'nothing'))
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match='has no schema.json'):
    evaluate_stage.run(config, str(root / 'work'), explanations=str(empty))
  broken = tmp_path / 'broken'
  shutil.copytree(root / 'work' / 'explain', broken)
  shard = sorted((broken / 'tfrecords').iterdir())[0]
  shard.write_bytes(shard.read_bytes()[:-7])  # truncated
  report_before = (broken / 'report.html').read_bytes()
  with pytest.raises(ValueError, match=str(shard.name)):
    evaluate_stage.run(config, str(root / 'work'), explanations=str(broken))  # the smoke run's classifier
  assert (broken / 'report.html').read_bytes() == report_before  # nothing in the export modified


def test_a_short_last_batch_runs_the_compiled_shapes_and_matches_a_full_one(smoke_stages, tmp_path):
  """The last batch of a run (fewer images than batch_size) is padded: no new trace of the projector, and each
  image's explanation equals the one it gets in a full batch (here: the same image twice)."""
  config, work = smoke_stages(str(tmp_path / 'work'))
  config.explain.batch_size = 2
  explainer = stage.Explainer(config, work)
  image = np.random.default_rng(3).uniform(-1, 1, (1, 32, 32, 1)).astype(np.float32)
  full = explainer.explain_batch(np.concatenate([image, image]), ['x', 'x'], np.array([1, 1]))
  traces = explainer.inverter.trace_count
  short = explainer.explain_batch(image, ['x'], np.array([1]))
  assert explainer.inverter.trace_count == traces
  assert short.keys() == full.keys() and short['metrics'].keys() == full['metrics'].keys()
  for key, value in short.items():
    if key == 'metrics':
      for name, v in value.items():
        np.testing.assert_array_equal(v, full['metrics'][name][:1], err_msg=name)
    else:
      assert len(value) == 1, key
      np.testing.assert_array_equal(value, full[key][:1], err_msg=key)
