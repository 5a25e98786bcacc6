"""Workdirs on object storage: the pipeline's file I/O runs on a non-local etils.epath backend, and no module that
writes or reads under a workdir calls os/shutil/open on it directly.

The backend is `tests/memory_path.py`: `memory://...` paths in fsspec's in-memory file system (no symlinks, rename
is copy + delete, invisible to `os`). Each test runs in an empty working directory and checks that it stays empty:
an `os.makedirs('memory://w/...')` would create a local folder `memory:` there. Covered on it: the storage
primitives (and those of resumable work: truncate, append, sync, arrays), MetricWriter (metrics.jsonl, TensorBoard
events, sample grids, resume truncation), write_json and the stage summaries (open_export_stage), check_workdir,
the export writer (twice: the crash-safe swap) and
read_explanations, report.insert_scorecard, and the evaluate stage's scorecard (its classifier and real images are
stand-ins: orbax checkpoints and TFDS data are not part of this test), and a resumable export interrupted and
continued (`.export-partial/`: truncation, appends and the manifest on a store). Small hand-built arrays only, no
training.
"""
import ast
import json
import os
import uuid

import memory_path  # registers memory:// with etils.epath
import ml_collections
import numpy as np
import pytest
import test_export  # the export tests' hand-built batches and writer

from stylex_jax import storage, tfrecord, writers
from stylex_jax import stages
from stylex_jax.explain import export, report
from stylex_jax.stages import common
from stylex_jax.stages import evaluate as evaluate_stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
  """A fresh memory:// workdir; the (empty) local working directory must stay empty."""
  monkeypatch.chdir(tmp_path)
  root = f'memory://w{uuid.uuid4().hex[:8]}/kl'
  yield root
  memory_path.remove(root.rsplit('/', 1)[0])
  assert os.listdir(tmp_path) == [], f'local files created for a memory:// workdir: {os.listdir(tmp_path)}'


def test_primitives(workdir):
  assert not storage.is_local(workdir) and storage.is_local('/tmp/x') and storage.is_local('rel')
  assert storage.absolute(workdir + '/') == workdir
  assert storage.absolute('rel') == os.path.abspath('rel')
  stages.check_workdir(workdir)  # creates it and writes/deletes a probe object
  assert storage.isdir(workdir) and memory_path.listing(workdir) == []
  path = f'{workdir}/a/b.json'
  storage.write_atomic(path, b'1')
  storage.write_atomic(path, b'2')
  assert storage.read_text(path) == '2' and storage.isfile(path) and not storage.isfile(f'{workdir}/a')
  storage.replace(path, f'{workdir}/a/c.json')
  assert memory_path.listing(workdir) == ['a/c.json']
  storage.remove(f'{workdir}/a')
  storage.remove(f'{workdir}/a')  # missing: fine
  assert memory_path.listing(workdir) == []


def test_append_file_uploads_whole_object(workdir, monkeypatch):
  monkeypatch.setattr(storage.AppendFile, 'upload_interval_s', 3600.0)
  path = f'{workdir}/m.jsonl'
  f = storage.AppendFile(path, 'a')
  f.write('1\n')
  f.flush()  # the first flush uploads (the object exists from the start)
  f.write('2\n')
  f.flush()  # throttled: not yet
  assert storage.read_text(path) == '1\n'
  f.close()
  assert storage.read_text(path) == '1\n2\n'
  g = storage.AppendFile(path, 'a')  # reopened: appends to what is there (no truncation, unlike gcsfs 'a')
  g.write('3\n')
  g.close()
  assert storage.read_text(path) == '1\n2\n3\n'


