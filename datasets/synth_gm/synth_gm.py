"""TFDS builder `synth_gm`: music-tagging clips rendered offline from random General MIDI scores.

Nothing is downloaded: each clip is composed (datasets/synth_gm/compose.py), rendered with
TinySoundFont and the GM soundfont that ships in pretty_midi (render.py), and tagged from its score
(see README.md for the tag definitions and frequencies). Configs: `tiny` (tests), `default` (the
first-run dataset) and `large` (MTAT-sized: 21,108 clips of 29.1 s). Each has two companions,
`<config>_fluidr3` and `<config>_musescore`: only its test split, the same scores (same seed, ids
and clip length) rendered with another General MIDI soundfont from a Debian package, to measure
how much of what a model learned is one soundfont's samples.

A clip depends only on (config seed, split, index), so the build is reproducible whatever the
order or the number of worker processes.

This is a `tfds.core.ShardBasedBuilder`, not a `GeneratorBasedBuilder`: the latter passes every
example through TFDS's shuffler, which spills a split of more than 1 GB to temporary files through
`tf.io.gfile` and so needs TensorFlow, which we do not install. Shard by shard, the writer streams
(one shard, about 256 MB, in memory at a time) and the `large` config builds without TensorFlow.
Records keep index order within a split; the data pipeline shuffles.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
from typing import Dict, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from . import clips, render
from . import tags as synth_tags
from hcnn_jax.data.ordered_pool import OrderedPool, default_workers

_DESCRIPTION = """\
Music-tagging clips rendered from randomly composed but musical General MIDI scores (melodies,
chords, pads, bass lines and drum patterns in random keys, tempi and dynamics) with the TimGM6mb
soundfont. 16 kHz mono int16. Multi-label tags in the spirit of MagnaTagATune: instrument families,
drums/no_drums, fast/slow, loud/quiet, high/low register, solo/ensemble.
"""

# Fewer clips than this are rendered in-process: starting worker processes would cost more.
_MIN_CLIPS_FOR_WORKERS = 64
# Target shard size. TFDS's shard writer holds one shard's examples in memory while it writes.
_SHARD_BYTES = 256 << 20


def _clips_per_shard(clip_seconds: float) -> int:
  return max(1, int(_SHARD_BYTES // (2 * clips.SAMPLE_RATE * clip_seconds)))


@dataclasses.dataclass(eq=False)
class SynthGmConfig(tfds.core.BuilderConfig):
  """Sizes of a synth_gm build; the seed fixes every clip."""
  num_train: int = 0
  num_validation: int = 0
  num_test: int = 0
  clip_seconds: float = 8.0
  seed: int = 0
  # A key of render.SOUNDFONTS; another bank changes only the rendering, never the scores.
  soundfont: str = render.DEFAULT_SOUNDFONT
  splits: Tuple[str, ...] = ('train', 'validation', 'test')
  # Banks that render the train and validation clips in turn (clip i: bank i mod n); the test
  # split stays `soundfont`. Empty: every split is `soundfont`.
  train_soundfonts: Tuple[str, ...] = ()

  def bank(self, split: str, index: int) -> str:
    if self.train_soundfonts and split != 'test':
      return self.train_soundfonts[index % len(self.train_soundfonts)]
    return self.soundfont

  def split_sizes(self) -> Dict[str, int]:
    sizes = {'train': self.num_train, 'validation': self.num_validation, 'test': self.num_test}
    return {split: sizes[split] for split in self.splits}


def _other_soundfont(base: SynthGmConfig, suffix: str, soundfont: str) -> SynthGmConfig:
  """`base`'s test split (same seed, so the same scores and ids) rendered with `soundfont`."""
  return SynthGmConfig(
      name=f'{base.name}_{suffix}', description=f'The test split of `{base.name}` (the same '
      f'{base.num_test} scores) rendered with the {soundfont} soundfont; only a test split.',
      num_test=base.num_test, clip_seconds=base.clip_seconds, seed=base.seed,
      soundfont=soundfont, splits=('test',))


# Suffix of the companion configs -> soundfont (render.SOUNDFONTS).
OTHER_SOUNDFONTS = {'fluidr3': 'FluidR3_GM', 'musescore': 'MuseScore_General'}
# The training banks of `<config>_multibank`: none of them renders a companion's test split.
MULTIBANK = ('TimGM6mb', 'Csound_GM')


def _multibank(base: SynthGmConfig) -> SynthGmConfig:
  """`base` with its train and validation clips rendered by MULTIBANK in turn."""
  return dataclasses.replace(
      base, name=f'{base.name}_multibank', train_soundfonts=MULTIBANK,
      description=f'`{base.name}` (the same scores, ids and test split) with its train and '
      f'validation clips rendered by {" and ".join(MULTIBANK)} in turn, so that a model meets '
      'each instrument in more than one bank.')


def _validate(config: SynthGmConfig) -> None:
  for bank in (config.soundfont, *config.train_soundfonts):
    render.soundfont_path(bank)  # an unknown or missing bank fails before any work
  for split, n in config.split_sizes().items():
    if n < 1:
      raise ValueError(f'synth_gm config {config.name!r}: num_{split} must be >= 1, got {n}.')
  if not config.clip_seconds > 0:
    raise ValueError(f'synth_gm config {config.name!r}: clip_seconds must be > 0, '
                     f'got {config.clip_seconds}.')


