"""Speed choices that never change what a model computes, per backend, in one place.

XLA:CPU (jaxlib 0.10.2) hands every convolution to YNNPACK by default
(`--xla_cpu_experimental_ynn_fusion_type` includes `individual_convolution`). YNNPACK's
kernel gradient of a wide 3×3 convolution is slow: on the 2-core VM, HCNN's layer 2 (batch 4,
128 → 128 channels over 64 × 156) took 2.1 s for the kernel gradient through YNNPACK against
0.25 s through XLA's own (Eigen) convolution, and the two layer-2 kernel gradients were 4.2 s of a
6-s full-size train step (`python -m bench.vs_torch --profile`). `apply_xla_flags` removes
convolutions from YNNPACK's share and keeps its matmuls; the values differ only by summation
order. Flags are read when JAX creates its CPU client, so this runs at `import hcnn_jax`, before
any computation; a flag the user set in XLA_FLAGS is left as it is.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Dict

log = logging.getLogger(__name__)

# flag name → value, for the CPU backend (XLA ignores CPU flags on other backends).
CPU_XLA_FLAGS: Dict[str, str] = {
    'xla_cpu_experimental_ynn_fusion_type': '-individual_convolution',
}


def _backends_started() -> bool:
  if 'jax' not in sys.modules:
    return False
  try:
    from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):
    return False


def apply_xla_flags(environ=None) -> Dict[str, str]:
  """Appends the missing CPU_XLA_FLAGS to XLA_FLAGS; returns what it added.

  Adds nothing once JAX's backends exist (it would be silently ignored): then it logs once which
  flags to set in XLA_FLAGS before JAX starts.
  """
  environ = os.environ if environ is None else environ
  current = environ.get('XLA_FLAGS', '')
  missing = {k: v for k, v in CPU_XLA_FLAGS.items() if f'--{k}=' not in current}
  if not missing:
    return {}
  text = ' '.join(f'--{k}={v}' for k, v in missing.items())
  if _backends_started():
    log.info('JAX started before hcnn_jax was imported; for faster CPU convolutions set '
             'XLA_FLAGS="%s" before starting JAX.', text)
    return {}
  environ['XLA_FLAGS'] = f'{current} {text}'.strip()
  return missing
