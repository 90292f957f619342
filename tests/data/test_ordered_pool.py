"""OrderedPool: results in job order, in workers or in-process; no hang if workers can't start."""
from __future__ import annotations

import sys

import pytest

from hcnn_jax.data import ordered_pool


def _square(x: int) -> int:
  return x * x


@pytest.mark.parametrize('workers', [1, 2])
def test_results_come_in_job_order(workers):
  with ordered_pool.OrderedPool(workers, chunksize=3) as pool:
    assert list(pool.map(_square, range(20))) == [i * i for i in range(20)]
    assert list(pool.map(_square, [5, 1])) == [25, 1]  # the same pool serves a second map
  assert pool._pool is None  # pylint: disable=protected-access  # shut down on exit


def test_a_main_module_read_from_stdin_works_in_process(monkeypatch):
  # `python - <<EOF`: spawned workers would die importing '<stdin>' and be restarted for ever.
  monkeypatch.setattr(sys.modules['__main__'], '__file__', '<stdin>', raising=False)
  assert not ordered_pool.can_spawn()
  with ordered_pool.OrderedPool(2) as pool:
    assert list(pool.map(_square, range(5))) == [0, 1, 4, 9, 16]
    assert pool.workers == 1 and pool._pool is None  # pylint: disable=protected-access


def test_rejects_zero_workers():
  with pytest.raises(ValueError, match='workers must be >= 1'):
    ordered_pool.OrderedPool(0)
