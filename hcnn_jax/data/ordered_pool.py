"""An ordered map over worker processes, for dataset builders that synthesise or render records.

Builders write shard by shard, so one pool should serve every shard (starting processes costs
seconds) and be shut down when the build ends, failed or not: use it as a context manager.
"""
from __future__ import annotations

import multiprocessing
import os
from typing import Callable, Iterable, Iterator, Optional, TypeVar

T = TypeVar('T')
R = TypeVar('R')


def default_workers(cap: int = 8) -> int:
  return max(1, min(os.cpu_count() or 1, cap))


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
