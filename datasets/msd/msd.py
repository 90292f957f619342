"""Million Song Dataset tagging: Choi's split files, audio supplied by the user."""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from .. import common

# split/msd/50tagList.txt: the column order of msd_id_to_tag_vector.cP.
TAGS = (
    'rock', 'pop', 'alternative', 'indie', 'electronic', 'female vocalists', 'dance', '00s',
    'alternative rock', 'jazz', 'beautiful', 'metal', 'chillout', 'male vocalists',
    'classic rock', 'soul', 'indie rock', 'Mellow', 'electronica', '80s', 'folk', '90s', 'chill',
    'instrumental', 'punk', 'oldies', 'blues', 'hard rock', 'ambient', 'acoustic', 'experimental',
    'female vocalist', 'guitar', 'Hip-Hop', '70s', 'party', 'country', 'easy listening', 'sexy',
    'catchy', 'funk', 'electro', 'heavy metal', 'Progressive rock', '60s', 'rnb', 'indie pop',
    'sad', 'House', 'happy')

TRAIN_LIST, TEST_LIST = 'filtered_list_train.cP', 'filtered_list_test.cP'
TAG_VECTORS, TAG_LIST = 'msd_id_to_tag_vector.cP', '50tagList.txt'
SKIP_LIST = 'skip_ids.txt'  # optional: ids to leave out, whitespace-separated
AUDIO_EXTENSIONS = ('.mp3', '.wav', '.flac', '.ogg')
# Choi's README: "first 201680 IDs for training set and rest 11774 IDs for validation".
NUM_VALIDATION = 11774


@dataclasses.dataclass(eq=False)
class MsdConfig(tfds.core.BuilderConfig):
  """num_validation: the last this many ids of filtered_list_train.cP form the validation split."""
  num_validation: int = NUM_VALIDATION


def audio_stem(msd_id: str) -> str:
  """Relative path without extension: TRAAAAK128F9318786 → A/A/A/TRAAAAK128F9318786."""
  return os.path.join(msd_id[2], msd_id[3], msd_id[4], msd_id)


def _id_list(path: str) -> list[str]:
  ids = common.safe_unpickle(path)
  if not isinstance(ids, list) or not all(isinstance(i, (str, bytes)) for i in ids):
    raise ValueError(f'{path}: expected a pickled list of MSD track ids; use the original file.')
  return [i.decode() if isinstance(i, bytes) else i for i in ids]


def _tag_vectors(path: str) -> dict[str, np.ndarray]:
  table = common.safe_unpickle(path)
  if not isinstance(table, dict):
    raise ValueError(f'{path}: expected a pickled dict MSD id → tag vector; use the original '
                     'file.')
  out = {}
  for key, vec in table.items():
    vec = np.asarray(vec).reshape(-1)
    if vec.shape != (len(TAGS),):
      raise ValueError(f'{path}: the vector of {key!r} has {vec.size} entries, expected '
                       f'{len(TAGS)}.')
    out[key.decode() if isinstance(key, bytes) else key] = (vec != 0).astype(np.float32)
  return out


class Msd(common.ManualAudioBuilder):
  """MSD with Last.fm top-50 tags on Choi's filtered split (clips of at least 29.1 s).

  train = filtered_list_train.cP without its last 11,774 ids (201,680), validation = those
  11,774, test = filtered_list_test.cP (28,435). Ids listed in the optional skip_ids.txt and ids
  whose audio is missing (7digital previews are no longer distributed, so most users have a
  subset) are skipped, with their count in info.metadata['skipped_files'].
  """
  BUILDER_CONFIGS = [MsdConfig(name='choi', description="Choi's split: 201,680 / 11,774 / "
                               '28,435 ids.')]
  CLASS_NAMES = TAGS
  TASK = 'tagging'
  CLIP_SECONDS = 30.0  # 7digital previews
  HOMEPAGE = 'https://github.com/keunwoochoi/MSD_split_for_tagging'
  README = common.readme_path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put filtered_list_train.cP, filtered_list_test.cP, msd_id_to_tag_vector.cP, '
      '50tagList.txt (and optionally skip_ids.txt) in manual_dir, with the audio at '
      f'<id[2]>/<id[3]>/<id[4]>/<id>.mp3 (or .wav/.flac/.ogg); see {README}.')

  def _find_audio(self, root: str, msd_id: str) -> str | None:
    stem = os.path.join(root, audio_stem(msd_id))
    for ext in AUDIO_EXTENSIONS:
      if os.path.isfile(stem + ext):
        return stem + ext
    return None

  def _make_splits(self, root):
    train_path, test_path, vec_path, list_path = common.require_files(
        root, [TRAIN_LIST, TEST_LIST, TAG_VECTORS, TAG_LIST], self.README)
    tag_list = common.read_lines(list_path)
    if tuple(tag_list) != TAGS:
      raise ValueError(f'{list_path} does not list the 50 tags of Choi\'s split in their order; '
                       'use the original 50tagList.txt.')
    skip_path = os.path.join(root, SKIP_LIST)
    skip_ids = ({i for line in common.read_lines(skip_path) for i in line.split()}
                if os.path.isfile(skip_path) else set())
    train_ids, test_ids = _id_list(train_path), _id_list(test_path)
    n_val = self.builder_config.num_validation
    if not 0 < n_val < len(train_ids):
      raise ValueError(f'num_validation={n_val} must be in (0, {len(train_ids)}), the length of '
                       f'{TRAIN_LIST}.')
    vectors = _tag_vectors(vec_path)
    wanted = {'train': train_ids[:-n_val], 'validation': train_ids[-n_val:], 'test': test_ids}
    splits = {}
    for split, ids in wanted.items():
      clips = []
      for msd_id in ids:
        if msd_id not in vectors:
          raise ValueError(f'{vec_path} has no tag vector for {msd_id} (in the {split} list); '
                           'the split and tag files do not match.')
        path = self._find_audio(root, msd_id)
        if msd_id in skip_ids:
          self.skip(self._relative(path) if path else audio_stem(msd_id), f'listed in {SKIP_LIST}')
        elif path is None:
          self.skip(audio_stem(msd_id) + '.{' + ','.join(e[1:] for e in AUDIO_EXTENSIONS) + '}',
                    'no audio file')
        else:
          clips.append(common.Clip(key=msd_id, id=msd_id, path=path, labels=vectors[msd_id]))
      splits[split] = clips
    return splits
