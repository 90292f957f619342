"""hcnn-tag on every kind of file a user may hand it: normal, short, 10-minute, stereo 44.1 kHz,
8 kHz, empty, truncated, not audio. Correct scores or one clear line, never a traceback."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from hcnn_jax.tools import tag

import _trained  # tests/tools/_trained.py

SR = 16000


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A fake_tiny checkpoint (1 epoch of one step: real trained variables), shared per session."""
  return _trained.trained_workdir(tmp_path_factory)


@pytest.fixture(scope='module')
def tagger(workdir):
  return tag.load_tagger(workdir)


def tones(seconds: float, rate: int, freqs=(440.0, 1250.0), channels: int = 1, amp=0.3):
  t = np.arange(int(round(seconds * rate))) / rate
  x = sum(np.sin(2 * np.pi * f * t) for f in freqs) * amp / len(freqs)
  x = x.astype(np.float32)
  return np.stack([x, 0.5 * x], axis=1) if channels == 2 else x


def write(path, audio, rate, **kw):
  sf.write(str(path), audio, rate, **kw)
  return str(path)


def test_tagging_starts_cover_the_track():
  np.testing.assert_array_equal(tag.tagging_starts(100, 40, 20), [0, 20, 40, 60])
  np.testing.assert_array_equal(tag.tagging_starts(105, 40, 20), [0, 20, 40, 60, 65])
  np.testing.assert_array_equal(tag.tagging_starts(30, 40, 20), [0])
  np.testing.assert_array_equal(tag.tagging_starts(40, 40, 20), [0])
  starts = tag.tagging_starts(9_600_000, 16000, 8000)
  assert starts[-1] + 16000 == 9_600_000 and np.all(np.diff(starts) <= 8000)


