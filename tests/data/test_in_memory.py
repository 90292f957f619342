"""`DecodedSource`: a split decoded once into one shared int16 file (config.data_in_memory).

It replaces the train split under the loader, so it must hand back exactly the records of the
source it decoded (audio bit for bit, labels), keep its file alive while copies are read in grain
workers and remove it once (close(), garbage collection of the creating object), and refuse,
before writing anything, what it cannot hold (not enough free space, non-int16 audio, no tracks).
"""
from __future__ import annotations

import collections
import gc
import os
import pickle

import numpy as np
import pytest

from hcnn_jax.data import in_memory, pipeline, sources

CONFIG = 'tracks=6,classes=3,samples=5000,min_samples=3000'


@pytest.fixture
def fake():
  return sources.fake_source('train', CONFIG)


@pytest.fixture
def decoded(fake, tmp_path):
  src = in_memory.DecodedSource(fake, threads=2, directory=str(tmp_path))
  yield src
  src.close()


def _files(directory):
  return sorted(n for n in os.listdir(directory) if n.startswith('hcnn_decoded_'))


def _assert_same_records(got, want):
  assert len(got) == len(want)
  for i in range(len(want)):
    a, b = got[i], want[i]
    assert a['audio'].dtype == np.int16 and a['audio'].shape == b['audio'].shape, i
    np.testing.assert_array_equal(a['audio'], b['audio'])
    assert a['labels'].dtype == np.float32
    np.testing.assert_array_equal(a['labels'], b['labels'])


def test_every_record_reads_back_identically(fake, decoded):
  assert len(decoded) == 6
  # min_samples makes the tracks of different lengths: the offsets must be right, not uniform.
  assert len({fake[i]['audio'].shape[0] for i in range(6)}) > 1
  _assert_same_records(decoded, fake)
  total = sum(fake[i]['audio'].shape[0] for i in range(6))
  assert decoded.nbytes == 2 * total + 6 * 3 * 4
  assert os.path.getsize(decoded._path) == 2 * total
  assert 'DecodedSource(6 tracks' in repr(decoded)


def test_file_goes_in_the_given_directory_and_close_removes_it(fake, tmp_path):
  src = in_memory.DecodedSource(fake, threads=1, directory=str(tmp_path))
  (name,) = _files(tmp_path)
  assert os.path.join(str(tmp_path), name) == src._path
  src.close()
  assert _files(tmp_path) == []
  src.close()  # a second close is harmless


def test_remove_file_unlinks_now_and_this_process_still_reads(fake, tmp_path):
  """What the trainer calls when it returns: a loader's read-ahead thread may still hold the
  source then (so garbage collection would come late), and may still read from it."""
  src = in_memory.DecodedSource(fake, threads=1, directory=str(tmp_path))
  copy = pickle.loads(pickle.dumps(src))
  copy.remove_file()  # not the owner: does nothing
  assert len(_files(tmp_path)) == 1
  src.remove_file()
  assert _files(tmp_path) == []
  _assert_same_records(src, fake)  # the mapping outlives the name
  src.remove_file()
  src.close()  # both harmless after the file is gone


def test_default_directory_is_shared_memory_and_garbage_collection_removes_the_file(fake):
  src = in_memory.DecodedSource(fake, threads=2)
  path = src._path
  assert os.path.dirname(path) == in_memory.default_directory()
  if os.path.isdir('/dev/shm'):
    assert path.startswith('/dev/shm/')
  assert os.path.exists(path)
  del src
  gc.collect()
  assert not os.path.exists(path)


def test_pickled_copy_reads_the_same_file_without_owning_it(fake, decoded):
  copy = pickle.loads(pickle.dumps(decoded))
  # The pickle carries the file name and the index, not the audio.
  assert len(pickle.dumps(decoded)) < decoded.nbytes // 4
  assert copy._path == decoded._path
  _assert_same_records(copy, fake)
  copy.close()  # not the owner: does nothing
  del copy
  gc.collect()
  assert os.path.exists(decoded._path)
  _assert_same_records(decoded, fake)
  decoded.close()
  assert not os.path.exists(decoded._path)