@pytest.mark.parametrize('backend', ['memory', 'local'])
def test_resume_primitives(workdir, tmp_path_factory, backend):
  """What a resumable export needs (size, listdir, truncate, AppendFile 'wb'/'ab' with tell and sync, sync_file,
  write_atomic(sync=True), save_array/load_array), on the object-store-like backend and on a local disk."""
  root = workdir if backend == 'memory' else str(tmp_path_factory.mktemp('local'))
  storage.makedirs(f'{root}/d')
  path = f'{root}/d/rows'
  f = storage.AppendFile(path, 'wb')
  f.write(b'abc')
  f.sync()  # durable (uploaded on the store) before close
  assert f.tell() == 3 and storage.read_bytes(path) == b'abc'
  f.write(b'def')
  f.close()
  assert storage.size(path) == 6
  storage.truncate(path, 4)
  assert storage.read_bytes(path) == b'abcd'
  with pytest.raises(ValueError, match='cannot truncate'):
    storage.truncate(path, 5)
  g = storage.AppendFile(path, 'ab')
  assert g.tell() == 4
  g.write(b'X')
  g.close()
  assert storage.read_bytes(path) == b'abcdX'
  storage.AppendFile(path, 'wb').close()  # starts empty
  assert storage.read_bytes(path) == b''
  text = storage.AppendFile(f'{root}/d/t', 'w')
  with pytest.raises(ValueError, match='binary mode'):
    text.tell()
  text.close()
  with storage.open_file(f'{root}/d/s', 'wb') as h:
    h.write(b'x')
    storage.sync_file(h)  # fsync locally, a flush on the store
  storage.write_atomic(f'{root}/d/m.json', b'{}', sync=True)
  a = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
  storage.save_array(f'{root}/d/a.npy', a)
  b = storage.load_array(f'{root}/d/a.npy')
  assert b.dtype == np.float32 and b.tobytes() == a.tobytes()
  assert storage.listdir(f'{root}/d') == ['a.npy', 'm.json', 'rows', 's', 't']
  for missing in (storage.listdir, storage.size):
    with pytest.raises(FileNotFoundError):
      missing(f'{root}/missing')


def test_metric_writer(workdir):
  stage = f'{workdir}/gan'
  with writers.MetricWriter(stage, resume_step=0) as w:
    for step in (1, 2, 3):
      w.write_scalars(step, {'loss': 1.0 / step, 'nan': float('nan'), 'confusion': [[1, 2], [3, 4]]})
    paths = w.write_images(3, {'fakes': np.zeros((4, 8, 8, 1), np.float32)})
  assert paths == [f'{stage}/samples/fakes_00000003.png']
  rows = writers.read_metrics(f'{stage}/metrics.jsonl')
  assert [r['step'] for r in rows] == [1, 2, 3] and rows[0]['nan'] is None and rows[2]['confusion'][1] == [3, 4]
  files = memory_path.listing(stage)
  events = [f for f in files if f.startswith('tensorboard/events.out.tfevents.')]
  assert len(events) == 1 and 'samples/fakes_00000003.png' in files
  records = list(tfrecord.read_records(f'{stage}/{events[0]}'))  # CRCs verified
  assert len(records) == 1 + 3 + 1 and b'brain.Event:2' in records[0]  # file version, 3 scalar steps, 1 image step
  # resumed from a checkpoint at step 2: the row of step 3 goes, the file is rewritten on the store
  with writers.MetricWriter(stage, tensorboard=False, resume_step=2) as w:
    w.write_scalars(3, {'loss': 0.5})
  assert [(r['step'], r['loss']) for r in writers.read_metrics(f'{stage}/metrics.jsonl')][-2:] == [(2, 0.5), (3, 0.5)]


def _write_export(directory, ids, seed):
  writer = test_export.make_writer(directory, examples_per_shard=2, provenance={'gan': 4})
  batches = [test_export.make_batch(ids, seed=seed)]
  for b in batches:
    writer.add(b)
  return writer.close({'flip_rate': 0.5}), test_export.concat(batches)


def test_export_swap_and_reader(workdir):
  directory = f'{workdir}/explain'
  export.check_writable(directory)
  _write_export(directory, ['old1', 'old2'], seed=1)
  paths, expected = _write_export(directory, ['a/1', 'b', 'c'], seed=2)  # replaces the first export
  assert paths['directory'] == directory and paths['tfrecords'][0].startswith(directory + '/tfrecords/')
  files = memory_path.listing(directory)
  assert not [f for f in files if f.startswith('.export-')], files  # staging and old export gone
  assert {'schema.json', 'index.jsonl', 'report.html'} <= set(files)
  assert sum(f.startswith('tfrecords/') for f in files) == 2 and sum(f.startswith('gifs/') for f in files) == 3
  got = list(export.read_explanations(directory))
  assert [g['id'] for g in got] == ['a/1', 'b', 'c']
  np.testing.assert_array_equal(np.stack([g['image'] for g in got]), test_export.u8(expected['image']))
  np.testing.assert_allclose(np.stack([g['latent'] for g in got]), expected['latent'])
  assert [g['id'] for g in export.read_explanations(paths['tfrecords'][1])] == ['c']  # one shard
  schema = export.read_schema(directory)
  assert schema['_directory'] == directory and schema['num_examples'] == 3
  card = {'flip_rate': {'value': 0.25, 'low': 0.1, 'high': 0.4, 'goal': ['>=', 0.5], 'met': False, 'meaning': 'm'}}
  assert report.insert_scorecard(paths['report'], card)
  assert '<td>flip_rate</td>' in storage.read_text(paths['report'])


