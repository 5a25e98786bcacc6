"""Security checks on the source: no unpickling or eval/exec of anything (user data, checkpoints, configs) in the
package, launchers or configs, and launch/tpu_pod.sh quotes every argument it passes to the pod's remote shell
(run with a fake `gcloud` that executes the remote command the way the hosts' shell would)."""
import ast
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCANNED = ('stylex_jax', 'launch', 'configs')
UNSAFE_MODULES = {'pickle', 'cPickle', '_pickle', 'dill', 'cloudpickle', 'joblib', 'marshal', 'shelve'}
UNSAFE_CALLS = {'eval', 'exec', '__import__'}


def _files(ext):
  for top in SCANNED:
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
      for f in sorted(files):
        if f.endswith(ext):
          yield os.path.join(dirpath, f)


def _unsafe(path):
  """'path:line: what' for each unsafe construct in one Python file (code only: docstrings/comments may say
  'pickle')."""
  found = []
  rel = os.path.relpath(path, ROOT)
  for node in ast.walk(ast.parse(open(path, encoding='utf-8').read(), path)):
    where = f'{rel}:{getattr(node, "lineno", 0)}'
    if isinstance(node, ast.Import):
      found += [f'{where}: import {a.name}' for a in node.names if a.name.split('.')[0] in UNSAFE_MODULES]
    elif isinstance(node, ast.ImportFrom) and (node.module or '').split('.')[0] in UNSAFE_MODULES:
      found.append(f'{where}: from {node.module} import ...')
    elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
      name = f'{node.value.id}.{node.attr}'
      if node.value.id in UNSAFE_MODULES or name in ('os.system', 'os.popen', 'yaml.load', 'yaml.unsafe_load',
                                                     'pd.read_pickle', 'torch.load'):
        found.append(f'{where}: {name}')
    elif isinstance(node, ast.Call):
      if isinstance(node.func, ast.Name) and node.func.id in UNSAFE_CALLS:
        found.append(f'{where}: {node.func.id}(...)')
      for kw in node.keywords:
        if kw.arg in ('allow_pickle', 'shell') and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
          found.append(f'{where}: {kw.arg}={ast.unparse(kw.value)}')
  return found


def test_no_pickle_eval_or_exec_in_the_package():
  files = list(_files('.py'))
  assert len(files) > 30  # the walk found the package
  found = [line for path in files for line in _unsafe(path)]
  assert not found, 'unsafe constructs (user data must never be unpickled or evaluated):\n' + '\n'.join(found)
  shell = [
      f'{os.path.relpath(p, ROOT)}: {line.strip()}' for p in _files('.sh') for line in open(p)
      if re.match(r'\s*(eval|source\s+\$|\.\s+\$)', line)
  ]
  assert not shell, shell


def test_the_scan_catches_what_it_looks_for(tmp_path):
  bad = tmp_path / 'bad.py'
  bad.write_text('import pickle\nimport numpy as np\nx = np.load(f, allow_pickle=True)\ny = eval(s)\n'
                 'exec(code)\nimport subprocess\nsubprocess.run(c, shell=True)\n"""pickle in a docstring is fine"""\n')
  assert len(_unsafe(str(bad))) == 5


@pytest.fixture()
def fake_bin(tmp_path):
  """A bin/ with `gcloud` (records its args, runs --command through bash like the pod's login shell) and `python`
  (records its args): both NUL-separated under tmp_path/out/."""
  bin_dir, out = tmp_path / 'bin', tmp_path / 'out'
  bin_dir.mkdir()
  out.mkdir()
  (bin_dir / 'gcloud').write_text('#!/usr/bin/env bash\n'
                                  f'printf "%s\\0" "$@" > {out}/gcloud\n'
                                  'while [ $# -gt 0 ]; do [ "$1" = --command ] && cmd=$2; shift; done\n'
                                  'exec bash -c "$cmd"\n')
  (bin_dir / 'python').write_text(f'#!/usr/bin/env bash\nprintf "%s\\0" "$@" > {out}/python\n')
  for f in ('gcloud', 'python'):
    os.chmod(bin_dir / f, 0o755)
  return bin_dir, out


def test_tpu_pod_quotes_every_argument_for_the_remote_shell(tmp_path, fake_bin):
  bin_dir, out = fake_bin
  repo = tmp_path / "my repo; touch 'PWNED_REPO'"
  repo.mkdir()
  args = [
      'my-tpu', 'us-central2-b', 'configs/kl xray.py', 'gs://b/work dir;touch PWNED',
      '--config.data.manual_dir=/mnt/a b; touch PWNED2', '$(touch PWNED3)', '`touch PWNED4`', "it's \"quoted\"",
      '--config.seed=1'
  ]
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', REPO=str(repo))
  result = subprocess.run(['bash', os.path.join(ROOT, 'launch', 'tpu_pod.sh'), *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  gcloud = (out / 'gcloud').read_text().split('\0')[:-1]
  assert gcloud[:7] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'my-tpu', '--zone', 'us-central2-b']
  python = (out / 'python').read_text().split('\0')[:-1]
  assert python == ['launch/train.py', '--config', args[2], '--workdir', args[3], *args[4:]]  # one word each
  pwned = [p for p in os.listdir(tmp_path) + os.listdir(repo) if p.startswith('PWNED')]
  assert not pwned, f'the remote shell ran an injected command: {pwned}'
