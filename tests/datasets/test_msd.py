"""Msd on fake Choi split pickles: the validation tail, restricted unpickling, missing audio."""
import logging
import os
import pickle

import numpy as np
import pytest

from datasets import common
from datasets.msd.msd import TAGS, Msd, MsdConfig, audio_stem
import fake_trees

TRAIN = ['TRAAAAK128F9318786', 'TRABBBB128F1111111', 'TRACCCC128F2222222', 'TRBDDDD128F3333333',
         'TRBEEEE128F4444444', 'TRCFFFF128F5555555', 'TRCGGGG128F6666666']
TEST = ['TRDHHHH128F7777777', 'TRDIIII128F8888888', 'TREJJJJ128F9999999', 'TREKKKK12903AAAAA']
SKIPPED = 'TRBDDDD128F3333333'   # in skip_ids.txt (audio present)
MISSING = 'TRCFFFF128F5555555'   # no audio at all
BAD = {'TRBEEEE128F4444444': ('.mp3', 'not_audio'), 'TRDIIII128F8888888': ('.wav', 'empty'),
       'TREJJJJ128F9999999': ('.mp3', 'truncated')}
GOOD = {'TRAAAAK128F9318786': ('.mp3', 44100, 2), 'TRABBBB128F1111111': ('.wav', 8000, 1),
        'TRACCCC128F2222222': ('.flac', 16000, 1), 'TRCGGGG128F6666666': ('.ogg', 22050, 1),
        'TRDHHHH128F7777777': ('.wav', 16000, 1), 'TREKKKK12903AAAAA': ('.flac', 48000, 2),
        SKIPPED: ('.wav', 16000, 1)}


def _py2_list_pickle(ids):
  """A protocol-0 pickle of byte strings, as Python 2's cPickle wrote the split lists."""
  body = ''.join(f"S'{i}'\np{n + 2}\na" for n, i in enumerate(ids))
  return f'(lp1\n{body}.'.encode()


def _py2_vector_dict_pickle(table):
  """A protocol-0 pickle of {id: bool ndarray (50, 1)}, byte for byte what Python 2 wrote."""
  parts = ['(dp0\n']
  for key, v in table.items():
    data = ''.join('\\x%02x' % b for b in v.astype(np.uint8).tobytes())
    parts.append(
        f"S'{key}'\ncnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'b'\ntR"
        f"(I1\n(I{v.shape[0]}\nI1\ntcnumpy\ndtype\n(S'b1'\nI0\nI1\ntR(I3\nS'|'\nNNNI-1\nI-1\n"
        f"I0\ntbI00\nS'{data}'\ntbs")
  return (''.join(parts) + '.').encode()


def _vector(msd_id):
  rng = np.random.default_rng(sum(map(ord, msd_id)))
  return (rng.random((len(TAGS), 1)) < 0.2)  # (50, 1) bools, as in the original file


def _write_tree(manual):
  os.makedirs(manual, exist_ok=True)
  (manual / 'filtered_list_train.cP').write_bytes(_py2_list_pickle(TRAIN))
  (manual / 'filtered_list_test.cP').write_bytes(_py2_list_pickle(TEST))
  (manual / 'msd_id_to_tag_vector.cP').write_bytes(
      _py2_vector_dict_pickle({i: _vector(i) for i in TRAIN + TEST}))
  (manual / '50tagList.txt').write_text('\n'.join(TAGS) + '\n')
  (manual / 'skip_ids.txt').write_text(f'# broken in the reference\nTRZZZZZ128F0000000 {SKIPPED}\n')
  for msd_id, (ext, rate, channels) in GOOD.items():
    fake_trees.write_tone(manual / (audio_stem(msd_id) + ext), seconds=0.3, rate=rate,
                          channels=channels)
  for msd_id, (ext, kind) in BAD.items():
    fake_trees.BAD_WRITERS[kind](manual / (audio_stem(msd_id) + ext))


def test_build(tmp_path, caplog):
  manual = tmp_path / 'manual'
  _write_tree(manual)
  with caplog.at_level(logging.WARNING):
    sources, meta = fake_trees.build(Msd, manual, tmp_path / 'data',
                                     config=MsdConfig(name='tiny', num_validation=3))
  bad_paths = [audio_stem(i) + ext for i, (ext, _) in BAD.items()]
  skipped = [audio_stem(SKIPPED) + '.wav', audio_stem(MISSING) + '.{mp3,wav,flac,ogg}']
  fake_trees.assert_skipped(meta, caplog, bad_paths + skipped)
  reasons = dict(s.split(': ', 1) for s in meta['skipped'])
  assert reasons[skipped[0]] == 'listed in skip_ids.txt'
  assert reasons[skipped[1]] == 'no audio file'
  assert meta['class_names'] == list(TAGS) and meta['task'] == 'tagging'

  got = {s: fake_trees.records(sources[s]) for s in ('train', 'validation', 'test')}
  # train = all but the last 3 of the train list; validation = those 3.
  assert sorted(got['train']) == ['TRAAAAK128F9318786', 'TRABBBB128F1111111',
                                  'TRACCCC128F2222222']
  assert sorted(got['validation']) == ['TRCGGGG128F6666666']
  assert sorted(got['test']) == ['TRDHHHH128F7777777', 'TREKKKK12903AAAAA']
  for split in got.values():
    for msd_id, r in split.items():
      np.testing.assert_array_equal(r['labels'], _vector(msd_id)[:, 0].astype(np.float32))
      assert abs(len(r['audio']) - 4800) < 1600, (msd_id, len(r['audio']))


def test_safe_unpickle_refuses_code(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ('touch ' + str(tmp_path / 'pwned'),))
  path = tmp_path / 'filtered_list_train.cP'
  path.write_bytes(pickle.dumps([Evil()]))
  with pytest.raises(ValueError, match='not allowed'):
    common.safe_unpickle(str(path))
  assert not (tmp_path / 'pwned').exists()
  path.write_bytes(_py2_list_pickle(['TRAAAAK128F9318786']))
  assert common.safe_unpickle(str(path)) == ['TRAAAAK128F9318786']
  # Python 3 pickles of arrays (protocol 2 and 5) load as well.
  for protocol in (2, 5):
    path.write_bytes(pickle.dumps({'TRX': _vector('TRX'), b'TRY': [1.5, 'a']}, protocol=protocol))
    out = common.safe_unpickle(str(path))
    np.testing.assert_array_equal(out['TRX'], _vector('TRX'))
    assert out[b'TRY'] == [1.5, 'a']


def test_wrong_tag_list_and_too_large_validation_are_clear_errors(tmp_path):
  manual = tmp_path / 'manual'
  _write_tree(manual)
  with pytest.raises(ValueError, match='num_validation'):
    fake_trees.build(Msd, manual, tmp_path / 'd1', config=MsdConfig(name='big', num_validation=7))
  (manual / '50tagList.txt').write_text('\n'.join(reversed(TAGS)) + '\n')
  with pytest.raises(ValueError, match='50tagList.txt'):
    fake_trees.build(Msd, manual, tmp_path / 'd2', config=MsdConfig(name='t2', num_validation=3))
