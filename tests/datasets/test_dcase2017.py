"""Dcase2017Task4 on fake weak-label CSVs: the reference's seeded 10 % validation, eval → test."""
import logging
import os

import numpy as np
import pytest

from datasets.dcase2017.dcase2017 import CLASSES, Dcase2017Task4, validation_files
import fake_trees


def _rows(prefix, n, rng):
  """n clips with 1-2 labels each, drawn over all 17 classes: (file, label) rows."""
  rows = []
  for i in range(n):
    name = f'{prefix}{i:03d}_{10 * i:.3f}_{10 * i + 10:.3f}.wav'
    for c in rng.choice(len(CLASSES), size=rng.integers(1, 3), replace=False):
      rows.append((name, CLASSES[c]))
  return rows


def test_validation_rule_matches_pandas_sample():
  import pandas as pd  # the reference's own sampler, pinned in requirements-test.txt
  rng = np.random.default_rng(0)
  rows = _rows('-a', 400, rng) + _rows('Yb', 60, rng)
  df = pd.DataFrame(rows, columns=['file', 'label'])
  expected = set()
  for c in CLASSES:   # the reference's code, verbatim in spirit
    expected.update(df[df['label'] == c].sample(frac=0.1, random_state=123)['file'].tolist())
  got = validation_files(rows)
  assert got == expected and 0 < len(got) < 460
  # A class with 25 rows gives round(2.5) = 2 samples (banker's rounding, like pandas).
  small = [(f'f{i}', 'Bus') for i in range(25)]
  assert len(validation_files(small)) == 2 == len(
      pd.DataFrame(small, columns=['file', 'label']).sample(frac=0.1, random_state=123))


def _write_csv(path, rows):
  with open(path, 'w') as f:
    for name, label in rows:
      f.write(f'{name}\t{name.split("_")[-2]}\t{name.split("_")[-1][:-4]}\t{label}\n')


def test_build(tmp_path, caplog):
  manual = tmp_path / 'manual'
  os.makedirs(manual)
  rng = np.random.default_rng(1)
  train_rows, test_rows = _rows('tr', 40, rng), _rows('te', 6, rng)
  eval_rows = [('ev0_0.000_10.000.wav', 'Car'), ('ev0_0.000_10.000.wav', 'Car passing by'),
               ('ev1_5.000_15.000.wav', 'Screaming'), ('ev2_0.000_10.000.wav', 'Train')]
  _write_csv(manual / 'groundtruth_weak_label_training_set.csv', train_rows)
  _write_csv(manual / 'groundtruth_weak_label_testing_set.csv', test_rows)
  _write_csv(manual / 'groundtruth_weak_label_evaluation_set.csv', eval_rows)
  dev_files = list(dict.fromkeys(n for n, _ in train_rows + test_rows))
  bad = {dev_files[0]: 'not_audio', dev_files[1]: 'empty', dev_files[2]: 'truncated'}
  for i, name in enumerate(dev_files):
    folder = 'audio/train' if name.startswith('tr') else 'audio/test'
    path = manual / folder / ('Y' + name)
    if name in bad:
      fake_trees.BAD_WRITERS[bad[name]](path)
    else:
      fake_trees.write_tone(path, seconds=0.3, rate=(44100, 16000, 8000)[i % 3],
                            channels=1 + i % 2)
  for name in ('ev0_0.000_10.000.wav', 'ev1_5.000_15.000.wav'):   # ev2 has no audio
    fake_trees.write_tone(manual / 'audio/eval' / ('Y' + name), seconds=0.3)

  with caplog.at_level(logging.WARNING):
    sources, meta = fake_trees.build(Dcase2017Task4, manual, tmp_path / 'data')
  bad_paths = [f'audio/{"train" if n.startswith("tr") else "test"}/Y{n}' for n in bad]
  fake_trees.assert_skipped(meta, caplog, bad_paths + ['Yev2_0.000_10.000.wav'])
  assert meta['class_names'] == list(CLASSES) and meta['task'] == 'events'
  assert len(CLASSES) == 17

  val = validation_files(train_rows + test_rows)
  good = [n for n in dev_files if n not in bad]
  got = {s: fake_trees.records(sources[s]) for s in ('train', 'validation', 'test')}
  name_of = lambda rel: os.path.basename(rel)[1:]
  assert sorted(map(name_of, got['train'])) == sorted(n for n in good if n not in val)
  assert sorted(map(name_of, got['validation'])) == sorted(n for n in good if n in val)
  assert got['validation'] and got['train']
  assert sorted(got['test']) == ['audio/eval/Yev0_0.000_10.000.wav',
                                 'audio/eval/Yev1_5.000_15.000.wav']
  labels = {}
  for name, label in train_rows + test_rows + eval_rows:
    labels.setdefault(name, set()).add(label)
  for split in got.values():
    for rel, r in split.items():
      assert {CLASSES[i] for i in np.flatnonzero(r['labels'])} == labels[name_of(rel)]
      assert len(r['audio']) == 4800, rel


def test_unknown_label_is_a_clear_error(tmp_path):
  manual = tmp_path / 'manual'
  os.makedirs(manual)
  _write_csv(manual / 'groundtruth_weak_label_training_set.csv', [('a_0.000_10.000.wav', 'Dog')])
  _write_csv(manual / 'groundtruth_weak_label_testing_set.csv', [])
  _write_csv(manual / 'groundtruth_weak_label_evaluation_set.csv', [])
  with pytest.raises(ValueError, match="unknown label 'Dog'"):
    fake_trees.build(Dcase2017Task4, manual, tmp_path / 'data')
