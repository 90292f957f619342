"""The optional stacks (setup.cfg extras, requirements-*.txt) stay optional.

`make demo` installs only requirements.txt and requirements-render.txt, so the demo must run with
the tools', torch's and the tests' packages absent; a command that does need one says which extra
to install, in one line, before any work. "Absent" is simulated in a subprocess by a `None` entry
in sys.modules, which makes `import NAME` raise ImportError as a missing package does (the test
venv has them all installed).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
# What only [tools], [torch] and [test] bring (numba and sympy come with librosa and torch).
NOT_FOR_THE_DEMO = ('librosa', 'pedalboard', 'numba', 'torch', 'sympy', 'sklearn', 'pandas',
                    'pytest')


def _without(blocked, call: str, argv, cwd: Path):
  """Runs `call` (e.g. 'hcnn_jax.cli.demo:run') as a console script would, with argv, in `cwd`,
  where the modules `blocked` cannot be imported."""
  module, function = call.split(':')
  code = '\n'.join([
      'import importlib, sys',
      f'for name in {tuple(blocked)!r}:',
      '  sys.modules[name] = None',
      f'sys.argv = {list(argv)!r}',
      f'sys.exit(getattr(importlib.import_module({module!r}), {function!r})())',
  ])
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-c', code], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=600, check=False)


def test_the_demos_modules_import_without_the_tools_torch_and_test_stacks(tmp_path):
  """Every module the demo's main imports, and the synth_gm builder it builds with. The whole
  demo runs in a venv that really lacks these stacks in tests/test_packaging.py (slow)."""
  code = '\n'.join([
      'import sys',
      f'for name in {NOT_FOR_THE_DEMO!r}:',
      '  sys.modules[name] = None',
      'import jax, soundfile',
      'from hcnn_jax.cli import demo, eval, train',
      'from hcnn_jax import metrics',
      'from hcnn_jax.data import builders, sources',
      'from hcnn_jax.tools import tag',
      'from hcnn_jax.training import loop, parallel, writers',
      "builders.module('build').builder_class('synth_gm')",
      'writers._summary_writer_class()',
      f"print(sorted(n for n in sys.modules if n.split('.')[0] in {NOT_FOR_THE_DEMO!r} and "
      'sys.modules[n] is not None))',
  ])
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
  done = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=300, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip() == '[]'


def test_robustness_names_the_tools_extra_before_any_work(tmp_path):
  """No checkpoint, no dataset: the missing packages are the first and only complaint."""
  done = _without(('librosa', 'pedalboard'), 'hcnn_jax.cli.tools:robustness',
                  ['hcnn-robustness', '--config', 'hcnn_synth_tiny', '--workdir', 'no_run'],
                  tmp_path)
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr == ('robustness: error: deforming by drc, pitch_shift, time_stretch needs '
                         "librosa and pedalboard, not installed: pip install 'hcnn-jax[tools]' "
                         '(or --perturbations noise_0.1,noise_0.4, which need neither)\n')
  # Only what the chosen deformations import is asked for; noise needs neither and goes on to
  # the next problem, the missing run.
  done = _without(('librosa',), 'hcnn_jax.cli.tools:robustness',
                  ['hcnn-robustness', '--config', 'hcnn_synth_tiny', '--workdir', 'no_run',
                   '--perturbations', 'drc_music,pitch_shift_+1'], tmp_path)
  assert done.returncode == 2 and 'deforming by drc, pitch_shift needs librosa, not' in done.stderr
  done = _without(('librosa', 'pedalboard'), 'hcnn_jax.cli.tools:robustness',
                  ['hcnn-robustness', '--config', 'hcnn_synth_tiny', '--workdir', 'no_run',
                   '--perturbations', 'noise_0.1'], tmp_path)
  assert done.returncode == 1 and 'hcnn-jax[tools]' not in done.stderr, done.stderr[-3000:]


def test_the_render_and_torch_extras_are_named_by_their_commands(tmp_path):
  # hcnn-build (the checkout's builders: `python -m datasets.build`), as hcnn-train and
  # hcnn-demo reach it first when synth_gm is not built yet.
  done = _without(('pretty_midi',), 'datasets.build:main',
                  ['hcnn-build', 'synth_gm', '--data_dir', 'data', '--config', 'tiny'], tmp_path)
  assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr[-3000:]
  assert done.stderr.startswith("error: Dataset 'synth_gm': cannot import its builder module ")
  assert 'pretty_midi' in done.stderr, done.stderr
  assert done.stderr.endswith("): pip install 'hcnn-jax[render]'.\n"), done.stderr
  assert not (tmp_path / 'data').exists()

  done = _without(('torch',), 'hcnn_jax.tools.import_torch:main',
                  ['hcnn-import-torch', 'best_model.pth', '--out', 'imported'], tmp_path)
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr == ('import_torch: error: reading .pth files needs torch, not installed: '
                         "pip install 'hcnn-jax[torch]' (CPU wheel: add --extra-index-url "
                         'https://download.pytorch.org/whl/cpu)\n')