def test_resumable_export(workdir):
  test_export.check_resumable_export(workdir)  # the same checks as on a local disk in test_export.py


def test_summaries(workdir):
  config = ml_collections.ConfigDict({'seed': 3, 'data': {'name': 'phantoms'}})
  directory = f'{workdir}/explain'
  _write_export(directory, ['x'], seed=3)
  assert common.open_export_stage('explain', workdir, config, {'gan': 4}).completed is None  # no summary.json yet
  writers.write_json(f'{directory}/summary.json', {'complete': True, 'ssim': float('nan')}, is_chief=True)
  assert common.read_summary('explain', f'{directory}/summary.json') == {'complete': True, 'ssim': None}
  assert common.open_export_stage('explain', workdir, config, {'gan': 4}).completed == {'complete': True, 'ssim': None}
  assert common.open_export_stage('explain', workdir, config, {'gan': 6}).completed is None  # other checkpoints


class _FakeClassifier:
  """Stands in for the trained classifier (an orbax checkpoint): probabilities from the mean intensity."""

  def __init__(self, workdir, config):
    del workdir, config

  def probs(self, images):
    m = np.asarray(images, np.float64).reshape(len(images), -1).mean(-1)
    logits = np.stack([-m, 0 * m, m], -1)
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)

  def features(self, images):
    x = np.asarray(images, np.float64).reshape(len(images), -1)
    return np.stack([x.mean(-1), x.std(-1), x.min(-1), x.max(-1)], -1)


def test_evaluate_scorecard(workdir, monkeypatch):
  from configs import demo  # pylint: disable=g-import-not-at-top
  config = demo.get_config('smoke')
  _, _ = _write_export(f'{workdir}/explain', [f'i{k}' for k in range(6)], seed=4)
  rng = np.random.default_rng(0)
  monkeypatch.setattr(evaluate_stage, '_Classifier', _FakeClassifier)
  monkeypatch.setattr(
      evaluate_stage, '_real_images', lambda config, split, num: {
          'image': rng.uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32),
          'label': np.arange(8) % 3
      })
  result = evaluate_stage.train_and_evaluate(config, workdir)
  assert result['images'] == 6 and result['export'] == f'{workdir}/explain' and 'flip_rate' in result['scorecard']
  saved = json.loads(storage.read_text(f'{workdir}/evaluate/scorecard.json'))
  assert saved['scorecard'].keys() == result['scorecard'].keys()
  assert storage.read_text(f'{workdir}/evaluate/scorecard.md').startswith(f'# Scorecard of {workdir}/explain')
  assert '<td>flip_rate</td>' in storage.read_text(f'{workdir}/explain/report.html')
  monkeypatch.setattr(evaluate_stage, 'run', lambda *a, **k: pytest.fail('recomputed an up-to-date scorecard'))
  assert evaluate_stage.train_and_evaluate(config, workdir)['scorecard'] == saved['scorecard']  # read back


# ---------------------------------------------------------------------------------------------
# No direct os/shutil/open I/O on workdir paths (AST)
# ---------------------------------------------------------------------------------------------

SCANNED = ['stylex_jax/writers.py', 'stylex_jax/tfrecord.py'
          ] + [f'stylex_jax/explain/{m}.py' for m in ('export', 'records', 'report', 'media')] + [
              f'stylex_jax/stages/{f}' for f in sorted(os.listdir(os.path.join(ROOT, 'stylex_jax', 'stages')))
              if f.endswith('.py')
          ] + [f'launch/{f}' for f in sorted(os.listdir(os.path.join(ROOT, 'launch'))) if f.endswith('.py')]
