"""The training bar counts steps the devices finished, and its rate and ETA leave compiling out;
the epoch's console line names every validation score.

A fake clock and fake step outputs (`is_ready` / `block_until_ready`, as `jax.Array` has) stand
for the devices: a test decides when each step finishes and what time it is.
"""
from __future__ import annotations

import io

import jax.numpy as jnp
import numpy as np

from hcnn_jax import tasks
from hcnn_jax.training import progress, track_eval


class _Clock:

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


class _Step:
  """A dispatched step's loss: finished when the test says so, or when the host blocks on it
  (the device then runs it to the end: the clock moves by its `duration`)."""

  def __init__(self, clock: _Clock, duration: float):
    self.clock, self.duration, self.ready, self.blocked = clock, duration, False, False

  def is_ready(self) -> bool:
    return self.ready

  def block_until_ready(self):
    if not self.ready:
      self.blocked = True
      self.clock.now += self.duration
      self.ready = True
    return self


def _progress(clock, **kw):
  kw = dict(dict(num_epochs=2, steps_per_epoch=5, batch_size=8, enabled=True, clock=clock,
                 file=io.StringIO()), **kw)
  return progress.RunProgress(**kw)


def test_the_bar_counts_finished_steps_not_dispatched_ones():
  clock = _Clock()
  bars = _progress(clock)
  bars.start_epoch(1, completed=0)
  steps = [_Step(clock, 1.0) for _ in range(5)]
  bars.dispatched(steps[0])
  bars.dispatched(steps[1])
  assert bars.bar.n == 0 and bars.completed == 0  # two in flight, none finished
  steps[0].ready = True
  bars.poll()
  assert bars.bar.n == 1
  bars.dispatched(steps[2])
  assert bars.bar.n == 1 and not steps[1].blocked  # still two in flight: no wait
  bars.dispatched(steps[3])  # a third would wait: the host blocks on the oldest
  assert steps[1].blocked and not steps[2].blocked and bars.bar.n == 2
  for step in steps[2:4]:
    step.ready = True
  bars.dispatched(steps[4])
  assert bars.bar.n == 4 and bars.completed == 4
  bars.end_epoch()  # waits for the last one
  assert steps[4].blocked and bars.completed == 5 and bars.bar is None


def test_rate_and_eta_of_the_whole_run_leave_compiling_out():
  clock = _Clock()
  bars = _progress(clock)
  bars.start_epoch(1, completed=0)
  assert bars.summary() == ''  # nothing timed yet
  for k in range(5):
    step = _Step(clock, 0.0)
    bars.dispatched(step)
    clock.now += 100.0 if k == 0 else 2.0  # the first step compiles for 100 s
    step.ready = True
    bars.poll()
  bars.end_epoch()
  # 4 steps in 8 s after the first: 0.5 step/s, 4 clips/s; the naive 5 steps / 108 s is 13x off.
  assert bars.steps_per_second() == 0.5 and bars.clips_per_second() == 4.0
  # 5 steps of epoch 2 = 10 s, and 2 validations not yet timed.
  assert bars.eta_seconds() == 10.0
  assert bars.summary() == '4.0 clips/s, run ETA 0:10 + validation'

  timer = progress.ValidationTimer(clock)
  for dt in (30.0, 3.0, 3.0):  # the first batch compiles
    clock.now += dt
    timer.batch_done()
  assert timer.seconds() == 9.0  # 3 s a batch, 3 batches
  bars.validation_timed(timer)
  assert bars.eta_seconds() == 10.0 + 9.0  # epoch 2's steps and its validation
  assert bars.summary() == '4.0 clips/s, run ETA 0:19'

  bars.start_epoch(2, completed=5)  # a new optimiser compiles again at its first step
  for k in range(5):
    step = _Step(clock, 0.0)
    bars.dispatched(step)
    clock.now += 50.0 if k == 0 else 2.0
    step.ready = True
    bars.poll()
  bars.end_epoch()
  assert bars.steps_per_second() == 0.5 and bars.eta_seconds() == 9.0
  bars.validation_timed(timer)
  assert bars.summary() == '4.0 clips/s, run ETA 0:00'


def test_a_resumed_run_starts_its_bar_inside_the_epoch():
  clock = _Clock()
  bars = _progress(clock, num_epochs=3)
  bars.start_epoch(2, completed=7)  # epoch 1 (5 steps) and 2 steps of epoch 2 done
  assert bars.bar.n == 2 and bars.bar.total == 5
  bars.dispatched(_Step(clock, 1.0).block_until_ready())
  assert bars.bar.n == 3 and bars.completed == 8
  assert bars.bar.desc == 'epoch 2/3'
  bars.end_epoch()


def test_real_arrays_and_a_disabled_bar():
  bars = _progress(_Clock(), enabled=False, max_in_flight=1)
  bars.start_epoch(1, completed=0)
  for k in range(5):
    bars.dispatched(jnp.float32(k) * 2)
  bars.end_epoch()
  assert bars.completed == 5
  assert progress.format_seconds(3725.4) == '1:02:05' and progress.format_seconds(59) == '0:59'


def test_the_epoch_line_names_every_validation_score():
  labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.float32)
  probs = np.array([[0.9, 0.2], [0.3, 0.8], [0.6, 0.7], [0.1, 0.4]], np.float32)
  tagging = dict(tasks.get_task('tagging').metrics(probs, labels, class_names=['a', 'b']),
                 loss=0.25)
  assert track_eval.epoch_line(tagging) == 'loss 0.2500, pr_auc 1.0000, roc_auc 1.0000'
  onehot = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
  scores = np.eye(3, dtype=np.float32)[[0, 1, 1, 1]]
  keywords = dict(tasks.get_task('keywords').metrics(scores, onehot), loss=1.5)
  assert track_eval.epoch_line(keywords) == 'loss 1.5000, accuracy 0.7500'
