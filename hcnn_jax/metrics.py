"""Evaluation metrics of the reference code, in numpy (host side, pure functions of arrays).

Definitions follow scikit-learn, which the reference calls (reference sections 4.6 and 8) and which
the tests use as the oracle:
- ROC-AUC per class is the probability that a positive outranks a negative, ties counting one half
  (the Mann-Whitney statistic, equal to sklearn's trapezoidal `roc_auc_score`).
- "PR-AUC" is average precision, sklearn's step-function sum over distinct thresholds,
  AP = Σ_k (R_k − R_{k−1}) P_k, where tied scores enter together (not trapezoidal PR-AUC).
- F1 is 2TP / (2TP + FP + FN) of `scores > threshold`; where TP + FP + FN = 0 the value is
  `zero_division` (default 0.0, the value sklearn's default 'warn' falls back to).

Macro averages skip classes with no positive or no negative example: there ROC-AUC is undefined
(sklearn raises; minzwon/sota-music-tagging-models issue #15) and AP is trivially 0 or 1. A
`warnings.warn` names the skipped classes; the per-class arrays hold NaN there; if every class is
skipped the macro is NaN.
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

AVERAGES = ('samples', 'macro', 'micro')
TASK_KINDS = ('tagging', 'keywords', 'events')


# --------------------------------------------------------------------------------------------
# Input checks (metrics are called on user data, so bad shapes fail here with a clear message)

def _check_scores(scores, name: str = 'scores') -> np.ndarray:
  scores = np.asarray(scores, dtype=np.float64)
  if not np.all(np.isfinite(scores)):
    raise ValueError(f'{name} contain NaN or inf ({np.sum(~np.isfinite(scores))} values); '
                     'the model diverged or the predictions were not computed.')
  return scores


def _check_binary(labels, scores, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns (labels bool (N, C), scores float64 (N, C)); a 1-D pair is one class."""
  labels, scores = np.asarray(labels), _check_scores(scores)
  if labels.ndim == 1 and scores.ndim == 1:
    labels, scores = labels[:, None], scores[:, None]
  if labels.ndim != 2 or labels.shape != scores.shape:
    raise ValueError(f'{what} needs labels and scores of the same shape (N, C); got labels '
                     f'{labels.shape} and scores {scores.shape}.')
  if labels.shape[0] == 0:
    raise ValueError(f'{what} needs at least one example; got 0.')
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError(f'{what} needs binary (0/1) labels; got values {np.unique(labels)[:5]}.')
  return labels.astype(bool), scores


def _class_names(num_classes: int, class_names: Sequence[str] | None) -> list[str]:
  if class_names is None:
    return [str(i) for i in range(num_classes)]
  class_names = [str(n) for n in class_names]
  if len(class_names) != num_classes:
    raise ValueError(f'class_names has {len(class_names)} entries but the labels have '
                     f'{num_classes} columns.')
  return class_names


def _apply_mask(mask, *arrays):
  if mask is None:
    return arrays
  mask = np.asarray(mask, dtype=bool).reshape(-1)
  if any(a.shape[0] != mask.shape[0] for a in arrays):
    raise ValueError(f'mask has {mask.shape[0]} entries but the arrays have '
                     f'{[a.shape[0] for a in arrays]} rows.')
  return tuple(a[mask] for a in arrays)


def valid_classes(labels, class_names: Sequence[str] | None = None, what: str = 'metric',
                  warn: bool = True) -> np.ndarray:
  """Bool (C,): classes with at least one positive and one negative example.

  Warns, naming the others, so that a subset with an empty tag (minzwon/sota-music-tagging-models
  issue #15) is visible instead of crashing or silently biasing the macro average.
  """
  labels = np.asarray(labels).astype(bool)
  if labels.ndim == 1:
    labels = labels[:, None]
  pos = labels.sum(axis=0)
  valid = (pos > 0) & (pos < labels.shape[0])
  if warn and not valid.all():
    names = _class_names(labels.shape[1], class_names)
    skipped = [f'{names[i]} ({"no positives" if pos[i] == 0 else "no negatives"})'
               for i in np.flatnonzero(~valid)]
    warnings.warn(f'{what}: skipping {len(skipped)} of {labels.shape[1]} classes with only one '
                  f'label value: {", ".join(skipped)}.', stacklevel=3)
  return valid


