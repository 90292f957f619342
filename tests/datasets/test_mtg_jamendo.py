"""MtgJamendo on fake split-0 TSVs: alphabetical tag columns, splits from the files, excerpts."""
import logging
import os

import numpy as np
import pytest

from datasets import common

from datasets.mtg_jamendo.mtg_jamendo import (TAGS, MtgJamendo, MtgJamendoConfig,
                                              centre_excerpt)
import fake_trees

HEADER = 'TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS'
TRACKS = {
    'train': [('track_0000214', '14/214.mp3', ['genre---rock', 'instrument---voice']),
              ('track_0000301', '01/301.mp3', ['mood/theme---happy']),
              ('track_0000900', '00/900.mp3', ['genre---rock'])],       # not audio
    'validation': [('track_0000415', '15/415.mp3', ['genre---ambient', 'genre---world']),
                   ('track_0000416', '16/416.mp3', ['genre---jazz'])],  # empty file
    'test': [('track_0000520', '20/520.mp3', ['instrument---piano', 'mood/theme---film',
                                              'genre---classical']),
             ('track_0000521', '21/521.mp3', ['genre---pop']),          # truncated
             ('track_0000522', '22/522.mp3', ['genre---funk'])],        # raw_30s name
}


def _write_tree(manual):
  os.makedirs(manual, exist_ok=True)
  for split, rows in TRACKS.items():
    lines = [HEADER] + [f'{t}\tartist_1\talbum_1\t{p}\t200.0\t' + '\t'.join(tags)
                        for t, p, tags in rows]
    (manual / f'autotagging_top50tags-{split}.tsv').write_text('\n'.join(lines) + '\n')
  fake_trees.write_tone(manual / '14/214.mp3', seconds=0.5, rate=44100, channels=2)
  fake_trees.write_tone(manual / '01/301.mp3', seconds=0.5, rate=22050)
  fake_trees.write_tone(manual / '15/415.mp3', seconds=0.5, rate=16000)
  fake_trees.write_tone(manual / '20/520.mp3', seconds=0.5, rate=8000)
  fake_trees.write_tone(manual / '22/522.low.mp3', seconds=0.5, rate=16000)
  fake_trees.write_not_audio(manual / '00/900.mp3')
  fake_trees.write_empty(manual / '16/416.mp3')
  fake_trees.write_truncated(manual / '21/521.mp3')


def test_tag_columns_are_alphabetical():
  assert len(TAGS) == 50 and list(TAGS) == sorted(TAGS)
  assert TAGS[0] == 'genre---alternative' and TAGS[-1] == 'mood/theme---relaxing'


def test_centre_excerpt():
  x = np.arange(10)
  np.testing.assert_array_equal(centre_excerpt(x, 4), [3, 4, 5, 6])
  np.testing.assert_array_equal(centre_excerpt(x, 20), x)


def test_build_full_tracks(tmp_path, caplog, monkeypatch):
  manual = tmp_path / 'manual'
  _write_tree(manual)
  # Shards of 450 s of audio: the TSV says 200 s a track, so two tracks a shard (the 245 s
  # default would give one).
  monkeypatch.setattr(MtgJamendo, 'SHARD_BYTES', 450 * 2 * common.SAMPLE_RATE)
  with caplog.at_level(logging.WARNING):
    sources, meta = fake_trees.build(MtgJamendo, manual, tmp_path / 'data')
  fake_trees.assert_skipped(meta, caplog, ['00/900.mp3', '16/416.mp3', '21/521.mp3'])
  assert meta['class_names'] == list(TAGS) and meta['task'] == 'tagging'
  expected = {t: tags for rows in TRACKS.values() for t, _, tags in rows}
  ids = {}
  for split in ('train', 'validation', 'test'):
    recs = fake_trees.records(sources[split])
    ids[split] = sorted(recs)
    for track, r in recs.items():
      assert [TAGS[i] for i in np.flatnonzero(r['labels'])] == sorted(expected[track])
      assert r['labels'].dtype == np.float32
      assert abs(len(r['audio']) - 8000) < 1600, (track, len(r['audio']))
  assert ids == {'train': ['track_0000214', 'track_0000301'],
                 'validation': ['track_0000415'],
                 'test': ['track_0000520', 'track_0000522']}
  splits = MtgJamendo(data_dir=str(tmp_path / 'data')).info.splits
  # train: (214, 301) then (900: not audio); test: (520, 521: truncated) then (522).
  assert splits['train'].shard_lengths == [2, 0]
  assert splits['validation'].shard_lengths == [1]
  assert splits['test'].shard_lengths == [1, 1]


def test_build_excerpt_config(tmp_path, monkeypatch):
  manual = tmp_path / 'manual'
  _write_tree(manual)
  # Excerpts of 0.2 s: the whole train split fits in one shard of 450 s.
  monkeypatch.setattr(MtgJamendo, 'SHARD_BYTES', 450 * 2 * common.SAMPLE_RATE)
  config = MtgJamendoConfig(name='excerpt_tiny', excerpt_seconds=0.2)
  sources, meta = fake_trees.build(MtgJamendo, manual, tmp_path / 'data', config=config)
  assert meta['skipped_files'] == 3
  for split in ('train', 'validation', 'test'):
    for r in fake_trees.records(sources[split]).values():
      assert len(r['audio']) == 3200
  splits = MtgJamendo(data_dir=str(tmp_path / 'data'), config=config).info.splits
  assert splits['train'].shard_lengths == [2]


def test_bad_duration_is_a_clear_error(tmp_path):
  manual = tmp_path / 'manual'
  _write_tree(manual)
  path = manual / 'autotagging_top50tags-train.tsv'
  path.write_text(path.read_text().replace('\t200.0\t', '\tlong\t', 1))
  with pytest.raises(ValueError, match=r"train.tsv:2: DURATION 'long' is not a number"):
    fake_trees.build(MtgJamendo, manual, tmp_path / 'data')


def test_unknown_tag_is_a_clear_error(tmp_path):
  manual = tmp_path / 'manual'
  _write_tree(manual)
  path = manual / 'autotagging_top50tags-test.tsv'
  path.write_text(path.read_text().replace('genre---pop', 'genre---polka'))
  with pytest.raises(ValueError, match='not among the top-50'):
    fake_trees.build(MtgJamendo, manual, tmp_path / 'data')


def test_missing_split_file_is_a_clear_error(tmp_path):
  manual = tmp_path / 'manual'
  _write_tree(manual)
  os.remove(manual / 'autotagging_top50tags-validation.tsv')
  with pytest.raises(ValueError, match='autotagging_top50tags-validation.tsv'):
    fake_trees.build(MtgJamendo, manual, tmp_path / 'data')
