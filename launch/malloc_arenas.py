"""Caps glibc's malloc arenas for long explain runs, so peak memory stays flat from 64 to 10,000 images.

glibc gives every thread that allocates concurrently its own arena (up to 8 per core); the threads that decode
PNGs, encode strips and GIFs and run XLA each grow one, and memory they free stays resident in it. On the demo
models that made the explain path's peak RSS 1.197× higher at 1,000 images than at 64; with two arenas the ratio
is 0.997 (benchmarks/README.md, "Explain load"). The limit has to be set before any second thread allocates (glibc
fixes the arena count at the first one), so a launcher calls `limit()` first thing, before importing jax, numpy or
TensorFlow:

  from launch import malloc_arenas
  malloc_arenas.limit()

A MALLOC_ARENA_MAX already in the environment wins (glibc applied it at start-up); the limit is also put in the
environment so that child processes get it. Not glibc (macOS, musl): nothing to do.
"""
import ctypes
import ctypes.util
import os
import platform

ENV = 'MALLOC_ARENA_MAX'
DEFAULT_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number for the arena limit (glibc malloc.h)


def limit(arenas: int = DEFAULT_ARENAS) -> str:
  """Caps this process's malloc arenas at `arenas` (>= 1) and exports MALLOC_ARENA_MAX for its children.

  Returns what it did, in words (for a log line): 'set to 2', 'kept MALLOC_ARENA_MAX=8 from the environment',
  or why nothing was done. Call it before any thread starts; later calls cannot shrink arenas already made."""
  if isinstance(arenas, bool) or not isinstance(arenas, int) or arenas < 1:
    raise ValueError(f'malloc arenas: {arenas!r} is not a count; give an integer >= 1')
  if ENV in os.environ:
    return f'kept {ENV}={os.environ[ENV]} from the environment'
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return f'not glibc ({platform.system()} {platform.libc_ver()[0] or "unknown libc"}): nothing to do'
  libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  if libc.mallopt(_M_ARENA_MAX, arenas) != 1:
    return f'glibc refused mallopt(M_ARENA_MAX, {arenas}): left as it was'
  os.environ[ENV] = str(arenas)
  return f'set to {arenas}'
