"""An ordered map over worker processes, for dataset builders that synthesise or render records.

Builders write shard by shard, so one pool should serve every shard (starting processes costs
seconds) and be shut down when the build ends, failed or not: use it as a context manager.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import sys
from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar('T')
R = TypeVar('R')


def default_workers(cap: int = 8) -> int:
  return max(1, min(os.cpu_count() or 1, cap))


def can_spawn() -> bool:
  """False where spawned workers could not start: a `__main__` read from stdin (`python -`) names
  a file that does not exist, each worker dies re-importing it, and the pool restarts them for
  ever instead of failing."""
  main_file = getattr(sys.modules.get('__main__'), '__file__', None)
  return main_file is None or os.path.isfile(main_file)


class OrderedPool:
  """`map(fn, jobs)` in `workers` processes (results in job order), or in-process for 1 worker.

  The processes start on the first map. `spawn`, not fork: the caller may hold JAX/XLA threads
  that a fork would copy mid-state. `fn` and the jobs must pickle (a module-level function, or a
  bound method of a small picklable object).
  """

  def __init__(self, workers: Optional[int] = None, chunksize: int = 4):
    if workers is not None and workers < 1:
      raise ValueError(f'OrderedPool: workers must be >= 1, got {workers}.')
    self.workers = default_workers() if workers is None else int(workers)
    self.chunksize = chunksize
    self._pool = None

  def map(self, fn: Callable[[T], R], jobs: Iterable[T]) -> Iterator[R]:
    if self.workers > 1 and self._pool is None and not can_spawn():
      logging.warning('OrderedPool: the main module %r is not a file that worker processes can '
                      'import; working in this process instead.',
                      getattr(sys.modules['__main__'], '__file__', None))
      self.workers = 1
    if self.workers <= 1:
      return map(fn, jobs)
    if self._pool is None:
      self._pool = multiprocessing.get_context('spawn').Pool(self.workers)
    # imap hands results over as they come, so at most a few chunks per worker are held.
    return self._pool.imap(fn, jobs, chunksize=self.chunksize)

  def close(self) -> None:
    if self._pool is not None:
      self._pool.terminate()
      self._pool = None

  def __enter__(self) -> 'OrderedPool':
    return self

  def __exit__(self, *exc) -> None:
    self.close()
