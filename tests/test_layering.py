"""The dependency rule of the package map, checked on the source (ast), function-local imports included.

launch -> stages -> {train, explain, evaluate} -> {models, data, tfrecord, sharding, checkpointing, writers} ->
storage (workdir file I/O through etils.epath).
Within the middle tier the order is train -> explain -> evaluate (the encoder trains with explain's
reconstruction losses; inversion measures with evaluate's SSIM); nothing imports a layer above its own, and no
two modules import each other, directly or through others.
"""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# room -> layer (a room may import its own room and rooms of a larger layer number only)
LAYERS = {
    'launch': 0,
    'stages': 1,
    'train': 2,
    'explain': 3,
    'evaluate': 4,
    'models': 5,
    'data': 5,
    'checkpointing': 5,
    'sharding': 5,
    'writers': 5,
    'tfrecord': 6,
    'storage': 7,
    'failed_read_noise': 7,
    'preemption': 7,
}


def _room(module: str) -> str | None:
  """'stylex_jax.explain.invert' -> 'explain'; 'launch.train' -> 'launch'; others (stdlib, configs) -> None."""
  parts = module.split('.')
  if parts[0] == 'launch':
    return 'launch'
  if parts[0] != 'stylex_jax' or len(parts) < 2:
    return None
  return parts[1] if parts[1] in LAYERS else None


def _modules() -> dict[str, str]:
  """{dotted module name: path} of the package and the launchers."""
  out = {}
  for top in ('stylex_jax', 'launch'):
    for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
      for f in files:
        if f.endswith('.py'):
          path = os.path.join(dirpath, f)
          rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
          out[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = path
  return out


def _imports(path: str, modules: dict[str, str]) -> set[str]:
  """The project modules `path` imports anywhere in its body (`from a import b` counts a.b when it is a module)."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [f'{node.module}.{a.name}' if f'{node.module}.{a.name}' in modules else node.module for a in node.names]
    else:
      continue
    found.update(n for n in names if n in modules)
  return found


@pytest.fixture(scope='module')
def graph():
  modules = _modules()
  return {m: _imports(p, modules) for m, p in modules.items()}


def test_every_room_has_a_layer(graph):
  rooms = {m.split('.')[1] for m in graph if m.startswith('stylex_jax.') and m.count('.') >= 1}
  assert rooms <= set(LAYERS), f'rooms without a layer in the map: {rooms - set(LAYERS)}'


def test_no_upward_import(graph):
  upward = []
  for module, imported in graph.items():
    here = _room(module)
    for target in imported:
      there = _room(target)
      if here and there and there != here and LAYERS[there] <= LAYERS[here]:
        upward.append(f'{module} -> {target}')
  assert not upward, 'imports against the dependency rule:\n' + '\n'.join(sorted(upward))


def test_no_import_cycle(graph):
  """Depth-first search over module edges (a package's __init__ importing its own modules is no cycle)."""
  state, cycles = {}, []

  def visit(node, path):
    state[node] = 'open'
    for nxt in sorted(graph.get(node, ())):
      if node.startswith(nxt + '.'):  # a module importing its parent package: only the __init__ runs first
        continue
      if state.get(nxt) == 'open':
        cycles.append(' -> '.join(path[path.index(nxt):] + [nxt]))
      elif nxt not in state:
        visit(nxt, path + [nxt])
    state[node] = 'done'

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert not cycles, 'import cycles:\n' + '\n'.join(cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
  """The rule is not vacuous: a function-local upward import in a middle-tier module is caught."""
  path = tmp_path / 'fake.py'
  path.write_text('def f():\n  from stylex_jax.train import gan\n')
  modules = {'stylex_jax.train.gan': '', 'stylex_jax.explain.fake': str(path)}
  imported = _imports(str(path), modules)
  assert imported == {'stylex_jax.train.gan'}
  assert LAYERS[_room('stylex_jax.train.gan')] < LAYERS[_room('stylex_jax.explain.fake')]
