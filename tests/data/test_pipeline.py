"""grain training loader (crops, padding, determinism, epochs, sharding, resume) and eval batches."""
from __future__ import annotations

import numpy as np
import pytest

from hcnn_jax.data import chunking, pipeline, sources


class PositionSource:
  """Track t holds the sample numbers 1..len_t (so a crop tells where it came from) and the
  one-hot label of t (so a batch row tells which track it is)."""

  def __init__(self, lengths):
    self.lengths = list(lengths)

  def __len__(self):
    return len(self.lengths)

  def __getitem__(self, t):
    n = self.lengths[t]
    return {'audio': (np.arange(n) % 32_000 + 1).astype(np.int16),
            'labels': np.eye(len(self.lengths), dtype=np.float32)[t],
            'id': f'track{t}'.encode()}


def positions(audio):
  return np.round(np.asarray(audio) * pipeline.INT16_SCALE).astype(np.int64)


def take(loader_or_iter, n):
  it = iter(loader_or_iter)
  return [next(it) for _ in range(n)]


def crops_by_track(batches):
  """{track: [positions of each crop]} in stream order."""
  out = {}
  for b in batches:
    for audio, labels in zip(b['audio'], b['labels']):
      out.setdefault(int(labels.argmax()), []).append(positions(audio))
  return out


LONG = [3_000 + 137 * t for t in range(12)]


def loader(source, **kw):
  args = dict(input_length=1_000, global_batch_size=4, seed=0, shard_index=0, shard_count=1)
  args.update(kw)
  return pipeline.train_loader(source, **args)


def test_batches_shape_dtype_and_crops_inside_tracks():
  src = PositionSource(LONG)
  batches = take(loader(src, num_epochs=1), 3)
  for b in batches:
    assert set(b) == {'audio', 'labels'}
    assert b['audio'].shape == (4, 1_000) and b['audio'].dtype == np.float32
    assert b['labels'].shape == (4, 12) and b['labels'].dtype == np.float32
    assert np.abs(b['audio']).max() <= 1.0
  for t, crops in crops_by_track(batches).items():
    for pos in crops:
      np.testing.assert_array_equal(np.diff(pos), 1)  # one contiguous slice of the track
      assert pos[0] >= 1 and pos[-1] <= LONG[t]


def test_one_epoch_sees_every_track_once_and_drops_remainder():
  src = PositionSource(LONG[:10])
  batches = list(loader(src, num_epochs=1, global_batch_size=4))
  assert len(batches) == 2  # 10 tracks, batches of 4: the last 2 are dropped
  seen = [int(l.argmax()) for b in batches for l in b['labels']]
  assert len(set(seen)) == 8


def test_short_tracks_are_zero_padded_at_random_offsets():
  lengths = [300, 700, 1_000, 2_500] * 4
  src = PositionSource(lengths)
  batches = take(loader(src, global_batch_size=8), 6)
  offsets = set()
  for t, crops in crops_by_track(batches).items():
    n = lengths[t]
    for pos in crops:
      if n < 1_000:
        start = int(np.flatnonzero(pos)[0])
        np.testing.assert_array_equal(pos[start:start + n], np.arange(1, n + 1))
        assert np.count_nonzero(pos) == n
        offsets.add((n, start))
      elif n == 1_000:
        np.testing.assert_array_equal(pos, np.arange(1, 1_001))
  assert len(offsets) > 8


def test_same_seed_same_stream_other_seed_other_stream():
  src = PositionSource(LONG)
  a, b = take(loader(src, seed=5), 4), take(loader(src, seed=5), 4)
  c = take(loader(src, seed=6), 4)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x['audio'], y['audio'])
    np.testing.assert_array_equal(x['labels'], y['labels'])
  assert not all(np.array_equal(x['audio'], z['audio']) for x, z in zip(a, c))


