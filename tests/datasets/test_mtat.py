"""Mtat on a fake annotations_final.csv: top-50 columns, hex-directory split, bad files skipped."""
import logging
import os

import numpy as np
import pytest

from datasets.mtat.mtat import TAGS, Mtat, split_of
import fake_trees

EXTRA = ('singer', 'dark')  # non-top-50 columns that must be ignored


def _write_csv(root, rows):
  header = ['clip_id', 'no voice', EXTRA[0], *[t for t in TAGS if t != 'no voice'], EXTRA[1],
            'mp3_path']
  lines = ['\t'.join(f'"{h}"' for h in header)]
  for clip_id, tags, path in rows:
    values = ['1' if h in tags else '0' for h in header[1:-1]]
    lines.append('\t'.join(f'"{v}"' for v in [clip_id, *values, path]))
  with open(os.path.join(root, 'annotations_final.csv'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def test_split_rule():
  assert [split_of(p) for p in ('0/a.mp3', 'b/a.mp3', 'c/a.mp3', 'd/a.mp3', 'f/a.mp3')] == [
      'train', 'train', 'validation', 'test', 'test']
  with pytest.raises(ValueError, match='hex directory'):
    split_of('g/a.mp3')


def test_build(tmp_path, caplog):
  manual = tmp_path / 'manual'
  rows = [
      ('2', {'guitar', 'rock'}, '0/t_a.mp3'),            # train, 44.1 kHz stereo
      ('6', {'choral'}, 'b/t_b.mp3'),                    # train, 8 kHz
      ('10', {'piano', 'no voice'}, 'c/v_a.mp3'),        # validation
      ('11', {'singer', 'dark'}, 'c/v_none.mp3'),        # no top-50 tag: dropped before decoding
      ('12', {'female voice', 'metal'}, 'd/s_a.mp3'),    # test
      ('13', {'techno'}, 'f/s_b.mp3'),                   # test
      ('20', {'slow'}, '1/bad_text.mp3'),
      ('21', {'slow'}, 'c/bad_empty.mp3'),
      ('22', {'slow'}, 'e/bad_cut.mp3'),
  ]
  os.makedirs(manual, exist_ok=True)
  _write_csv(manual, rows)
  fake_trees.write_tone(manual / '0/t_a.mp3', seconds=0.5, rate=44100, channels=2)
  fake_trees.write_tone(manual / 'b/t_b.mp3', seconds=0.5, rate=8000)
  for rel in ('c/v_a.mp3', 'd/s_a.mp3', 'f/s_b.mp3'):
    fake_trees.write_tone(manual / rel, seconds=0.3, rate=16000)
  fake_trees.write_not_audio(manual / '1/bad_text.mp3')
  fake_trees.write_empty(manual / 'c/bad_empty.mp3')
  fake_trees.write_truncated(manual / 'e/bad_cut.mp3')

  with caplog.at_level(logging.WARNING):
    sources, meta = fake_trees.build(Mtat, manual, tmp_path / 'data')
  fake_trees.assert_skipped(meta, caplog,
                            ['1/bad_text.mp3', 'c/bad_empty.mp3', 'e/bad_cut.mp3'])
  assert meta['class_names'] == list(TAGS) and len(TAGS) == 50
  assert meta['sample_rate'] == 16000 and meta['task'] == 'tagging'

  got = {split: fake_trees.records(sources[split]) for split in ('train', 'validation', 'test')}
  assert sorted(got['train']) == ['0/t_a.mp3', 'b/t_b.mp3']
  assert sorted(got['validation']) == ['c/v_a.mp3']
  assert sorted(got['test']) == ['d/s_a.mp3', 'f/s_b.mp3']

  expected = {path: tags for _, tags, path in rows}
  for split in got.values():
    for rel, r in split.items():
      assert r['labels'].dtype == np.float32 and r['labels'].shape == (50,)
      assert {TAGS[i] for i in np.flatnonzero(r['labels'])} == expected[rel] - set(EXTRA)
      assert r['audio'].dtype == np.int16
      # MP3 adds up to a couple of frames of encoder delay/padding; the rate is what matters.
      seconds = 0.5 if rel in ('0/t_a.mp3', 'b/t_b.mp3') else 0.3
      assert abs(len(r['audio']) - seconds * 16000) < 0.1 * 16000, (rel, len(r['audio']))
      assert np.abs(r['audio']).max() > 0.3 * 32768  # the tone survived resampling/mixing
  assert TAGS.index('female voice') == 48 and TAGS.index('metal') == 47


def test_missing_top50_column_is_a_clear_error(tmp_path):
  manual = tmp_path / 'manual'
  os.makedirs(manual)
  with open(manual / 'annotations_final.csv', 'w') as f:
    f.write('clip_id\tguitar\tmp3_path\n2\t1\t0/a.mp3\n')
  with pytest.raises(ValueError, match='lacks the columns'):
    fake_trees.build(Mtat, manual, tmp_path / 'data')


def test_missing_manual_dir_is_a_clear_error(tmp_path):
  with pytest.raises(ValueError, match='does not exist or is empty'):
    fake_trees.build(Mtat, tmp_path / 'nowhere', tmp_path / 'data')