def test_too_little_free_space_is_refused_before_writing(fake, tmp_path, monkeypatch):
  usage = collections.namedtuple('usage', 'total used free')
  monkeypatch.setattr(in_memory.shutil, 'disk_usage', lambda d: usage(10_000, 9_000, 1_000))
  with pytest.raises(ValueError, match=r'data_in_memory: .*6 tracks.*data_in_memory=False'):
    in_memory.DecodedSource(fake, directory=str(tmp_path), name='the train split of x')
  assert _files(tmp_path) == []


class _ListSource:

  def __init__(self, records):
    self.records = records

  def __len__(self):
    return len(self.records)

  def __getitem__(self, i):
    return self.records[i]


def test_float_audio_and_empty_sources_are_refused(tmp_path):
  floats = _ListSource([{'audio': np.zeros(100, np.float32), 'labels': np.ones(2, np.float32)}])
  with pytest.raises(ValueError, match='int16.*float32'):
    in_memory.DecodedSource(floats, directory=str(tmp_path))
  with pytest.raises(ValueError, match='no tracks'):
    in_memory.DecodedSource(_ListSource([]), directory=str(tmp_path), name='split x')
  assert _files(tmp_path) == []


def _batches(source, n, **kw):
  loader = pipeline.train_loader(source, input_length=4_000, global_batch_size=2, seed=5,
                                 shard_index=0, shard_count=1, **kw)
  it = iter(loader)
  return [next(it) for _ in range(n)]


@pytest.mark.parametrize('audio_dtype', ['float32', 'int16'])
def test_loader_over_it_yields_the_batches_of_the_original(fake, decoded, audio_dtype):
  # 7 batches of 2 cross two epochs of 6 tracks; 4,000-sample crops pad the shorter tracks.
  want = _batches(fake, 7, audio_dtype=audio_dtype)
  got = _batches(decoded, 7, audio_dtype=audio_dtype)
  for a, b in zip(got, want):
    assert a['audio'].dtype == np.dtype(audio_dtype)
    np.testing.assert_array_equal(a['audio'], b['audio'])
    np.testing.assert_array_equal(a['labels'], b['labels'])
  assert not np.array_equal(got[0]['audio'], got[1]['audio'])


# One grain worker process (spawned: it imports the project afresh, a few seconds) unpickles the
# source and maps the creating process's file; kept to 3 batches of 2.
def test_loader_with_a_worker_process_maps_the_file(fake, decoded):
  want = _batches(fake, 3, audio_dtype='int16')
  got = _batches(decoded, 3, audio_dtype='int16', worker_count=1, worker_buffer_size=1)
  for a, b in zip(got, want):
    np.testing.assert_array_equal(a['audio'], b['audio'])
    np.testing.assert_array_equal(a['labels'], b['labels'])
  gc.collect()
  assert os.path.exists(decoded._path)  # the worker's copy did not remove the owner's file


def test_a_hosts_share_decodes_only_its_tracks_and_feeds_its_rows(fake, tmp_path):
  """Host 1 of 2 decodes only the tracks its rows of the global batches draw from, and its
  loader over that share yields what its loader over the whole split yields."""
  share = pipeline.shard_tracks(len(fake), 2, 5, 1, 2)
  assert 0 < len(share) < len(fake)
  src = in_memory.DecodedSource(fake, threads=2, directory=str(tmp_path), indices=share)
  try:
    assert len(src) == len(fake) and src.num_decoded == len(share)
    assert src.nbytes == sum(2 * fake[int(i)]['audio'].shape[0] + 12 for i in share)
    assert f'({len(share)} of {len(fake)} tracks' in repr(src)
    for i in share:
      np.testing.assert_array_equal(src[int(i)]['audio'], fake[int(i)]['audio'])
    other = sorted(set(range(len(fake))) - set(share.tolist()))[0]
    with pytest.raises(IndexError, match=f'track {other} is not among'):
      src[other]
    args = dict(input_length=4_000, global_batch_size=2, seed=5, shard_index=1, shard_count=2)
    want = take(pipeline.train_loader(fake, **args), 7)
    got = take(pipeline.train_loader(pickle.loads(pickle.dumps(src)), **args), 7)
    for a, b in zip(got, want):
      np.testing.assert_array_equal(a['audio'], b['audio'])
      np.testing.assert_array_equal(a['labels'], b['labels'])
  finally:
    src.close()


def take(loader, n):
  it = iter(loader)
  return [next(it) for _ in range(n)]
