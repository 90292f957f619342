"""A split decoded once into one shared int16 file in memory, so that a training crop is a slice.

Prepared datasets store each track compressed (array_record, zstd) in a protobuf: a 5-s training
crop of a 29-s MTAT track costs decompressing and parsing the whole track (~1 ms of one core), and
on a GPU that trains ~8,000 clips/s grain's workers on 16 cores fell short (bench/README.md).
`DecodedSource` reads every track once and writes the raw samples back to back into one file on a
memory file system (/dev/shm where there is one), which every process maps: the grain workers
share the same pages (pickling it sends the file name, not the audio), and a crop is a 160-KB
slice. An MTAT-sized train split is 14 GB of int16. `config.data_in_memory` turns it on.

With `indices` only those tracks are decoded: each host of a multi-host run decodes the share of
the split that its rows of the global batches draw from (`pipeline.shard_tracks`), and the
object still answers to the split's own track numbers.
"""
from __future__ import annotations

import concurrent.futures
import os
import shutil
import tempfile
import weakref
from typing import Any

import numpy as np

CHUNK = 256  # tracks read (in parallel) per write


def default_directory() -> str:
  return '/dev/shm' if os.path.isdir('/dev/shm') else tempfile.gettempdir()


class DecodedSource:
  """`source`'s records as {'audio': int16 (n,), 'labels': float32 (C,)}, decoded up front.

  threads read the records (the decompression releases the GIL). The file lives in `directory`
  (default /dev/shm, else the temp dir) until this object is garbage-collected or the process
  exits; copies unpickled in worker processes only map it. Raises ValueError, before writing,
  when the first track's size times the number of tracks would not fit in the directory.
  """

  def __init__(self, source, *, threads: int = 16, directory: str | None = None,
               name: str = 'the train split', indices=None):
    self._size = len(source)
    if indices is None:
      self._indices = None
      wanted = np.arange(self._size, dtype=np.int64)
    else:
      wanted = np.unique(np.asarray(indices, np.int64))
      if wanted.size and (wanted[0] < 0 or wanted[-1] >= self._size):
        raise ValueError(f'{name}: indices must lie in [0, {self._size}), got {wanted[0]} .. '
                         f'{wanted[-1]}.')
      self._indices = None if len(wanted) == self._size else wanted  # all: no lookup needed
    n = len(wanted)
    if n == 0:
      raise ValueError(f'{name} has no tracks to decode.')
    directory = directory or default_directory()
    first = np.asarray(source[int(wanted[0])]['audio'])
    if first.dtype != np.int16:
      raise ValueError(f'{name}: DecodedSource holds int16 audio, got {first.dtype}.')
    estimate = n * first.nbytes
    free = shutil.disk_usage(directory).free
    if estimate > 0.9 * free:
      raise ValueError(
          f'data_in_memory: {name} ({n} tracks) needs about {estimate / 2**30:.1f} GiB in '
          f'{directory}, which has {free / 2**30:.1f} GiB free; set data_in_memory=False to read '
          'crops from the prepared files.')

    def read(i: int):
      record = source[i]
      audio = np.asarray(record['audio'])
      if audio.dtype != np.int16:
        raise ValueError(f'{name}: track {i} has {audio.dtype} audio; DecodedSource holds int16.')
      return audio, np.asarray(record['labels'], np.float32)

    fd, path = tempfile.mkstemp(prefix='hcnn_decoded_', suffix='.int16', dir=directory)
    self._finalizer = weakref.finalize(self, _unlink, path)
    lengths, labels = [], []
    with os.fdopen(fd, 'wb') as f, concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
      for start in range(0, n, CHUNK):
        for audio, label in pool.map(read, (int(i) for i in wanted[start:start + CHUNK])):
          f.write(audio.tobytes())
          lengths.append(audio.shape[0])
          labels.append(label)
    self._path = path
    self._lengths = np.asarray(lengths, np.int64)
    self._offsets = np.concatenate([[0], np.cumsum(self._lengths)[:-1]]).astype(np.int64)
    self._labels = np.stack(labels)
    self.num_classes = int(self._labels.shape[-1])
    self._map()

  def _map(self) -> None:
    total = int(self._lengths.sum())
    self._audio = np.memmap(self._path, np.int16, mode='r', shape=(total,))

  @property
  def nbytes(self) -> int:
    return int(self._lengths.sum()) * 2 + self._labels.nbytes

  def __getstate__(self):
    return {'path': self._path, 'lengths': self._lengths, 'offsets': self._offsets,
            'labels': self._labels, 'size': self._size, 'indices': self._indices}

  def __setstate__(self, state):
    self._path, self._lengths = state['path'], state['lengths']
    self._offsets, self._labels = state['offsets'], state['labels']
    self._size, self._indices = state['size'], state['indices']
    self.num_classes = int(self._labels.shape[-1])
    self._finalizer = None  # only the process that wrote the file removes it
    self._map()

  def __len__(self) -> int:
    """The number of tracks of the whole split (not only the decoded ones)."""
    return self._size

  @property
  def num_decoded(self) -> int:
    return len(self._lengths)

  def _row(self, index: int) -> int:
    index = int(index)
    if self._indices is None:
      return index
    row = int(np.searchsorted(self._indices, index))
    if row >= len(self._indices) or self._indices[row] != index:
      raise IndexError(f'track {index} is not among the {len(self._indices)} tracks decoded on '
                       'this host (its share of the split)')
    return row

  def __getitem__(self, index: int) -> dict[str, Any]:
    row = self._row(index)
    start = self._offsets[row]
    return {'audio': self._audio[start:start + self._lengths[row]],
            'labels': self._labels[row]}

  def close(self) -> None:
    """Removes the file now (further reads fail)."""
    if self._finalizer is not None:
      self._audio = None
      self._finalizer()

  def remove_file(self) -> None:
    """Removes the file now, without waiting for garbage collection: a read-ahead thread of the
    loader can hold this object after training returns. Reads in this process keep working (the
    file stays mapped until the object goes); processes that have not mapped it yet cannot."""
    if self._finalizer is not None:
      self._finalizer()

  def __repr__(self) -> str:
    share = '' if self._indices is None else f' of {self._size}'
    return (f'DecodedSource({self.num_decoded}{share} tracks, {self.nbytes / 2**20:,.0f} MiB in '
            f'{self._path})')


def _unlink(path: str) -> None:
  try:
    os.unlink(path)
  except FileNotFoundError:
    pass
