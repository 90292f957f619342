"""The optional stacks a command may need beyond the runtime, and the check it makes before work.

The wheel's plain install trains, evaluates and tags. Four things need more, each a setup.cfg
extra (and a requirements-*.txt of the repository):

    [render]  pretty_midi (+ tinysoundfont, apart)  building the embedded dataset synth_gm
    [tools]   librosa, pedalboard                   hcnn-robustness's deformations
    [torch]   torch                                 hcnn-import-torch (.pth files)
    [test]    all of the above, pytest and the test oracles

A command that needs one of them asks `require` first, so a missing package is one line naming
the command to install it, not a traceback after minutes of work.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Iterable, List, Optional

_TOOLS = "pip install 'hcnn-jax[tools]'"
# Import name -> the command that installs it.
INSTALL = {
    'pretty_midi': "pip install 'hcnn-jax[render]'",
    # Its pyaudio requirement is only for playback and does not build without PortAudio.
    'tinysoundfont': 'pip install --no-deps tinysoundfont==0.3.7',
    'librosa': _TOOLS,
    'pedalboard': _TOOLS,
    # PyPI's torch is the CUDA build; PyTorch's own index has the CPU wheel.
    'torch': "pip install 'hcnn-jax[torch]' (CPU wheel: add --extra-index-url "
             'https://download.pytorch.org/whl/cpu)',
}


def missing(modules: Iterable[str]) -> List[str]:
  """The names in `modules` that cannot be imported here (looked up, not imported)."""
  absent = []
  for name in modules:
    try:
      found = importlib.util.find_spec(name) is not None  # None also for a sys.modules None
    except (ImportError, ValueError):
      found = False
    if not found:
      absent.append(name)
  return absent


def problem(what: str, modules: Iterable[str]) -> Optional[str]:
  """One line saying what `what` lacks of `modules` and how to install it; None if nothing."""
  absent = missing(modules)
  if not absent:
    return None
  commands = list(dict.fromkeys(INSTALL.get(m, f'pip install {m}') for m in absent))
  return f'{what} needs {" and ".join(absent)}, not installed: {"; ".join(commands)}'


def require(prog: str, what: str, modules: Iterable[str]) -> None:
  """Exits with status 2 and the one line of `problem` when any of `modules` is missing."""
  message = problem(what, modules)
  if message:
    print(f'{prog}: error: {message}', file=sys.stderr)
    sys.exit(2)
