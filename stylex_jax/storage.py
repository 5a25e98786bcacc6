"""Workdir files on any file system `etils.epath` knows: local disks and object stores (gs://, s3://, ...).

Every file a stage writes or reads under a workdir goes through `epath.Path` (open, mkdir, exists, glob,
iterdir, rename, rmtree), directly or through the few compound operations here, so `--workdir gs://bucket/kl`
writes objects in the bucket instead of a local folder named `gs:`. Paths stay plain strings between modules
(`os.path.join` composes a URI correctly); only the I/O goes through epath. A local path behaves exactly as
with `os`/`shutil` (epath's local backend is `open`, `os.replace`, `shutil.rmtree`).

Atomicity (what crash safety means where):

* local disks: `write_atomic` writes a temporary file and renames it over the target (`os.replace`, atomic on
  POSIX), `replace` is one `os.replace`, so a crash leaves the old or the new file, never half of one.
* object stores (gs://, s3://): there is no rename. `replace`/`rename` is a copy of every object followed by a
  delete of the source (etils' TensorFlow gfile or fsspec backend), not atomic: a crash in between can leave both
  copies, or part of a directory moved. Each single object, though, appears only once its upload is complete,
  so `write_atomic` writes the target object directly (readers see the old or the new object, never a partial
  one) and code that must look complete only when it is (the explanation export) publishes a marker object
  (schema.json) last. See `explain.export` for the export swap.

Durability (for resumable work, e.g. the explain stage's `.export-partial/`): `sync_file` / `AppendFile.sync` /
`write_atomic(sync=True)` fsync on a local disk; on an object store there is no fsync (an object is durable once
its upload completes), so they only upload / flush there. `truncate` cuts a file in place locally and rewrites the
object with its first bytes on a store.

What stays local on purpose (not under a workdir): the TFDS `data_dir`, the user's own image files and a
config's manual data paths (read by `data/`), and Python temporary files.
"""
from __future__ import annotations

import io
import os
import shutil
import time
import uuid
from typing import IO, Any

import numpy as np
from etils import epath


def is_local(path) -> bool:
  """True for a local path, False for a URI (`gs://bucket/x`, `s3://...`, any `scheme://`)."""
  return '://' not in os.fspath(path)


def absolute(path) -> str:
  """`os.path.abspath` for a local path; a URI is returned as it is (normalised by epath: no trailing '/').

  (`os.path.abspath('gs://b/x')` would give '<cwd>/gs:/b/x'.)"""
  path = os.fspath(path)
  return os.path.abspath(path) if is_local(path) else os.fspath(epath.Path(path))


def open_file(path, mode: str = 'r') -> IO[Any]:
  """`open(path, mode)` on any epath file system; text modes are UTF-8."""
  return epath.Path(path).open(mode)


def makedirs(path) -> None:
  """`mkdir -p`: creates `path` and its parents (exist_ok). On object stores epath writes a placeholder."""
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def exists(path) -> bool:
  return epath.Path(path).exists()


def lexists(path) -> bool:
  """`exists`, except that a local dangling symlink counts as existing (`os.path.lexists`)."""
  return os.path.lexists(path) if is_local(path) else epath.Path(path).exists()


def isdir(path) -> bool:
  return epath.Path(path).is_dir()


def isfile(path) -> bool:
  """An existing path that is not a directory."""
  p = epath.Path(path)
  return p.exists() and not p.is_dir()


def read_text(path) -> str:
  with open_file(path, 'r') as f:
    return f.read()


def read_bytes(path) -> bytes:
  """The whole content of file `path` (FileNotFoundError when missing)."""
  return epath.Path(path).read_bytes()


def size(path) -> int:
  """Bytes in file `path`, >= 0 (FileNotFoundError when missing)."""
  if is_local(path):
    return os.path.getsize(path)
  return int(epath.Path(path).stat().length)


def listdir(path) -> list[str]:
  """The names (not paths) of the entries of directory `path`, sorted; FileNotFoundError when it is missing."""
  if is_local(path):
    return sorted(os.listdir(path))
  p = epath.Path(path)
  if not p.is_dir():
    raise FileNotFoundError(2, 'no such directory', os.fspath(path))
  return sorted(child.name for child in p.iterdir())


def sync_file(f) -> None:
  """Makes what was written to the open binary file `f` (from `open_file`) durable: flush, then `os.fsync` when it
  is a local file. On an object store there is no fsync: this is only a flush, and an object is durable (and
  visible at all) once its writer is closed, so resumable code counts a file as kept only after closing it."""
  f.flush()
  try:
    fd = f.fileno()
  except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: not an OS file (object store)
    return
  os.fsync(fd)


def truncate(path, length: int) -> None:
  """Cuts file `path` to its first `length` bytes (0 <= length <= its size, else ValueError).

  Local: in place (`os.truncate`). Object store: no in-place truncation there, so the object is downloaded and
  rewritten with its first `length` bytes (one object upload: readers see the old or the new object).
  """
  length = int(length)
  current = size(path)
  if not 0 <= length <= current:
    raise ValueError(f'cannot truncate {os.fspath(path)} ({current} bytes) to {length} bytes')
  if length == current:
    return
  if is_local(path):
    os.truncate(path, length)
  else:
    write_atomic(path, read_bytes(path)[:length])


