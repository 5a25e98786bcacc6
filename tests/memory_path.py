"""A test-only etils.epath backend: `memory://<root>/...` paths live in fsspec's in-memory file system.

Importing this module registers the `memory://` scheme with `epath.register_path_cls`, so `epath.Path('memory://w')`
(and therefore every `stylex_jax.storage` call) reads and writes fsspec's `MemoryFileSystem`, an object-store-like
backend: no symlinks, rename is copy + delete, nothing of it is visible to `os`. A stray `os.makedirs` / `open` on a
`memory://w` path would instead create a local folder named `memory:` in the working directory, which the tests
check for.
"""
from __future__ import annotations

import os
import sys

import fsspec
from etils import epath
from etils.epath import abstract_path
from etils.epath import backend as backend_lib
from etils.epath import gpath

PREFIX = 'memory://'
_ROOT = ('/', 'memory')


def filesystem() -> fsspec.AbstractFileSystem:
  return fsspec.filesystem('memory')


class _MemoryBackend(backend_lib._FileSystemSpecBackend):  # pylint: disable=protected-access
  """etils' fsspec backend, pointed at the in-memory file system for every path."""

  def fs(self, path) -> fsspec.AbstractFileSystem:
    return filesystem()

  def glob(self, path) -> list[str]:
    return [PREFIX + p.lstrip('/') for p in filesystem().glob(os.fspath(path))]


_BACKEND = _MemoryBackend()


def _parts(*parts) -> tuple[str]:
  """'memory://w/x' -> '/memory/w/x' (how etils roots gs:// paths), so pathlib keeps the '//' out of the parts."""
  full = '/'.join(os.fspath(p) for p in parts)
  if full.startswith(PREFIX):
    full = '/memory/' + full[len(PREFIX):]
  return (full,)


@epath.register_path_cls(PREFIX)
class MemoryPath(gpath.PosixGPath):
  """epath.Path of `memory://...`."""

  if sys.version_info < (3, 12):

    def __new__(cls, *parts):
      return abstract_path.Path.__new__(cls, *_parts(*parts))

  else:

    def __init__(self, *parts):
      abstract_path.Path.__init__(self, *_parts(*parts))

  @property
  def _uri_scheme(self):
    return 'memory' if self.parts[:2] == _ROOT else None

  @property
  def _backend(self):
    return _BACKEND


def listing(root: str) -> list[str]:
  """Every file under memory://<root>, relative to it, sorted."""
  base = '/' + root[len(PREFIX):].strip('/')
  return sorted(p[len(base) + 1:] for p in filesystem().find(base))


def remove(root: str) -> None:
  """Deletes memory://<root> and everything under it."""
  base = '/' + root[len(PREFIX):].strip('/')
  if filesystem().exists(base):
    filesystem().rm(base, recursive=True)
