"""The wheel is the product: built from this tree and installed into a clean environment, its
console scripts build a dataset, train, evaluate and tag from a directory that is not the
repository; and the dataset builders work under the name the wheel gives them.

The clean environment is a venv of this interpreter that sees only what `pip install
'hcnn-jax[render]'` and tinysoundfont would install (the wheel's Requires-Dist closure, linked
from the test venv's site-packages: no torch, librosa, pedalboard, scikit-learn, pandas or pytest)
and nothing of the repository: no PYTHONPATH, another working directory. A package named
`datasets` stands for Hugging Face's, which an installed `datasets` usually is.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from (the rest of the tree is tests, benchmarks and the demo).
SOURCES = ('setup.py', 'setup.cfg', 'pyproject.toml', 'README.md', 'hcnn_jax', 'datasets')
SCRIPTS = ('hcnn-train', 'hcnn-eval', 'hcnn-demo', 'hcnn-build', 'hcnn-tag', 'hcnn-ablation',
           'hcnn-robustness', 'hcnn-soundfont-shift', 'hcnn-interpret', 'hcnn-import-torch')
# What the clean venv gets besides the wheel's own requirements: the [render] extra and synth_gm's
# renderer, which the Makefile installs with --no-deps.
EXTRAS, NO_DEPS = ('render',), ('tinysoundfont',)
# Brought only by the [tools], [torch] and [test] extras: none of them may be in the clean venv.
NOT_INSTALLED = ('torch', 'librosa', 'pedalboard', 'numba', 'sklearn', 'pandas', 'pytest')
# Raises if anything imports it: our builders must never be looked for under this name.
HUGGING_FACE_STAND_IN = 'raise ImportError("Hugging Face datasets stand-in: not ours to import")\n'
# hcnn_synth_tiny shrunk to seconds: 3 steps of 8 clips, width 4, 2 harmonics, 2 chunks a clip.
TINY_RUN = ['--config.dataset.data_dir=data', '--config.dataset.config_name=tiny',
            '--config.model.kwargs.width=4', '--config.model.kwargs.n_harmonic=2',
            '--config.num_epochs=1', '--config.optimizer.warmup_epochs=0',
            '--config.batch_size=8', '--config.eval_chunks=2', '--config.eval_tracks_per_batch=8',
            '--config.log_every_steps=1', '--config.progress_bar=False']


def _clean_env(cache_dir: str) -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return env


def _run(args, cwd, env, timeout=600):
  done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)
  assert done.returncode == 0, f'{args}\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}'
  return done.stdout


def _build_wheel(tmp_path: Path) -> Path:
  src = tmp_path / 'src'
  src.mkdir()
  for name in SOURCES:  # a copy: the build writes build/ and *.egg-info next to its sources
    if (REPO / name).is_dir():
      shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns('__pycache__'))
    elif (REPO / name).exists():
      shutil.copy(REPO / name, src / name)
  _run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation',
        '--no-index', '-w', tmp_path / 'dist', src], tmp_path, dict(os.environ))
  (wheel,) = (tmp_path / 'dist').glob('hcnn_jax-*.whl')
  return wheel


def _closure(wheel: Path) -> set:
  """The installed distributions that the wheel's Requires-Dist (with EXTRAS) pulls in, and
  NO_DEPS, by canonical name."""
  from packaging.requirements import Requirement  # pylint: disable=import-outside-toplevel
  from packaging.utils import canonicalize_name  # pylint: disable=import-outside-toplevel
  with zipfile.ZipFile(wheel) as zf:
    (meta,) = [n for n in zf.namelist() if n.endswith('.dist-info/METADATA')]
    wanted = Parser().parsestr(zf.read(meta).decode()).get_all('Requires-Dist') or []
  todo, found = [(line, set(EXTRAS)) for line in wanted], set(NO_DEPS)
  while todo:
    line, extras = todo.pop()
    req = Requirement(line)
    if req.marker and not any(req.marker.evaluate({'extra': e}) for e in extras | {''}):
      continue
    name = canonicalize_name(req.name)
    if name not in found:
      found.add(name)
      todo += [(r, set(req.extras)) for r in metadata.distribution(name).requires or []]
  return found


def _clean_venv(tmp_path: Path, wheel: Path) -> Path:
  """A venv that sees the wheel's installed dependencies, but not this checkout, its hcnn-jax,
  or any other package of the test venv."""
  venv = tmp_path / 'venv'
  _run([sys.executable, '-m', 'venv', '--without-pip', venv], tmp_path, dict(os.environ))
  python = venv / 'bin' / 'python'
  site = Path(_run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                   tmp_path, dict(os.environ)).strip())
  deps = tmp_path / 'deps'
  deps.mkdir()
  for name in sorted(_closure(wheel)):
    dist = metadata.distribution(name)
    # Its top-level entries (packages, modules, .libs, the dist-info), from its RECORD.
    for top in sorted({Path(str(f)).parts[0] for f in dist.files or []} - {'..'}):
      if not (deps / top).exists():
        (deps / top).symlink_to(Path(dist.locate_file(top)))
  (site / '_test_dependencies.pth').write_text(f'{deps}\n')
  (site / 'datasets').mkdir()
  (site / 'datasets' / '__init__.py').write_text(HUGGING_FACE_STAND_IN)
  return venv


@pytest.mark.slow
def test_wheel_builds_trains_evaluates_and_tags_from_another_directory(tmp_path, cache_dir):
  wheel = _build_wheel(tmp_path)
  names = zipfile.ZipFile(wheel).namelist()
  assert 'hcnn_datasets/synth_gm/synth_gm.py' in names and 'hcnn_jax/cli/train.py' in names
  assert 'hcnn_datasets/mtat/README.md' in names  # the builders' messages point at it
  assert not any(n.startswith(('datasets/', 'tests/', 'bench/')) for n in names)

  venv = _clean_venv(tmp_path, wheel)
  bin_dir = venv / 'bin'
  env = _clean_env(cache_dir)
  # This venv's pip, run for the clean one: pip is no requirement of the wheel, so not in there.
  _run([sys.executable, '-m', 'pip', '--python', bin_dir / 'python', 'install', '-q', '--no-deps',
        '--no-index', wheel], tmp_path, env)
  assert all((bin_dir / s).exists() for s in SCRIPTS), sorted(os.listdir(bin_dir))
  work = tmp_path / 'elsewhere'
  work.mkdir()
  where = _run([bin_dir / 'python', '-c', 'import hcnn_jax, hcnn_datasets; '
                'print(hcnn_jax.__file__); print(hcnn_datasets.__file__)'], work, env)
  assert all(line.startswith(str(venv)) for line in where.split()), where
  absent = _run([bin_dir / 'python', '-c', 'import importlib.util as u; '
                 f'print([m for m in {NOT_INSTALLED!r} if u.find_spec(m)])'], work, env)
  assert absent.strip() == '[]', absent

  out = _run([bin_dir / 'hcnn-build', 'synth_gm', '--data_dir', 'data', '--config', 'tiny',
              '--num_workers', '1'], work, env)
  assert 'built in' in out and 'tag frequencies over 40 clips' in out
  # The shipped config by its repository path, from a directory that has no hcnn_jax/.
  out = _run([bin_dir / 'hcnn-train', '--config', 'hcnn_jax/configs/hcnn_synth_tiny.py',
              '--workdir', 'run', *TINY_RUN], work, env)
  assert 'test metrics of' in out and (work / 'run' / 'metrics.json').exists()
  out = _run([bin_dir / 'hcnn-eval', '--config', 'hcnn_synth_tiny', '--workdir', 'run',
              '--split', 'validation', *TINY_RUN], work, env)
  assert 'validation metrics of' in out
  assert json.loads((work / 'run' / 'metrics_validation.json').read_text())['num_examples'] == 8

  t = np.arange(3 * 16000) / 16000
  sf.write(work / 'song.wav', (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
  report = json.loads(_run([bin_dir / 'hcnn-tag', 'song.wav', '--workdir', 'run', '--json'],
                           work, env))
  (step,) = os.listdir(work / 'run' / 'best')
  assert report['model'] == 'hcnn' and report['dataset'] == 'synth_gm'
  assert report['checkpoint'] == {'path': os.path.join('run', 'best', step), 'step': int(step)}
  (result,) = report['results']
  assert result['file'] == 'song.wav' and len(result['scores']) == 26
  # The demo over the same data and the finished run: it re-evaluates, scores the baseline and
  # tags a test clip, all without the packages of NOT_INSTALLED.
  out = _run([bin_dir / 'hcnn-demo', '--workdir', 'run', '--data_dir', 'data', '--eval_chunks',
              '2', *TINY_RUN], work, env)
  assert 'per-tag prior (baseline)' in out and 'predicted: ' in out, out

  # The absl tools run as `python -m` runs them, the shipped config found by its bare name: a
  # mistyped key is their one-line error, before any work.
  done = subprocess.run([bin_dir / 'hcnn-robustness', '--config', 'hcnn_synth_tiny', '--workdir',
                         'run', '--config.batchsize=8'], cwd=work, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 1 and done.stderr.startswith(
      'robustness: error: --config.batchsize: no such key in '), done.stderr[-3000:]
  for script in ('hcnn-interpret', 'hcnn-import-torch'):
    assert script in _run([bin_dir / script, '--help'], work, env)
  # The commands that need an extra say which, before any work.
  for args, extra in ((['hcnn-robustness', '--config', 'hcnn_synth_tiny', '--workdir', 'run'],
                       'tools'), (['hcnn-import-torch', 'song.wav', '--out', 'imported'], 'torch')):
    done = subprocess.run([bin_dir / args[0], *args[1:]], cwd=work, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr[-3000:]
    assert f"pip install 'hcnn-jax[{extra}]'" in done.stderr, done.stderr


def test_builders_work_under_the_wheels_name_beside_another_datasets(tmp_path):
  """The builders' folder imported as `hcnn_datasets` (a link standing for the installed copy),
  with a foreign `datasets` first on the path: every builder loads, nothing imports `datasets`."""
  (tmp_path / 'hcnn_datasets').symlink_to(REPO / 'datasets')
  (tmp_path / 'datasets').mkdir()
  (tmp_path / 'datasets' / '__init__.py').write_text(HUGGING_FACE_STAND_IN)
  code = '\n'.join([
      'import os, sys',
      'from hcnn_jax.data import builders',
      'from hcnn_jax.tools import import_torch',
      'package = builders.package()',
      "classes = [builders.module('build').builder_class(n) for n in sorted(package.DATASETS)]",
      'print(package.__name__, sorted({c.__module__.split(".")[0] for c in classes}))',
      'print([os.path.isfile(c.README) for c in classes if hasattr(c, "README")])',
      'print(len(import_torch._tag_names("mtat", 50)), "datasets" in sys.modules)',
  ])
  env = dict(os.environ, PYTHONPATH=f'{tmp_path}{os.pathsep}{REPO}')
  out = _run([sys.executable, '-c', code], tmp_path, env).splitlines()
  assert out == ["hcnn_datasets ['hcnn_datasets']", str([True] * 5), '50 False']


def test_a_checkout_keeps_its_datasets_package():
  """From the repository (tests, `python train.py`), the builders are the top-level `datasets`,
  the one the tests import: one process never registers the same TFDS builder twice."""
  import datasets  # pylint: disable=import-outside-toplevel
  from hcnn_jax.data import builders  # pylint: disable=import-outside-toplevel
  assert builders.package() is datasets
  assert builders.build_command('mtat', 'DIR', 'full') == 'hcnn-build mtat --data_dir DIR ' \
                                                         '--config full'


@pytest.mark.parametrize('given', ['hcnn_jax/configs/fake_tiny.py', 'fake_tiny.py', 'fake_tiny',
                                   'configs/fake_tiny.py:some_arg'])
def test_shipped_configs_are_found_from_any_directory(given, tmp_path, monkeypatch):
  from hcnn_jax import cli, configs  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  shipped = os.path.join(os.path.dirname(configs.__file__), 'fake_tiny.py')
  arg = ':some_arg' if given.endswith(':some_arg') else ''
  assert cli.resolve_config_argv(['prog', '--config', given, '--config.batch_size=2']) == [
      'prog', '--config', shipped + arg, '--config.batch_size=2']
  assert cli.resolve_config_argv([f'--config={given}']) == [f'--config={shipped}{arg}']
  # A file that is here wins; a path elsewhere that does not exist is left for the error line.
  (tmp_path / 'fake_tiny.py').write_text('')
  assert cli.resolve_config_argv(['--config', 'fake_tiny.py']) == ['--config', 'fake_tiny.py']
  assert cli.resolve_config_argv(['--config', 'other/fake_tiny.py']) == [
      '--config', 'other/fake_tiny.py']
