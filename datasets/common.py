"""What every manual-download audio builder shares: features, metadata, decoding with skips.

A builder subclasses `ManualAudioBuilder`, names its classes and task, and turns the user's
manual_dir into a list of `Clip`s per split (`_make_splits`). This module decodes each clip with
`hcnn_jax.data.audio.load_audio` (16 kHz mono), stores it as int16 raw bytes, and skips files that
fail, whatever the exception (a bad file, a codec error, a name that is not UTF-8 and cannot be
stored): each skip is logged as a warning naming the file and the reason, and lands in
`info.metadata['skipped_files']` / `['skipped']`, which TFDS writes to metadata.json at the end of
the build (the metadata is saved after every shard has been written, in this process). One file
never aborts a build.

The builders are `tfds.core.ShardBasedBuilder`s, not `GeneratorBasedBuilder`s: the latter pass
every example through TFDS's shuffler, which spills a split of more than 1 GB
(`tensorflow_datasets.core.shuffle.MAX_MEM_BUFFER_SIZE`) to temporary files through `tf.io.gfile`
and so needs TensorFlow, which we do not install; MTAT's train split alone is ~14 GB. Here each
split is cut, in key order, into shards of about `SHARD_BYTES` of audio (sized from each clip's
expected length) and written one shard at a time, so memory stays at one shard whatever the split.
Records are in key order within a split; the data pipeline shuffles.
"""
from __future__ import annotations

import abc
import collections
import concurrent.futures
import csv
import dataclasses
import functools
import logging
import os
import pickle
from typing import Iterable, Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from hcnn_jax.data.audio import AudioError, display_path, load_audio, to_int16

SAMPLE_RATE = 16000
TASKS = ('tagging', 'keywords', 'events')
SPLITS = ('train', 'validation', 'test')
# Missing audio can run to thousands of files (MSD); past this many, warnings are summarised.
MAX_LOGGED_SKIPS = 50
# Target size of one shard's audio. TFDS's shard writer holds a shard's examples in memory while it
# writes them, so this bounds the build's memory (plus the decoder threads' few clips).
SHARD_BYTES = 256 << 20
_BYTES_PER_SECOND = 2 * SAMPLE_RATE  # int16 mono

# Named by where the package is imported from: a logger called 'datasets' is Hugging Face's.
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Clip:
  """One example to decode: `key` is unique within its split, `id` is stored in the record.

  `seconds` is the expected length of the stored audio, used only to size shards; None means the
  builder's typical `CLIP_SECONDS`.
  """
  key: str
  id: str
  path: str
  labels: np.ndarray
  seconds: float | None = None


def features(num_classes: int) -> tfds.features.FeaturesDict:
  """The features every builder stores (docs/architecture.md)."""
  return tfds.features.FeaturesDict({
      # Raw bytes (2 per sample): the default encoding widens int16 to int64 varints, 1-10 bytes a
      # sample (~6 on full-scale noise). Readers still get int16 (n,).
      'audio': tfds.features.Tensor(shape=(None,), dtype=np.int16,
                                    encoding=tfds.features.Encoding.BYTES),
      'labels': tfds.features.Tensor(shape=(num_classes,), dtype=np.float32),
      'id': tfds.features.Text(),
  })


def metadata(class_names: Sequence[str], task: str) -> tfds.core.MetadataDict:
  if task not in TASKS:
    raise ValueError(f'task must be one of {TASKS}, got {task!r}.')
  return tfds.core.MetadataDict(class_names=list(class_names), sample_rate=SAMPLE_RATE, task=task,
                                skipped_files=0, skipped=[])


def multi_hot(indices: Iterable[int], num_classes: int) -> np.ndarray:
  y = np.zeros(num_classes, np.float32)
  y[list(indices)] = 1.0
  return y


def manual_dir(dl_manager) -> str:
  """The user's manual_dir, or a ValueError saying where the files should go."""
  try:
    return os.fspath(dl_manager.manual_dir)
  except AssertionError as e:  # TFDS reports a missing/empty manual_dir with an AssertionError
    raise ValueError(str(e)) from e


def readme_path(module_file: str) -> str:
  """The README.md next to a builder module, as messages name it: relative to the working
  directory in a checkout (datasets/mtat/README.md), the installed file's path in a wheel."""
  path = os.path.join(os.path.dirname(os.path.abspath(module_file)), 'README.md')
  try:
    relative = os.path.relpath(path)
  except ValueError:  # another drive (Windows)
    return path
  return path if relative.startswith(os.pardir) else relative


def require_files(root: str, names: Sequence[str], readme: str) -> list[str]:
  """Absolute paths of `names` under root; one ValueError listing every missing file."""
  paths = [os.path.join(root, n) for n in names]
  missing = [n for n, p in zip(names, paths) if not os.path.isfile(p)]
  if missing:
    raise ValueError(f'{root} lacks {", ".join(missing)}; put the official files there as '
                     f'described in {readme}.')
  return paths


