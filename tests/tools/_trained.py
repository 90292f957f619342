"""One fake_tiny run per test session, shared by the tools' test modules.

Compiling the tiny HCNN's train step costs tens of seconds of CPU on a loaded machine; training
is the same for every tool that only reads the checkpoint (tag, robustness, interpret), so the
first module to ask trains it and the others reuse the workdir.
"""
from __future__ import annotations

from typing import Dict

FAKE_CONFIG = 'tracks=8,classes=5,samples=20000'
_RUNS: Dict[str, str] = {}


def tiny_config():
  """fake_tiny shortened to 1 epoch (one step of 8 tracks) with 2 evaluation chunks."""
  from hcnn_jax.configs import fake_tiny  # pylint: disable=import-outside-toplevel
  config = fake_tiny.get_config()
  config.dataset.config_name = FAKE_CONFIG
  config.num_epochs = 1
  config.eval_chunks = 2
  return config


def trained_workdir(tmp_path_factory) -> str:
  """The workdir of a finished tiny_config() run (best checkpoint, metrics.json)."""
  if 'fake_tiny' not in _RUNS:
    from hcnn_jax.training import loop  # pylint: disable=import-outside-toplevel
    path = str(tmp_path_factory.mktemp('fake_tiny_run'))
    loop.train_and_evaluate(tiny_config(), path)
    _RUNS['fake_tiny'] = path
  return _RUNS['fake_tiny']
