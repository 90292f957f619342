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

`apply_cpu_malloc` keeps XLA:CPU's large buffers in the process instead of handing them back
to the kernel after every step. glibc's malloc serves each allocation above 32 MB with a fresh
mmap and returns it on free, so every step faulted in its activations page by page again: HCNN's
inference at batch 16 took 101,800 minor page faults (~400 MB) and 0.20 s of system time a step,
11 % of its 1.8 s of CPU time (2-core VM). With one arena, no mmap and no trimming (mallopt), the
freed buffers are reused: 0.03 s of system time, 10 % less CPU time a step. But one heap that
never shrinks can fragment: the full HCNN's training process peaked at 2.6-2.7 GB in three runs
and at 4.6 and 6.4 GB in two others (2.9 GB without it), so it is opt-in: HCNN_JAX_CPU_MALLOC=1
makes `import hcnn_jax` apply it where JAX can only run on the CPU (JAX_PLATFORMS=cpu, or no
accelerator plugin installed), on glibc, and not when the user set any of glibc's malloc
variables.

`conv_general_dilated` is the models' 2-D convolution (`blocks.conv2d`). On the CPU, a stride-1
convolution over at most FEW_INPUT_CHANNELS input channels (a first layer: HCNN's 6 harmonics,
a spectrogram's 1 channel) gets its input gradient as one GEMM
(`matmul_grad_conv.conv_matmul_input_grad`): XLA computes it as a convolution with that few
output channels, 72 ms against 8 ms for Short-chunk CNN's first layer at batch 2, 308 against
145 ms for HCNN's at batch 4 (2-core VM). That gradient only reaches the front-end's parameters
(its BatchNorm, HCNN's Q), but it is part of every step. It is a custom JVP whose tangent is
the GEMM, so reverse mode transposes it and forward mode (jax.jvp, jacfwd) works as well.
A convolution over an image no larger than its kernel (HCNN's layer 7: 2 × 3 positions, 3 × 3
kernel) is one GEMM over its windows on the CPU (`matmul_grad_conv.conv_im2col`): XLA:CPU's
convolution took 92 ms there against 2 ms (batch 16, 256 channels), ~9 % of HCNN's inference.

`choices()` holds the other such choices the layers read while they are traced (pooling
implementation, pooling before BatchNorm in training, GEMM gradients); `choose(...)` forces one
for a test or a benchmark. They are deliberately not model arguments: a model's signature and its
config keys say what it computes, never how fast.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from typing import Dict, Iterator, Optional

log = logging.getLogger(__name__)

# flag name → value, for the CPU backend (XLA ignores CPU flags on other backends).
CPU_XLA_FLAGS: Dict[str, str] = {
    'xla_cpu_experimental_ynn_fusion_type': '-individual_convolution',
}


FEW_INPUT_CHANNELS = 8


@dataclasses.dataclass(frozen=True)
class Choices:
  """How the layers compute what they compute; each choice gives the same values up to rounding.

  pool_impl: 'argmax' keeps each window's int8 argmax for the backward pass (`pooling`), or
    'reshape' (crop + reshape + max; forward-mode differentiable).
  pool_first: in training, max-pool before BatchNorm → ReLU (`blocks.BatchNormReLUPool`). None:
    each layer's measured default (Musicnn's timbral banks pool first, the 2-D conv blocks not:
    on the CPU it did not pay there, bench/README.md); True / False force it everywhere.
  conv_grads: 'matmul' computes the gradients where XLA's are slow as GEMMs (Musicnn's tall
    kernels everywhere, first layers' input gradient on the CPU: `matmul_grad_conv`); 'xla'
    leaves every convolution to XLA.
  fused_conv_pool: in training, a `ConvBlock2d` over few channels with a 2×2 pool (HCNN's
    layer 1) runs as one kernel that never stores its conv output (`fused_conv_pool`: Pallas
    Triton on GPUs, interpret mode elsewhere, which is for tests).
  """
  pool_impl: str = 'argmax'
  pool_first: Optional[bool] = None
  conv_grads: str = 'matmul'
  fused_conv_pool: bool = False

  def __post_init__(self):
    if self.pool_impl not in ('argmax', 'reshape'):
      raise ValueError(f"pool_impl must be one of ('reshape', 'argmax'), got {self.pool_impl!r}.")
    if self.pool_first not in (None, True, False):
      raise ValueError(f'pool_first must be None, True or False, got {self.pool_first!r}.')
    if self.conv_grads not in ('xla', 'matmul'):
      raise ValueError(f"conv_grads must be one of ('xla', 'matmul'), got {self.conv_grads!r}.")
    if self.fused_conv_pool not in (True, False):
      raise ValueError(f'fused_conv_pool must be True or False, got {self.fused_conv_pool!r}.')

  def pools_first(self, layer_default: bool) -> bool:
    return layer_default if self.pool_first is None else self.pool_first


# jax.default_backend() → its choices; a backend not listed gets Choices(). The GPU figures of
# bench/gpu_pending.sh decide whether the GPU gets other ones: fused_conv_pool made the H200's
# HCNN train step slower (4,593 against 7,972 clips/s, bench/README.md), so it stays off.
BACKEND_CHOICES: Dict[str, Choices] = {'cpu': Choices()}

_FORCED = None  # jax config state of the forced Choices, made on first use (it imports JAX)


def _forced_state():
  global _FORCED  # pylint: disable=global-statement
  if _FORCED is None:
    # A JAX config state with include_in_jit_key: a function jitted under one choice is traced
    # again under another, instead of running the cached trace (a plain global would not be).
    from jax._src import config as jax_config  # pylint: disable=import-outside-toplevel
    _FORCED = jax_config.string_or_object_state(
        'hcnn_jax_speed_choices', None, 'hcnn_jax.speed.Choices forced by speed.choose.',
        include_in_jit_key=True, include_in_trace_context=True)
  return _FORCED


def choices() -> Choices:
  """The choices in force: those of `choose`, else the default backend's (read at trace time)."""
  forced = _forced_state().value
  if isinstance(forced, Choices):
    return forced
  import jax  # pylint: disable=import-outside-toplevel
  return BACKEND_CHOICES.get(jax.default_backend(), Choices())


@contextlib.contextmanager
def choose(**overrides) -> Iterator[Choices]:
  """Forces some choices (fields of `Choices`) inside the block, for tests and benchmarks.

  `with speed.choose(pool_impl='reshape', pool_first=False): ...` Functions jitted inside are
  traced under these choices (they are part of JAX's jit cache key).
  """
  forced = dataclasses.replace(choices(), **overrides)
  with _forced_state()(forced):
    yield forced


def conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs):
  """`lax.conv_general_dilated`, formulated per backend (the same values up to rounding)."""
  import jax  # pylint: disable=import-outside-toplevel
  if choices().conv_grads == 'xla':
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)
  if jax.default_backend() == 'cpu' and rhs.ndim == 4 and rhs.shape[2] <= FEW_INPUT_CHANNELS:
    from hcnn_jax.models import matmul_grad_conv  # pylint: disable=import-outside-toplevel
    return matmul_grad_conv.conv_matmul_input_grad(lhs, rhs, window_strides, padding, *args,
                                                   **kwargs)
  if (jax.default_backend() == 'cpu' and rhs.ndim == 4 and lhs.ndim == 4
      and lhs.shape[1] * lhs.shape[2] <= rhs.shape[0] * rhs.shape[1]):
    # An image no larger than the kernel (NHWC / HWIO; other layouts fall back to XLA there).
    from hcnn_jax.models import matmul_grad_conv  # pylint: disable=import-outside-toplevel
    return matmul_grad_conv.conv_im2col(lhs, rhs, window_strides, padding, *args, **kwargs)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)


