"""Task bundles: the loss, the output non-linearity and the metrics of each kind of task.

Models return logits; the task owns everything after them (docs/architecture.md):
- 'tagging'  (MTAT, MTG-Jamendo, MSD, synth_gm): multi-label, mean sigmoid BCE, ROC-AUC / PR-AUC.
- 'keywords' (Speech Commands): single-label, softmax cross-entropy on logits, accuracy.
- 'events'   (DCASE 2017 task 4): multi-label, mean sigmoid BCE, F1 at 0.1 and at optimal
  thresholds, ROC-AUC / PR-AUC.

Model selection follows sota (`training/solver.py`): best by mean validation loss, mode 'min'.
ddhf's DCASE run selected by F1@0.1 instead; `get_task('events', selection_metric='f1@0.1',
selection_mode='max')` reproduces that.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from hcnn_jax import metrics as metrics_lib

KINDS = ('tagging', 'keywords', 'events')
_MODES = ('min', 'max')


def _masked_mean(per_example: jnp.ndarray, mask) -> jnp.ndarray:
  if mask is None:
    return jnp.mean(per_example)
  mask = jnp.asarray(mask, per_example.dtype).reshape(per_example.shape[0])
  # Guard an all-padding batch: 0 / 1 instead of NaN.
  return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def sigmoid_bce(logits: jnp.ndarray, labels: jnp.ndarray, mask=None) -> jnp.ndarray:
  """Mean over examples and classes of the binary cross-entropy (torch's BCELoss 'mean').

  Computed from logits with optax's log-sigmoid form, so ±100 logits stay finite.
  """
  import optax  # pylint: disable=import-outside-toplevel  (inference never imports it)
  logits = jnp.asarray(logits, jnp.float32)
  labels = jnp.asarray(labels, jnp.float32)
  per_example = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels), axis=-1)
  return _masked_mean(per_example, mask)


def softmax_ce(logits: jnp.ndarray, labels: jnp.ndarray, mask=None) -> jnp.ndarray:
  """Mean softmax cross-entropy (torch's CrossEntropyLoss on logits).

  labels: one-hot (B, C) as the datasets store them, or integer classes (B,).
  """
  import optax  # pylint: disable=import-outside-toplevel
  logits, labels = jnp.asarray(logits, jnp.float32), jnp.asarray(labels)
  if labels.ndim == logits.ndim - 1:
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  else:
    per_example = optax.softmax_cross_entropy(logits, jnp.asarray(labels, jnp.float32))
  return _masked_mean(per_example, mask)


@dataclasses.dataclass(frozen=True)
class Task:
  """What follows the logits for one kind of task.

  Attributes:
    kind: 'tagging' | 'keywords' | 'events'.
    multi_label: True when classes are independent (sigmoid), False for one class (softmax).
    selection_metric: the validation entry a checkpoint is kept by ('loss' or a `metrics` key).
    selection_mode: 'min' or 'max' for selection_metric.
  """
  kind: str
  multi_label: bool
  selection_metric: str = 'loss'
  selection_mode: str = 'min'

  def loss(self, logits: jnp.ndarray, labels: jnp.ndarray, mask=None) -> jnp.ndarray:
    """Scalar float32 loss of logits (B, C) against labels (B, C); `mask` (B,) drops padding."""
    return (sigmoid_bce if self.multi_label else softmax_ce)(logits, labels, mask)

  def predict(self, logits: jnp.ndarray) -> jnp.ndarray:
    """Probabilities (B, C): sigmoid per class, or softmax over classes."""
    logits = jnp.asarray(logits, jnp.float32)
    return jax.nn.sigmoid(logits) if self.multi_label else jax.nn.softmax(logits, axis=-1)

  def metrics(self, probs, labels, class_names=None, **kw) -> dict:
    """Host-side metrics of (N, C) probabilities; see `metrics.summarize` for the keys and `kw`
    (mask, val_thresholds, threshold)."""
    return metrics_lib.summarize(self.kind, np.asarray(labels), np.asarray(probs),
                                 class_names=class_names, **kw)

  def is_better(self, value: float, best: float | None) -> bool:
    """Whether a new validation value beats the best so far (None: nothing yet); NaN never wins."""
    if value is None or np.isnan(value):
      return False
    if best is None or np.isnan(best):
      return True
    return value < best if self.selection_mode == 'min' else value > best


_TASKS: dict[str, Callable[[], Task]] = {
    'tagging': lambda: Task('tagging', multi_label=True),
    'keywords': lambda: Task('keywords', multi_label=False),
    'events': lambda: Task('events', multi_label=True),
}


def get_task(kind: str, selection_metric: str | None = None,
             selection_mode: str | None = None) -> Task:
  """The Task of a kind, optionally with another model-selection rule (from the config)."""
  if kind not in _TASKS:
    raise ValueError(f'Unknown task {kind!r}; expected one of {", ".join(KINDS)} '
                     '(set config.task or the dataset metadata "task").')
  task = _TASKS[kind]()
  if selection_mode is not None and selection_mode not in _MODES:
    raise ValueError(f'selection_mode must be one of {_MODES}; got {selection_mode!r}.')
  if selection_metric is not None:
    task = dataclasses.replace(task, selection_metric=selection_metric)
  if selection_mode is not None:
    task = dataclasses.replace(task, selection_mode=selection_mode)
  return task


def check_config(config) -> None:
  """ValueError naming the key(s) when the config's task or selection rule is not one."""
  problems = []
  task = config.get('task')
  if task is not None and task not in KINDS:
    problems.append(f'task: {task!r} is not a task; use one of {list(KINDS)} (or leave it unset '
                    "to take the dataset's)")
  mode = config.get('selection_mode')
  if mode is not None and mode not in _MODES:
    problems.append(f'selection_mode: {mode!r}; use one of {list(_MODES)}')
  if problems:
    raise ValueError(' - '.join(problems))