def test_crops_and_order_differ_across_epochs():
  src = PositionSource(LONG)
  batches = list(loader(src, num_epochs=2, global_batch_size=4))
  assert len(batches) == 6
  crops = crops_by_track(batches)
  assert all(len(c) == 2 for c in crops.values())
  differ = sum(not np.array_equal(c[0], c[1]) for c in crops.values())
  assert differ >= 10  # a repeated offset is possible by chance, never for most tracks
  order = [int(l.argmax()) for b in batches for l in b['labels']]
  assert order[:12] != order[12:]


def test_two_shards_partition_each_epoch():
  src = PositionSource([2_000] * 11)
  seen = []
  for shard in (0, 1):
    batches = list(loader(src, num_epochs=1, global_batch_size=2, shard_index=shard,
                          shard_count=2))
    assert all(b['audio'].shape == (1, 1_000) for b in batches)
    seen.append({int(l.argmax()) for b in batches for l in b['labels']})
    assert len(batches) == 5 == pipeline.steps_per_epoch(11, 2, 2)
  assert not seen[0] & seen[1]
  assert len(seen[0] | seen[1]) == 10  # 11 tracks: one dropped so both hosts keep step


def assert_resumes_exactly(make_loader, before, after):
  """The batches after set_state(state) equal those the saved iterator went on to yield."""
  it = iter(make_loader())
  take(it, before)
  state = it.get_state()
  uninterrupted = take(it, after)
  resumed = iter(make_loader())
  resumed.set_state(state)
  for want, got in zip(uninterrupted, take(resumed, after)):
    np.testing.assert_array_equal(got['audio'], want['audio'])
    np.testing.assert_array_equal(got['labels'], want['labels'])


def test_resume_exact_without_workers():
  src = PositionSource(LONG)
  assert_resumes_exactly(lambda: loader(src, seed=3), before=5, after=4)  # crosses epochs


@pytest.fixture(scope='module')
def fake_tracks(tmp_path_factory):
  """A real array_record TFDS dataset of short one-hot fake tracks, read back from its files."""
  data_dir = tmp_path_factory.mktemp('fake_tfds')
  sources.write_fake_dataset(
      data_dir, 'tracks=12,classes=3,samples=3000,min_samples=1500,multi_label=0')
  return sources.load('fake_tracks', 'train', str(data_dir))


def test_tfds_source_one_hot_batches(fake_tracks):
  source, meta = fake_tracks
  assert meta['task'] == 'keywords'
  batches = list(loader(source, input_length=2_000, global_batch_size=4, num_epochs=1))
  assert len(batches) == 3
  for b in batches:
    assert b['audio'].shape == (4, 2_000) and b['labels'].shape == (4, 3)
    np.testing.assert_array_equal(b['labels'].sum(axis=1), 1.0)


def test_resume_exact_with_two_workers_on_tfds_source(fake_tracks):
  source, _ = fake_tracks
  assert_resumes_exactly(
      lambda: loader(source, input_length=2_000, global_batch_size=4, seed=11, worker_count=2,
                     worker_buffer_size=1),
      before=4, after=3)


def test_train_loader_rejects_bad_arguments():
  src = PositionSource(LONG)
  with pytest.raises(ValueError, match='multiple'):
    loader(src, global_batch_size=5, shard_count=2)
  with pytest.raises(ValueError, match='no full batch'):
    loader(src, global_batch_size=16, num_epochs=1)
  with pytest.raises(ValueError, match='both shard_index and shard_count'):
    loader(src, shard_count=None)
  with pytest.raises(ValueError, match='input_length'):
    loader(src, input_length=0)
  with pytest.raises(ValueError, match='read_threads'):
    loader(src, read_threads=0)
  with pytest.raises(ValueError, match='empty'):
    loader(PositionSource([]))