def read_lines(path: str) -> list[str]:
  """Non-empty lines without surrounding whitespace; '#' starts a comment line."""
  with open(path, encoding='utf-8') as f:
    return [s for s in (line.strip() for line in f) if s and not s.startswith('#')]


def read_tsv(path: str) -> list[list[str]]:
  """Rows of a tab-separated file (quoted fields allowed), blank rows dropped."""
  with open(path, encoding='utf-8', newline='') as f:
    return [row for row in csv.reader(f, delimiter='\t') if any(c.strip() for c in row)]


class _SafeUnpickler(pickle.Unpickler):
  """Unpickles plain containers, strings, numbers and numpy arrays, and nothing that runs code.

  The MSD split files are Python 2 cPickles of lists of ids and of dicts id → numpy tag vector.
  """
  _BUILTINS = {'list', 'dict', 'tuple', 'set', 'frozenset', 'str', 'bytes', 'bytearray', 'int',
               'float', 'complex', 'bool'}
  _NUMPY = {('numpy', 'ndarray'), ('numpy', 'dtype'),
            ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
            ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
            ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
            # Python 3 protocol-2 pickles rebuild bytes (array buffers) with _codecs.encode.
            ('_codecs', 'encode')}

  def find_class(self, module, name):
    if module in ('builtins', '__builtin__') and name in self._BUILTINS:
      return super().find_class('builtins', name)
    if (module, name) in self._NUMPY:
      # numpy 2 moved numpy.core to numpy._core; old pickles name the former.
      return super().find_class(module.replace('numpy.core', 'numpy._core'), name)
    raise pickle.UnpicklingError(f'global {module}.{name} is not allowed')


def safe_unpickle(path: str):
  """Loads a (Python 2 or 3) pickle of plain data; ValueError for anything else."""
  try:
    with open(path, 'rb') as f:
      # latin1 is numpy's documented way to read Python 2 pickles of arrays; ids stay ASCII.
      return _SafeUnpickler(f, encoding='latin1').load()
  except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
          TypeError, ValueError) as e:
    raise ValueError(f'{path}: not a pickle of plain lists/dicts/arrays ({e}); use the '
                     'original split file.') from e


def plan_shards(clips: Sequence[Clip], clip_seconds: float,
                shard_bytes: int = SHARD_BYTES) -> list[list[Clip]]:
  """Consecutive runs of `clips` whose expected int16 audio fits in `shard_bytes` each.

  A clip's expected length is `clip.seconds`, else `clip_seconds`. Every shard holds at least one
  clip, so a clip longer than the budget gets a shard of its own.
  """
  if not clip_seconds > 0 or shard_bytes < 1:
    raise ValueError(f'plan_shards needs clip_seconds > 0 and shard_bytes >= 1, got '
                     f'{clip_seconds} and {shard_bytes}.')
  shards: list[list[Clip]] = []
  size = 0
  for clip in clips:
    seconds = clip_seconds if clip.seconds is None else max(float(clip.seconds), 0.0)
    nbytes = seconds * _BYTES_PER_SECOND
    if not shards or size + nbytes > shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(clip)
    size += nbytes
  return shards


def decode_clips(clips: Sequence[Clip], num_workers: int = 4
                 ) -> Iterator[tuple[Clip, np.ndarray | None, AudioError | None]]:
  """(clip, 16 kHz mono float32 audio or None, AudioError or None), in the order of `clips`.

  Decoding runs in threads (libsndfile and soxr release the GIL) with a bounded number in
  flight, so memory stays at a few tracks however long the list. Any exception decoding one file
  (not only AudioError: a codec's own error, MemoryError) comes back as that file's AudioError.
  """
  def work(clip):
    try:
      return load_audio(clip.path, sample_rate=SAMPLE_RATE), None
    except AudioError as e:
      return None, e
    except Exception as e:  # pylint: disable=broad-except
      return None, AudioError(clip.path, f'cannot be decoded ({type(e).__name__}: {e})')

  if num_workers <= 1:
    for clip in clips:
      yield (clip, *work(clip))
    return
  with concurrent.futures.ThreadPoolExecutor(num_workers) as pool:
    pending = collections.deque()
    it = iter(clips)
    for clip in it:
      pending.append((clip, pool.submit(work, clip)))
      if len(pending) >= 2 * num_workers:
        break
    while pending:
      clip, future = pending.popleft()
      nxt = next(it, None)
      if nxt is not None:
        pending.append((nxt, pool.submit(work, nxt)))
      yield (clip, *future.result())


