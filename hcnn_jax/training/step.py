"""The per-device training and evaluation steps, written pmap-style.

Each function sees one device's shard of the batch and talks to the other devices only through
explicit collectives over `axis_name`; `parallel.py` runs them under `jax.shard_map` (with
`check_vma=False`, i.e. pmap semantics: see there). The model must be built with
`bn_axis_name=axis_name` so that BatchNorm normalises with the statistics of the global batch;
then N devices compute what one device computes on the same global batch (up to float rounding and
dropout masks, which are drawn per device).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax import lax
from jax.flatten_util import ravel_pytree

from hcnn_jax.data.audio import INT16_SCALE
from hcnn_jax.training.state import TrainState

PyTree = Any
LossFn = Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]


def _tree_select(pred: jnp.ndarray, on_true: PyTree, on_false: PyTree) -> PyTree:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def all_finite(tree: PyTree) -> jnp.ndarray:
  """One boolean scalar: every float leaf of `tree` is finite.

  One reduction over all the leaves at once (their concatenation, which XLA fuses into the
  reduction's input rather than copying). With one reduction per leaf and an `all` over their
  results, XLA copied the whole chain into every consumer of the flag, i.e. into each of the
  ~170 selects of the guard over the training state: the tiny keyword HCNN's optimised train step
  had 125,479 HLO instructions and took 147 s to compile, with XLA's "Very slow compile" warning
  (2-core VM at load 10), against 13,468 and 28 s this way (`python -m bench.compile_times`).
  """
  leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.isfinite(jnp.concatenate(leaves))) if leaves else jnp.array(True)


def pmean_flat(tree: PyTree, axis_name: str) -> PyTree:
  """`lax.pmean` of a whole pytree as ONE all-reduce of one flat buffer.

  A per-leaf pmean leaves it to XLA's all-reduce combiner how many collectives the gradient sync
  becomes (on CPU it splits them around the BatchNorm backward all-reduces; on GPU it depends on
  byte thresholds). One contiguous buffer makes it one all-reduce on every backend, at the cost of
  one copy of the gradients (14.5 MB for HCNN).
  """
  flat, unravel = ravel_pytree(tree)
  return unravel(lax.pmean(flat, axis_name))


def dropout_key(state: TrainState, axis_name: str) -> jnp.ndarray:
  """Different on every step and every device, and the same on a rerun."""
  return jax.random.fold_in(jax.random.fold_in(state.rng, state.step),
                            lax.axis_index(axis_name))


def float_audio(audio: jnp.ndarray) -> jnp.ndarray:
  """Waveforms as float32 in [-1, 1): int16 batches (the pipeline's `audio_dtype='int16'`) are
  scaled on the device; float batches pass as they are."""
  if jnp.issubdtype(audio.dtype, jnp.integer):
    return audio.astype(jnp.float32) / INT16_SCALE
  return audio


def train_step(state: TrainState, batch: Dict[str, jnp.ndarray], *, model: nn.Module,
               loss_fn: LossFn, tx: optax.GradientTransformation,
               axis_name: str = 'data') -> Tuple[TrainState, Dict[str, jnp.ndarray]]:
  """One optimiser step on this device's shard `{'audio': (b, L), 'labels': (b, C)}`.

  Gradients, loss and BatchNorm statistics are averaged over `axis_name`, so every device ends
  with the same state. A step whose loss or averaged gradients are not finite, or whose update
  would leave a non-finite parameter, BatchNorm statistic or optimiser slot (finite gradients
  times a huge learning rate overflow), changes nothing but `step` (and `nonfinite_step`, the first
  time): the state never holds a non-finite leaf, so no checkpoint of it can.
  Returns the new state and `{'loss', 'grad_norm', 'finite'}` (global values, `finite` 1.0 or 0.0).
  """

  def loss_and_stats(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats}, float_audio(batch['audio']),
        train=True,
        rngs={'dropout': dropout_key(state, axis_name)}, mutable=['batch_stats'])
    # The loss is float32 whatever the compute dtype: bf16 log-sigmoids lose too much.
    loss = loss_fn(logits.astype(jnp.float32), batch['labels'])
    return loss, updates.get('batch_stats', {})

  (loss, batch_stats), grads = jax.value_and_grad(loss_and_stats, has_aux=True)(state.params)
  # Under pmap semantics each device holds the gradient of its own shard's loss (including the
  # paths through the synced BatchNorm statistics); their mean is the gradient of the global loss.
  # The BatchNorm statistics are identical already when BatchNorm is synced; averaging them keeps
  # a model without `bn_axis_name` from leaving the devices with different statistics.
  grads, loss, batch_stats = pmean_flat((grads, loss, batch_stats), axis_name)

  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  # The new state is checked on the device, one reduction returned with the step; the gradients
  # too, since an optimiser may map a non-finite gradient to finite updates.
  finite = jnp.logical_and(jnp.isfinite(loss),
                           all_finite((grads, params, opt_state, batch_stats)))
  new_state = state.replace(
      step=state.step + 1,
      params=_tree_select(finite, params, state.params),
      opt_state=_tree_select(finite, opt_state, state.opt_state),
      batch_stats=_tree_select(finite, batch_stats, state.batch_stats),
      nonfinite_step=jnp.where(jnp.logical_or(finite, state.nonfinite_step >= 0),
                               state.nonfinite_step, state.step))
  metrics = {'loss': loss,
             'grad_norm': optax.global_norm(grads),
             'finite': finite.astype(jnp.float32)}
  return new_state, metrics


def eval_step(variables: Dict[str, PyTree], batch: Dict[str, jnp.ndarray], *, model: nn.Module,
              loss_fn: LossFn, predict_fn: Callable[[jnp.ndarray], jnp.ndarray]
              ) -> Dict[str, jnp.ndarray]:
  """Track-level outputs for `{'audio': (n, chunks, L), 'labels': (n, C), ...}` (reference §4.5).

  Returns `probs` (n, C), the mean over chunks of `predict_fn(logits)`, and `loss` (n,), each
  track's `loss_fn` over its chunks with the track label replicated to every chunk. Rows of padded
  tracks (`mask` False) are computed like the others; the caller drops them. Needs no collective,
  so it runs unchanged on one device or per device under shard_map.
  """
  audio = float_audio(batch['audio'])
  n, chunks, length = audio.shape
  logits = model.apply(variables, audio.reshape(n * chunks, length), train=False)
  logits = logits.astype(jnp.float32).reshape(n, chunks, -1)
  probs = jnp.mean(predict_fn(logits), axis=1)
  labels = jnp.broadcast_to(batch['labels'][:, None, :].astype(jnp.float32), logits.shape)
  loss = jax.vmap(loss_fn)(logits, labels)
  # A loss_fn that returns per-chunk values instead of their mean still gives one value per track.
  loss = jnp.mean(loss.reshape(n, -1), axis=1)
  return {'probs': probs, 'loss': loss}