def test_eval_chunks_of_an_mtat_length_track():
  src = PositionSource([465_600, 20_000])
  (batch,) = list(pipeline.eval_batches(src, input_length=80_000, tracks_per_batch=2,
                                        shard_index=0, shard_count=1))
  assert batch['audio'].shape == (2, 16, 80_000) and batch['audio'].dtype == np.float32
  full = src[0]['audio']
  for i in range(16):
    start = i * 24_100
    np.testing.assert_array_equal(positions(batch['audio'][0, i]), full[start:start + 80_000])
  # The short track: padded at the end, 16 identical chunks.
  short = positions(batch['audio'][1])
  np.testing.assert_array_equal(short[:, :20_000], np.broadcast_to(src[1]['audio'], (16, 20_000)))
  assert not short[:, 20_000:].any()
  np.testing.assert_array_equal(batch['mask'], [True, True])
  np.testing.assert_array_equal(batch['index'], [0, 1])


def test_eval_last_batch_padded_and_masked():
  src = PositionSource([1_500 + 10 * t for t in range(5)])
  batches = list(pipeline.eval_batches(src, input_length=1_000, num_chunks=4,
                                       tracks_per_batch=2, shard_index=0, shard_count=1))
  assert len(batches) == 3 == pipeline.num_eval_batches(5, 2)
  for b in batches:
    assert b['audio'].shape == (2, 4, 1_000) and b['labels'].shape == (2, 5)
    assert b['mask'].dtype == bool
  last = batches[-1]
  np.testing.assert_array_equal(last['mask'], [True, False])
  np.testing.assert_array_equal(last['index'], [4, -1])
  assert not last['audio'][1].any() and not last['labels'][1].any()
  np.testing.assert_array_equal(last['labels'][0], np.eye(5)[4])
  for b in batches:
    for row in np.flatnonzero(b['mask']):
      t = b['index'][row]
      want = chunking.eval_chunks(src[t]['audio'], 1_000, 4)
      np.testing.assert_array_equal(positions(b['audio'][row]), want)
  again = list(pipeline.eval_batches(src, input_length=1_000, num_chunks=4, tracks_per_batch=2,
                                     shard_index=0, shard_count=1))
  for x, y in zip(batches, again):
    np.testing.assert_array_equal(x['audio'], y['audio'])


def test_eval_shards_cover_every_track_once_in_lockstep():
  src = PositionSource([1_200] * 7)
  per_shard = [list(pipeline.eval_batches(src, input_length=1_000, num_chunks=2,
                                          tracks_per_batch=3, shard_index=s, shard_count=3))
               for s in range(3)]
  assert {len(b) for b in per_shard} == {pipeline.num_eval_batches(7, 3, 3)} == {1}
  seen = [i for batches in per_shard for b in batches for i in b['index'][b['mask']]]
  assert sorted(seen) == list(range(7))
  for batches in per_shard:
    for b in batches:
      np.testing.assert_array_equal(b['labels'][b['mask']].argmax(axis=1), b['index'][b['mask']])


def test_eval_early_stop_and_bad_arguments():
  src = PositionSource([1_200] * 6)
  gen = pipeline.eval_batches(src, input_length=1_000, num_chunks=2, tracks_per_batch=2,
                              shard_index=0, shard_count=1)
  next(gen)
  gen.close()  # leaving early shuts the read-ahead down without hanging
  with pytest.raises(ValueError, match='tracks_per_batch'):
    next(pipeline.eval_batches(src, input_length=1_000, tracks_per_batch=0))
  with pytest.raises(ValueError, match='num_chunks'):
    pipeline.eval_batches(src, input_length=1_000, num_chunks=0, tracks_per_batch=2)


def test_default_shard_is_the_jax_process():
  import jax
  src = PositionSource(LONG)
  (batch,) = take(pipeline.train_loader(src, input_length=1_000, global_batch_size=4, seed=0), 1)
  assert batch['audio'].shape == (4 // jax.process_count(), 1_000)
  (ev,) = take(pipeline.eval_batches(src, input_length=1_000, num_chunks=2, tracks_per_batch=3), 1)
  np.testing.assert_array_equal(ev['index'], np.arange(3) * jax.process_count() + jax.process_index())
