"""Input pipelines: grain training loader (random crops, shuffle, shard, batch) and 16-chunk eval.

Training follows the reference (4.3): one random crop per track per epoch, the track's label for
the crop, shuffled, with ddhf's drop_last. The sequence of *global* batches is a function of the
seed, the global batch size and the number of tracks only: 1 process x 4 devices and 2 processes
x 2 devices (or any grain worker_count) train on the same batches, each host feeding its own
contiguous rows of every global batch (`GlobalBatchSampler`). The crop uses the per-record rng
that grain derives from (seed, position in the global stream), so crops are a pure function of
the seed and differ from epoch to epoch, and `get_state()` / `set_state()` resume a host's stream
bitwise (with the host index, host count and worker_count it was saved with).

Evaluation follows the reference (4.5): every track of the split exactly once, as num_chunks
chunks of input_length (`chunking.eval_chunks`), in a fixed order; batches always hold
`tracks_per_batch` tracks so that one compiled eval step serves them all (padding rows have
mask False and index -1). Every shard yields the same number of batches, so multi-host
evaluation stays in lockstep.

Audio leaves the pipeline as float32 in [-1, 1) (int16 / 32768), or for training with
audio_dtype='int16' as the stored samples (the train step rescales them on the device); labels
as float32.
"""
from __future__ import annotations

import concurrent.futures
import math
import sys
from typing import Any, Iterator

import chex
import grain
import jax
import numpy as np
from absl import flags

from hcnn_jax.data import chunking
from hcnn_jax.data.audio import INT16_SCALE  # noqa: F401  (re-exported)
DEFAULT_READ_THREADS = 16  # grain's default