def _describe_soundfont(name: str) -> Dict[str, object]:
  """Which file rendered the clips, down to its bytes (a rerun can check it has the same one)."""
  path = render.soundfont_path(name)
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return {'name': name, 'path': path, 'bytes': os.path.getsize(path),
          'sha256': digest.hexdigest(), 'gain_db': render.soundfont(name).gain_db}


class SynthGm(tfds.core.ShardBasedBuilder):
  """Offline-rendered General MIDI music-tagging dataset (no download)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release: 26 tags, TimGM6mb soundfont, 16 kHz int16.'}
  _BASE_CONFIGS = [
      SynthGmConfig(name='tiny', description='A few dozen 6 s clips, for tests (seconds to build).',
                    num_train=24, num_validation=8, num_test=8, clip_seconds=6.0, seed=11),
      SynthGmConfig(name='default', description='2,000 clips of 8 s: a small model learns it on a '
                    'CPU in minutes; builds in well under two minutes.',
                    num_train=1500, num_validation=250, num_test=250, clip_seconds=8.0, seed=2020),
      SynthGmConfig(name='large', description='MTAT scale: 21,108 clips of 29.1 s in the MTAT '
                    'split sizes (about 15 GB).',
                    num_train=15247, num_validation=1529, num_test=4332, clip_seconds=29.1,
                    seed=2021),
  ]
  BUILDER_CONFIGS = _BASE_CONFIGS + [
      _other_soundfont(base, suffix, soundfont)
      for base in _BASE_CONFIGS for suffix, soundfont in OTHER_SOUNDFONTS.items()] + [
          _multibank(base) for base in _BASE_CONFIGS]
  DEFAULT_BUILDER_CONFIG_NAME = 'default'

  def __init__(self, *, num_workers: Optional[int] = None, **kwargs):
    """`num_workers`: rendering processes (default: the CPU count, at most 8; 1 renders in-process)."""
    if num_workers is not None and num_workers < 1:
      raise ValueError(f'synth_gm: num_workers must be >= 1, got {num_workers}.')
    self._num_workers = num_workers
    self._pool: Optional[OrderedPool] = None
    self._counts: Dict[str, collections.Counter] = {}
    self._attenuated: collections.Counter = collections.Counter()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            # Raw bytes: the default encoding widens int16 to int64 varints (about 5 bytes a sample).
            'audio': tfds.features.Tensor(shape=(None,), dtype=np.int16,
                                          encoding=tfds.features.Encoding.BYTES),
            'labels': tfds.features.Tensor(shape=(len(synth_tags.TAGS),), dtype=np.float32),
            'id': tfds.features.Text(),
        }),
        supervised_keys=('audio', 'labels'),
        homepage='https://github.com/craffel/pretty-midi (soundfont), '
                 'https://github.com/nwhitehead/tinysoundfont-pybind (renderer)',
        metadata=tfds.core.MetadataDict(
            class_names=list(synth_tags.TAGS),
            sample_rate=clips.SAMPLE_RATE,
            task='tagging',
            skipped_files=0,
            skipped=[],
            clip_seconds=float(self.builder_config.clip_seconds),
            seed=int(self.builder_config.seed),
            tag_counts={},
            attenuated_clips={},
        ),
    )

  def _shard_iterators_per_split(self, dl_manager):
    del dl_manager  # nothing to download
    cfg = self.builder_config
    _validate(cfg)
    self._counts = {split: collections.Counter() for split in cfg.split_sizes()}
    self._attenuated = collections.Counter()
    per_shard = _clips_per_shard(cfg.clip_seconds)
    return {split: [functools.partial(self._shard, split, lo, min(lo + per_shard, n))
                    for lo in range(0, n, per_shard)]
            for split, n in cfg.split_sizes().items()}

  def _download_and_prepare(self, dl_manager, download_config=None):
    total = sum(self.builder_config.split_sizes().values())
    workers = self._num_workers or default_workers()
    with OrderedPool(1 if total < _MIN_CLIPS_FOR_WORKERS else workers) as self._pool:
      super()._download_and_prepare(dl_manager, download_config)
    self._pool = None
    # Written into the prepared folder's metadata.json right after this returns.
    meta = self.info.metadata
    for split, counts in self._counts.items():
      meta['tag_counts'][split] = {t: int(counts[t]) for t in synth_tags.TAGS}
      meta['attenuated_clips'][split] = int(self._attenuated[split])
    if self.builder_config.soundfont != render.DEFAULT_SOUNDFONT:
      # Only the companion configs name their bank, so tiny/default/large write what they wrote.
      meta['soundfont'] = _describe_soundfont(self.builder_config.soundfont)
    if self.builder_config.train_soundfonts:
      meta['train_soundfonts'] = [_describe_soundfont(b)
                                  for b in self.builder_config.train_soundfonts]

  def _shard(self, split: str, lo: int, hi: int):
    cfg = self.builder_config
    jobs = [(cfg.seed, split, i, cfg.clip_seconds, cfg.bank(split, i)) for i in range(lo, hi)]
    for clip_id, audio, labels, attenuated in self._pool.map(clips.render_job, jobs):
      self._counts[split].update(t for t, on in zip(synth_tags.TAGS, labels) if on)
      self._attenuated[split] += attenuated
      yield clip_id, {'audio': audio, 'labels': labels, 'id': clip_id}
