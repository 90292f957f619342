"""Random-access record sources: prepared TFDS datasets (array_record) and an in-memory fake set.

A source has `len()` and `source[i] -> {'audio': int16 (n,), 'labels': float32 (C,), 'id': bytes}`
(the features of every builder in `datasets/`, docs/architecture.md). Prepared datasets are read
from their files alone (`tfds.builder_from_directory`): the reading process never imports the
builder class, needs no TensorFlow, and a name that also exists in the public TFDS catalog (e.g.
`speech_commands`) still reads *our* prepared files rather than the catalog's definition.

Layout read: `<data_dir>/<name>/[<config_name>/]<version>/dataset_info.json`; the highest complete
version wins.

`load('fake', split, data_dir, config_name='tracks=64,classes=5,samples=24000')` returns a
`FakeSource`: tracks whose classes are audible as tones, so a tiny model can learn them, for the
tests and benchmarks of the whole project. `write_fake_dataset` prepares the same tracks as a real
array_record TFDS dataset (`fake_tracks`), for the full read path.
"""
from __future__ import annotations

import functools
import os
import re
from typing import Any, Iterable

import numpy as np
import tensorflow_datasets as tfds

from hcnn_jax.data import ordered_pool

SAMPLE_RATE = 16000
FAKE_NAME = 'fake'
FAKE_TRACKS_NAME = 'fake_tracks'
_VERSION_RE = re.compile(r'^\d+\.\d+\.\d+$')
# Distinct split seeds so that train / validation / test of one fake config hold different tracks.
_SPLIT_SEEDS = {'train': 0, 'validation': 1, 'test': 2}
# Fewer tracks than this are synthesised in-process: starting worker processes would cost more.
_MIN_TRACKS_FOR_WORKERS = 64
# Target shard size: TFDS's shard writer holds one shard's examples in memory while it writes.
_FAKE_SHARD_BYTES = 256 << 20


def _plain(value: Any) -> Any:
  """Deep-converts MetadataDict / numpy values into plain Python containers and scalars."""
  if isinstance(value, dict):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return value


# --------------------------------------------------------------------------------- fake tracks


