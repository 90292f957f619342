"""Report writers: TensorBoard event files and a long-format `metrics.csv` in the workdir
(`MetricWriter`), and the result files of an evaluation (`write_results`: `metrics*.json`,
`per_class*.csv`, `per_class*.md`) and of a run's config (`write_json`).

Named `writers` rather than `logging` so that `import logging` inside the package still means the
standard library.

The CSV is long-format (`step,name,value,wall_time`) so that train, validation and test metrics with
different keys share one file that pandas or a spreadsheet can pivot. It is flushed at every write
and is the record the TensorBoard events are rebuilt from when a run starts again.

After a kill (even SIGKILL) a resumed run's logs equal an uninterrupted run's, timings aside:
- the CSV keeps the rows up to the restored step (a fresh start, when nothing was checkpointed,
  keeps none); a row of that step that the resumed run writes again (the phase switch logged after
  the checkpoint was saved) is written once;
- TensorBoard's events are rewritten from those rows into one new events file and the old files
  are removed (tensorboardX's `purge_step` only hides later steps from TensorBoard, other readers
  still see them, and events not yet flushed when the process died would be lost).
Every write also flushes the events, so a run killed and never resumed still shows its last step.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
import time
import uuid
from collections import Counter
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

CSV_NAME = 'metrics.csv'
TB_DIR = 'tensorboard'
EVENTS_PREFIX = 'events.out.tfevents.'
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


def _read_rows(path: str) -> list:
  """The complete rows of a CSV this module wrote; a line cut by a kill, or mangled, is dropped."""
  with open(path, newline='') as f:
    text = f.read()
  if text and not text.endswith('\n'):  # the process died inside a write: drop the partial line
    text = text[:text.rfind('\n') + 1]
  rows = []
  for row in csv.DictReader(text.splitlines()):
    try:
      rows.append({'step': int(row['step']), 'name': str(row['name']),
                   'value': float(row['value']), 'wall_time': float(row['wall_time'])})
    except (KeyError, TypeError, ValueError):
      continue
  return rows


def _rewrite_csv(path: str, rows: list) -> None:
  """Writes `rows` (as `_read_rows` returns them) to `path` atomically: tmp file + rename."""
  tmp = path + '.tmp'
  with open(tmp, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=_FIELDS)
    w.writeheader()
    w.writerows({**r, 'value': repr(r['value']), 'wall_time': repr(r['wall_time'])} for r in rows)
  os.replace(tmp, path)


def _event_files(directory: str) -> list:
  if not os.path.isdir(directory):
    return []
  return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                if n.startswith(EVENTS_PREFIX))


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
    resume_step: the step a resumed run restarts from: the logs keep what came up to it. None
      for a run that starts from scratch: the logs of an earlier attempt that never saved a
      checkpoint are discarded.
    enabled: False on every process but the first of a multi-host run, so files are written once.
  """

  def __init__(self, workdir: str, *, resume_step: Optional[int] = None, enabled: bool = True):
    self.enabled = enabled
    self._tb = None
    self._csv_file = None
    self._rewritten: Counter = Counter()
    self._resume_step = resume_step
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    csv_path = os.path.join(workdir, CSV_NAME)
    tb_dir = os.path.join(workdir, TB_DIR)
    rows = []
    if resume_step is not None and os.path.exists(csv_path):
      rows = [r for r in _read_rows(csv_path) if r['step'] <= resume_step]
      self._rewritten = Counter(r['name'] for r in rows if r['step'] == resume_step)
    _rewrite_csv(csv_path, rows)
    self._csv_file = open(csv_path, 'a', newline='')
    self._csv = csv.DictWriter(self._csv_file, fieldnames=_FIELDS)
    old_events = _event_files(tb_dir)
    SummaryWriter = _summary_writer_class()
    # A suffix unique to this writer: tensorboardX names files by the second and the host only.
    self._tb = SummaryWriter(tb_dir, flush_secs=30,
                             filename_suffix=f'.{os.getpid()}.{uuid.uuid4().hex[:8]}')
    for r in rows:
      if math.isfinite(r['value']):
        self._tb.add_scalar(r['name'], r['value'], global_step=r['step'], walltime=r['wall_time'])
    self._tb.flush()  # the kept history is on disk before the files it came from go
    for path in old_events:
      os.remove(path)

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
      if self._rewritten[name] and int(step) == self._resume_step:
        self._rewritten[name] -= 1  # already logged by the attempt that was killed
        continue
      self._csv.writerow({'step': int(step), 'name': name, 'value': repr(v), 'wall_time': now})
      if math.isfinite(v):
        self._tb.add_scalar(name, v, global_step=int(step), walltime=now)
    self.flush()

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
  return _read_rows(os.path.join(workdir, CSV_NAME))


