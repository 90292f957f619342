"""hcnn-tag on a corpus of ~650 generated files in ONE call: every format and subtype libsndfile
writes, odd lengths, rates and channel counts, NaN/Inf/huge samples, impossible headers, random
bytes, truncated and bit-flipped copies, hostile names (not UTF-8, a newline, a leading '-').

Every valid file is tagged, every bad file is named on exactly one stderr line, nothing prints a
traceback, no score is NaN, and the JSON parses strictly (no NaN/Infinity tokens)."""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys

import pytest

from hcnn_jax.data.audio import display_path

import _audio_corpus  # tests/tools/_audio_corpus.py
import _trained  # tests/tools/_trained.py

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = 'hcnn-tag: error: '


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return _trained.trained_workdir(tmp_path_factory)


def _strict_json(text: str):
  def refuse(token):
    raise AssertionError(f'non-standard JSON token {token}')
  return json.loads(text, parse_constant=refuse)


def test_one_call_over_the_whole_corpus(workdir, tmp_path, cache_dir):
  root = tmp_path / 'corpus'
  corpus = _audio_corpus.make_corpus(root)
  kinds = collections.Counter(kind for _, kind in corpus)
  assert len(corpus) >= 300 and min(kinds.values()) >= 100, kinds
  # Paths relative to the corpus folder, after '--': '-v_dash.wav' is a file, not an option.
  names = [os.path.relpath(path, os.fsencode(root)) for path, _ in corpus]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get('PYTHONPATH', '')]),
             JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0')
  proc = subprocess.run([sys.executable, '-m', 'hcnn_jax.tools.tag', '--workdir', workdir,
                         '--json', '--top_k', '3', '--'] + names,
                        cwd=root, env=env, capture_output=True, timeout=600, check=False)
  out, err = proc.stdout.decode('utf-8'), proc.stderr.decode('utf-8')  # strict UTF-8 both
  assert 'Traceback' not in err and 'Traceback' not in out, err[-3000:]
  assert proc.returncode == 1, err[-3000:]
  report = _strict_json(out)

  tagged = collections.Counter(r['file'] for r in report['results'])
  refused = collections.Counter(e['file'] for e in report['errors'])
  lines = err.splitlines()
  # Nothing on stderr but our lines (mpg123's resync notes are silenced), one per refused file.
  assert all(line.startswith(PREFIX) for line in lines), [l for l in lines
                                                          if not l.startswith(PREFIX)][:5]
  assert [line[len(PREFIX):] for line in lines] == [e['error'] for e in report['errors']]
  for e in report['errors']:
    assert e['error'].startswith(e['file'] + ': ') and '\n' not in e['error']

  wrong = []
  for name, (_, kind) in zip(names, corpus):
    shown = display_path(name)
    t, r = tagged[shown], refused[shown]
    ok = {'valid': (t, r) == (1, 0), 'bad': (t, r) == (0, 1), 'either': t + r == 1}[kind]
    if not ok:
      wrong.append((shown, kind, t, r))
  assert not wrong, wrong[:20]
  assert sum(tagged.values()) >= kinds['valid'] and sum(refused.values()) >= kinds['bad']

  for r in report['results']:
    scores = list(r['scores'].values())
    assert len(scores) == 5 and all(0.0 <= s <= 1.0 for s in scores), r
    assert r['num_chunks'] >= 1 and r['duration_seconds'] > 0
  # The non-UTF-8 names are shown with their bytes escaped, the newline too.
  assert tagged['v_caf\\xe9_latin1.wav'] == 1 and tagged['v_new\\nline.wav'] == 1
  assert refused['b_not\\xe9_audio.wav'] == 1
