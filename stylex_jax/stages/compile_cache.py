"""The run's persistent XLA compilation cache: programs compiled once are reused across stages and reruns.

Each stage builds its jitted functions anew (closures over its own models), so within one launch the explain
stage would compile again the projector the encoder stage compiled for its held-out evaluation, and every rerun
of a command compiles everything again. JAX's persistent compilation cache turns those compilations into disk
reads: an entry is found only for the same program (its closed-over weights included), compile options, jax and
XLA version and backend, so a hit runs exactly what a fresh compile would. On the demo's models the explain stage
took 72 s instead of 86 s after the encoder stage (its projector programs came from the cache) and 61 s when rerun
(benchmarks/README.md, "The demo with the faster SSIM and the compilation cache").

Where (`config.compile_cache`):
  'workdir'  (default) `<workdir>/xla_cache/<machine>/` when the workdir is an existing local folder; no cache for
             a remote workdir (gs://...: every read would be a network round trip; give a local path instead)
  ''         no cache
  a path     `<path>/<machine>/` (a remote one, gs://..., is handed to JAX as it is)
`<machine>` names the host's CPU (architecture and a hash of its model and feature flags): XLA:CPU entries are
native code for the CPU that compiled them, and XLA loads an entry built for another CPU with only a logged
warning, so a workdir on a filesystem shared by different machines keeps one folder per kind of machine.

A cache folder JAX already has (the JAX_COMPILATION_CACHE_DIR environment variable, or set in code) wins and is
left as it is. Trust: an entry is code this process runs, so a folder is used only when the current user owns it
and no one else may write to it (POSIX); otherwise one line says why and the run goes on without a cache.
Call `enable` before the first compilation of the process (launch/train.py does, through `stages.run`).
"""
from __future__ import annotations

import hashlib
import os
import platform
import stat

import jax

from stylex_jax import storage

WORKDIR = 'workdir'
FOLDER = 'xla_cache'
MAX_BYTES = 2 * 1024**3  # least recently used entries are evicted beyond this


def machine_id() -> str:
  """'x86_64-<12 hex>': the CPU architecture and a hash of the CPU model and feature flags (/proc/cpuinfo on
  Linux, else platform.processor())."""
  described = platform.processor()
  try:
    with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
      lines = [line.strip() for line in f if line.startswith(('model name', 'flags', 'Features', 'CPU part'))]
    described = '\n'.join(sorted(set(lines))) or described
  except OSError:
    pass
  return f'{platform.machine() or "cpu"}-{hashlib.sha256(described.encode()).hexdigest()[:12]}'


def cache_dir(setting: str, workdir: str) -> tuple[str, str] | None:
  """(folder, root) for `config.compile_cache = setting` with this workdir (see the module docstring), or None;
  root is the workdir or the given path, the part of the folder the user chose."""
  setting = (setting or '').strip()
  if not setting:
    return None
  if setting == WORKDIR:
    if not storage.is_local(workdir):
      return None
    root = storage.absolute(workdir)
    if not os.path.isdir(root):
      return None
    return os.path.join(root, FOLDER, machine_id()), root
  if not storage.is_local(setting):  # e.g. gs://bucket/xla: JAX reads it through etils; chosen, so trusted
    return f'{setting.rstrip("/")}/{machine_id()}', setting
  root = os.path.abspath(os.path.expanduser(setting))
  return os.path.join(root, machine_id()), root


def _levels(folder: str, root: str) -> list[str]:
  """folder, its parents, ..., root."""
  levels = [folder]
  while levels[-1] != root and os.path.dirname(levels[-1]) != levels[-1]:
    levels.append(os.path.dirname(levels[-1]))
  return levels


def untrusted_reason(folder: str, root: str) -> str | None:
  """Why `folder` must not hold compiled code, else None: a level from root down to it (those that exist) that
  belongs to another user or that others may write to (world-writable folders with the sticky bit, like /tmp, are
  fine above the folder)."""
  if not hasattr(os, 'getuid'):
    return None
  for path in _levels(folder, root):
    if not os.path.exists(path):
      continue
    info = os.stat(path)
    if info.st_uid != os.getuid():
      return f'{path} belongs to another user (uid {info.st_uid})'
    shared = info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if shared and (path == folder or not info.st_mode & stat.S_ISVTX):
      return f'{path} is writable by other users (mode {stat.filemode(info.st_mode)})'
  return None


def enable(setting: str, workdir: str) -> str | None:
  """Points JAX's persistent compilation cache at `cache_dir(setting, workdir)` unless JAX already has one;
  returns the folder in use (JAX's own when it had one), or None. Prints one line when a folder is refused."""
  current = jax.config.jax_compilation_cache_dir
  if current:
    return current
  chosen = cache_dir(setting, workdir)
  if chosen is None:
    return None
  folder, root = chosen
  if not storage.is_local(folder):
    jax.config.update('jax_compilation_cache_dir', folder)
    return folder
  reason = untrusted_reason(folder, root)
  if reason:
    print(f'[compile cache] not used: {reason}; compiled programs are code this run would execute. Set '
          '--config.compile_cache to a folder only you can write, or to \'\' to turn the cache off.')
    return None
  try:
    os.makedirs(os.path.dirname(root), exist_ok=True)
    for path in reversed(_levels(folder, root)):  # every level this creates is the user's alone
      if not os.path.exists(path):
        os.mkdir(path, 0o700)
  except OSError as e:
    print(f'[compile cache] not used: cannot create {folder} ({e.strerror or e}); the run goes on without it')
    return None
  jax.config.update('jax_compilation_cache_max_size', MAX_BYTES)
  jax.config.update('jax_compilation_cache_dir', folder)
  return folder
