"""hcnn_jax.metrics against scikit-learn (the functions the reference calls) on random, tied and
degenerate inputs."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from hcnn_jax import metrics


def _data(kind: str, n: int = 120, c: int = 7, seed: int = 0):
  rng = np.random.default_rng(seed)
  labels = (rng.random((n, c)) < 0.3).astype(np.float32)
  # Scores correlated with the labels, so the metrics are away from their chance values.
  scores = np.clip(0.35 * labels + rng.random((n, c)) * 0.8, 0, 1)
  if kind == 'tied':
    scores = np.round(scores, 1)  # a handful of distinct values: many ties across classes
  elif kind == 'binary_scores':
    scores = (scores > 0.5).astype(np.float64)
  return labels, scores


@pytest.mark.parametrize('kind', ['random', 'tied', 'binary_scores'])
def test_ranking_metrics_match_sklearn(kind):
  labels, scores = _data(kind)
  macro, per_class = metrics.roc_auc(labels, scores)
  np.testing.assert_allclose(macro, skm.roc_auc_score(labels, scores, average='macro'), atol=1e-12)
  np.testing.assert_allclose(per_class, skm.roc_auc_score(labels, scores, average=None),
                             atol=1e-12)
  macro, per_class = metrics.average_precision(labels, scores)
  np.testing.assert_allclose(
      macro, skm.average_precision_score(labels, scores, average='macro'), atol=1e-12)
  np.testing.assert_allclose(
      per_class, skm.average_precision_score(labels, scores, average=None), atol=1e-12)


def test_all_tied_scores_give_chance_auc_and_prevalence_ap():
  labels = np.array([1, 0, 1, 0, 0], np.float32)
  scores = np.full(5, 0.3)
  assert metrics.roc_auc(labels, scores)[0] == pytest.approx(0.5)
  assert metrics.average_precision(labels, scores)[0] == pytest.approx(
      skm.average_precision_score(labels, scores))


def test_degenerate_classes_are_skipped_with_a_warning():
  labels, scores = _data('tied', c=5)
  labels[:, 1] = 0  # no positives (minzwon/sota-music-tagging-models issue #15)
  labels[:, 3] = 1  # no negatives
  names = ['rock', 'happy', 'piano', 'loud', 'slow']
  valid = [0, 2, 4]
  for fn, oracle in ((metrics.roc_auc, skm.roc_auc_score),
                     (metrics.average_precision, skm.average_precision_score)):
    with pytest.warns(UserWarning, match=r'happy \(no positives\).*loud \(no negatives\)'):
      macro, per_class = fn(labels, scores, class_names=names)
    assert np.isnan(per_class[[1, 3]]).all()
    np.testing.assert_allclose(per_class[valid],
                               oracle(labels[:, valid], scores[:, valid], average=None))
    np.testing.assert_allclose(macro, oracle(labels[:, valid], scores[:, valid], average='macro'))


def test_all_classes_skipped_gives_nan_macro_and_warns():
  labels = np.zeros((4, 2), np.float32)
  with pytest.warns(UserWarning) as record:
    macro, per_class = metrics.roc_auc(labels, np.random.default_rng(0).random((4, 2)))
  messages = ' | '.join(str(w.message) for w in record)
  assert 'skipping 2 of 2 classes' in messages and 'macro is NaN' in messages
  assert np.isnan(macro) and np.isnan(per_class).all()


def test_bad_inputs_raise_clear_errors():
  labels, scores = _data('random', c=3)
  with pytest.raises(ValueError, match='same shape'):
    metrics.roc_auc(labels, scores[:, :2])
  with pytest.raises(ValueError, match='binary'):
    metrics.average_precision(labels * 2, scores)
  bad = scores.copy()
  bad[0, 0] = np.nan
  with pytest.raises(ValueError, match='NaN'):
    metrics.roc_auc(labels, bad)
  with pytest.raises(ValueError, match='average'):
    metrics.f1_at_threshold(labels, scores, average='weighted')


def test_accuracy_matches_sklearn_for_integer_and_one_hot_labels():
  rng = np.random.default_rng(1)
  classes = rng.integers(0, 5, 50)
  scores = rng.random((50, 5))
  expected = skm.accuracy_score(classes, scores.argmax(1))
  assert metrics.accuracy(classes, scores) == pytest.approx(expected)
  assert metrics.accuracy(np.eye(5)[classes], scores) == pytest.approx(expected)
  with pytest.raises(ValueError, match='one-hot'):
    metrics.accuracy(np.ones((50, 5)), scores)
  with pytest.raises(ValueError, match=r'\[0, 5\)'):
    metrics.accuracy(classes + 5, scores)


@pytest.mark.parametrize('average', ['samples', 'macro', 'micro'])
@pytest.mark.parametrize('zero_division', [0.0, 1.0])
def test_f1_at_threshold_matches_sklearn(average, zero_division):
  labels, scores = _data('tied', c=6)
  labels[:3] = 0  # clips with no true label: 'samples' needs zero_division there
  labels[:, 5] = 0  # a class with no true label: 'macro' needs it there
  for threshold in (0.1, 0.5, 0.7):  # 0.5 and 0.7 are tied score values: strict '>' matters
    got = metrics.f1_at_threshold(labels, scores, threshold, average, zero_division)
    expected = skm.f1_score(labels, scores > threshold, average=average,
                            zero_division=zero_division)
    assert got == pytest.approx(expected, abs=1e-12)


def test_f1_micro_of_all_empty_is_zero_division():
  labels = np.zeros((3, 2))
  scores = np.zeros((3, 2))
  assert metrics.f1_at_threshold(labels, scores, 0.5, 'micro') == 0.0
  assert metrics.f1_at_threshold(labels, scores, 0.5, 'micro', zero_division=1.0) == 1.0


@pytest.mark.parametrize('kind', ['random', 'tied'])
def test_optimal_thresholds_reach_the_best_f1_of_every_cut(kind):
  labels, scores = _data(kind, n=60, c=4, seed=3)
  thresholds = metrics.optimal_thresholds(labels, scores)
  for c in range(labels.shape[1]):
    candidates = np.r_[np.unique(scores[:, c]), -np.inf]  # every distinct cut of '>' on the data
    best = max(skm.f1_score(labels[:, c], scores[:, c] > t, zero_division=0) for t in candidates)
    got = skm.f1_score(labels[:, c], scores[:, c] > thresholds[c], zero_division=0)
    assert got == pytest.approx(best, abs=1e-12)
  # The per-class thresholds applied together, against sklearn.
  for average in ('samples', 'macro', 'micro'):
    assert metrics.f1_at_thresholds(labels, scores, thresholds, average) == pytest.approx(
        skm.f1_score(labels, scores > thresholds, average=average, zero_division=0), abs=1e-12)
  # Per-class optimum beats any single global threshold in macro F1.
  assert metrics.f1_at_thresholds(labels, scores, thresholds, 'macro') >= max(
      metrics.f1_at_threshold(labels, scores, t, 'macro') for t in np.linspace(0, 1, 21))


def test_optimal_thresholds_are_midpoints_between_scores():
  labels = np.array([1, 1, 0, 0], np.float32)
  scores = np.array([0.9, 0.8, 0.4, 0.2])
  assert metrics.optimal_thresholds(labels, scores)[0] == pytest.approx(0.6)
  # Everything positive wins: half the last gap below the lowest score.
  assert metrics.optimal_thresholds(np.ones(4), scores)[0] == pytest.approx(0.1)


def test_optimal_thresholds_on_a_grid_and_fallback():
  labels, scores = _data('random', n=80, c=3, seed=5)
  labels[:, 2] = 0
  grid = np.linspace(0.05, 0.95, 19)
  with pytest.warns(UserWarning, match='no positives for classes c'):
    thresholds = metrics.optimal_thresholds(labels, scores, grid=grid, class_names='abc',
                                            fallback=0.3)
  assert thresholds[2] == 0.3
  for c in range(2):
    f1s = [skm.f1_score(labels[:, c], scores[:, c] > t) for t in grid]
    assert thresholds[c] == grid[int(np.argmax(f1s))]
  with pytest.raises(ValueError, match='one threshold per class'):
    metrics.f1_at_thresholds(labels, scores, thresholds[:2])


def test_summarize_tagging_and_keywords():
  labels, scores = _data('random', c=3)
  out = metrics.summarize('tagging', labels, scores, class_names=['a', 'b', 'c'])
  assert out['roc_auc'] == pytest.approx(skm.roc_auc_score(labels, scores))
  assert out['pr_auc'] == pytest.approx(skm.average_precision_score(labels, scores))
  assert set(out['per_class']['roc_auc']) == {'a', 'b', 'c'}
  assert out['per_class']['pr_auc']['b'] == pytest.approx(
      skm.average_precision_score(labels[:, 1], scores[:, 1]))
  assert set(metrics.scalars(out)) == {'num_examples', 'roc_auc', 'pr_auc'}

  classes = np.random.default_rng(2).integers(0, 3, len(scores))
  out = metrics.summarize('keywords', np.eye(3)[classes], scores)
  assert out == {'num_examples': len(scores),
                 'accuracy': pytest.approx(skm.accuracy_score(classes, scores.argmax(1)))}
  with pytest.raises(ValueError, match='tagging, keywords, events|expected one of'):
    metrics.summarize('detection', labels, scores)


def test_summarize_events_with_and_without_validation_thresholds():
  val_labels, val_scores = _data('random', c=4, seed=7)
  test_labels, test_scores = _data('random', c=4, seed=8)
  out = metrics.summarize('events', test_labels, test_scores)
  assert out['thresholds_from_same_data'] is True
  assert out['f1@0.1'] == pytest.approx(
      skm.f1_score(test_labels, test_scores > 0.1, average='samples', zero_division=0))
  assert out['f1_macro@0.1'] == pytest.approx(
      skm.f1_score(test_labels, test_scores > 0.1, average='macro', zero_division=0))

  thresholds = metrics.optimal_thresholds(val_labels, val_scores)
  out = metrics.summarize('events', test_labels, test_scores, val_thresholds=thresholds)
  assert out['thresholds_from_same_data'] is False
  assert out['f1@optimal'] == pytest.approx(
      skm.f1_score(test_labels, test_scores > thresholds, average='samples', zero_division=0))
  assert list(out['per_class']['threshold'].values()) == pytest.approx(list(thresholds))
  assert 'thresholds_from_same_data' not in metrics.scalars(out)
  assert {'roc_auc', 'pr_auc', 'f1_micro@optimal'} <= set(out)


def test_summarize_drops_masked_rows():
  labels, scores = _data('random', c=3)
  mask = np.arange(len(labels)) < 100
  padded = scores.copy()
  padded[~mask] = 0.0
  out = metrics.summarize('tagging', labels, padded, mask=mask)
  assert out['num_examples'] == 100
  assert out['roc_auc'] == pytest.approx(skm.roc_auc_score(labels[:100], scores[:100]))


def test_valid_data_raises_no_warning():
  labels, scores = _data('random')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    metrics.summarize('events', labels, scores)
