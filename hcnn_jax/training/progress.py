"""Training progress that counts what the devices finished: steps, clips/s and the run's ETA.

JAX dispatches a step and returns at once; the device runs it later. A bar advanced at dispatch
runs ahead of the device, stalls at the next host read (the log step), and its rate and ETA include
the first step's compilation. `RunProgress` instead keeps the losses of the last dispatched steps,
advances the bar when the oldest is ready (`jax.Array.is_ready`), and blocks on it once more than
`max_in_flight` steps are queued: the device always has the next step, the host never runs far
ahead (the data loader works while the device computes).

Timing starts at the first completed step of each epoch (that step pays for any compilation: the
run's first step, a new optimiser's step) and a validation is timed from its first finished batch
on, so compiling never enters the rate. The ETA covers every remaining training step and
validation of the run (the final test evaluation aside); until the first validation has been timed
it says "+ validation". What it cannot foresee is a compilation still to come: a later phase that
builds a new optimiser (the reference recipe's Adam → SGD switch) compiles its step once more.
"""
from __future__ import annotations

import collections
import time
from typing import Any, Callable, Deque, Optional

import jax
from tqdm.auto import tqdm

_BAR_FORMAT = '{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]'


def bar_enabled(config) -> bool:
  """Whether this process draws bars: `config.progress_bar` (default on), process 0 only."""
  return bool(config.get('progress_bar', True)) and jax.process_index() == 0


def format_seconds(seconds: float) -> str:
  """`1:02:03` (hours, minutes, seconds) or `2:03` under an hour."""
  seconds = max(int(round(seconds)), 0)
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}' if hours else f'{minutes}:{secs:02d}'


class ValidationTimer:
  """Times one evaluation pass from its first finished batch on (the first one compiles)."""

  def __init__(self, clock: Callable[[], float] = time.perf_counter):
    self.clock = clock
    self.batches = 0
    self.first: Optional[float] = None
    self.last: Optional[float] = None

  def batch_done(self) -> None:
    """Call when a batch's outputs are on the host."""
    now = self.clock()
    self.batches += 1
    if self.first is None:
      self.first = now
    self.last = now

  def seconds(self) -> Optional[float]:
    """The pass's duration without compiling: the later batches' mean time per batch × batches;
    None when fewer than two batches ran (nothing to time)."""
    if self.batches < 2:
      return None
    return (self.last - self.first) / (self.batches - 1) * self.batches


