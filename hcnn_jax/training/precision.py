"""Mixed precision: the config's `dtype` names the models' compute dtype, nothing else.

The policy (kept by the models' `param_dtype=float32`, `state.create_train_state` and
`step.train_step`):
- parameters, gradients and optimiser state are float32;
- convolutions, dense layers and activations run in the compute dtype;
- BatchNorm reduces and keeps its running statistics in float32 (Flax's BatchNorm computes
  its batch moments in float32 and stores `batch_stats` in float32 whatever its `dtype`);
- the waveform arrives float32; which front-end stages run in the compute dtype is the model's
  choice (spectra and dB are safest in float32: bf16 has an 8-bit mantissa);
- logits are cast to float32 before the loss.
No loss scaling is needed: bfloat16 has float32's exponent range.
"""
from __future__ import annotations

from typing import Any, Dict

import jax.numpy as jnp

COMPUTE_DTYPES: Dict[str, Any] = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def compute_dtype(name: str) -> Any:
  """The jnp dtype for a config `dtype` of 'float32' or 'bfloat16'."""
  try:
    return COMPUTE_DTYPES[name]
  except (KeyError, TypeError):
    raise ValueError(f'config dtype {name!r} is not supported; use one of '
                     f'{sorted(COMPUTE_DTYPES)} (parameters stay float32 either way)') from None


def model_kwargs(name: str, **kwargs) -> Dict[str, Any]:
  """`kwargs` for `get_model` with the compute dtype of config `dtype` `name` added."""
  return {**kwargs, 'dtype': compute_dtype(name)}
