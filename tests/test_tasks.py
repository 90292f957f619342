"""Task bundles: losses against numpy formulas (torch's BCELoss / CrossEntropyLoss), stability at
±100 logits, predictions, selection rule and the metrics hook."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcnn_jax import tasks


def _np_bce(logits, labels):
  p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  return np.mean(-(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def _np_ce(logits, classes):
  z = logits.astype(np.float64)
  log_softmax = z - z.max(1, keepdims=True)
  log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
  return -np.mean(log_softmax[np.arange(len(classes)), classes])


@pytest.fixture
def batch():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (8, 5)).astype(np.float32)
  multi_hot = (rng.random((8, 5)) < 0.4).astype(np.float32)
  classes = rng.integers(0, 5, 8)
  return logits, multi_hot, classes


@pytest.mark.parametrize('kind', ['tagging', 'events'])
def test_sigmoid_tasks_loss_is_mean_bce(kind, batch):
  logits, multi_hot, _ = batch
  task = tasks.get_task(kind)
  loss = task.loss(jnp.asarray(logits), jnp.asarray(multi_hot))
  assert loss.shape == () and loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, _np_bce(logits, multi_hot), rtol=1e-5)
  np.testing.assert_allclose(task.predict(logits), 1 / (1 + np.exp(-logits)), rtol=1e-5)


def test_keywords_loss_is_softmax_ce_for_one_hot_and_integer_labels(batch):
  logits, _, classes = batch
  task = tasks.get_task('keywords')
  one_hot = np.eye(5, dtype=np.float32)[classes]
  expected = _np_ce(logits, classes)
  np.testing.assert_allclose(task.loss(logits, one_hot), expected, rtol=1e-5)
  np.testing.assert_allclose(task.loss(logits, jnp.asarray(classes)), expected, rtol=1e-5)
  probs = task.predict(logits)
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(np.argmax(probs, -1), np.argmax(logits, -1))


def test_losses_are_stable_for_huge_logits():
  logits = jnp.array([[100.0, -100.0], [-100.0, 100.0]])
  right = jnp.array([[1.0, 0.0], [0.0, 1.0]])
  wrong = 1.0 - right
  bce = tasks.get_task('tagging')
  ce = tasks.get_task('keywords')
  # Confident and right: ~0 (e^-100); confident and wrong: the logit itself (100), not inf/NaN.
  np.testing.assert_allclose(bce.loss(logits, right), 0.0, atol=1e-30)
  np.testing.assert_allclose(bce.loss(logits, wrong), 100.0, rtol=1e-6)
  np.testing.assert_allclose(ce.loss(logits, right), 0.0, atol=1e-30)
  np.testing.assert_allclose(ce.loss(logits, wrong), 200.0, rtol=1e-6)
  for task in (bce, ce):
    grads = jax.grad(task.loss)(logits, wrong)
    assert np.all(np.isfinite(grads)) and np.abs(grads).max() > 0


def test_bfloat16_logits_give_a_float32_loss(batch):
  logits, multi_hot, _ = batch
  loss = tasks.get_task('tagging').loss(jnp.asarray(logits, jnp.bfloat16), multi_hot)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, _np_bce(logits, multi_hot), rtol=2e-2)


@pytest.mark.parametrize('kind', tasks.KINDS)
def test_mask_drops_padding_rows(kind, batch):
  logits, multi_hot, classes = batch
  labels = multi_hot if kind != 'keywords' else np.eye(5, dtype=np.float32)[classes]
  task = tasks.get_task(kind)
  mask = np.arange(8) < 5
  np.testing.assert_allclose(task.loss(logits, labels, mask=mask),
                             task.loss(logits[:5], labels[:5]), rtol=1e-6)
  assert task.loss(logits, labels, mask=np.zeros(8, bool)) == 0.0


def test_loss_works_under_vmap_over_tracks(batch):
  # The eval step maps the loss over tracks of (chunks, C) logits.
  logits, multi_hot, _ = batch
  task = tasks.get_task('tagging')
  per_track = jax.vmap(task.loss)(logits.reshape(2, 4, 5), multi_hot.reshape(2, 4, 5))
  np.testing.assert_allclose(per_track.mean(), _np_bce(logits, multi_hot), rtol=1e-5)


def test_selection_rule_and_overrides():
  task = tasks.get_task('tagging')
  assert (task.selection_metric, task.selection_mode) == ('loss', 'min')
  assert task.is_better(0.3, None) and task.is_better(0.3, 0.4) and not task.is_better(0.4, 0.3)
  assert not task.is_better(float('nan'), 0.4)
  f1_task = tasks.get_task('events', selection_metric='f1@0.1', selection_mode='max')
  assert f1_task.is_better(0.5, 0.4) and not f1_task.is_better(0.3, 0.4)
  with pytest.raises(dataclasses.FrozenInstanceError):
    task.kind = 'events'
  with pytest.raises(ValueError, match='tagging, keywords, events'):
    tasks.get_task('segmentation')
  with pytest.raises(ValueError, match='selection_mode'):
    tasks.get_task('tagging', selection_mode='best')


def test_metrics_goes_through_summarize(batch):
  logits, multi_hot, classes = batch
  tag = tasks.get_task('tagging')
  out = tag.metrics(tag.predict(logits), multi_hot, class_names=list('abcde'))
  assert {'roc_auc', 'pr_auc', 'per_class'} <= set(out)
  kw = tasks.get_task('keywords')
  out = kw.metrics(kw.predict(logits), np.eye(5)[classes], mask=np.arange(8) < 6)
  assert out['num_examples'] == 6
  assert out['accuracy'] == pytest.approx(np.mean(logits[:6].argmax(1) == classes[:6]))
  ev = tasks.get_task('events')
  out = ev.metrics(ev.predict(logits), multi_hot, threshold=0.5)
  assert 'f1@0.5' in out and 'f1@optimal' in out