class ManualAudioBuilder(tfds.core.ShardBasedBuilder, skip_registration=True):
  """Base of the builders that read official files the user put in manual_dir.

  Subclasses set CLASS_NAMES, TASK, README, CLIP_SECONDS and implement `_make_splits(root)`; they
  may override `_transform(audio)` to change what is stored (e.g. an excerpt).
  """
  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'First release.',
      '1.1.0': 'Audio stored as raw int16 bytes, not int64 varints; shard-by-shard writing '
               'without TensorFlow; records in key order.',
  }
  CLASS_NAMES: Sequence[str] = ()
  TASK = 'tagging'
  HOMEPAGE = ''
  README = 'the README.md next to the builder'
  DECODE_WORKERS = 4
  # Typical stored clip length (s), for the shard plan of clips without their own `seconds`.
  CLIP_SECONDS = 30.0
  SHARD_BYTES = SHARD_BYTES

  def __init__(self, *, file_format=None, **kwargs):
    # array_record is the only format that builds and reads without TensorFlow.
    super().__init__(file_format=file_format or 'array_record', **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description=(self.__doc__ or '').strip(),
        features=features(len(self.CLASS_NAMES)),
        metadata=metadata(self.CLASS_NAMES, self.TASK), homepage=self.HOMEPAGE or None)

  @abc.abstractmethod
  def _make_splits(self, root: str) -> dict[str, list[Clip]]:
    """{split name: clips} from the files in root (the user's manual_dir)."""

  def _transform(self, audio: np.ndarray) -> np.ndarray:
    return audio

  def skip(self, path: str, reason: str) -> None:
    """Records a file left out of the build, with a warning naming it (bytes of a name that are
    not UTF-8 shown as \\xNN, so that metadata.json and the log can hold it)."""
    md = self.info.metadata
    shown, reason = display_path(path), ' '.join(str(reason).split())
    md['skipped_files'] = md.get('skipped_files', 0) + 1
    md.setdefault('skipped', []).append(f'{shown}: {reason}')
    if md['skipped_files'] <= MAX_LOGGED_SKIPS:
      log.warning('%s: skipping %s: %s', self.name, shown, reason)

  def _shard_iterators_per_split(self, dl_manager):
    root = manual_dir(dl_manager)
    self._root = root
    self.info.metadata['skipped_files'] = 0
    self.info.metadata['skipped'] = []
    plan = {}
    for split, clips in self._make_splits(root).items():
      clips = sorted(clips, key=lambda c: c.key)
      if not clips:
        raise ValueError(f'{self.name}: the {split} split has no clips in {root}; put the '
                         f'official files there as described in {self.README}.')
      for a, b in zip(clips, clips[1:]):
        if a.key == b.key:
          raise ValueError(f'{self.name}: key {a.key!r} appears twice in the {split} split '
                           f'({a.path}, {b.path}); the index files are damaged, use the '
                           'official ones.')
      plan[split] = [functools.partial(self._generate_examples, shard)
                     for shard in plan_shards(clips, self.CLIP_SECONDS, self.SHARD_BYTES)]
    return plan

  def _download_and_prepare(self, dl_manager, download_config=None):
    super()._download_and_prepare(dl_manager, download_config)
    skipped = self.info.metadata['skipped_files']
    if skipped > MAX_LOGGED_SKIPS:
      log.warning('%s: %d files skipped (only the first %d were logged); all are listed in '
                  "info.metadata['skipped'].", self.name, skipped, MAX_LOGGED_SKIPS)
    empty = sorted(name for name, split in self.info.splits.items() if split.num_examples == 0)
    if empty:
      raise ValueError(f'{self.name}: no file of the {", ".join(empty)} split(s) could be '
                       "decoded (see the warnings and info.metadata['skipped']); check the "
                       f'audio in manual_dir against {self.README}.')

  def _relative(self, path: str) -> str:
    rel = os.path.relpath(path, self._root)
    return path if rel.startswith('..') else rel

  def _generate_examples(self, clips: Sequence[Clip]):
    """The examples of one shard, in the order of `clips`; a file that fails is skipped."""
    for clip, audio, err in decode_clips(clips, self.DECODE_WORKERS):
      if err is not None:
        self.skip(self._relative(err.path), err.reason)
        continue
      try:
        example = {'audio': to_int16(self._transform(audio)), 'labels': clip.labels,
                   'id': _utf8(clip.id)}
        key = _utf8(clip.key)
      except Exception as e:  # pylint: disable=broad-except
        self.skip(self._relative(clip.path), f'cannot be stored ({type(e).__name__}: {e})')
        continue
      yield key, example


def _utf8(text: str) -> str:
  """`text` if TFDS can encode it; names made from file names that are not UTF-8 (str with
  surrogate escapes) get their undecodable bytes written as \\xNN instead."""
  try:
    text.encode('utf-8')
    return text
  except UnicodeEncodeError:
    return display_path(text)