def test_scores_are_the_mean_of_the_chunks(workdir, tagger, tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  t, class_names, _ = tagger
  audio = tones(2.3, SR)
  path = write(tmp_path / 'clip.wav', audio, SR, subtype='FLOAT')
  result = t.tag_file(path)
  np.testing.assert_array_equal(tag.tagging_starts(len(audio), 16000, 8000), [0, 8000, 16000,
                                                                               20800])
  # The same chunks through the model directly, in one call: the tagger's batching and padding
  # change nothing, and the file score is the mean of the chunk scores.
  model, variables, _, _ = checkpoint.load_for_inference(workdir)
  chunks = np.stack([audio[s:s + 16000] for s in (0, 8000, 16000, 20800)])
  direct = np.asarray(jax.nn.sigmoid(model.apply(variables, chunks, train=False)))
  np.testing.assert_allclose(result.chunk_probs, direct, atol=1e-5)
  np.testing.assert_allclose(result.probs, direct.mean(axis=0), atol=1e-5)
  assert result.chunk_probs.shape == (4, len(class_names))
  np.testing.assert_allclose(result.times, [0.5, 1.0, 1.5, 1.8])
  assert result.duration == pytest.approx(2.3)


def run(capsys, argv):
  code = tag.main(argv)
  out, err = capsys.readouterr()
  assert 'Traceback' not in out + err
  return code, out, err


def test_good_files_of_every_shape(workdir, tmp_path, capsys):
  files = {
      'normal': write(tmp_path / 'normal.wav', tones(3.0, SR), SR),
      'short': write(tmp_path / 'short.flac', tones(0.2, SR), SR),
      'stereo': write(tmp_path / 'stereo44k.wav', tones(2.0, 44100, channels=2), 44100),
      'low_rate': write(tmp_path / 'eight_k.ogg', tones(2.0, 8000, freqs=(300.0,)), 8000),
  }
  png = tmp_path / 'tagogram.png'
  code, out, err = run(capsys, list(files.values()) + ['--workdir', workdir, '--json',
                                                       '--top_k', '3', '--plot', str(png)])
  assert code == 0, err
  report = json.loads(out)
  assert report['errors'] == []
  by_name = {os.path.basename(r['file']): r for r in report['results']}
  assert list(by_name) == [os.path.basename(f) for f in files.values()]
  assert by_name['short.flac']['num_chunks'] == 1
  assert by_name['short.flac']['duration_seconds'] == pytest.approx(0.2)
  assert by_name['normal.wav']['num_chunks'] == 5  # 0, 0.5, 1, 1.5, 2 s
  # 44.1 kHz stereo and 8 kHz come out at 16 kHz: the durations survive the resampling.
  assert by_name['stereo44k.wav']['duration_seconds'] == pytest.approx(2.0, abs=1e-3)
  assert by_name['eight_k.ogg']['duration_seconds'] == pytest.approx(2.0, abs=1e-3)
  for r in report['results']:
    assert len(r['top']) == 3 and len(r['scores']) == 5
    scores = [e['score'] for e in r['top']]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == max(r['scores'].values())
  assert png.stat().st_size > 5000

  code, out, err = run(capsys, [files['normal'], '--workdir', workdir, '--top_k', '2'])
  assert code == 0 and err == ''
  lines = out.strip().splitlines()
  assert lines[0].startswith(files['normal']) and '(3.00 s, 5 chunks)' in lines[0]
  assert len(lines) == 3 and lines[1].lstrip().startswith('1. tone_')


def test_a_ten_minute_file_in_bounded_batches(tagger, tmp_path):
  t = tagger[0]
  # Low-amplitude tones, written as 16-bit FLAC: 10 minutes in well under a second.
  path = write(tmp_path / 'long.flac', tones(600.0, SR, amp=0.05), SR, subtype='PCM_16')
  result = t.tag_file(path)
  assert result.duration == pytest.approx(600.0)
  assert len(result.times) == 1199  # starts every 0.5 s up to 599 s
  assert result.chunk_probs.shape == (1199, 5)
  # Padding the last batch to a power of two leaves at most log2(16) + 1 compiled shapes.
  assert t._predict._cache_size() <= 5  # pylint: disable=protected-access


def test_bad_files_get_one_line_each_and_the_rest_is_tagged(workdir, tmp_path, capsys):
  good = write(tmp_path / 'good.wav', tones(1.5, SR), SR)
  empty = tmp_path / 'empty.wav'
  empty.write_bytes(b'')
  whole = write(tmp_path / 'whole.wav', tones(2.0, SR), SR, subtype='PCM_16')
  truncated = tmp_path / 'truncated.wav'
  truncated.write_bytes(open(whole, 'rb').read()[:30000])
  text = tmp_path / 'notes.wav'
  text.write_text('these are my notes, not a song\n' * 20)
  missing = tmp_path / 'missing.mp3'
  bad = [str(empty), str(truncated), str(text), str(missing)]
  code, out, err = run(capsys, [str(empty), good, str(truncated), str(text), str(missing),
                                '--workdir', workdir])
  assert code == 1
  err_lines = err.strip().splitlines()
  assert len(err_lines) == len(bad)
  for line, path in zip(err_lines, bad):
    assert line.startswith(f'hcnn-tag: error: {path}: ')
  assert 'empty' in err_lines[0] and 'truncated' in err_lines[1]
  assert 'not decodable' in err_lines[2] and 'not found' in err_lines[3]
  assert out.startswith(good) and out.count('tone_') == 5


def test_usage_errors_exit_2(workdir, tmp_path, capsys):
  good = write(tmp_path / 'good.wav', tones(1.0, SR), SR)
  for argv in ([good], [good, '--workdir', workdir, '--checkpoint', workdir],
               [good, '--workdir', workdir, '--top_k', '0'],
               [good, '--workdir', workdir, '--hop_seconds', '-1']):
    with pytest.raises(SystemExit) as exc:
      tag.main(argv)
    assert exc.value.code == 2
    assert 'Traceback' not in capsys.readouterr().err
  code, out, err = run(capsys, [good, '--workdir', str(tmp_path / 'nowhere')])
  assert code == 2 and out == ''
  assert err.count('\n') == 1 and err.startswith('hcnn-tag: error: cannot load a model from')


def test_console_script_exit_code_and_message(tmp_path):
  good = write(tmp_path / 'good.wav', tones(1.0, SR), SR)
  proc = subprocess.run([sys.executable, '-m', 'hcnn_jax.tools.tag', good, '--checkpoint',
                         str(tmp_path)], capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 2
  assert 'Traceback' not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith('hcnn-tag: error: cannot load a model')
