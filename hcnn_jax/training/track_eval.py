"""Track-level evaluation: every track cut into `eval_chunks` chunks, the chunks' predictions
averaged per track, the task's metrics of those track predictions and the mean loss.

`evaluate_source` is what validation, the run's final test evaluation and `hcnn-eval` compute;
`describe` is what every metrics file records of how it was computed.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from hcnn_jax import tasks
from hcnn_jax.data import pipeline
from hcnn_jax.training import parallel, progress, writers

log = logging.getLogger(__name__)
PyTree = Any


def evaluate_source(eval_fn: Callable, variables: PyTree, source, config, task: tasks.Task,
                    class_names: List[str], mesh, desc: str,
                    timer: Optional[progress.ValidationTimer] = None) -> Dict[str, Any]:
  """Track-level metrics of `source`: the task's metrics of chunk-averaged predictions + loss.

  `timer`, if given, is told when each batch's outputs reach the host.
  """
  shard_index, shard_count = jax.process_index(), jax.process_count()
  tracks_per_batch = int(config.eval_tracks_per_batch)
  batches = pipeline.eval_batches(
      source, input_length=int(config.input_length), num_chunks=int(config.eval_chunks),
      tracks_per_batch=tracks_per_batch, shard_index=shard_index, shard_count=shard_count)
  total = pipeline.num_eval_batches(len(source), tracks_per_batch, shard_count)
  parts: Dict[str, List[np.ndarray]] = {'probs': [], 'loss': [], 'labels': [], 'mask': []}
  for batch in tqdm(batches, total=total, desc=desc, unit='batch', leave=False,
                    disable=not progress.bar_enabled(config), dynamic_ncols=True):
    device_batch = parallel.shard_batch(
        {'audio': batch['audio'], 'labels': batch['labels'], 'mask': batch['mask']}, mesh)
    out = eval_fn(variables, device_batch)
    # Labels and mask travel through the devices with the outputs, so that after the gather of
    # a multi-host run every row still sits next to its own label.
    host = parallel.to_host({'probs': out['probs'], 'loss': out['loss'],
                             'labels': device_batch['labels'], 'mask': device_batch['mask']})
    for key in parts:
      parts[key].append(np.asarray(host[key]))
    if timer is not None:
      timer.batch_done()
  arrays = {k: np.concatenate(v) for k, v in parts.items()}
  mask = arrays['mask'].astype(bool)
  probs, labels, losses = arrays['probs'][mask], arrays['labels'][mask], arrays['loss'][mask]
  loss = float(np.mean(losses)) if losses.size else float('nan')
  if not np.all(np.isfinite(probs)):
    log.warning('%s: non-finite predictions on %d tracks; only the loss is reported.', desc,
                int(np.sum(~np.all(np.isfinite(probs), axis=1))))
    return {'loss': loss, 'num_examples': int(mask.sum()), 'nonfinite_predictions': True}
  result = dict(task.metrics(probs, labels, class_names=class_names))
  result['loss'] = loss
  result['positives'] = dict(zip(class_names, np.sum(labels > 0, axis=0).astype(int).tolist()))
  return result


def describe(config, split: str, checkpoint: Optional[str], checkpoint_step: Optional[int],
             workdir: str) -> Dict[str, Any]:
  """What a metrics file records beside the scores: the split, the checkpoint evaluated (named
  relative to the workdir) and its step, and the chunks per track and their length, which change
  the scores of one checkpoint (a 4-chunk validation and a 16-chunk test do not agree)."""
  return {'split': split,
          'checkpoint': None if checkpoint is None else writers.workdir_relative(checkpoint,
                                                                                  workdir),
          'checkpoint_step': None if checkpoint_step is None else int(checkpoint_step),
          'eval_chunks': int(config.eval_chunks), 'input_length': int(config.input_length)}


def epoch_line(val: Dict[str, Any]) -> str:
  """The validation scores of an epoch for the console: `loss 0.69, pr_auc 0.41, roc_auc 0.52`
  (whatever float scores the task gives: ROC/PR-AUC, accuracy, F1)."""
  names = sorted(k for k, v in val.items() if isinstance(v, float))
  names = [k for k in names if k == 'loss'] + [k for k in names if k != 'loss']
  return ', '.join(f'{k} {val[k]:.4f}' for k in names)
