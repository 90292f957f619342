"""DCASE 2017 task 4 weak labels: 17 warning/vehicle sound classes, the reference's splits."""
from __future__ import annotations

import os

import numpy as np

from .. import common

# Index order of the reference (ddhf preprocessing/dcase/split.py); the strings are the labels
# as written in the official CSVs.
CLASSES = (
    'Train horn', 'Air horn, truck horn', 'Car alarm', 'Reversing beeps', 'Ambulance (siren)',
    'Police car (siren)', 'Fire engine, fire truck (siren)', 'Civil defense siren', 'Screaming',
    'Bicycle', 'Skateboard', 'Car', 'Car passing by', 'Bus', 'Truck', 'Motorcycle', 'Train')

TRAINING_CSV = 'groundtruth_weak_label_training_set.csv'
TESTING_CSV = 'groundtruth_weak_label_testing_set.csv'
EVALUATION_CSV = 'groundtruth_weak_label_evaluation_set.csv'
VALIDATION_FRACTION = 0.1
SEED = 123


def read_weak_labels(path: str) -> list[tuple[str, str]]:
  """(file, label) rows of a weak-label CSV: tab-separated file, start, end, label; no header."""
  rows = []
  for line, row in enumerate(common.read_tsv(path), start=1):
    if len(row) < 4:
      raise ValueError(f'{path}:{line}: expected 4 tab-separated fields (file, start, end, '
                       'label); use the official DCASE 2017 task 4 ground-truth file.')
    name, label = row[0].strip(), row[3].strip()
    if label not in CLASSES:
      raise ValueError(f'{path}:{line}: unknown label {label!r}; expected one of the 17 task-4 '
                       'classes.')
    rows.append((name, label))
  return rows


def validation_files(rows: list[tuple[str, str]], fraction: float = VALIDATION_FRACTION,
                     seed: int = SEED) -> set[str]:
  """The reference's validation files, re-implemented without pandas.

  The reference takes, for each class in CLASSES order, `df[df.label == c].sample(frac=0.1,
  random_state=123)` of the (file, label) rows of training + testing, and the union of the
  sampled files is validation. pandas draws that sample as
  `np.random.RandomState(123).choice(n, round(frac * n), replace=False)`, a fresh generator per
  class, which is `RandomState(123).permutation(n)[:round(frac * n)]`; numpy keeps the legacy
  RandomState stream fixed, so the same rows come out.
  """
  chosen = set()
  for c in CLASSES:
    files = [name for name, label in rows if label == c]
    size = round(fraction * len(files))  # Python's round, as pandas uses
    idx = np.random.RandomState(seed).permutation(len(files))[:size]
    chosen.update(files[i] for i in idx)
  return chosen


def _group(rows: list[tuple[str, str]]) -> dict[str, list[int]]:
  """file → class indices, files in first-seen order."""
  out: dict[str, list[int]] = {}
  for name, label in rows:
    idx = CLASSES.index(label)
    if idx not in out.setdefault(name, []):
      out[name].append(idx)
  return out


class Dcase2017Task4(common.ManualAudioBuilder):
  """DCASE 2017 task 4 weak labels, multi-hot over 17 classes, 10 s YouTube clips.

  training + testing sets merged; per class 10 % of its files (seed 123, the reference's rule)
  → validation, the rest → train; the official evaluation set → test.
  """
  CLASS_NAMES = CLASSES
  TASK = 'events'
  CLIP_SECONDS = 10.0
  HOMEPAGE = 'https://dcase.community/challenge2017/task-large-scale-sound-event-detection'
  README = common.readme_path(__file__)
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Put the three groundtruth_weak_label_{training,testing,evaluation}_set.csv files in '
      'manual_dir and the clips (Y<youtube_id>_<start>_<end>.wav) anywhere below it; see '
      f'{README}.')

  def _make_splits(self, root):
    train_csv, test_csv, eval_csv = common.require_files(
        root, [TRAINING_CSV, TESTING_CSV, EVALUATION_CSV], self.README)
    dev_rows = read_weak_labels(train_csv) + read_weak_labels(test_csv)
    val = validation_files(dev_rows)
    dev, evaluation = _group(dev_rows), _group(read_weak_labels(eval_csv))
    wanted = {'train': [f for f in dev if f not in val], 'validation': [f for f in dev if f in val],
              'test': list(evaluation)}
    # The official download scripts use several folder layouts; clips are found by name.
    audio = {}
    for folder, _, names in os.walk(root):
      for name in names:
        audio.setdefault(name, os.path.join(folder, name))
    splits = {}
    for split, files in wanted.items():
      labels_of = evaluation if split == 'test' else dev
      clips = []
      for name in files:
        clip_name = 'Y' + name  # the CSVs drop the 'Y' that the downloaded file names carry
        if clip_name not in audio:
          self.skip(clip_name, 'no audio file under manual_dir')
          continue
        clips.append(common.Clip(key=name, id=self._relative(audio[clip_name]),
                                 path=audio[clip_name],
                                 labels=common.multi_hot(labels_of[name], len(CLASSES))))
      splits[split] = clips
    return splits