def tone_frequencies(num_classes: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  """The tone (Hz) that marks each class: linearly spaced in [200 Hz, 0.4 · sample_rate].

  Linear spacing keeps neighbouring classes several STFT bins apart (n_fft 512 → 31.25 Hz bins)
  even for 50 classes.
  """
  if num_classes == 1:
    return np.array([440.0])
  return np.linspace(200.0, 0.4 * sample_rate, num_classes)


class FakeSource:
  """In-memory random-access source of synthetic tracks with learnable labels.

  Track i is generated on demand from (seed, i), so the source is tiny to pickle into grain
  workers and identical in every process. Its audio is low-level noise plus one sine per active
  class at that class's tone frequency (random phase and level), stored as int16 like the
  prepared datasets. multi_label=True gives multi-hot labels with at least one class per track;
  False gives one-hot labels (keyword spotting). With min_samples set, lengths are uniform in
  [min_samples, num_samples], which exercises the padding of short tracks.
  """

  def __init__(self, num_tracks: int, num_classes: int, num_samples: int, seed: int = 0,
               multi_label: bool = True, min_samples: int | None = None,
               sample_rate: int = SAMPLE_RATE):
    if num_tracks < 1 or num_classes < 1 or num_samples < 1:
      raise ValueError(f'FakeSource needs num_tracks, num_classes and num_samples >= 1, got '
                       f'{num_tracks}, {num_classes}, {num_samples}.')
    if min_samples is not None and not 0 <= min_samples <= num_samples:
      raise ValueError(f'FakeSource min_samples must be in [0, num_samples={num_samples}], '
                       f'got {min_samples}.')
    self.num_tracks = int(num_tracks)
    self.num_classes = int(num_classes)
    self.num_samples = int(num_samples)
    self.seed = int(seed)
    self.multi_label = bool(multi_label)
    self.min_samples = None if min_samples is None else int(min_samples)
    self.sample_rate = int(sample_rate)
    self.frequencies = tone_frequencies(self.num_classes, self.sample_rate)

  def __len__(self) -> int:
    return self.num_tracks

  def __repr__(self) -> str:
    return (f'FakeSource(num_tracks={self.num_tracks}, num_classes={self.num_classes}, '
            f'num_samples={self.num_samples}, seed={self.seed}, multi_label={self.multi_label}, '
            f'min_samples={self.min_samples})')

  def labels(self, index: int) -> np.ndarray:
    """The label vector of track `index` (cheap: no audio is synthesised)."""
    return self._labels(self._rng(index))

  def _rng(self, index: int) -> np.random.Generator:
    return np.random.default_rng([self.seed, int(index)])

  def _labels(self, rng: np.random.Generator) -> np.ndarray:
    c = self.num_classes
    labels = np.zeros((c,), np.float32)
    if self.multi_label:
      # About two active classes per track, never none (every track is learnable).
      labels[rng.random(c) < min(0.5, 2.0 / c)] = 1.0
      if not labels.any():
        labels[rng.integers(c)] = 1.0
    else:
      labels[rng.integers(c)] = 1.0
    return labels

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if index < 0:
      index += self.num_tracks
    if not 0 <= index < self.num_tracks:
      raise IndexError(f'track index {index} out of range for {self.num_tracks} tracks.')
    rng = self._rng(index)
    labels = self._labels(rng)
    n = self.num_samples
    if self.min_samples is not None:
      n = int(rng.integers(self.min_samples, self.num_samples + 1))
    t = np.arange(n, dtype=np.float64) / self.sample_rate
    x = 0.02 * rng.standard_normal(n)
    for k in np.flatnonzero(labels):
      level = rng.uniform(0.15, 0.3)
      x += level * np.sin(2.0 * np.pi * self.frequencies[k] * t + rng.uniform(0.0, 2.0 * np.pi))
    audio = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    return {'audio': audio, 'labels': labels, 'id': f'fake-{self.seed}-{index:06d}'.encode()}

  def metadata(self) -> dict[str, Any]:
    """The plain metadata dict of a prepared dataset, for this source."""
    return {
        'name': FAKE_NAME,
        'class_names': [f'tone_{k:02d}' for k in range(self.num_classes)],
        'num_classes': self.num_classes,
        'sample_rate': self.sample_rate,
        'task': 'tagging' if self.multi_label else 'keywords',
        'skipped_files': 0,
        'skipped': [],
        'num_examples': self.num_tracks,
    }


_FAKE_KEYS = {
    'tracks': ('num_tracks', int),
    'classes': ('num_classes', int),
    'samples': ('num_samples', int),
    'min_samples': ('min_samples', int),
    'seed': ('seed', int),
    'multi_label': ('multi_label', None),
}
_FAKE_DEFAULTS = {'num_tracks': 64, 'num_classes': 5, 'num_samples': 24000}


def parse_fake_config(config_name: str | None) -> dict[str, Any]:
  """'tracks=64,classes=5,samples=24000[,min_samples=N][,seed=S][,multi_label=0|1]' → kwargs."""
  kwargs = dict(_FAKE_DEFAULTS)
  for item in filter(None, (s.strip() for s in (config_name or '').split(','))):
    key, sep, value = item.partition('=')
    key = key.strip()
    if not sep or key not in _FAKE_KEYS:
      raise ValueError(f'Bad fake dataset config item {item!r} in {config_name!r}: use '
                       f'comma-separated key=value with keys {sorted(_FAKE_KEYS)}.')
    field, kind = _FAKE_KEYS[key]
    value = value.strip()
    try:
      if kind is None:
        if value.lower() not in ('0', '1', 'true', 'false'):
          raise ValueError(value)
        kwargs[field] = value.lower() in ('1', 'true')
      else:
        kwargs[field] = kind(value)
    except ValueError:
      raise ValueError(f'Bad value {value!r} for {key!r} in fake dataset config '
                       f'{config_name!r}.') from None
  return kwargs


def check_config(config) -> None:
  """ValueError naming the key when `config.dataset` cannot be loaded as given (no reading)."""
  ds = config.dataset
  if ds.name == FAKE_NAME:
    try:
      parse_fake_config(ds.get('config_name'))
    except ValueError as err:
      raise ValueError(f'dataset.config_name: {err}') from None
  elif not ds.get('data_dir'):
    raise ValueError(f'dataset.data_dir: dataset {ds.name!r} needs the directory it is prepared '
                     f'in (hcnn-build {ds.name} --data_dir DIR)')


def fake_source(split: str, config_name: str | None = None) -> FakeSource:
  """The FakeSource of one split of a fake config; splits hold different tracks."""
  kwargs = parse_fake_config(config_name)
  if split not in _SPLIT_SEEDS:
    raise ValueError(f'Unknown split {split!r} of the fake dataset; use one of '
                     f'{sorted(_SPLIT_SEEDS)}.')
  kwargs['seed'] = 1000 * kwargs.get('seed', 0) + _SPLIT_SEEDS[split]
  return FakeSource(**kwargs)


class FakeTracks(tfds.core.ShardBasedBuilder, skip_registration=True):
  """TFDS builder writing FakeSource splits as array_record, with the features of every builder.

  Not registered: it is instantiated by `write_fake_dataset` only, and the written dataset is read
  back from its files like any other prepared dataset. Shard by shard (about 256 MB each) and in
  index order, like `synth_gm`: a GeneratorBasedBuilder would pass every record through TFDS's
  shuffler, which spills a split of more than 1 GB (1,100 tracks of 29 s) through `tf.io.gfile`
  and so needs TensorFlow. Tracks are synthesised in `workers` processes when there are many.
  """

  VERSION = tfds.core.Version('1.2.0')
  RELEASE_NOTES = {'1.0.0': 'Synthetic tone tracks for tests and benchmarks.',
                   '1.1.0': 'Audio stored as raw int16 bytes, like the real builders.',
                   '1.2.0': 'Written shard by shard in index order: any size without TensorFlow.'}

  def __init__(self, *, fake_config: str | None = None,
               splits: Iterable[str] = ('train',), workers: int | None = None, **kwargs):
    if workers is not None and workers < 1:
      raise ValueError(f'write_fake_dataset: workers must be >= 1, got {workers}.')
    self._fake_config = fake_config
    self._fake_splits = tuple(splits)
    self._workers = workers
    self._pool = None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    meta = fake_source('train', self._fake_config).metadata()
    return tfds.core.DatasetInfo(
        builder=self,
        description='Synthetic tracks: one sine per active class over low-level noise.',
        features=tfds.features.FeaturesDict({
            # Raw int16 bytes, as every real builder stores audio (2 bytes per sample; the
            # default encoding would write a proto int64 list, ~4x larger and slower to parse).
            'audio': tfds.features.Tensor(shape=(None,), dtype=np.int16,
                                          encoding=tfds.features.Encoding.BYTES),
            'labels': tfds.features.Tensor(shape=(meta['num_classes'],), dtype=np.float32),
            'id': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(
            class_names=meta['class_names'], sample_rate=meta['sample_rate'],
            task=meta['task'], skipped_files=0, skipped=[], fake_config=self._fake_config or ''),
    )

  def _shard_iterators_per_split(self, dl_manager):
    del dl_manager  # nothing to download
    iterators = {}
    for split in self._fake_splits:
      source = fake_source(split, self._fake_config)
      per_shard = max(1, _FAKE_SHARD_BYTES // (2 * source.num_samples))
      n = len(source)
      iterators[split] = [functools.partial(self._shard, source, lo, min(lo + per_shard, n))
                          for lo in range(0, n, per_shard)]
    return iterators

  def _download_and_prepare(self, dl_manager, download_config=None):
    total = sum(fake_source(s, self._fake_config).num_tracks for s in self._fake_splits)
    workers = 1 if total < _MIN_TRACKS_FOR_WORKERS else self._workers
    with ordered_pool.OrderedPool(workers) as self._pool:
      super()._download_and_prepare(dl_manager, download_config)
    self._pool = None

  def _shard(self, source: FakeSource, lo: int, hi: int):
    for i, record in zip(range(lo, hi), self._pool.map(source.__getitem__, range(lo, hi))):
      yield i, {'audio': record['audio'], 'labels': record['labels'],
                'id': record['id'].decode()}


def write_fake_dataset(data_dir: str | os.PathLike, config_name: str | None = None,
                       splits: Iterable[str] = ('train',), workers: int | None = None) -> str:
  """Prepares FakeSource splits as the array_record TFDS dataset `fake_tracks` in data_dir.

  Returns the prepared directory. `load('fake_tracks', split, data_dir)` reads it back; its
  records are those of `load('fake', split, config_name=config_name)`, in the same order.
  `workers`: synthesising processes (default: the CPU count, at most 8; 1 works in-process).
  """
  builder = FakeTracks(fake_config=config_name, splits=splits, workers=workers,
                       data_dir=os.fspath(data_dir), file_format='array_record')
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)


# ---------------------------------------------------------------------------- prepared datasets


def _build_command(name: str, data_dir: str, config_name: str | None) -> str:
  from hcnn_jax.data import builders  # pylint: disable=import-outside-toplevel
  return builders.build_command(name, data_dir, config_name)


def prepared_dir(name: str, data_dir: str | os.PathLike,
                 config_name: str | None = None) -> str:
  """The directory of the highest complete prepared version of a dataset (or ValueError)."""
  data_dir = os.fspath(data_dir)
  root = os.path.join(data_dir, name)
  if config_name:
    root = os.path.join(root, config_name)
  versions = []
  if os.path.isdir(root):
    for entry in os.listdir(root):
      if (_VERSION_RE.match(entry)
          and os.path.isfile(os.path.join(root, entry, 'dataset_info.json'))):
        versions.append(tuple(int(p) for p in entry.split('.')))
  if not versions:
    hint = ''
    if not config_name and os.path.isdir(root):
      configs = sorted(e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e))
                       and not _VERSION_RE.match(e) and not e.startswith('incomplete'))
      if configs:
        hint = f' It has the configs {configs}: pass config_name (dataset.config_name).'
    raise ValueError(
        f'Dataset {name!r}{f" (config {config_name!r})" if config_name else ""} is not prepared '
        f'in {root}: no <version>/dataset_info.json there.{hint} Build it with: '
        f'{_build_command(name, data_dir, config_name)}')
  return os.path.join(root, '.'.join(str(p) for p in max(versions)))


def load(name: str, split: str, data_dir: str | os.PathLike | None,
         config_name: str | None = None) -> tuple[Any, dict[str, Any]]:
  """(source, metadata) of one split of a prepared dataset, or of the fake set for name 'fake'.

  metadata is a plain dict: the builder's `info.metadata` (class_names, sample_rate, task,
  skipped_files, skipped, ...) plus name, config_name, num_classes, num_examples (of this
  split), splits ({split: num_examples}) and path (the prepared directory).
  """
  if name == FAKE_NAME:
    source = fake_source(split, config_name)
    meta = source.metadata()
    meta.update(config_name=config_name, splits={s: source.num_tracks for s in _SPLIT_SEEDS},
                path=None)
    return source, meta
  if data_dir is None:
    raise ValueError(f'Dataset {name!r} needs a data_dir (dataset.data_dir) holding the prepared '
                     f'dataset; build it with: {_build_command(name, "DIR", config_name)}')
  path = prepared_dir(name, data_dir, config_name)
  builder = tfds.builder_from_directory(path)
  info = builder.info
  splits = {s: int(info.splits[s].num_examples) for s in info.splits}
  if split.split('[')[0] not in splits:
    raise ValueError(f'Dataset {name!r} in {path} has no split {split!r}; it has '
                     f'{sorted(splits)}.')
  source = builder.as_data_source(split=split)
  meta = _plain(dict(info.metadata or {}))
  labels = info.features['labels'] if 'labels' in info.features else None
  meta.update(
      name=name, config_name=config_name, splits=splits, path=path,
      num_classes=int(labels.shape[0]) if labels is not None else None,
      num_examples=len(source))
  return source, meta