# calls that reach the local disk only (or mangle a URI: abspath('gs://b') = '<cwd>/gs:/b'); use stylex_jax.storage
LOCAL_ONLY = {
    'open', 'os.makedirs', 'os.mkdir', 'os.rename', 'os.replace', 'os.remove', 'os.unlink', 'os.rmdir', 'os.listdir',
    'os.scandir', 'os.walk', 'os.symlink', 'os.readlink', 'os.path.exists', 'os.path.lexists', 'os.path.isdir',
    'os.path.isfile', 'os.path.islink', 'os.path.getsize', 'os.path.abspath', 'os.path.realpath', 'np.save', 'np.savez',
    'np.load'
}
LOCAL_ONLY_MODULES = {'shutil', 'glob', 'tempfile', 'pathlib'}
# (file, enclosing function, call): why it may stay local
ALLOWED = {
    ('stylex_jax/stages/shortcut.py', '_share', 'os.makedirs'): 'symlinks: local only, non-local workdirs refused',
    ('stylex_jax/stages/shortcut.py', '_share', 'os.path.islink'): 'same',
    ('stylex_jax/stages/shortcut.py', '_share', 'os.readlink'): 'same',
    ('stylex_jax/stages/shortcut.py', '_share', 'os.path.lexists'): 'same',
    ('stylex_jax/stages/shortcut.py', '_share', 'os.symlink'): 'same',
    ('stylex_jax/stages/explain.py', '_check_images_output', 'os.path.realpath'): 'only when storage.is_local(out)',
    ('stylex_jax/explain/report.py', 'write', 'shutil.copyfileobj'): 'copies between two storage.open_file objects',
    ('stylex_jax/stages/explain.py', 'run', 'np.savez'): 'into an io.BytesIO, uploaded by storage.write_atomic',
    ('launch/train.py', '<module>', 'os.path.abspath'): '__file__, for sys.path (not a workdir)',
    ('stylex_jax/stages/compile_cache.py', 'machine_id', 'open'): '/proc/cpuinfo, not a workdir',
    ('stylex_jax/stages/compile_cache.py', 'cache_dir', 'os.path.isdir'): 'after storage.is_local(workdir)',
    ('stylex_jax/stages/compile_cache.py', 'cache_dir', 'os.path.abspath'): 'after storage.is_local(setting)',
    ('stylex_jax/stages/compile_cache.py', 'untrusted_reason', 'os.path.exists'): 'local folders only (enable)',
    ('stylex_jax/stages/compile_cache.py', 'enable', 'os.makedirs'): 'local folders only: remote ones go to JAX as is',
    ('stylex_jax/stages/compile_cache.py', 'enable', 'os.path.exists'): 'same',
    ('stylex_jax/stages/compile_cache.py', 'enable', 'os.mkdir'): 'same (with mode 0o700, which storage cannot set)',
    ('launch/explain.py', '<module>', 'os.path.abspath'): 'same',
    ('launch/evaluate.py', '<module>', 'os.path.abspath'): 'same',
    ('launch/generate.py', '<module>', 'os.path.abspath'): 'same',
}


def _dotted(node) -> str:
  if isinstance(node, ast.Name):
    return node.id
  if isinstance(node, ast.Attribute):
    return f'{_dotted(node.value)}.{node.attr}'
  return ''


def local_io_calls(source: str, rel: str) -> list[tuple[str, str, str, int]]:
  """(file, enclosing function, call, line) of every local-only file call in `source`."""
  found = []

  def visit(node, func):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        visit(child, child.name)
        continue
      if isinstance(child, ast.Call):
        name = _dotted(child.func)
        if name in LOCAL_ONLY or name.split('.')[0] in LOCAL_ONLY_MODULES:
          found.append((rel, func, name, child.lineno))
      visit(child, func)

  visit(ast.parse(source), '<module>')
  return found


def test_no_local_only_io_on_workdir_paths():
  assert len(SCANNED) > 15
  calls = [c for rel in SCANNED for c in local_io_calls(open(os.path.join(ROOT, rel), encoding='utf-8').read(), rel)]
  bad = [f'{f}:{line} {func}(): {call}' for f, func, call, line in calls if (f, func, call) not in ALLOWED]
  assert not bad, ('file I/O under a workdir must go through stylex_jax.storage / etils.epath (gs:// workdirs); '
                   'allowlist a justified exception in ALLOWED:\n' + '\n'.join(bad))
  stale = set(ALLOWED) - {c[:3] for c in calls}
  assert not stale, f'allowlisted calls no longer there: {stale}'


def test_the_checker_sees_local_io():
  source = ('import os, shutil\n'
            'def f(workdir):\n'
            '  os.makedirs(workdir)\n'
            '  with open(os.path.join(workdir, "x")) as g:\n'
            '    pass\n'
            '  shutil.rmtree(workdir)\n'
            'os.path.exists("y")\n')
  assert [c[1:] for c in local_io_calls(source, 'fake.py')] == [('f', 'os.makedirs', 3), ('f', 'open', 4),
                                                                ('f', 'shutil.rmtree', 6),
                                                                ('<module>', 'os.path.exists', 7)]
