"""The training state: one pytree that the step maps to the next one and orbax saves.

Parameters and optimiser state are float32 whatever the model's compute dtype (see
`precision.py`); the random key is a raw uint32 key (`jax.random.PRNGKey` layout) rather than a
typed key so that checkpoints hold a plain integer array.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from flax import struct

PyTree = Any


@struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  `nonfinite_step` is -1 while every step so far had a finite loss and finite gradients; the step
  writes the index of the first step that did not (and skipped its update), so the host can stop
  with a message naming it.
  """
  step: jnp.ndarray  # int32 scalar: number of steps taken (skipped non-finite steps included)
  params: PyTree
  batch_stats: PyTree
  opt_state: optax.OptState
  rng: jnp.ndarray  # uint32 (2,) key; per-step, per-device dropout keys are folded from it
  nonfinite_step: jnp.ndarray  # int32 scalar, -1 while healthy


def _as_raw_key(rng: jnp.ndarray) -> jnp.ndarray:
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return jax.random.key_data(rng)
  return jnp.asarray(rng, jnp.uint32)


def _float32(tree: PyTree) -> PyTree:
  # Models declare param_dtype float32; this keeps the contract even for one that forgets.
  return jax.tree.map(
      lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def init_variables(model: nn.Module, rng: jnp.ndarray, input_length: int) -> Dict[str, PyTree]:
  """`{'params', 'batch_stats'}` of `model` initialised on a (1, input_length) zero waveform."""
  if not isinstance(input_length, int) or isinstance(input_length, bool) or input_length <= 0:
    raise ValueError(f'input_length must be a positive number of samples, got {input_length!r}; '
                     'set it in the config (the model default is registry.default_input_length).')
  rng = _as_raw_key(rng)
  # Under an outer trace (jax.eval_shape, jit) this jit is nested and takes no compiler options.
  nested = isinstance(rng, jax.core.Tracer)
  return _jitted_init(None if nested else jax.default_backend())(model, rng, input_length)


def _init(model: nn.Module, rng: jnp.ndarray, input_length: int) -> Dict[str, PyTree]:
  params_rng, dropout_rng = jax.random.split(rng)
  # train=False: BatchNorm creates its statistics without a cross-device mean (there is no mesh
  # axis here) and without averaging over a batch of one.
  variables = model.init({'params': params_rng, 'dropout': dropout_rng},
                         jnp.zeros((1, input_length), jnp.float32), train=False)
  return {'params': _float32(variables['params']),
          'batch_stats': variables.get('batch_stats', {})}


@functools.lru_cache(maxsize=None)
def _jitted_init(backend: Optional[str]):
  # Jitted with the (hashable) module static: one compile per model and length, not per call.
  # The program is only the random initialisers (XLA drops the forward pass), hundreds of tiny
  # fusions that run once: on CPU, LLVM optimisation makes up ~90% of its compile time (HCNN:
  # 7.6 s → 0.9 s without it) for bit-identical integer RNG results. Chosen lazily, since asking
  # for the backend at import would start JAX before `jax.distributed.initialize`.
  options = {'xla_backend_optimization_level': 0} if backend == 'cpu' else None
  return jax.jit(_init, static_argnums=(0, 2), compiler_options=options)


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, rng: jnp.ndarray,
                       input_length: int) -> TrainState:
  """A fresh state: parameters from `model.init`, `tx.init` of them, step 0.

  `rng` (a raw or typed PRNG key) is split into the initialisation key and the key the steps fold
  their dropout keys from, so the same seed gives the same run.
  """
  init_rng, state_rng = jax.random.split(_as_raw_key(rng))
  variables = init_variables(model, init_rng, input_length)
  params = variables['params']
  return TrainState(step=jnp.zeros((), jnp.int32),
                    params=params,
                    batch_stats=variables['batch_stats'],
                    opt_state=tx.init(params),
                    rng=state_rng,
                    nonfinite_step=jnp.full((), -1, jnp.int32))


def variables(state: TrainState) -> Dict[str, PyTree]:
  """The model variables of a state, as `model.apply` takes them."""
  return {'params': state.params, 'batch_stats': state.batch_stats}
