"""JAX's persistent compilation cache for the command-line tools: compile once per machine.

`use_compilation_cache()` points JAX at `$XDG_CACHE_HOME/hcnn-jax/xla` (`~/.cache/hcnn-jax/xla`),
so that a process loads the programs an earlier one compiled instead of compiling them again
(for hcnn-tag's demo model on 2 CPU cores, about a second of its start-up; bench/README.md).
JAX keys each entry by the program, the jax and jaxlib versions, the devices and the XLA flags,
so an entry written for another model, batch shape or version is never used; a loaded program is
the compiled program itself, and the scores are bit for bit those of a fresh compile.

Nothing here may stop a tool: a directory that cannot be created or written leaves the cache off,
and an entry that cannot be read (truncated, corrupt: jax then compiles as if it were missing,
and warns) is removed without a word, so that the fresh compile replaces it.
"""
from __future__ import annotations

import glob
import os
import re
import tempfile
import warnings
from typing import Optional

# jax's warnings when an entry cannot be read or written (jax._src.compiler._cache_read/_write).
_READ_ERROR = re.compile(r"Error reading persistent compilation cache entry for '([^']+)'")
_WRITE_ERROR = re.compile(r'Error writing persistent compilation cache entry')


def default_cache_dir() -> str:
  """$XDG_CACHE_HOME/hcnn-jax/xla, or ~/.cache/hcnn-jax/xla."""
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'hcnn-jax', 'xla')


def _writable_dir(path: str) -> bool:
  try:
    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
      return True
  except OSError:
    return False


def drop_unreadable(cache_dir: str, module_name: str) -> int:
  """Removes the entries of `module_name` in `cache_dir` that do not decompress (jax never
  overwrites an entry, so a damaged one would cost a compile in every later run); returns how
  many went."""
  from jax._src import compilation_cache  # pylint: disable=import-outside-toplevel
  removed = 0
  for path in glob.glob(os.path.join(glob.escape(cache_dir), f'{glob.escape(module_name)}-*')):
    try:
      with open(path, 'rb') as f:
        compilation_cache.decompress_executable(f.read())
    except OSError:
      continue
    except Exception:  # pylint: disable=broad-except
      try:
        os.remove(path)
        removed += 1
      except OSError:
        pass
  return removed


def _quiet_cache_warnings(cache_dir: str) -> None:
  """jax's cache warnings are dropped, and an unreadable entry is removed when jax reports it
  (before its fresh compile is written back under the same key)."""
  previous = warnings.showwarning
  if getattr(previous, '_hcnn_cache_dir', None) == cache_dir:
    return

  def show(message, category, filename, lineno, file=None, line=None):
    text = str(message)
    unreadable = _READ_ERROR.search(text)
    if unreadable:
      drop_unreadable(cache_dir, unreadable.group(1))
    elif not _WRITE_ERROR.search(text):
      previous(message, category, filename, lineno, file, line)
  show._hcnn_cache_dir = cache_dir  # pylint: disable=protected-access
  warnings.showwarning = show


def use_compilation_cache(path: Optional[str] = None) -> Optional[str]:
  """Turns on JAX's persistent compilation cache in `path` (default `default_cache_dir()`).

  Call it before anything compiles; it changes JAX's configuration for the whole process, which
  is why the tools call it only when run as programs. Returns the directory in use, or None
  where the cache stays off. A cache the user has set up already (JAX_COMPILATION_CACHE_DIR or
  jax.config) is kept as it is.
  """
  import jax  # pylint: disable=import-outside-toplevel
  if jax.config.jax_compilation_cache_dir:
    return jax.config.jax_compilation_cache_dir
  path = os.path.abspath(path or default_cache_dir())
  if not _writable_dir(path):
    return None
  _quiet_cache_warnings(path)
  # A tagger's program compiles in about a second on a CPU, under jax's default threshold for
  # what is worth caching (1 s): cache every program, however quick.
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
  jax.config.update('jax_compilation_cache_dir', path)
  return path
