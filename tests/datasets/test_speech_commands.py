"""SpeechCommands35 on a fake v0.02 tree: the official lists decide the split, labels one-hot."""
import logging
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from datasets.speech_commands.speech_commands import WORDS, SpeechCommands35
from hcnn_jax.data import sources as data_sources
import fake_trees


def _write_tree(manual):
  for word in WORDS:
    os.makedirs(manual / word, exist_ok=True)
  fake_trees.write_tone(manual / 'yes/aa_nohash_0.wav', seconds=1.0, rate=16000)
  fake_trees.write_tone(manual / 'yes/bb_nohash_0.wav', seconds=0.5, rate=44100, channels=2)
  fake_trees.write_tone(manual / 'backward/cc_nohash_0.wav', seconds=0.5, rate=8000)
  fake_trees.write_tone(manual / 'zero/dd_nohash_1.wav', seconds=0.5, rate=16000)
  fake_trees.write_tone(manual / 'learn/ee_nohash_0.wav', seconds=0.5, rate=16000)
  fake_trees.write_not_audio(manual / 'no/ff_nohash_0.wav')
  fake_trees.write_empty(manual / 'go/gg_nohash_0.wav')
  fake_trees.write_truncated(manual / 'up/hh_nohash_0.wav')
  fake_trees.write_tone(manual / '_background_noise_/white_noise.wav', seconds=0.5)
  (manual / 'README.md').write_text('not a word folder\n')
  (manual / 'validation_list.txt').write_text('yes/bb_nohash_0.wav\ngo/gg_nohash_0.wav\n')
  (manual / 'testing_list.txt').write_text(
      'zero/dd_nohash_1.wav\nlearn/ee_nohash_0.wav\nsix/gone_nohash_0.wav\n')


def test_name_does_not_collide_with_tfds():
  assert SpeechCommands35.name == 'speech_commands35'
  assert tfds.builder_cls('speech_commands') is not SpeechCommands35
  assert len(WORDS) == 35 and list(WORDS) == sorted(WORDS)


def test_build(tmp_path, caplog):
  manual = tmp_path / 'manual'
  _write_tree(manual)
  with caplog.at_level(logging.WARNING):
    sources, meta = fake_trees.build(SpeechCommands35, manual, tmp_path / 'data')
  fake_trees.assert_skipped(meta, caplog, ['no/ff_nohash_0.wav', 'go/gg_nohash_0.wav',
                                           'up/hh_nohash_0.wav', 'six/gone_nohash_0.wav'])
  assert meta['class_names'] == list(WORDS) and meta['task'] == 'keywords'
  got = {s: fake_trees.records(sources[s]) for s in ('train', 'validation', 'test')}
  assert sorted(got['train']) == ['backward/cc_nohash_0.wav', 'yes/aa_nohash_0.wav']
  assert sorted(got['validation']) == ['yes/bb_nohash_0.wav']
  assert sorted(got['test']) == ['learn/ee_nohash_0.wav', 'zero/dd_nohash_1.wav']
  lengths = {'yes/aa_nohash_0.wav': 16000}
  for split in got.values():
    for rel, r in split.items():
      assert r['labels'].sum() == 1.0 and WORDS[int(np.argmax(r['labels']))] == rel.split('/')[0]
      assert len(r['audio']) == lengths.get(rel, 8000), rel   # wav: exact after resampling

  # The training pipeline's reader sees the same records, in key order, audio int16 (n,).
  source, info = data_sources.load('speech_commands35', 'train', str(tmp_path / 'data'))
  assert info['num_classes'] == 35 and info['task'] == 'keywords'
  assert info['splits'] == {'train': 2, 'validation': 1, 'test': 2}
  assert info['skipped_files'] == 4 and len(info['skipped']) == 4
  ids = [source[i]['id'].decode() for i in range(len(source))]
  assert ids == ['backward/cc_nohash_0.wav', 'yes/aa_nohash_0.wav']
  first = source[0]
  assert first['audio'].dtype == np.int16 and first['audio'].shape == (8000,)
  np.testing.assert_array_equal(first['audio'], got['train']['backward/cc_nohash_0.wav']['audio'])


def test_wrong_version_is_a_clear_error(tmp_path):
  manual = tmp_path / 'manual'
  _write_tree(manual)
  os.rmdir(manual / 'visual')
  os.makedirs(manual / 'sheila2')
  with pytest.raises(ValueError, match=r"missing word folders \['visual'\].*sheila2"):
    fake_trees.build(SpeechCommands35, manual, tmp_path / 'data')


def test_decode_clips_keeps_order_serial_and_threaded(tmp_path):
  from datasets import common
  _write_tree(tmp_path)
  rels = ['yes/aa_nohash_0.wav', 'no/ff_nohash_0.wav', 'yes/bb_nohash_0.wav',
          'backward/cc_nohash_0.wav', 'go/gg_nohash_0.wav'] * 3
  clips = [common.Clip(key=str(i), id=r, path=str(tmp_path / r), labels=np.zeros(35, np.float32))
           for i, r in enumerate(rels)]
  runs = [list(common.decode_clips(clips, num_workers=n)) for n in (1, 3)]
  for run in runs:
    assert [c.key for c, _, _ in run] == [str(i) for i in range(len(rels))]
    assert [err is None for _, _, err in run] == [not r.startswith(('no/', 'go/')) for r in rels]
  for (_, a, _), (_, b, _) in zip(*runs):
    assert (a is None and b is None) or np.array_equal(a, b)
