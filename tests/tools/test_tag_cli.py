"""hcnn-tag's promises beyond the happy path: memory bounded by one batch (chunks cut from a
rolling buffer of decoded blocks, with the same scores as the whole file), no NaN score ever
printed, strict JSON, names that are not UTF-8, --plot paths checked before any work, files named
'-x.wav', and Ctrl-C leaving with exit 130 and the finished results."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf

from hcnn_jax.data.audio import load_audio
from hcnn_jax.tools import tag, tagger as tagger_lib

import _trained  # tests/tools/_trained.py

SR = 16000
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return _trained.trained_workdir(tmp_path_factory)


def tones(num, rate=SR, amp=0.3):
  t = np.arange(num) / rate
  return (amp * (np.sin(2 * np.pi * 440 * t) + np.sin(2 * np.pi * 1250 * t)) / 2).astype(
      np.float32)


def run(capsys, argv):
  code = tag.main(argv)
  out, err = capsys.readouterr()
  assert 'Traceback' not in out + err
  return code, out, err


def strict(text):
  def refuse(token):
    raise AssertionError(f'non-standard JSON token {token}')
  return json.loads(text, parse_constant=refuse)


def test_blocks_give_the_whole_files_scores_in_bounded_memory(workdir, tmp_path):
  t, _, _ = tag.load_tagger(workdir, batch_chunks=2)
  path = tmp_path / 'stereo.wav'
  x = np.stack([tones(44100 * 7 + 123, 44100), tones(44100 * 7 + 123, 44100, 0.1)], axis=1)
  sf.write(path, x, 44100, subtype='FLOAT')
  whole = load_audio(path)
  whole_starts, whole_probs = t.tag_waveform(whole)  # the whole file in one block
  t.block_samples = 3000  # 1,500 stereo frames a block: ~544 samples at 16 kHz
  result = t.tag_file(path)
  np.testing.assert_array_equal(tag.tagging_starts(len(whole), 16000, 8000), whole_starts)
  assert len(result.times) == len(whole_starts) == 14
  np.testing.assert_allclose(result.chunk_probs, whole_probs, rtol=1e-5, atol=1e-6)
  # The rolling buffer held one batch of chunks (2 chunks, 0.5 s apart) and a block, not 7 s.
  assert t.peak_buffer <= 16000 + 8000 + 1500
  assert result.duration == pytest.approx(len(whole) / 16000)


def test_non_finite_scores_never_leave_the_tagger(workdir, tmp_path, capsys, monkeypatch):
  good = tmp_path / 'good.wav'
  sf.write(good, tones(SR), SR)
  loud = tmp_path / 'loud.wav'  # finite floats of 1e19: all-NaN scores and exit 0, once
  sf.write(loud, tones(SR, amp=1e19), SR, subtype='FLOAT')
  code, out, err = run(capsys, [str(good), str(loud), '--workdir', workdir, '--json'])
  assert code == 1
  report = strict(out)
  assert [r['file'] for r in report['results']] == [str(good)]
  assert err.count('\n') == 1 and f'{loud}: samples reach 9.99e+18, far outside' in err
  # Whatever else makes the model's output non-finite (a poisoned checkpoint) is refused too.
  real = tagger_lib.Tagger.__init__

  def poisoned(self, *a, **kw):
    real(self, *a, **kw)
    self._predict = lambda v, x: np.full((x.shape[0], 5), np.nan, np.float32)
  monkeypatch.setattr(tagger_lib.Tagger, '__init__', poisoned)
  code, out, err = run(capsys, [str(good), '--workdir', workdir, '--json'])
  assert code == 1 and strict(out)['results'] == []
  assert err.startswith(f'hcnn-tag: error: {good}: the model gave NaN/Inf scores')


def test_names_that_are_not_utf8_are_tagged_and_shown_escaped(workdir, tmp_path, capsys):
  raw = os.path.join(os.fsencode(tmp_path), b'caf\xe9.wav')
  sf.write(raw, tones(SR), SR)
  name = os.fsdecode(raw)  # what Python makes of such an argv entry
  code, out, err = run(capsys, [name, '--workdir', workdir])
  assert code == 0 and err == ''
  assert out.splitlines()[0].startswith(f'{tmp_path}/caf\\xe9.wav  (1.00 s, 1 chunk)')
  code, out, err = run(capsys, [name, '--workdir', workdir, '--json'])
  assert code == 0 and strict(out)['results'][0]['file'] == f'{tmp_path}/caf\\xe9.wav'
  out.encode('utf-8')  # no lone surrogates in the output


def test_plot_paths_are_checked_before_anything_runs(tmp_path, capsys):
  good = tmp_path / 'good.wav'
  sf.write(good, tones(SR), SR)
  nowhere = tmp_path / 'no_such_dir'
  folder = tmp_path / 'plots'
  folder.mkdir()
  # No --workdir that loads: each of these fails on the path, before the model is looked at.
  for plot, words in ((nowhere / 'x.png', 'does not exist'), (folder, 'is a folder'),
                      (tmp_path / 'tags', 'needs a file name ending in .png')):
    code, out, err = run(capsys, [str(good), '--workdir', str(tmp_path / 'none'),
                                  '--plot', str(plot)])
    assert code == 2 and out == '' and err.count('\n') == 1, err
    assert err.startswith(f'hcnn-tag: error: --plot {plot}') and words in err, err
  assert not nowhere.exists() and not (tmp_path / 'plots.png').exists()
  assert tag.plot_path_problem(str(tmp_path / 'fine.PDF')) is None


def test_a_file_named_like_an_option(workdir, tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  sf.write(tmp_path / '-x.wav', tones(SR), SR)
  with pytest.raises(SystemExit) as exc:
    tag.main(['-x.wav', '--workdir', workdir])
  assert exc.value.code == 2
  capsys.readouterr()
  for argv in (['--workdir', workdir, '--', '-x.wav'], ['./-x.wav', '--workdir', workdir]):
    code, out, _ = run(capsys, argv)
    assert code == 0 and out.count('(1.00 s, 1 chunk)') == 1
  with pytest.raises(SystemExit):
    tag.main(['--help'])
  assert '-- -x.wav' in ' '.join(capsys.readouterr().out.split())


def test_random_bytes_named_mp3_say_what_is_wrong(workdir, tmp_path, capsys):
  path = tmp_path / 'song.mp3'
  path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
  code, out, err = run(capsys, [str(path), '--workdir', workdir])
  assert code == 1 and out == ''
  assert err == f'hcnn-tag: error: {path}: not decodable as audio: not a recognised audio ' \
                'format\n'


def test_ctrl_c_keeps_the_finished_results(workdir, tmp_path, capsys, monkeypatch):
  files = []
  for i in range(3):
    files.append(str(tmp_path / f'f{i}.wav'))
    sf.write(files[-1], tones(SR), SR)
  real = tagger_lib.Tagger.tag_file

  def interrupted_on_the_second(self, path, **kw):
    if path == files[1]:
      raise KeyboardInterrupt
    return real(self, path, **kw)
  monkeypatch.setattr(tagger_lib.Tagger, 'tag_file', interrupted_on_the_second)
  code, out, err = run(capsys, files + ['--workdir', workdir, '--json'])
  assert code == 130
  report = strict(out)
  assert [r['file'] for r in report['results']] == files[:1] and report['interrupted'] is True
  assert err == 'hcnn-tag: error: interrupted: 1 of 3 files tagged\n'


def test_sigint_exits_130_without_a_traceback(workdir, tmp_path):
  first = tmp_path / 'first.wav'
  sf.write(first, tones(SR), SR)
  rest = tmp_path / 'long.flac'  # 10 minutes: still being tagged when the signal comes
  sf.write(rest, tones(SR * 600, amp=0.05), SR, subtype='PCM_16')
  # Run as a program, hcnn-tag keeps its compiled model in the user's cache: not the tester's.
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]),
             XDG_CACHE_HOME=str(tmp_path / 'cache'))
  # A child of a non-interactive shell may inherit SIGINT ignored (then Python never installs
  # its handler); in a user's terminal it is not, so put Python's handler back first.
  script = ('import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); '
            'from hcnn_jax.tools import tag; sys.exit(tag.main())')
  proc = subprocess.Popen(
      [sys.executable, '-c', script, str(first), str(rest), '--workdir', workdir],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
  lines = [proc.stdout.readline()]  # the first file's result, printed as soon as it is done
  time.sleep(0.2)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err[-2000:]
  assert 'Traceback' not in err and lines[0].startswith(f'{first}  (1.00 s')
  assert err.strip().splitlines()[-1] == 'hcnn-tag: error: interrupted: 1 of 2 files tagged'
  assert str(rest) not in lines[0] + out


def test_a_ctrl_c_python_would_swallow_is_not_lost(workdir, tmp_path, capsys, monkeypatch):
  # A KeyboardInterrupt raised inside a gc callback or __del__ (where a real Ctrl-C landed once:
  # JAX's _xla_gc_callback) is printed by Python as "Exception ignored ..." and then dropped,
  # and the run went on to exit 0. Here a __del__ raises it while the first file is tagged.
  files = []
  for i in range(2):
    files.append(str(tmp_path / f'f{i}.wav'))
    sf.write(files[-1], tones(SR), SR)

  class Interrupts:
    def __del__(self):
      raise KeyboardInterrupt
  real = tagger_lib.Tagger.tag_file

  def swallowed(self, path, **kw):
    result = real(self, path, **kw)
    Interrupts()  # collected at once: Python reports the exception as unraisable
    return result
  monkeypatch.setattr(tagger_lib.Tagger, 'tag_file', swallowed)
  code, out, err = run(capsys, files + ['--workdir', workdir])
  assert code == 130
  assert out.count('(1.00 s, 1 chunk)') == 1 and 'Exception ignored' not in err
  assert err == 'hcnn-tag: error: interrupted: 1 of 2 files tagged\n'


def test_json_names_its_model_and_checkpoint_and_gives_chunks(workdir, tmp_path, capsys,
                                                             monkeypatch):
  long, short = tmp_path / 'long.wav', tmp_path / 'short.wav'
  sf.write(long, tones(36800), SR)  # 2.3 s: chunks at 0, 0.5, 1.0 and one flush with the end
  sf.write(short, tones(8000), SR)  # 0.5 s: one zero-padded chunk, which ends with the file
  (step,) = os.listdir(os.path.join(workdir, 'best'))
  # Run from the workdir's parent with a relative --workdir: the JSON keeps it relative.
  monkeypatch.chdir(os.path.dirname(workdir))
  given = os.path.basename(workdir)
  code, out, err = run(capsys, [str(long), str(short), '--workdir', given, '--json',
                                '--per_chunk', '--top_k', '2'])
  assert code == 0 and err == ''
  report = strict(out)
  assert report['model'] == 'hcnn' and report['dataset'] == 'fake'
  assert report['checkpoint'] == {'path': os.path.join(given, 'best', step), 'step': int(step)}
  assert report['chunk_seconds'] == 1.0 and report['hop_seconds'] == 0.5
  first, second = report['results']
  assert [(c['start_seconds'], c['end_seconds']) for c in first['chunks']] == [
      (0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.3, 2.3)]
  assert [(c['start_seconds'], c['end_seconds']) for c in second['chunks']] == [(0.0, 0.5)]
  for entry in (first, second):  # the file's scores are the mean of its chunks'
    for name, score in entry['scores'].items():
      chunk_scores = [c['scores'][name] for c in entry['chunks']]
      assert score == pytest.approx(np.mean(chunk_scores), abs=2e-6)
  # Without --per_chunk no chunks; a checkpoint path given absolutely stays as given.
  code, out, _ = run(capsys, [str(short), '--checkpoint', os.path.join(workdir, 'best'),
                              '--json'])
  report = strict(out)
  assert code == 0 and 'chunks' not in report['results'][0]
  assert report['checkpoint']['path'] == os.path.join(workdir, 'best', step)
  # The text gives each chunk's span and top tags.
  code, out, _ = run(capsys, [str(long), '--workdir', given, '--per_chunk', '--top_k', '1'])
  lines = out.splitlines()
  assert code == 0 and len(lines) == 2 + 4
  assert lines[2].strip().startswith('0.00-1.00 s: ') and lines[-1].strip().startswith('1.30-2.30')
