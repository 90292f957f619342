"""`hcnn-ablation`, `hcnn-robustness` and `hcnn-soundfont-shift`: the absl tools, run exactly as `python -m` runs them.

Their modules define their flags and start in their `__main__` block; running that block (runpy)
keeps one way to start each tool, whichever command is used.
"""
from __future__ import annotations

import runpy
import sys

from hcnn_jax import cli


def _run_module(name: str) -> None:
  sys.argv = cli.resolve_config_argv(sys.argv)
  runpy.run_module(name, run_name='__main__', alter_sys=True)


def ablation() -> None:
  _run_module('hcnn_jax.tools.ablation')


def robustness() -> None:
  _run_module('hcnn_jax.tools.robustness')


def soundfont_shift() -> None:
  _run_module('hcnn_jax.tools.soundfont_shift')