def configure_cli_logging() -> None:
  """For the CLIs: our progress at INFO, orbax's per-save chatter (absl INFO) only from WARNING."""
  logging.getLogger('absl').setLevel(logging.WARNING)
  logging.getLogger('hcnn_jax').setLevel(logging.INFO)


# ------------------------------------------------------------------------------- result files

def write_json(path: str, obj: Any) -> None:
  """`obj` as strict JSON (see `_json_safe`), written atomically: tmp file + rename."""
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(_json_safe(obj), f, indent=2, sort_keys=True)
    f.write('\n')
  os.replace(tmp, path)


def _json_safe(obj: Any) -> Any:
  """NaN/inf → None and numpy scalars → Python, so the files are strict JSON."""
  if isinstance(obj, dict):
    return {str(k): _json_safe(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_json_safe(v) for v in obj]
  if isinstance(obj, (np.generic, np.ndarray)):
    obj = obj.tolist()
    return _json_safe(obj) if isinstance(obj, list) else obj
  if isinstance(obj, float) and not math.isfinite(obj):
    return None
  return obj


def workdir_relative(path: str, workdir: str) -> str:
  """`path` as the result files name it: relative to the workdir when inside it (`best/3`),
  else its last two components (`checkpoints/12`), so that no file records where a run lived."""
  path, workdir = os.path.abspath(path), os.path.abspath(workdir)
  if os.path.commonpath([path, workdir]) == workdir:
    return os.path.relpath(path, workdir)
  parent, name = os.path.split(path)
  return os.path.join(os.path.basename(parent), name)


def _per_class_rows(result: Dict[str, Any], class_names: List[str]) -> Tuple[List[str], List]:
  per_class = result.get('per_class') or {}
  columns = ['class', 'positives'] + sorted(per_class)
  rows = []
  for name in class_names:
    row = [name, result.get('positives', {}).get(name)]
    row += [per_class[m].get(name) for m in sorted(per_class)]
    rows.append(row)
  return columns, rows


def _fmt(value) -> str:
  if value is None:
    return ''
  if isinstance(value, float):
    return 'n/a' if not math.isfinite(value) else f'{value:.4f}'
  return str(value)


def write_results(workdir: str, result: Dict[str, Any], class_names: List[str],
                  suffix: str = '') -> None:
  """`metrics{suffix}.json`, `per_class{suffix}.csv` and `per_class{suffix}.md` in `workdir`."""
  write_json(os.path.join(workdir, f'metrics{suffix}.json'), result)
  columns, rows = _per_class_rows(result, class_names)
  with open(os.path.join(workdir, f'per_class{suffix}.csv'), 'w', newline='') as f:
    w = csv.writer(f)
    w.writerow(columns)
    w.writerows([[('' if v is None else v) for v in row] for row in rows])
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  lines += ['| ' + ' | '.join(_fmt(v) for v in row) + ' |' for row in rows]
  scalars = {k: v for k, v in result.items() if isinstance(v, (int, float))
             and not isinstance(v, bool)}
  head = [f'# {result.get("split", "")} metrics'.rstrip(), '']
  head += [f'- {k}: {_fmt(float(v)) if isinstance(v, float) else v}'
           for k, v in sorted(scalars.items())]
  with open(os.path.join(workdir, f'per_class{suffix}.md'), 'w') as f:
    f.write('\n'.join(head + [''] + lines) + '\n')