def _ensure_flags_parsed() -> None:
  """Lets grain (which reads absl flags) run outside absl.app.run, e.g. in tests and notebooks.

  Marking unparsed flags as parsed keeps every flag at its default; a later absl.app.run still
  parses the command line normally.
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _resolve_shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
  if shard_index is None and shard_count is None:
    return jax.process_index(), jax.process_count()
  if shard_index is None or shard_count is None:
    raise ValueError('Give both shard_index and shard_count, or neither (then the JAX process '
                     f'index and count are used); got {shard_index} and {shard_count}.')
  if not 0 <= shard_index < shard_count:
    raise ValueError(f'shard_index must be in [0, shard_count={shard_count}), got {shard_index}.')
  return int(shard_index), int(shard_count)


def _num_classes(source) -> int:
  if len(source) and isinstance(getattr(source, 'num_classes', None), int):
    return source.num_classes  # e.g. a host's shard decoded in memory: track 0 may not be there
  if len(source) == 0:
    raise ValueError('The data source is empty: the split has no tracks. Check that the dataset '
                     'was prepared completely (its skipped_files) and the split name.')
  return int(np.asarray(source[0]['labels']).shape[-1])


def host_batch_size(global_batch_size: int, shard_count: int) -> int:
  """Per-host batch size; ValueError unless the global batch splits evenly over the hosts."""
  if global_batch_size < 1 or global_batch_size % shard_count:
    raise ValueError(f'global_batch_size ({global_batch_size}) must be a positive multiple of '
                     f'the number of hosts / shards ({shard_count}).')
  return global_batch_size // shard_count


def steps_per_epoch(num_records: int, global_batch_size: int, shard_count: int = 1) -> int:
  """Global batches per epoch: num_records // global_batch_size, whatever the number of hosts.

  shard_count (hosts) is only checked to divide the global batch.
  """
  host_batch_size(global_batch_size, shard_count)
  return num_records // global_batch_size


AUDIO_DTYPES = ('float32', 'int16')


def check_audio_dtype(audio_dtype: str) -> np.dtype:
  if audio_dtype not in AUDIO_DTYPES:
    raise ValueError(f'audio_dtype must be one of {AUDIO_DTYPES}, got {audio_dtype!r}.')
  return np.dtype(audio_dtype)


class RandomCrop(grain.transforms.RandomMap):
  """Record → {'audio': (input_length,), 'labels': float32 (C,)} with a random crop.

  Audio is float32 in [-1, 1), or with audio_dtype 'int16' the stored samples themselves (half
  the bytes to batch and send; the train step divides by 32768 on the device, which gives the
  same float32 values).
  """

  def __init__(self, input_length: int, audio_dtype: str = 'float32'):
    self.input_length = int(input_length)
    self.audio_dtype = check_audio_dtype(audio_dtype)

  def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    crop = chunking.random_crop(element['audio'], self.input_length, rng)
    if self.audio_dtype == np.int16:
      audio = np.asarray(crop, np.int16)
    else:
      audio = crop.astype(np.float32) / INT16_SCALE
    return {'audio': audio, 'labels': np.asarray(element['labels'], np.float32)}


class CheckBatch(grain.transforms.Map):
  """Fails loudly if a batch does not have the promised shapes and dtypes."""

  def __init__(self, batch_size: int, input_length: int, num_classes: int,
               audio_dtype: str = 'float32'):
    self.batch_size = batch_size
    self.input_length = input_length
    self.num_classes = num_classes
    self.audio_dtype = check_audio_dtype(audio_dtype)

  def map(self, element: dict[str, Any]) -> dict[str, Any]:
    chex.assert_shape(element['audio'], (self.batch_size, self.input_length))
    chex.assert_shape(element['labels'], (self.batch_size, self.num_classes))
    chex.assert_type([element['audio'], element['labels']], [self.audio_dtype, np.float32])
    return element


def _lane_seed(seed: int, lane: int) -> int:
  return int(np.random.SeedSequence([int(seed), int(lane)]).generate_state(1)[0] >> 1)


class GlobalBatchSampler:
  """grain sampler: this host's rows of a stream of global batches fixed by (seed, B, N) alone.

  Row r of every global batch of B rows draws from its own *lane*: the tracks at positions
  r, r + B, r + 2B, ... of one fixed seeded permutation of the N tracks. A lane is cycled in a
  fresh seeded order each time through it, so every track is cropped once per pass of its lane
  (N // B or N // B + 1 batches), and two tracks share a batch at random across lanes. Row r of
  global batch n is the record at global position g = n·B + r; its crop rng is
  Philox(seed + g), as grain's IndexSampler gives position g.

  Host `shard_index` of `shard_count` owns rows [shard_index·B_host, (shard_index + 1)·B_host)
  of every batch, i.e. lanes, so it only ever reads its own N / shard_count tracks
  (`shard_tracks`; what `data_in_memory` decodes on each host). grain's DataLoader gives worker
  w of W the local indices w, w + W, ... and cycles through the workers' batches in turn; the
  local index → (batch, row) map below undoes that, so the stream does not depend on W either.
  """

  def __init__(self, num_records: int, global_batch_size: int, seed: int, *,
               shard_index: int = 0, shard_count: int = 1, worker_count: int = 0,
               num_epochs: int | None = None):
    self.num_records = int(num_records)
    self.global_batch_size = int(global_batch_size)
    self.seed = int(seed)
    self.shard_index, self.shard_count = int(shard_index), int(shard_count)
    self.worker_count = int(worker_count)
    self.num_epochs = num_epochs
    self.host_batch = host_batch_size(self.global_batch_size, self.shard_count)
    if self.num_records < self.global_batch_size:
      raise ValueError(f'The source has {self.num_records} tracks: no full batch of '
                       f'{self.global_batch_size} (each row of a global batch needs its own '
                       'tracks); lower the batch size.')
    self._workers = max(1, self.worker_count)
    self._length = None
    if num_epochs is not None:
      if num_epochs < 1:
        raise ValueError(f'num_epochs must be >= 1 or None (forever), got {num_epochs}.')
      batches = self.num_records * num_epochs // self.global_batch_size
      batches -= batches % self._workers  # every worker yields whole batches of its stream
      if batches < 1:
        raise ValueError(f'{num_epochs} epoch(s) of {self.num_records} tracks give no full '
                         f'batch of {self.global_batch_size} per worker: lower the batch size or '
                         'raise num_epochs.')
      self._length = batches * self.host_batch
    order = grain.MapDataset.range(self.num_records).shuffle(seed=self.seed)
    first = self.shard_index * self.host_batch
    rows = range(first, first + self.host_batch)
    self._lanes = [np.asarray([order[k] for k in range(r, self.num_records,
                                                      self.global_batch_size)], np.int64)
                   for r in rows]
    self._first_row = first
    self._orders = None

  def tracks(self) -> np.ndarray:
    """The sorted indices of every track this host reads."""
    return np.sort(np.concatenate(self._lanes))

  def _lane_orders(self):
    if self._orders is None:  # built lazily: grain pickles the sampler into its workers
      self._orders = [grain.MapDataset.range(len(lane)).shuffle(
          seed=_lane_seed(self.seed, self._first_row + r)) for r, lane in enumerate(self._lanes)]
    return self._orders

  def __getstate__(self):
    return {k: v for k, v in self.__dict__.items() if k != '_orders'} | {'_orders': None}

  def __len__(self) -> int:
    return sys.maxsize if self._length is None else self._length

  def __repr__(self) -> str:
    return (f'GlobalBatchSampler(num_records={self.num_records}, '
            f'global_batch_size={self.global_batch_size}, seed={self.seed}, '
            f'shard_index={self.shard_index}, shard_count={self.shard_count}, '
            f'worker_count={self.worker_count}, num_epochs={self.num_epochs})')

  def position(self, index: int) -> tuple[int, int]:
    """(global batch, row of this host's part) of local index `index`."""
    worker, step = index % self._workers, index // self._workers
    batch_of_worker, row = divmod(step, self.host_batch)
    return batch_of_worker * self._workers + worker, row

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if index < 0 or (self._length is not None and index >= self._length):
      raise IndexError(f'{self!r}: index {index} out of range.')
    batch, row = self.position(index)
    lane = self._lanes[row]
    key = int(lane[self._lane_orders()[row][batch]])
    position = batch * self.global_batch_size + self._first_row + row
    return grain.RecordMetadata(index=index, record_key=key,
                                rng=np.random.Generator(np.random.Philox(key=self.seed + position)))


def shard_tracks(num_records: int, global_batch_size: int, seed: int, shard_index: int,
                 shard_count: int) -> np.ndarray:
  """The sorted indices of the tracks that host `shard_index` reads in `train_loader`."""
  return GlobalBatchSampler(num_records, global_batch_size, seed, shard_index=shard_index,
                            shard_count=shard_count).tracks()


def train_loader(source, *, input_length: int, global_batch_size: int, seed: int,
                 num_epochs: int | None = None, shard_index: int | None = None,
                 shard_count: int | None = None, worker_count: int = 0,
                 worker_buffer_size: int = 2, read_threads: int | None = None,
                 audio_dtype: str = 'float32') -> grain.DataLoader:
  """A grain DataLoader of this host's rows of shuffled, randomly cropped global batches.

  Yields {'audio': float32 or int16 (B_host, input_length), 'labels': float32 (B_host, C)} with
  B_host = global_batch_size // shard_count: rows [shard_index · B_host, (shard_index + 1) ·
  B_host) of each global batch (`GlobalBatchSampler`; pass the host's place in the device mesh,
  `parallel.data_shard`). num_epochs None repeats forever; otherwise the stream holds
  num_epochs · len(source) // global_batch_size batches (rounded down to a multiple of
  worker_count). read_threads (default 16, as grain) read records in each worker; the
  read-ahead is max(2 · B_host, 2 · read_threads) records. audio_dtype 'int16' yields the stored
  samples instead of float32 (see RandomCrop).
  """
  check_audio_dtype(audio_dtype)
  chunking.check_input_length(input_length)
  shard_index, shard_count = _resolve_shard(shard_index, shard_count)
  num_classes = _num_classes(source)
  if worker_count < 0:
    raise ValueError(f'worker_count must be >= 0, got {worker_count}.')
  sampler = GlobalBatchSampler(len(source), global_batch_size, int(seed),
                               shard_index=shard_index, shard_count=shard_count,
                               worker_count=int(worker_count), num_epochs=num_epochs)
  batch = sampler.host_batch
  if worker_count:
    _ensure_flags_parsed()
  read_threads = DEFAULT_READ_THREADS if read_threads is None else int(read_threads)
  if read_threads < 1:
    raise ValueError(f'read_threads must be >= 1, got {read_threads}.')
  # Records are whole tracks (~1 MB for 30 s at 16 kHz): grain's default read-ahead of 500
  # records would hold ~0.5 GB per worker, so keep it to a few batches.
  read_options = grain.ReadOptions(num_threads=read_threads,
                                   prefetch_buffer_size=max(2 * batch, 2 * read_threads))
  return grain.DataLoader(
      data_source=source,
      sampler=sampler,
      # The sampler already gives this host its rows: grain must not shard again.
      shard_options=grain.sharding.NoSharding(),
      operations=[
          RandomCrop(input_length, audio_dtype),
          grain.transforms.Batch(batch_size=batch, drop_remainder=True),
          CheckBatch(batch, int(input_length), num_classes, audio_dtype),
      ],
      worker_count=int(worker_count),
      worker_buffer_size=int(worker_buffer_size),
      read_options=read_options,
  )


def num_eval_batches(num_tracks: int, tracks_per_batch: int, shard_count: int = 1) -> int:
  """Batches that eval_batches yields on every shard."""
  if tracks_per_batch < 1:
    raise ValueError(f'tracks_per_batch must be >= 1, got {tracks_per_batch}.')
  return math.ceil(math.ceil(num_tracks / shard_count) / tracks_per_batch)


def eval_batches(source, *, input_length: int, num_chunks: int = 16, tracks_per_batch: int,
                 shard_index: int | None = None, shard_count: int | None = None,
                 read_threads: int = 4) -> Iterator[dict[str, np.ndarray]]:
  """Track-level evaluation batches, each track of the split exactly once across the shards.

  Yields {'audio': float32 (n, num_chunks, input_length), 'labels': float32 (n, C),
  'mask': bool (n,), 'index': int64 (n,)} with n = tracks_per_batch always. Shard s takes the
  tracks s, s + shard_count, ... in order; rows past the end are zeros with mask False and
  index -1. read_threads read and chunk the next batch while the caller runs the current one.
  Calling again restarts from the first track.
  """
  chunking.chunk_starts(0, input_length, num_chunks)  # validates input_length and num_chunks
  shard_index, shard_count = _resolve_shard(shard_index, shard_count)
  num_classes = _num_classes(source)
  n_batches = num_eval_batches(len(source), tracks_per_batch, shard_count)
  indices = np.arange(shard_index, len(source), shard_count, dtype=np.int64)

  def track(i: int) -> tuple[np.ndarray, np.ndarray]:
    record = source[int(i)]
    chunks = chunking.eval_chunks(record['audio'], input_length, num_chunks)
    return chunks.astype(np.float32) / INT16_SCALE, np.asarray(record['labels'], np.float32)

  def build(b: int, pool: concurrent.futures.ThreadPoolExecutor) -> dict[str, np.ndarray]:
    rows = indices[b * tracks_per_batch:(b + 1) * tracks_per_batch]
    out = {
        'audio': np.zeros((tracks_per_batch, num_chunks, input_length), np.float32),
        'labels': np.zeros((tracks_per_batch, num_classes), np.float32),
        'mask': np.zeros((tracks_per_batch,), bool),
        'index': np.full((tracks_per_batch,), -1, np.int64),
    }
    for r, (audio, labels) in enumerate(pool.map(track, rows)):
      out['audio'][r], out['labels'][r] = audio, labels
    out['mask'][:len(rows)] = True
    out['index'][:len(rows)] = rows
    chex.assert_shape(out['audio'], (tracks_per_batch, num_chunks, input_length))
    chex.assert_shape(out['labels'], (tracks_per_batch, num_classes))
    return out

  def generate() -> Iterator[dict[str, np.ndarray]]:
    # One thread builds the next batch (its reads fan out to the read pool) while the caller
    # consumes the current one; leaving the loop early shuts both pools down.
    with concurrent.futures.ThreadPoolExecutor(max(1, read_threads)) as read_pool, \
        concurrent.futures.ThreadPoolExecutor(1) as ahead:
      pending = ahead.submit(build, 0, read_pool) if n_batches else None
      for b in range(n_batches):
        current = pending.result()
        pending = ahead.submit(build, b + 1, read_pool) if b + 1 < n_batches else None
        yield current

  return generate()
