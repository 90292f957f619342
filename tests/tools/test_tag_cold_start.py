"""hcnn-tag's start-up: no training stack imported, params-only restore, and a persistent
compilation cache whose scores are bit for bit those of a fresh compile and which never stops a
run (an unusable directory leaves it off; a damaged entry is compiled afresh and replaced).

Every cache test runs hcnn-tag as a program in a fresh process, as a user does: the cache is
only turned on there (`tag.main(argv)` called from Python leaves JAX's configuration alone)."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import soundfile as sf

from hcnn_jax.tools import compile_cache
from hcnn_jax.training import checkpoint

import _trained  # tests/tools/_trained.py

SR = 16000
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# What a tagger never needs: the input pipeline, the optimiser library, plotting, other stacks.
HEAVY = ('tensorflow_datasets', 'grain', 'optax', 'matplotlib', 'tensorflow', 'torch')
# hcnn-tag as the console script runs it (argv None), saving the raw float32 chunk scores (the
# printed JSON rounds them) and the heavy modules that were imported.
_SPY = f'''
import json, sys
import numpy as np
from hcnn_jax.tools import tag, tagger
out = sys.argv[1]
real = tagger.Tagger.tag_file
def spy(self, path, quiet=False):
  result = real(self, path, quiet)
  np.save(out + '.npy', result.chunk_probs)
  return result
tagger.Tagger.tag_file = spy
sys.argv = ['hcnn-tag'] + sys.argv[2:]
code = tag.main()
with open(out + '.json', 'w') as f:
  json.dump(sorted(m for m in {HEAVY!r} if m in sys.modules), f)
sys.exit(code)
'''


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return _trained.trained_workdir(tmp_path_factory)


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  """3 s of 44.1-kHz stereo: resampled, 5 chunks of the 1-s model."""
  path = str(tmp_path_factory.mktemp('clip') / 'clip.wav')
  t = np.arange(3 * 44100) / 44100
  x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t)
  sf.write(path, np.stack([x, 0.5 * x], axis=1).astype(np.float32), 44100)
  return path


def tag_program(workdir, clip, out, cache_home, *flags, debug_log=False):
  """(stderr, raw chunk scores, heavy modules imported) of one hcnn-tag process."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE'))}
  env.update(PYTHONPATH=REPO, XDG_CACHE_HOME=str(cache_home), JAX_PLATFORMS='cpu')
  if debug_log:  # jax logs each persistent-cache hit at DEBUG
    env['JAX_DEBUG_LOG_MODULES'] = 'jax._src.compiler'
  proc = subprocess.run([sys.executable, '-c', _SPY, str(out), clip, '--workdir', workdir,
                         '--json', *flags], env=env, capture_output=True, text=True, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.loads(proc.stdout)['errors'] == []
  with open(f'{out}.json') as f:
    heavy = json.load(f)
  return proc.stderr, np.load(f'{out}.npy'), heavy


def entries(cache_home):
  return sorted(glob.glob(os.path.join(str(cache_home), 'hcnn-jax', 'xla', 'jit_score_chunks-*')))


# Four hcnn-tag processes: 13 s on the 2 shared cores at load 4, 31 s at load 9.
@pytest.mark.slow
def test_the_cache_gives_the_fresh_compiles_scores_and_survives_damage(workdir, clip, tmp_path):
  off = tmp_path / 'off'
  err, fresh, heavy = tag_program(workdir, clip, tmp_path / 'a', off, '--no_compile_cache')
  assert err == '' and heavy == [], (err, heavy)
  assert not off.exists()  # --no_compile_cache: nothing written
  assert fresh.shape == (5, 5) and np.isfinite(fresh).all()

  home = tmp_path / 'home'
  err, first, _ = tag_program(workdir, clip, tmp_path / 'b', home)
  assert err == ''
  (entry,) = entries(home)
  np.testing.assert_array_equal(first, fresh)

  # A damaged entry: jax cannot decompress it, compiles afresh (the same scores, not a word on
  # stderr) and the entry is replaced by a good one.
  blob = bytearray(open(entry, 'rb').read())
  blob[len(blob) // 2:len(blob) // 2 + 64] = bytes(64)
  open(entry, 'wb').write(bytes(blob))
  err, repaired, _ = tag_program(workdir, clip, tmp_path / 'c', home)
  assert err == ''
  np.testing.assert_array_equal(repaired, fresh)
  assert entries(home) == [entry] and open(entry, 'rb').read() != bytes(blob)

  err, cached, heavy = tag_program(workdir, clip, tmp_path / 'd', home, debug_log=True)
  assert "Persistent compilation cache hit for 'jit_score_chunks'" in err
  assert 'Traceback' not in err and 'Warning' not in err
  assert heavy == []
  np.testing.assert_array_equal(cached, fresh)


def test_an_unusable_cache_directory_leaves_the_cache_off(tmp_path, monkeypatch):
  before = jax.config.jax_compilation_cache_dir
  jax.config.update('jax_compilation_cache_dir', None)
  try:
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a directory')
    monkeypatch.setenv('XDG_CACHE_HOME', str(blocker))
    assert compile_cache.use_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir is None
    assert compile_cache.use_compilation_cache(str(blocker / 'xla')) is None
    # A cache the user set up is kept, whatever the default would be.
    jax.config.update('jax_compilation_cache_dir', str(tmp_path / 'theirs'))
    assert compile_cache.use_compilation_cache() == str(tmp_path / 'theirs')
  finally:
    jax.config.update('jax_compilation_cache_dir', before)


def test_drop_unreadable_removes_only_damaged_entries_of_that_program(tmp_path):
  from jax._src import compilation_cache as jax_cache  # pylint: disable=import-outside-toplevel
  good = jax_cache.compress_executable(b'an executable')
  (tmp_path / 'jit_score_chunks-aaa-cache').write_bytes(good)
  (tmp_path / 'jit_score_chunks-bbb-cache').write_bytes(good[:len(good) // 2])
  (tmp_path / 'jit_other-ccc-cache').write_bytes(b'garbage')
  assert compile_cache.drop_unreadable(str(tmp_path), 'jit_score_chunks') == 1
  assert sorted(os.listdir(tmp_path)) == ['jit_other-ccc-cache', 'jit_score_chunks-aaa-cache']


def test_a_periodic_checkpoint_restores_params_and_batch_stats_only(workdir):
  step_dir = os.path.join(workdir, checkpoint.CHECKPOINT_DIR)
  variables, meta, _ = checkpoint.restore_variables(step_dir)
  assert sorted(variables) == ['batch_stats', 'params'] and meta['class_names']
  directory, step, kind = checkpoint.resolve(step_dir)
  assert kind == 'periodic'
  full_dir = os.path.join(directory, str(step))
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  full = ocp.StandardCheckpointer().restore(os.path.join(full_dir, 'state'),
                                            checkpoint.abstract_item(full_dir, 'state'))
  assert 'opt_state' in full  # what the params-only restore leaves on disk
  want = {'params': full['params'], 'batch_stats': full['batch_stats']}
  assert jax.tree.structure(variables) == jax.tree.structure(want)
  for got, expected in zip(jax.tree.leaves(variables), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


# Three fresh processes (one untimed warm-up, one timed run, the phase breakdown): 8 s at
# load 4, 19 s at load 9.
@pytest.mark.slow
def test_bench_tag_cold_start_smoke(workdir, clip, tmp_path):
  from bench import tag_cold_start  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'cold.json'
  report = tag_cold_start.main(['--workdir', workdir, '--audio', clip, '--runs', '1',
                                '--variants', 'after', '--json', str(out)])
  row = report['variants']['after']
  assert row['runs_s'] == [row['min_s']] and 0 < row['min_s'] < 300
  assert row['load_min'] >= 0
  assert set(report['phases']) == {'imports', 'restore', 'trace', 'compile', 'tag_file'}
  assert all(v > 0 for v in report['phases'].values())
  assert report['meta']['audio_seconds'] == pytest.approx(3.0)
  assert json.loads(out.read_text())['variants']['after']['min_s'] == row['min_s']


def test_the_host_side_finiteness_check_sees_bfloat16_weights(tmp_path):
  # The readers' check runs in numpy now; numpy alone does not count bfloat16 as inexact.
  from hcnn_jax.configs import fake_tiny  # pylint: disable=import-outside-toplevel
  params = {'dense': {'kernel': jax.numpy.array([[1.0, float('inf')]], jax.numpy.bfloat16),
                      'bias': jax.numpy.zeros((2,), jax.numpy.float32)}}
  with checkpoint.RunCheckpoints(str(tmp_path)) as ckpts:
    ckpts.save_best(3, {'params': params, 'batch_stats': {}},
                    meta={'bookkeeping': {}, 'class_names': ['a', 'b'], 'task': 'tagging',
                          'topology': checkpoint.topology()}, config=fake_tiny.get_config())
    ckpts.wait()
  with pytest.raises(checkpoint.CheckpointError, match=r"non-finite values in \['params'\]"
                                                       r"\['dense'\]\['kernel'\]"):
    checkpoint.restore_variables(str(tmp_path))
