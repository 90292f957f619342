"""A dataset build skips, names and counts every file that fails, whatever the exception: codecs
soundfile once refused (GSM 6.10), names that are not UTF-8, truncated containers, and errors
nobody planned for. Valid files among them are stored."""
import logging
import os

import numpy as np
import soundfile as sf

from datasets import common
from hcnn_jax.data import audio
import fake_trees
from test_common import _Tiny


class FlatTree(_Tiny, skip_registration=True):
  """test_common's tree builder under a name the loader can parse (its data dir is read back)."""


def _tone(seconds, rate):
  return (0.4 * np.sin(2 * np.pi * 440.0 * np.arange(int(seconds * rate)) / rate)).astype(
      np.float32)


def test_build_skips_names_and_counts_every_bad_file(tmp_path, caplog, monkeypatch):
  manual = tmp_path / 'manual'
  fake_trees.write_tone(str(manual / 'train_a.wav'))
  fake_trees.write_tone(str(manual / 'test_z.wav'))
  # GSM 6.10 in WAV: soundfile's read() refused it ("frames must be specified for non-seekable
  # files") and the build used to abort.
  sf.write(str(manual / 'train_gsm.wav'), _tone(0.5, 8000), 8000, subtype='GSM610')
  # A name that is not UTF-8 (Latin-1 'é'), good audio: stored, its id escaped.
  raw = os.fsencode(str(manual)) + b'/train_caf\xe9.wav'
  sf.write(raw, _tone(0.25, 16000), 16000)  # bytes: soundfile cannot encode such a str
  # A name that is not UTF-8 holding text: skipped and named.
  with open(os.fsencode(str(manual)) + b'/train_not\xff.wav', 'w') as f:
    f.write('not audio\n' * 10)
  # A W64 file cut to 10 % of its bytes: libsndfile opens it as a short file.
  w64 = manual / 'train_cut.w64'
  sf.write(str(w64), _tone(1.0, 16000), 16000, format='W64')
  w64.write_bytes(w64.read_bytes()[: len(w64.read_bytes()) // 10])
  # An exception that is no AudioError, raised while decoding one file.
  fake_trees.write_tone(str(manual / 'train_boom.wav'))
  real = common.load_audio

  def load(path, **kw):
    if os.path.basename(path) == 'train_boom.wav':
      raise RuntimeError('a codec bug')
    return real(path, **kw)
  monkeypatch.setattr(common, 'load_audio', load)

  with caplog.at_level(logging.WARNING):
    sources, meta = fake_trees.build(FlatTree, manual, tmp_path / 'data')
  train = fake_trees.records(sources['train'])
  assert sorted(train) == ['train_a.wav', 'train_caf\\xe9.wav', 'train_gsm.wav']
  assert len(train['train_gsm.wav']['audio']) >= 8000  # 0.5 s at 16 kHz (GSM pads its blocks)
  assert len(fake_trees.records(sources['test'])) == 1
  assert meta['skipped_files'] == 3
  reasons = dict(s.split(': ', 1) for s in meta['skipped'])
  assert set(reasons) == {'train_not\\xff.wav', 'train_cut.w64', 'train_boom.wav'}
  assert 'not a recognised audio format' in reasons['train_not\\xff.wav']
  assert reasons['train_cut.w64'].startswith('truncated')
  assert 'RuntimeError: a codec bug' in reasons['train_boom.wav']
  warned = '\n'.join(r.getMessage() for r in caplog.records if r.levelname == 'WARNING')
  for name in reasons:
    assert name in warned


def test_decode_clips_turns_any_exception_into_the_files_audio_error(monkeypatch):
  def load(path, **kw):
    raise MemoryError() if path.endswith('m.wav') else ValueError('odd')
  monkeypatch.setattr(common, 'load_audio', load)
  clips = [common.Clip(key=k, id=k, path=f'/x/{k}.wav', labels=np.zeros(1, np.float32))
           for k in ('m', 'v')]
  for workers in (1, 2):
    out = list(common.decode_clips(clips, workers))
    assert [c.key for c, _, _ in out] == ['m', 'v']
    assert all(a is None and isinstance(e, audio.AudioError) for _, a, e in out)
    assert 'MemoryError' in out[0][2].reason and 'ValueError: odd' in out[1][2].reason