def write_atomic(path, data: bytes, sync: bool = False) -> None:
  """Writes `data` to `path` so that a crash leaves the old or the new content, never a partial file.

  Local: a temporary file beside it, then `os.replace` (atomic); `sync=True` also fsyncs the temporary file before
  the rename, so that after a power loss or kill the new content, once visible, is whole (a manifest of resumable
  work). Object store: the object is written directly (an object becomes visible only when its upload completes,
  which is also when it is durable: `sync` changes nothing there; a rename would be copy + delete).
  The parent directory is created.
  """
  path = absolute(path)
  directory = os.path.dirname(path)
  makedirs(directory)
  if not is_local(path):
    with open_file(path, 'wb') as f:
      f.write(data)
    return
  tmp = epath.Path(directory) / f'.{os.path.basename(path)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  try:
    with tmp.open('wb') as f:
      f.write(data)
      if sync:
        sync_file(f)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()


def replace(src, dst) -> None:
  """Moves file or directory `src` to `dst` (overwriting a file `dst`).

  Local: `os.replace`, atomic. Object store: copy of each object, then delete of the source, NOT atomic (a
  crash in between leaves the copy, the source or both).
  """
  epath.Path(src).replace(dst)


def remove(path) -> None:
  """Deletes a file or a directory tree; a missing path is fine. A local symlink is unlinked, never followed."""
  path = os.fspath(path)
  if is_local(path):
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)
    return
  p = epath.Path(path)
  if p.is_dir():
    p.rmtree(missing_ok=True)
  elif p.exists():
    p.unlink(missing_ok=True)


def remove_empty_dir(path) -> None:
  """`os.rmdir`: deletes `path` only if it is an empty directory (OSError locally, ValueError on a store if not)."""
  if is_local(path):
    os.rmdir(path)
  else:
    epath.Path(path).rmdir()


def remove_quietly(path) -> None:
  """`remove`, ignoring errors (clean-up of temporary staging directories)."""
  try:
    remove(path)
  except OSError:
    pass


class AppendFile:
  """A file that is only appended to (metrics.jsonl, an export's index.jsonl): `write`, `flush`, `tell`, `sync`,
  `close`, like `open(path, 'a')`.

  Modes: 'a' / 'ab' append to what is there (the file is created if missing); 'w' / 'wb' start it empty.
  Local: exactly `open(path, mode)`; `flush` pushes to the OS, `sync` also fsyncs.
  Object store: objects cannot be appended to (gcsfs even silently truncates on mode 'a'), so the existing content
  is read once, kept in memory, and the whole object is rewritten by `flush` -- at most every `upload_interval_s`
  seconds, and always by `close` / `flush(force=True)` / `sync`. A crash loses at most that interval of lines; the
  cost of a flush is one upload of the whole file, fine for metrics logged every few seconds or an index committed
  every few hundred images.
  """

  upload_interval_s = 10.0

  def __init__(self, path, mode: str = 'a'):
    if mode not in ('a', 'ab', 'w', 'wb'):
      raise ValueError(f'AppendFile mode must be "a", "ab", "w" or "wb", got {mode!r}')
    self.path = os.fspath(path)
    self._binary = mode.endswith('b')
    self._local = open_file(self.path, mode) if is_local(self.path) else None
    if self._local is None:
      p = epath.Path(self.path)
      fresh = mode.startswith('w') or not p.exists()
      self._content = b'' if fresh else p.read_bytes()
      self._dirty = fresh  # create (or empty) the object on the first flush even when nothing was written
      self._last_upload = float('-inf')
    self.closed = False

  def tell(self) -> int:
    """The file's length in bytes so far: what it held when opened in mode 'ab' + what was written since (binary
    modes only: ValueError for 'a' / 'w')."""
    if not self._binary:
      raise ValueError(f'AppendFile.tell needs a binary mode ("ab" or "wb"); {self.path} is open in text mode')
    return self._local.tell() if self._local is not None else len(self._content)

  def sync(self) -> None:
    """Makes everything written so far durable: local flush + `os.fsync`; object store: the whole object is
    uploaded now (there is no fsync there; an uploaded object is durable)."""
    if self._local is not None:
      sync_file(self._local)
    else:
      self.flush(force=True)

  def write(self, data) -> None:
    if self._local is not None:
      self._local.write(data)
    else:
      self._content += data if self._binary else data.encode('utf-8')
      self._dirty = True

  def flush(self, force: bool = False) -> None:
    if self._local is not None:
      self._local.flush()
    elif self._dirty and (force or time.monotonic() - self._last_upload >= self.upload_interval_s):
      write_atomic(self.path, self._content)
      self._dirty, self._last_upload = False, time.monotonic()

  def close(self) -> None:
    if self.closed:
      return
    if self._local is not None:
      self._local.close()
    else:
      self.flush(force=True)
    self.closed = True


def save_array(path, array) -> None:
  """Writes one numpy array (any shape and dtype but object) as a .npy file (`np.save` format), atomically and
  durably (`write_atomic(sync=True)`), local or on an object store."""
  buffer = io.BytesIO()
  np.save(buffer, np.asarray(array), allow_pickle=False)
  write_atomic(path, buffer.getvalue(), sync=True)


def load_array(path) -> np.ndarray:
  """The array of a .npy file written by `save_array` (shape and dtype as saved; no pickles), local or on an
  object store."""
  return np.load(io.BytesIO(read_bytes(path)), allow_pickle=False)


def check_writable(directory) -> None:
  """Creates `directory` (parents included) and writes and deletes a probe file in it; OSError when it cannot.

  Raises NotADirectoryError when `directory` exists as a file."""
  p = epath.Path(directory)
  if p.exists() and not p.is_dir():
    raise NotADirectoryError(20, 'it exists and is not a directory', os.fspath(directory))
  p.mkdir(parents=True, exist_ok=True)
  probe = p / f'.write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}'
  with probe.open('wb') as f:
    f.write(b'probe')
  probe.unlink()
