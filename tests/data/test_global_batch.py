"""The global batch stream depends on (seed, global batch, tracks) only, not on hosts or workers.

Each host of a multi-host run builds its own `train_loader` with its shard index; stacking the
hosts' batches in host order must give the batches of one host, whatever the number of hosts
and of grain workers, and each host must read only the tracks of its own shard (what
`data_in_memory` decodes per host).
"""
from __future__ import annotations

import numpy as np
import pytest

from hcnn_jax.data import pipeline
from tests.data.test_pipeline import PositionSource, positions, take

LENGTHS = [2_000 + 97 * t for t in range(13)]  # 13 tracks: lanes of unequal length for B = 4


def _stream(source, shard_count, steps, worker_count=0, seed=7, batch=4):
  """The global batches of `steps` steps, stacked from every host's loader in host order."""
  per_host = [take(pipeline.train_loader(source, input_length=1_000, global_batch_size=batch,
                                         seed=seed, shard_index=h, shard_count=shard_count,
                                         worker_count=worker_count, worker_buffer_size=1),
                   steps)
              for h in range(shard_count)]
  return [{k: np.concatenate([host[i][k] for host in per_host]) for k in ('audio', 'labels')}
          for i in range(steps)]


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['labels'], y['labels'])
    np.testing.assert_array_equal(x['audio'], y['audio'])


def test_one_two_and_four_hosts_see_the_same_global_batches():
  src = PositionSource(LENGTHS)
  one = _stream(src, 1, steps=8)  # 8 steps: more than two passes of every lane
  _assert_same(one, _stream(src, 2, steps=8))
  _assert_same(one, _stream(src, 4, steps=8))
  assert not np.array_equal(one[0]['labels'], _stream(src, 1, steps=1, seed=8)[0]['labels'])


def test_grain_workers_do_not_change_the_global_batches():
  src = PositionSource(LENGTHS)
  _assert_same(_stream(src, 2, steps=5), _stream(src, 1, steps=5, worker_count=2))


def test_each_host_reads_only_its_own_shard():
  src = PositionSource(LENGTHS)
  shards = [set(pipeline.shard_tracks(13, 4, 7, h, 2).tolist()) for h in range(2)]
  assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(13))
  assert {len(s) for s in shards} <= {6, 7}
  for h in range(2):
    batches = take(pipeline.train_loader(src, input_length=1_000, global_batch_size=4, seed=7,
                                         shard_index=h, shard_count=2), 12)
    seen = {int(l.argmax()) for b in batches for l in b['labels']}
    assert seen == shards[h]  # 12 steps cycle every lane of the host at least once


def test_every_track_once_per_epoch_when_the_batch_divides_the_tracks():
  src = PositionSource(LENGTHS[:12])
  batches = _stream(src, 2, steps=6)  # two epochs of 3 steps
  for epoch in (batches[:3], batches[3:]):
    seen = sorted(int(l.argmax()) for b in epoch for l in b['labels'])
    assert seen == list(range(12))
  crops = [positions(b['audio']) for b in batches]
  assert not all(np.array_equal(a, b) for a, b in zip(crops[:3], crops[3:]))


def test_steps_per_epoch_is_a_function_of_the_global_batch():
  assert pipeline.steps_per_epoch(13, 4) == pipeline.steps_per_epoch(13, 4, 2) == 3
  with pytest.raises(ValueError, match='multiple'):
    pipeline.steps_per_epoch(13, 4, 3)


def test_fewer_tracks_than_a_global_batch_is_refused():
  with pytest.raises(ValueError, match='no full batch of 16'):
    pipeline.train_loader(PositionSource(LENGTHS), input_length=1_000, global_batch_size=16,
                          seed=0, shard_index=0, shard_count=1)
