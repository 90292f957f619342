"""Shared test signals: deterministic, real-looking audio at 16 kHz (float32, peak ≤ 1).

`make_signal(kind, num_samples, sample_rate)` builds any of them at any length; the fixtures give
one second of each. Kinds: 'chirp' (exponential sweep 40 Hz → 7 kHz), 'chord' (A minor triad of
harmonic tones, 1/h partials), 'noise' (white Gaussian, seeded).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SAMPLE_RATE = 16000
SIGNAL_KINDS = ('chirp', 'chord', 'noise')


def make_signal(kind: str, num_samples: int = SAMPLE_RATE,
                sample_rate: int = SAMPLE_RATE) -> np.ndarray:
  t = np.arange(num_samples) / sample_rate
  if kind == 'chirp':
    f0, f1, duration = 40.0, 7000.0, max(num_samples / sample_rate, 1e-3)
    k = np.log(f1 / f0) / duration
    y = 0.8 * np.sin(2 * np.pi * f0 * (np.exp(k * t) - 1) / k)
  elif kind == 'chord':
    y = sum(np.sin(2 * np.pi * f * h * t + h) / h
            for f in (220.0, 261.63, 329.63) for h in range(1, 7))
    y = 0.9 * y / np.max(np.abs(y))
  elif kind == 'noise':
    y = 0.3 * np.random.default_rng(0).standard_normal(num_samples)
  else:
    raise ValueError(f'unknown signal kind {kind!r}; use one of {SIGNAL_KINDS}.')
  return y.astype(np.float32)


@pytest.fixture
def chirp() -> np.ndarray:
  return make_signal('chirp')


@pytest.fixture
def chord() -> np.ndarray:
  return make_signal('chord')


@pytest.fixture
def noise() -> np.ndarray:
  return make_signal('noise')


@pytest.fixture(name='make_signal')
def make_signal_fixture():
  """The factory itself, for tests that need other lengths or sample rates."""
  return make_signal


def pytest_configure(config):
  """One numba cache per xdist worker, set before any test module imports librosa.

  librosa's numba kernels are cached next to their sources in site-packages. On a fresh venv two
  workers compile and write the same cache files at once, and one loads the other's half-written
  file and segfaults (seen on a clean checkout). The cache is kept under .pytest_cache so that
  later runs reuse it.
  """
  worker = getattr(config, 'workerinput', {}).get('workerid')
  path = os.path.join(str(config.rootpath), '.pytest_cache', 'numba', worker or 'main')
  if worker:  # a worker inherits the controller's environment: override it
    os.environ['NUMBA_CACHE_DIR'] = path
  else:
    os.environ.setdefault('NUMBA_CACHE_DIR', path)


_CACHE_OPTIONS = {'jax_compilation_cache_dir': None,
                  'jax_persistent_cache_min_compile_time_secs': 0,
                  'jax_persistent_cache_min_entry_size_bytes': 0}


@pytest.fixture(scope='module')
def cache_dir(request):
  """JAX's persistent compilation cache for a module's tests, in pytest's cache directory: tests
  that compile the same programs (and subprocesses given the path) share it across runs."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax.experimental.compilation_cache import compilation_cache as jax_cache  # pylint: disable=import-outside-toplevel
  path = str(request.config.cache.mkdir('jax_compilation_cache'))
  before = {k: getattr(jax.config, k) for k in _CACHE_OPTIONS}
  for key, value in dict(_CACHE_OPTIONS, jax_compilation_cache_dir=path).items():
    jax.config.update(key, value)
  jax_cache.reset_cache()
  yield path
  for key, value in before.items():
    jax.config.update(key, value)
  jax_cache.reset_cache()


@pytest.fixture(scope='module')
def env(request):
  """The environment of a subprocess that runs the repo's entry points (train.py, eval.py) on the
  CPU, sharing the persistent compilation cache of `cache_dir`."""
  cache = request.config.cache.mkdir('jax_compilation_cache')
  return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
              JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=str(cache),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
