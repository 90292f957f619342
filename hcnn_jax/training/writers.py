"""Metric writers: TensorBoard event files and a long-format `metrics.csv` in the workdir.

Named `writers` rather than `logging` so that `import logging` inside the package still means the
standard library.

The CSV is long-format (`step,name,value,wall_time`) so that train, validation and test metrics with
different keys share one file that pandas or a spreadsheet can pivot. On resume, rows and events
written after the restored step are dropped: the resumed run writes them again, and a chart should
not show the same step twice.
"""
from __future__ import annotations

import csv
import logging
import math
import os
import sys
import time
from typing import Mapping, Optional

import numpy as np

CSV_NAME = 'metrics.csv'
TB_DIR = 'tensorboard'
_FIELDS = ('step', 'name', 'value', 'wall_time')


def _scalar(value) -> Optional[float]:
  """A Python float for anything scalar-like; None for the rest (e.g. per-class tables)."""
  try:
    arr = np.asarray(value)
  except Exception:  # pylint: disable=broad-except
    return None
  numeric = np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_
  if arr.ndim != 0 or not numeric:
    return None
  return float(arr)


def _truncate_csv(path: str, keep_up_to_step: int) -> None:
  """Rewrite `path` without the rows after `keep_up_to_step` (atomically: tmp file + rename)."""
  with open(path, newline='') as f:
    rows = [r for r in csv.DictReader(f) if int(r['step']) <= keep_up_to_step]
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=_FIELDS)
    w.writeheader()
    w.writerows(rows)
  os.replace(tmp, path)


def _summary_writer_class():
  """tensorboardX's SummaryWriter, imported without PyTorch.

  tensorboardX tries `import torch` at import time only to accept torch tensors; where torch is
  installed (the weight-import tool needs it) that costs seconds in every training process. We
  pass Python floats, so torch is hidden for the duration of that import when nobody has loaded
  it yet; a later `import torch` works as usual.
  """
  if 'tensorboardX' in sys.modules or 'torch' in sys.modules:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    return SummaryWriter
  sys.modules['torch'] = None  # makes `import torch` raise ImportError
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
  finally:
    del sys.modules['torch']
  return SummaryWriter


class MetricWriter:
  """Writes scalar metrics to `workdir/tensorboard` (tensorboardX) and `workdir/metrics.csv`.

  Args:
    workdir: the run's directory.
    resume_step: the step a resumed run restarts from; later CSV rows and TensorBoard events are
      discarded. None for a fresh run.
    enabled: False on every process but the first of a multi-host run, so files are written once.
  """

  def __init__(self, workdir: str, *, resume_step: Optional[int] = None, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._csv_file = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    csv_path = os.path.join(workdir, CSV_NAME)
    if resume_step is not None and os.path.exists(csv_path):
      _truncate_csv(csv_path, resume_step)
    new_file = not os.path.exists(csv_path)
    self._csv_file = open(csv_path, 'a', newline='')
    self._csv = csv.DictWriter(self._csv_file, fieldnames=_FIELDS)
    if new_file:
      self._csv.writeheader()
    SummaryWriter = _summary_writer_class()
    purge = None if resume_step is None else resume_step + 1
    self._tb = SummaryWriter(os.path.join(workdir, TB_DIR), purge_step=purge, flush_secs=30)

  def write_scalars(self, step: int, metrics: Mapping[str, object], prefix: str = '') -> None:
    """Writes every scalar entry of `metrics` as `prefix + key`; non-scalars are skipped."""
    if not self.enabled:
      return
    now = time.time()
    for key, value in metrics.items():
      v = _scalar(value)
      if v is None:
        continue
      name = prefix + key
      self._csv.writerow({'step': int(step), 'name': name, 'value': repr(v), 'wall_time': now})
      if math.isfinite(v):
        self._tb.add_scalar(name, v, global_step=int(step), walltime=now)
    self._csv_file.flush()

  def flush(self) -> None:
    if self.enabled:
      self._csv_file.flush()
      self._tb.flush()

  def close(self) -> None:
    if self.enabled and self._csv_file is not None:
      self._csv_file.close()
      self._tb.close()
      self._csv_file = None

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def read_csv(workdir: str) -> list:
  """The rows of `workdir/metrics.csv` as dicts with int step and float value (for tests/tools)."""
  with open(os.path.join(workdir, CSV_NAME), newline='') as f:
    return [{'step': int(r['step']), 'name': r['name'], 'value': float(r['value']),
             'wall_time': float(r['wall_time'])} for r in csv.DictReader(f)]


def configure_cli_logging() -> None:
  """For the CLIs: our progress at INFO, orbax's per-save chatter (absl INFO) only from WARNING."""
  logging.getLogger('absl').setLevel(logging.WARNING)
  logging.getLogger('hcnn_jax').setLevel(logging.INFO)