def tall_conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs):
  """For tall kernels over few channels (Musicnn's timbral banks): both gradients as GEMMs
  (`matmul_grad_conv.conv_matmul_grads`, 6.8x faster than XLA's on the CPU) unless
  conv_grads='xla'."""
  import jax  # pylint: disable=import-outside-toplevel
  if choices().conv_grads == 'xla':
    return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs)
  from hcnn_jax.models import matmul_grad_conv  # pylint: disable=import-outside-toplevel
  return matmul_grad_conv.conv_matmul_grads(lhs, rhs, window_strides, padding, *args, **kwargs)


# mallopt parameters (glibc's malloc.h) → values, for processes that run JAX on the CPU.
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
CPU_MALLOPT: Dict[int, int] = {M_ARENA_MAX: 1, M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**31 - 1}
_USER_MALLOC_VARS = ('MALLOC_ARENA_MAX', 'MALLOC_MMAP_MAX_', 'MALLOC_TRIM_THRESHOLD_',
                     'MALLOC_MMAP_THRESHOLD_', 'MALLOC_TOP_PAD_')


def _cpu_only(environ) -> bool:
  """True when JAX can only run on the CPU here (decided without starting JAX)."""
  platforms = environ.get('JAX_PLATFORMS', '').strip()
  if platforms:
    return platforms == 'cpu'
  import importlib.util  # pylint: disable=import-outside-toplevel
  return all(importlib.util.find_spec(name) is None for name in ('jax_plugins', 'libtpu'))


def apply_cpu_malloc(environ=None) -> Dict[int, int]:
  """Sets CPU_MALLOPT with glibc's mallopt where the module docstring says; returns what it set."""
  environ = os.environ if environ is None else environ
  if (environ.get('HCNN_JAX_CPU_MALLOC') != '1' or not sys.platform.startswith('linux')
      or not _cpu_only(environ)
      or any(v in environ for v in _USER_MALLOC_VARS)
      or 'glibc.malloc' in environ.get('GLIBC_TUNABLES', '')):
    return {}
  import ctypes  # pylint: disable=import-outside-toplevel
  import platform  # pylint: disable=import-outside-toplevel
  if platform.libc_ver()[0] != 'glibc':
    return {}
  try:
    mallopt = ctypes.CDLL('libc.so.6').mallopt
  except (OSError, AttributeError):
    return {}
  return {k: v for k, v in CPU_MALLOPT.items() if mallopt(k, v) == 1}


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