class RunProgress:
  """One bar per epoch over completed steps; clips/s and the ETA of the whole run.

  Args:
    num_epochs, steps_per_epoch: the run's size; `total_steps = num_epochs × steps_per_epoch`.
    batch_size: clips per step (the global batch).
    enabled: draw the bar (False: count and time all the same, for the epoch log line).
    max_in_flight: dispatched steps allowed to wait for the device before the host blocks.
    clock: seconds, monotonic (a fake one in tests).
    bar_kwargs: passed to tqdm (e.g. `file`).
  """

  def __init__(self, *, num_epochs: int, steps_per_epoch: int, batch_size: int, enabled: bool,
               max_in_flight: int = 2, clock: Callable[[], float] = time.perf_counter,
               **bar_kwargs):
    self.num_epochs, self.steps_per_epoch = int(num_epochs), int(steps_per_epoch)
    self.total_steps = self.num_epochs * self.steps_per_epoch
    self.batch_size, self.enabled = int(batch_size), enabled
    self.max_in_flight, self.clock, self.bar_kwargs = max(int(max_in_flight), 1), clock, bar_kwargs
    self.completed = 0  # steps of the run the devices have finished
    self.epoch = 0
    self.validated = 0  # epochs whose validation is done
    self.bar = None
    self.loss: Optional[float] = None
    self.validation_s: Optional[float] = None
    self._queue: Deque[Any] = collections.deque()
    self._timed_steps, self._timed_s = 0, 0.0
    self._mark: Optional[float] = None  # time of the last completed step this epoch

  # ----------------------------------------------------------------------------------- epochs

  def start_epoch(self, epoch: int, completed: int) -> None:
    """Opens epoch `epoch`'s bar; `completed` steps of the run are done (a resume may be inside
    the epoch)."""
    self.epoch, self.completed, self._mark = int(epoch), int(completed), None
    self.validated = self.epoch - 1
    done = self.completed - (self.epoch - 1) * self.steps_per_epoch
    self.bar = tqdm(total=self.steps_per_epoch, initial=done, unit='step',
                    desc=f'epoch {epoch}/{self.num_epochs}', bar_format=_BAR_FORMAT,
                    disable=not self.enabled, dynamic_ncols=True, **self.bar_kwargs)

  def dispatched(self, loss) -> None:
    """Records a dispatched step by an output of it (an array with `is_ready()`), advances the
    bar over every finished step and blocks while more than `max_in_flight` are pending."""
    self._queue.append(loss)
    self.poll()

  def poll(self) -> None:
    """Advances the bar over the finished steps (in order: one device stream runs them)."""
    finished = 0
    while self._queue:
      if len(self._queue) > self.max_in_flight:
        self._queue[0].block_until_ready()
      elif not self._queue[0].is_ready():
        break
      self._queue.popleft()
      finished += 1
    if finished:
      self._advance(finished)

  def end_epoch(self) -> None:
    """Waits for every pending step and closes the bar."""
    while self._queue:
      self._queue.popleft().block_until_ready()
      self._advance(1)
    if self.bar is not None:
      self.bar.close()
      self.bar = None

  def set_loss(self, loss: float) -> None:
    self.loss = float(loss)
    self._show()

  def validation_timed(self, timer: ValidationTimer) -> None:
    """Notes that this epoch's validation is done, and takes its compile-free duration for the
    ETA of the ones still to come."""
    self.validated = self.epoch
    seconds = timer.seconds()
    if seconds is not None:
      self.validation_s = seconds

  # ---------------------------------------------------------------------------------- figures

  def steps_per_second(self) -> Optional[float]:
    """Completed steps per second of training, compiling excluded; None before two steps."""
    if not self._timed_steps or self._timed_s <= 0:
      return None
    return self._timed_steps / self._timed_s

  def clips_per_second(self) -> Optional[float]:
    rate = self.steps_per_second()
    return None if rate is None else rate * self.batch_size

  def eta_seconds(self) -> Optional[float]:
    """Seconds to the end of the run's last validation: the remaining steps at the measured
    rate plus the remaining validations at the last timed one's duration, when one was timed."""
    rate = self.steps_per_second()
    if rate is None:
      return None
    train_s = (self.total_steps - self.completed) / rate
    return train_s + self._validations_left() * (self.validation_s or 0.0)

  def summary(self) -> str:
    """`52.1 clips/s, run ETA 1:02:03`, or what of it is known yet."""
    parts = []
    clips, eta = self.clips_per_second(), self.eta_seconds()
    if clips is not None:
      parts.append(f'{clips:.1f} clips/s')
    if eta is not None:
      unknown = self.validation_s is None and self._validations_left() > 0
      parts.append(f'run ETA {format_seconds(eta)}' + (' + validation' if unknown else ''))
    return ', '.join(parts)

  # -------------------------------------------------------------------------------- internals

  def _validations_left(self) -> int:
    return self.num_epochs - self.validated

  def _advance(self, finished: int) -> None:
    now = self.clock()
    if self._mark is not None:  # the epoch's first completed step starts the clock
      self._timed_steps += finished
      self._timed_s += now - self._mark
    self._mark = now
    self.completed += finished
    if self.bar is not None:
      self._show(refresh=False)
      self.bar.update(finished)

  def _show(self, refresh: bool = True) -> None:
    if self.bar is None:
      return
    parts = [] if self.loss is None else [f'loss {self.loss:.4f}']
    summary = self.summary()
    self.bar.set_postfix_str(', '.join(parts + ([summary] if summary else [])), refresh=refresh)
