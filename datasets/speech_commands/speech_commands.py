"""Speech Commands v0.02: 35-word keyword spotting with the official validation/testing lists."""
from __future__ import annotations

import os

from .. import common

WORDS = (
    'backward', 'bed', 'bird', 'cat', 'dog', 'down', 'eight', 'five', 'follow', 'forward', 'four',
    'go', 'happy', 'house', 'learn', 'left', 'marvin', 'nine', 'no', 'off', 'on', 'one', 'right',
    'seven', 'sheila', 'six', 'stop', 'three', 'tree', 'two', 'up', 'visual', 'wow', 'yes', 'zero')

LIST_OF_SPLIT = {'validation': 'validation_list.txt', 'test': 'testing_list.txt'}


class SpeechCommands35(common.ManualAudioBuilder):
  """Speech Commands v0.02, one-hot over the 35 words (alphabetical), 1 s clips at 16 kHz.

  Files named in validation_list.txt / testing_list.txt form validation / test, the rest train
  (84,843 / 9,981 / 11,005 on the official release); _background_noise_ is left out.
  """
  CLASS_NAMES = WORDS
  TASK = 'keywords'
  CLIP_SECONDS = 1.0
  HOMEPAGE = 'https://arxiv.org/abs/1804.03209'
  README = common.readme_path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Extract speech_commands_v0.02.tar.gz into manual_dir (the 35 word folders, '
      f'validation_list.txt, testing_list.txt); see {README}.')

  def _make_splits(self, root):
    list_paths = common.require_files(root, list(LIST_OF_SPLIT.values()), self.README)
    dirs = {d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))
            and not d.startswith(('_', '.'))}
    missing, unknown = sorted(set(WORDS) - dirs), sorted(dirs - set(WORDS))
    if missing or unknown:
      raise ValueError(f'{root} is not the v0.02 layout: ' +
                       (f'missing word folders {missing}' if missing else '') +
                       ('; ' if missing and unknown else '') +
                       (f'unexpected folders {unknown}' if unknown else '') +
                       f'; see {self.README}.')
    split_of = {}
    for split, path in zip(LIST_OF_SPLIT, list_paths):
      for rel in common.read_lines(path):
        split_of[rel.replace('\\', '/')] = split
    splits = {name: [] for name in common.SPLITS}
    seen = set()
    for label, word in enumerate(WORDS):
      for name in sorted(os.listdir(os.path.join(root, word))):
        if not name.lower().endswith('.wav'):
          continue
        rel = f'{word}/{name}'
        seen.add(rel)
        splits[split_of.get(rel, 'train')].append(common.Clip(
            key=rel, id=rel, path=os.path.join(root, word, name),
            labels=common.multi_hot([label], len(WORDS))))
    for rel, split in split_of.items():
      if rel not in seen:
        self.skip(rel, f'listed in {LIST_OF_SPLIT[split]} but not found')
    return splits
