"""Runs one entry point's `main` in a fresh process and reports whether JAX's backend was already
initialised when it asked to join a multi-host job (`jax.distributed.initialize` refuses then).

    python -m tests.training._init_order_worker {train,eval,demo,ablation} WORKDIR

`parallel.maybe_initialize_distributed` is replaced by a probe that records
`xla_bridge.backends_are_initialized()` and stops the entry point; the last stdout line is JSON.
"""
from __future__ import annotations

import importlib
import json
import sys

from absl import flags
from jax._src import xla_bridge

from hcnn_jax.training import parallel


class _Stop(Exception):
  pass


def main(entry: str, workdir: str) -> None:
  seen = []

  def probe() -> bool:
    seen.append(xla_bridge.backends_are_initialized())
    raise _Stop

  parallel.maybe_initialize_distributed = probe
  module = importlib.import_module({'train': 'train', 'eval': 'eval', 'demo': 'demo',
                                    'ablation': 'hcnn_jax.tools.ablation'}[entry])
  if entry == 'ablation':
    module._define_flags()  # pylint: disable=protected-access
  elif entry in ('train', 'eval', 'demo'):
    module.define_flags()  # what their run() does first, as the console scripts do
  after_import = xla_bridge.backends_are_initialized()
  flags.FLAGS([entry, '--config', 'hcnn_jax/configs/fake_tiny.py', '--workdir', workdir])
  try:
    module.main([entry])
  except _Stop:
    pass
  print(json.dumps({'after_import': after_import, 'at_initialize': seen}))


if __name__ == '__main__':
  main(sys.argv[1], sys.argv[2])