def _macro(per_class: np.ndarray, what: str) -> float:
  if np.all(np.isnan(per_class)):
    warnings.warn(f'{what}: no class has both positive and negative examples; macro is NaN.',
                  stacklevel=3)
    return float('nan')
  return float(np.nanmean(per_class))


# --------------------------------------------------------------------------------------------
# Ranking metrics

def _average_ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks of x with ties sharing their mean rank (scipy.stats.rankdata 'average')."""
  values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  del values
  ends = np.cumsum(counts)
  return (ends - (counts - 1) / 2.0)[inverse.reshape(-1)]


def _binary_roc_auc(y: np.ndarray, s: np.ndarray) -> float:
  n_pos = y.sum()
  n_neg = y.size - n_pos
  ranks = _average_ranks(s)
  return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _binary_average_precision(y: np.ndarray, s: np.ndarray) -> float:
  order = np.argsort(-s, kind='stable')
  s, y = s[order], y[order]
  # The last index of each run of equal scores: tied examples enter the curve together.
  ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
  tp = np.cumsum(y)[ends]
  precision = tp / (ends + 1.0)
  recall = tp / tp[-1]
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _per_class(fn, labels, scores, class_names, what) -> tuple[float, np.ndarray]:
  labels, scores = _check_binary(labels, scores, what)
  valid = valid_classes(labels, class_names, what)
  per_class = np.full(labels.shape[1], np.nan)
  for c in np.flatnonzero(valid):
    per_class[c] = fn(labels[:, c], scores[:, c])
  return _macro(per_class, what), per_class


def roc_auc(labels, scores, class_names: Sequence[str] | None = None
            ) -> tuple[float, np.ndarray]:
  """Macro ROC-AUC over valid classes and the per-class values (NaN where skipped).

  Args:
    labels: (N, C) multi-hot 0/1 (or (N,) for one class).
    scores: (N, C) scores of any monotone scale (probabilities or logits).
    class_names: names used in the skipped-class warning.
  """
  return _per_class(_binary_roc_auc, labels, scores, class_names, 'roc_auc')


def average_precision(labels, scores, class_names: Sequence[str] | None = None
                      ) -> tuple[float, np.ndarray]:
  """Macro average precision (the reference's "PR-AUC") and per-class values (NaN where skipped)."""
  return _per_class(_binary_average_precision, labels, scores, class_names, 'average_precision')


# --------------------------------------------------------------------------------------------
# Single-label accuracy

def accuracy(labels, scores) -> float:
  """Top-1 accuracy: argmax of scores (first index on ties) against the true class.

  Args:
    labels: (N,) integer classes or (N, C) one-hot rows.
    scores: (N, C).
  """
  scores = _check_scores(scores)
  labels = np.asarray(labels)
  if scores.ndim != 2 or scores.shape[0] == 0:
    raise ValueError(f'accuracy needs scores of shape (N, C) with N > 0; got {scores.shape}.')
  if labels.ndim == 2:
    if labels.shape != scores.shape:
      raise ValueError(f'accuracy: one-hot labels {labels.shape} do not match scores '
                       f'{scores.shape}.')
    if not (np.all((labels == 0) | (labels == 1)) and np.all(labels.sum(axis=1) == 1)):
      raise ValueError('accuracy needs one-hot label rows (exactly one 1 per row); for '
                       'multi-label data use roc_auc / average_precision / F1.')
    labels = labels.argmax(axis=1)
  elif labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
    raise ValueError(f'accuracy: integer labels must have shape ({scores.shape[0]},); got '
                     f'{labels.shape}.')
  if labels.min() < 0 or labels.max() >= scores.shape[1]:
    raise ValueError(f'accuracy: labels must lie in [0, {scores.shape[1]}); got range '
                     f'[{labels.min()}, {labels.max()}].')
  return float(np.mean(scores.argmax(axis=1) == labels))


# --------------------------------------------------------------------------------------------
# F1 at thresholds

def _f1_from_predictions(labels: np.ndarray, predicted: np.ndarray, average: str,
                         zero_division: float) -> float:
  if average not in AVERAGES:
    raise ValueError(f'average must be one of {AVERAGES}; got {average!r}.')
  tp = labels & predicted
  fp = ~labels & predicted
  fn = labels & ~predicted
  if average == 'micro':
    axis = None
  else:
    axis = 1 if average == 'samples' else 0
  num = 2.0 * tp.sum(axis=axis)
  den = num + fp.sum(axis=axis) + fn.sum(axis=axis)
  f1 = np.where(den > 0, num / np.maximum(den, 1), zero_division)
  return float(np.mean(f1))


def f1_at_threshold(labels, scores, threshold: float = 0.1, average: str = 'samples',
                    zero_division: float = 0.0) -> float:
  """F1 of `scores > threshold` (strict, as the reference's `est > 0.1`).

  Equals sklearn's `f1_score(labels, scores > threshold, average=average,
  zero_division=zero_division)`. `average`: 'samples' (per-clip F1 averaged over clips, the
  reference's DCASE metric), 'macro' (per class, then mean) or 'micro' (pooled counts). An F1 with
  TP + FP + FN = 0 is `zero_division` (0.0 by default, silently).
  """
  labels, scores = _check_binary(labels, scores, 'f1_at_threshold')
  return _f1_from_predictions(labels, scores > threshold, average, zero_division)


def f1_at_thresholds(labels, scores, thresholds, average: str = 'samples',
                     zero_division: float = 0.0) -> float:
  """F1 of `scores > thresholds[c]` per class, e.g. with thresholds from `optimal_thresholds`
  chosen on validation and applied here to test."""
  labels, scores = _check_binary(labels, scores, 'f1_at_thresholds')
  thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
  if thresholds.shape[0] != labels.shape[1]:
    raise ValueError(f'f1_at_thresholds needs one threshold per class ({labels.shape[1]}); got '
                     f'{thresholds.shape[0]}.')
  return _f1_from_predictions(labels, scores > thresholds[None, :], average, zero_division)


def _best_threshold_from_data(y: np.ndarray, s: np.ndarray) -> float:
  """The threshold maximising F1 of `s > t` over every distinct cut of the sorted scores.

  Cutting between distinct scores u_{k-1} > u_k predicts the top k groups; the threshold returned
  is the midpoint (robust when applied to other data); predicting everything uses a threshold half
  the last gap below the smallest score. Among equal F1 the highest threshold (fewest positives)
  wins.
  """
  order = np.argsort(-s, kind='stable')
  s, y = s[order], y[order]
  ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
  tp = np.cumsum(y)[ends]
  predicted = ends + 1.0
  f1 = 2.0 * tp / (predicted + y.sum())
  k = int(np.argmax(f1))
  upper = s[ends[k]]
  if k + 1 == ends.size:
    # Predict everything: as far below the lowest score as the midpoints sit between scores.
    if ends.size == 1:
      return float(np.nextafter(upper, -np.inf))
    return float(min(upper - (s[ends[k - 1]] - upper) / 2.0, np.nextafter(upper, -np.inf)))
  lower = s[ends[k] + 1]
  middle = (upper + lower) / 2.0
  # Adjacent floats have no midpoint; `> lower` still makes the same cut.
  return float(middle if lower < middle < upper else lower)


def optimal_thresholds(labels, scores, grid=None, class_names: Sequence[str] | None = None,
                       fallback: float = 0.1) -> np.ndarray:
  """Per-class thresholds maximising that class's F1 of `scores > t` (choose them on validation).

  Args:
    labels, scores: (N, C).
    grid: candidate thresholds (1-D); the first best in grid order wins. None searches every
      distinct cut of the data (see `_best_threshold_from_data`).
    class_names: names used in the warning below.
    fallback: threshold for classes without positives, where F1 cannot be maximised (warned).
  Returns:
    float64 (C,).
  """
  labels, scores = _check_binary(labels, scores, 'optimal_thresholds')
  has_pos = labels.any(axis=0)
  if not has_pos.all():
    names = _class_names(labels.shape[1], class_names)
    warnings.warn('optimal_thresholds: no positives for classes '
                  f'{", ".join(names[i] for i in np.flatnonzero(~has_pos))}; using the fallback '
                  f'threshold {fallback}.', stacklevel=2)
  thresholds = np.full(labels.shape[1], float(fallback))
  if grid is None:
    for c in np.flatnonzero(has_pos):
      thresholds[c] = _best_threshold_from_data(labels[:, c], scores[:, c])
    return thresholds
  grid = np.asarray(grid, dtype=np.float64).reshape(-1)
  if grid.size == 0 or not np.all(np.isfinite(grid)):
    raise ValueError('optimal_thresholds: grid must be a non-empty list of finite thresholds.')
  n_pos = labels.sum(axis=0)
  f1 = np.empty((grid.size, labels.shape[1]))
  for g, t in enumerate(grid):
    predicted = scores > t
    tp = (predicted & labels).sum(axis=0)
    f1[g] = 2.0 * tp / np.maximum(predicted.sum(axis=0) + n_pos, 1)
  best = grid[np.argmax(f1, axis=0)]
  thresholds[has_pos] = best[has_pos]
  return thresholds


# --------------------------------------------------------------------------------------------
# What each task reports

def _named(values: np.ndarray, names: list[str]) -> dict[str, float]:
  return {n: float(v) for n, v in zip(names, values)}


def summarize(task_kind: str, labels, scores, class_names: Sequence[str] | None = None,
              val_thresholds=None, *, mask=None, threshold: float = 0.1) -> dict:
  """The metrics a task reports, as one dict.

  Top-level float entries are the scalars to log; `per_class` maps metric name → {class: value}
  and is for tables; strings/bools describe how values were obtained.

  - 'tagging':  roc_auc, pr_auc (macro), per_class.{roc_auc, pr_auc}.
  - 'keywords': accuracy.
  - 'events':   f1@{thr} (samples average, the reference's DCASE number), f1_macro@{thr},
                f1_micro@{thr}; the same three at per-class optimal thresholds (f1@optimal, ...);
                roc_auc, pr_auc; per_class.{roc_auc, pr_auc, threshold}. Thresholds are
                `val_thresholds` when given (choose them with `optimal_thresholds` on validation);
                otherwise they are chosen on these same data and `thresholds_from_same_data` is
                True, which makes f1@optimal an optimistic (oracle) number.

  Args:
    task_kind: 'tagging' | 'keywords' | 'events'.
    labels: (N, C) multi-hot, or one-hot / (N,) integers for 'keywords'.
    scores: (N, C) probabilities.
    class_names: column names, for per-class entries and warnings.
    val_thresholds: (C,) thresholds for 'events'.
    mask: optional bool (N,), False for padding rows that must not count.
    threshold: the fixed F1 threshold for 'events' (ddhf's `eval.py`: 0.1).
  """
  if task_kind not in TASK_KINDS:
    raise ValueError(f'Unknown task kind {task_kind!r}; expected one of {TASK_KINDS}.')
  labels, scores = np.asarray(labels), np.asarray(scores)
  labels, scores = _apply_mask(mask, labels, scores)
  out: dict = {'num_examples': int(scores.shape[0])}
  if task_kind == 'keywords':
    out['accuracy'] = accuracy(labels, scores)
    return out

  labels, scores = _check_binary(labels, scores, f'summarize({task_kind!r})')
  names = _class_names(labels.shape[1], class_names)
  roc, roc_pc = roc_auc(labels, scores, names)
  ap, ap_pc = average_precision(labels, scores, names)
  out.update(roc_auc=roc, pr_auc=ap)
  out['per_class'] = {'roc_auc': _named(roc_pc, names), 'pr_auc': _named(ap_pc, names)}
  if task_kind == 'tagging':
    return out

  for avg in AVERAGES:
    key = 'f1' if avg == 'samples' else f'f1_{avg}'
    out[f'{key}@{threshold:g}'] = f1_at_threshold(labels, scores, threshold, avg)
  from_same_data = val_thresholds is None
  thresholds = (optimal_thresholds(labels, scores, class_names=names) if from_same_data
                else np.asarray(val_thresholds, dtype=np.float64))
  for avg in AVERAGES:
    key = 'f1' if avg == 'samples' else f'f1_{avg}'
    out[f'{key}@optimal'] = f1_at_thresholds(labels, scores, thresholds, avg)
  out['thresholds_from_same_data'] = from_same_data
  out['per_class']['threshold'] = _named(thresholds, names)
  return out


def scalars(summary: Mapping) -> dict[str, float]:
  """The float entries of a `summarize` dict (what a logger writes)."""
  return {k: float(v) for k, v in summary.items()
          if isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)}
