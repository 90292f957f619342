"""MagnaTagATune: 50 most frequent tags, split by the first hex digit of the clip directory."""
from __future__ import annotations

import os

import numpy as np

from .. import common

# The reference's column order (split/mtat/tags.npy, identical to musicnn's MTT_LABELS): the 50
# most frequent tags of annotations_final.csv. top50_tags.txt swaps 'metal'/'female voice'.
TAGS = (
    'guitar', 'classical', 'slow', 'techno', 'strings', 'drums', 'electronic', 'rock', 'fast',
    'piano', 'ambient', 'beat', 'violin', 'vocal', 'synth', 'female', 'indian', 'opera', 'male',
    'singing', 'vocals', 'no vocals', 'harpsichord', 'loud', 'quiet', 'flute', 'woman',
    'male vocal', 'no vocal', 'pop', 'soft', 'sitar', 'solo', 'man', 'classic', 'choir', 'voice',
    'new age', 'dance', 'male voice', 'female vocal', 'beats', 'harp', 'cello', 'no voice',
    'weird', 'country', 'metal', 'female voice', 'choral')

ANNOTATIONS = 'annotations_final.csv'
# First hex digit of the clip directory → split (the reference's rule).
SPLIT_OF_DIGIT = {**{d: 'train' for d in '0123456789ab'}, 'c': 'validation',
                  **{d: 'test' for d in 'def'}}


def split_of(mp3_path: str) -> str:
  """Split of one clip from the first character of its directory ('f/x.mp3' → 'test')."""
  digit = mp3_path.replace('\\', '/').split('/', 1)[0][:1].lower()
  if digit not in SPLIT_OF_DIGIT or '/' not in mp3_path.replace('\\', '/'):
    raise ValueError(f'{ANNOTATIONS}: mp3_path {mp3_path!r} does not start with a hex directory '
                     '(0-9, a-f); use the official annotations_final.csv.')
  return SPLIT_OF_DIGIT[digit]


class Mtat(common.ManualAudioBuilder):
  """MagnaTagATune clips (29.1 s), multi-hot over the reference's top-50 tags.

  Clips with none of the 50 tags are dropped; directories 0-b → train, c → validation,
  d-f → test. On the official data this gives 15,247 / 1,529 / 4,332 clips (minus any file that
  fails to decode, listed in info.metadata['skipped']).
  """
  CLASS_NAMES = TAGS
  TASK = 'tagging'
  CLIP_SECONDS = 29.1
  HOMEPAGE = 'https://mirg.city.ac.uk/codeapps/the-magnatagatune-dataset'
  README = common.readme_path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put annotations_final.csv and the extracted mp3 tree (folders 0, 1, ..., f from '
      f'mp3.zip.001-003) directly in manual_dir; see {README}.')

  def _make_splits(self, root):
    (csv_path,) = common.require_files(root, [ANNOTATIONS], self.README)
    rows = common.read_tsv(csv_path)
    if not rows:
      raise ValueError(f'{csv_path} is empty; use the official annotations_final.csv.')
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ('clip_id', 'mp3_path', *TAGS) if c not in header]
    if missing:
      raise ValueError(f'{csv_path} lacks the columns {missing}; it must be the official '
                       'tab-separated annotations_final.csv (clip_id, 188 tags, mp3_path).')
    clip_col, path_col = header.index('clip_id'), header.index('mp3_path')
    tag_cols = [header.index(t) for t in TAGS]
    splits = {name: [] for name in common.SPLITS}
    for line, row in enumerate(rows[1:], start=2):
      if len(row) != len(header):
        raise ValueError(f'{csv_path}:{line}: {len(row)} fields where the header has '
                         f'{len(header)}; the file is damaged, download it again.')
      try:
        labels = np.array([float(row[c]) for c in tag_cols], np.float32)
      except ValueError as e:
        raise ValueError(f'{csv_path}:{line}: tag values must be 0/1 ({e}).') from e
      if not labels.any():
        continue  # the reference's clean split keeps only clips with a top-50 tag
      rel = row[path_col].strip()
      splits[split_of(rel)].append(common.Clip(
          key=row[clip_col].strip(), id=rel, path=os.path.join(root, rel),
          labels=(labels > 0).astype(np.float32)))
    return splits
