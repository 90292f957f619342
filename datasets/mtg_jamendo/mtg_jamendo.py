"""MTG-Jamendo autotagging top-50 (split-0): full tracks, or 30 s centre excerpts."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from .. import common

# The reference binarises with LabelBinarizer().fit(TAGS), whose columns are the tags sorted
# alphabetically, not the order of its TAGS list.
TAGS = tuple(sorted((
    'genre---alternative', 'genre---ambient', 'genre---atmospheric', 'genre---chillout',
    'genre---classical', 'genre---dance', 'genre---downtempo', 'genre---easylistening',
    'genre---electronic', 'genre---experimental', 'genre---folk', 'genre---funk',
    'genre---hiphop', 'genre---house', 'genre---indie', 'genre---instrumentalpop', 'genre---jazz',
    'genre---lounge', 'genre---metal', 'genre---newage', 'genre---orchestral', 'genre---pop',
    'genre---popfolk', 'genre---poprock', 'genre---reggae', 'genre---rock', 'genre---soundtrack',
    'genre---techno', 'genre---trance', 'genre---triphop', 'genre---world',
    'instrument---acousticguitar', 'instrument---bass', 'instrument---computer',
    'instrument---drummachine', 'instrument---drums', 'instrument---electricguitar',
    'instrument---electricpiano', 'instrument---guitar', 'instrument---keyboard',
    'instrument---piano', 'instrument---strings', 'instrument---synthesizer',
    'instrument---violin', 'instrument---voice', 'mood/theme---emotional',
    'mood/theme---energetic', 'mood/theme---film', 'mood/theme---happy',
    'mood/theme---relaxing')))

SPLIT_FILES = {'train': 'autotagging_top50tags-train.tsv',
               'validation': 'autotagging_top50tags-validation.tsv',
               'test': 'autotagging_top50tags-test.tsv'}
HEADER = ('TRACK_ID', 'ARTIST_ID', 'ALBUM_ID', 'PATH', 'DURATION', 'TAGS')


@dataclasses.dataclass(eq=False)
class MtgJamendoConfig(tfds.core.BuilderConfig):
  """excerpt_seconds: None stores whole tracks; otherwise a centred excerpt of that length."""
  excerpt_seconds: float | None = None


def centre_excerpt(audio: np.ndarray, num_samples: int) -> np.ndarray:
  """The centred num_samples of audio (all of it when shorter)."""
  if len(audio) <= num_samples:
    return audio
  start = (len(audio) - num_samples) // 2
  return audio[start:start + num_samples]


def read_split(path: str) -> list[tuple[str, str, float, list[str]]]:
  """(track_id, relative audio path, duration in seconds, tags) per row of an autotagging TSV."""
  rows = common.read_tsv(path)
  if not rows or tuple(c.strip() for c in rows[0][:6]) != HEADER:
    raise ValueError(f'{path}: expected the header {"<TAB>".join(HEADER)}; use the official '
                     'split-0 autotagging_top50tags TSV.')
  out = []
  for line, row in enumerate(rows[1:], start=2):
    if len(row) < 6:
      raise ValueError(f'{path}:{line}: fewer than 6 tab-separated fields; the file is damaged.')
    try:
      duration = float(row[4])
    except ValueError as e:
      raise ValueError(f'{path}:{line}: DURATION {row[4]!r} is not a number of seconds; the '
                       'file is damaged.') from e
    tags = [t.strip() for t in row[5:] if t.strip()]
    unknown = sorted(set(tags) - set(TAGS))
    if unknown:
      raise ValueError(f'{path}:{line}: tags {unknown} are not among the top-50; use the '
                       'autotagging_top50tags split files.')
    out.append((row[0].strip(), row[3].strip(), duration, tags))
  return out


class MtgJamendo(common.ManualAudioBuilder):
  """MTG-Jamendo autotagging, top-50 tags (alphabetical columns), official split-0.

  Config `full` (default) stores whole tracks, as the reference trains on random crops and
  evaluates 16 chunks of the whole track: 55,380 tracks of ~245 s, about 430 GB of int16.
  Config `excerpt30` stores the centred 30 s of each track (~53 GB), for smaller machines.
  """
  BUILDER_CONFIGS = [
      MtgJamendoConfig(name='full', description='Whole tracks (reference protocol).'),
      MtgJamendoConfig(name='excerpt30', excerpt_seconds=30.0,
                       description='The centred 30 s of every track.'),
  ]
  CLASS_NAMES = TAGS
  TASK = 'tagging'
  # The mean track length; each clip's shard-plan length comes from the TSV's DURATION instead.
  CLIP_SECONDS = 245.0
  HOMEPAGE = 'https://mtg.github.io/mtg-jamendo-dataset/'
  README = common.readme_path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put autotagging_top50tags-{train,validation,test}.tsv (data/splits/split-0) and the '
      f'audio folders 00/ ... 99/ directly in manual_dir; see {README}.')

  def _stored_seconds(self, duration: float) -> float:
    """Expected stored length of a track of `duration` s (what the shard plan counts)."""
    seconds = self.builder_config.excerpt_seconds
    return duration if seconds is None else min(duration, seconds)

  def _transform(self, audio):
    seconds = self.builder_config.excerpt_seconds
    if seconds is None:
      return audio
    return centre_excerpt(audio, int(round(seconds * common.SAMPLE_RATE)))

  @staticmethod
  def _audio_path(root: str, rel: str) -> str:
    path = os.path.join(root, rel)
    # The raw_30s download names the same tracks NN/ID.low.mp3.
    low = os.path.splitext(path)[0] + '.low.mp3'
    return low if not os.path.exists(path) and os.path.exists(low) else path

  def _make_splits(self, root):
    paths = common.require_files(root, list(SPLIT_FILES.values()), self.README)
    index = {t: i for i, t in enumerate(TAGS)}
    splits = {}
    for split, path in zip(SPLIT_FILES, paths):
      splits[split] = [
          common.Clip(key=track, id=track, path=self._audio_path(root, rel),
                      labels=common.multi_hot((index[t] for t in tags), len(TAGS)),
                      seconds=self._stored_seconds(duration))
          for track, rel, duration, tags in read_split(path)]
    return splits
