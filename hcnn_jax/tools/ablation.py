"""The number-of-harmonics ablation (Won et al., ICASSP 2020, "Data-driven harmonic filters"): one run per H.

    python -m hcnn_jax.tools.ablation --config hcnn_jax/configs/hcnn_mtat.py --workdir runs/abl \
        [--harmonics 1,2,3,4,5,6,7] [--config.num_epochs=...]

For each H, `config.model.kwargs.n_harmonic = H` and nothing else changes; the run trains and
evaluates in `DIR/H<k>` with `loop.train_and_evaluate`. `DIR/ablation.md` and `DIR/ablation.csv`
list H, the trainable parameters, test ROC-AUC and PR-AUC, and the training throughput in clips
per second (the median of the trainer's logged steps/s windows, leaving out the first, which
holds the compilation, × batch size).

Resumable: an H whose `DIR/H<k>/ablation_result.json` exists is not run again; an H that was
interrupted resumes from its latest checkpoint (the trainer's own resume).
"""
from __future__ import annotations

import copy
import csv
import json
import logging
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)
RESULT_FILE = 'ablation_result.json'
DEFAULT_HARMONICS = (1, 2, 3, 4, 5, 6, 7)
COLUMNS = ('H', 'parameters', 'roc_auc', 'pr_auc', 'train_clips_per_sec')


def parse_harmonics(text: str) -> List[int]:
  """'1,2,3' → [1, 2, 3]; ValueError unless distinct positive integers."""
  try:
    values = [int(v) for v in str(text).split(',') if v.strip()]
  except ValueError:
    raise ValueError(f'--harmonics {text!r}: give comma-separated integers, e.g. 1,2,3') from None
  if not values or min(values) < 1 or len(set(values)) != len(values):
    raise ValueError(f'--harmonics {text!r}: give distinct integers >= 1')
  return values


def harmonic_config(config, n_harmonic: int):
  """A copy of `config` with model.kwargs.n_harmonic = n_harmonic and nothing else changed."""
  out = copy.deepcopy(config)
  with out.unlocked():
    out.model.kwargs.n_harmonic = int(n_harmonic)
  return out


def _class_names(config) -> List[str]:
  from hcnn_jax.data import sources  # pylint: disable=import-outside-toplevel
  ds = config.dataset
  data_dir = os.path.expanduser(ds.data_dir) if ds.get('data_dir') else None
  _, metadata = sources.load(ds.name, 'train', data_dir, ds.get('config_name') or None)
  return [str(c) for c in metadata['class_names']]


def count_parameters(config, num_classes: int) -> int:
  """Trainable parameters of the config's model, from shapes only (nothing is computed)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from hcnn_jax.models import registry  # pylint: disable=import-outside-toplevel
  model = registry.build_model(config, num_classes)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0),
                                             jnp.zeros((1, int(config.input_length)))))
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(shapes['params'])))


def train_clips_per_second(workdir: str, batch_size: int) -> Tuple[Optional[float], bool]:
  """(median logged train steps/s × batch size, whether that includes the compilation).

  The trainer writes `train/steps_per_sec` per logging window to metrics.csv; the first window
  includes the compilation and is left out, unless it is the only one (then the flag is True).
  """
  path = os.path.join(workdir, 'metrics.csv')
  if not os.path.exists(path):
    return None, False
  with open(path, newline='') as f:
    rates = [float(r['value']) for r in csv.DictReader(f) if r['name'] == 'train/steps_per_sec']
  if not rates:
    return None, False
  steady = rates[1:] if len(rates) > 1 else rates
  return float(np.median(steady)) * int(batch_size), len(rates) == 1


def run_one(config, workdir: str, n_harmonic: int, num_classes: int) -> Dict[str, Any]:
  """Trains + evaluates one H in workdir (resuming), and saves its ablation_result.json."""
  from hcnn_jax.training import loop  # pylint: disable=import-outside-toplevel
  cfg = harmonic_config(config, n_harmonic)
  result = loop.train_and_evaluate(cfg, workdir)
  clips_per_sec, with_compile = train_clips_per_second(workdir, int(cfg.batch_size))
  row = {
      'H': int(n_harmonic),
      'parameters': count_parameters(cfg, num_classes),
      'roc_auc': result.get('roc_auc'),
      'pr_auc': result.get('pr_auc'),
      'train_clips_per_sec': clips_per_sec,
      'throughput_includes_compile': with_compile,
  }
  for key in ('accuracy', 'loss'):
    if key in result:
      row[key] = result[key]
  row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
         for k, v in row.items()}
  tmp = os.path.join(workdir, RESULT_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(row, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(workdir, RESULT_FILE))  # present only once complete
  return row


def run_ablation(config, workdir: str,
                 harmonics: Sequence[int] = DEFAULT_HARMONICS) -> List[Dict[str, Any]]:
  """Runs (or reuses) every H and writes ablation.md / ablation.csv; returns the rows."""
  from hcnn_jax.configs import base  # pylint: disable=import-outside-toplevel
  harmonics = parse_harmonics(','.join(str(h) for h in harmonics))
  # Every H is checked before the first is trained: a bad one fails now, not hours later.
  problems = []
  for h in harmonics:
    try:
      base.validate(harmonic_config(config, h))
    except ValueError as err:
      problems.append(f'H={h}: {err}')
  if problems:
    raise ValueError('; '.join(problems))
  num_classes = len(_class_names(config))
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  rows = []
  for h in harmonics:
    run_dir = os.path.join(workdir, f'H{h}')
    done = os.path.join(run_dir, RESULT_FILE)
    if os.path.exists(done):
      log.info('H=%d: results exist in %s, skipped.', h, done)
      with open(done) as f:
        rows.append(json.load(f))
      continue
    log.info('H=%d: training in %s', h, run_dir)
    rows.append(run_one(config, run_dir, h, num_classes))
    write_tables(rows, workdir, config)  # a partial table after every H
  write_tables(rows, workdir, config)
  return rows


def _fmt(value, digits: int = 4) -> str:
  if value is None:
    return 'n/a'
  if isinstance(value, float):
    return f'{value:.{digits}f}'
  return f'{value:,}' if isinstance(value, int) else str(value)


def write_tables(rows: Sequence[Dict[str, Any]], workdir: str, config=None) -> None:
  """ablation.csv (plain numbers) and ablation.md (a readable table) in workdir."""
  extra = [k for k in ('accuracy',) if any(k in r for r in rows)]
  columns = list(COLUMNS) + extra
  with open(os.path.join(workdir, 'ablation.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for r in rows:
      writer.writerow(['' if r.get(c) is None else r.get(c) for c in columns])
  titles = {'H': 'H', 'parameters': 'parameters', 'roc_auc': 'ROC-AUC', 'pr_auc': 'PR-AUC',
            'train_clips_per_sec': 'train clips/s', 'accuracy': 'accuracy'}
  where = ''
  if config is not None:
    where = f' ({config.model.name} on {config.dataset.name}, {config.num_epochs} epochs)'
  lines = [f'# Number of harmonics{where}', '',
           'Only `model.kwargs.n_harmonic` changes between rows; test-split metrics of each '
           "run's best checkpoint; train clips/s is the median logged throughput without the "
           'compiling first window.', '',
           '| ' + ' | '.join(titles[c] for c in columns) + ' |',
           '|' + '---:|' * len(columns)]
  for r in rows:
    cells = [_fmt(r.get(c), 1 if c == 'train_clips_per_sec' else 4) for c in columns]
    if r.get('throughput_includes_compile'):
      cells[columns.index('train_clips_per_sec')] += ' *'
    lines.append('| ' + ' | '.join(cells) + ' |')
  if any(r.get('throughput_includes_compile') for r in rows):
    lines += ['', '\\* a single logged window, so the throughput includes the compilation: log '
              'more often (log_every_steps) or train longer for a steady-state number.']
  with open(os.path.join(workdir, 'ablation.md'), 'w') as f:
    f.write('\n'.join(lines) + '\n')


def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import parallel, writers  # pylint: disable=import-outside-toplevel
  writers.configure_cli_logging()
  # Before anything touches the devices: run_ablation's config checks count them.
  parallel.maybe_initialize_distributed()
  fl = flags.FLAGS
  if len(argv) > 1:
    print(f'ablation: error: unexpected arguments {argv[1:]}', file=sys.stderr)
    sys.exit(2)
  try:
    from hcnn_jax.training import flag_errors  # pylint: disable=import-outside-toplevel
    flag_errors.check_workdir(fl.workdir)
    rows = run_ablation(fl.config, fl.workdir, parse_harmonics(fl.harmonics))
  except (ValueError, FloatingPointError) as err:
    print(f'ablation: error: {err}', file=sys.stderr)
    sys.exit(1)
  for r in rows:
    print(f'H={r["H"]}: {r["parameters"]:,} parameters, ROC-AUC {_fmt(r.get("roc_auc"))}, '
          f'PR-AUC {_fmt(r.get("pr_auc"))}, {_fmt(r.get("train_clips_per_sec"), 1)} clips/s')
  print(f'tables: {os.path.join(os.path.abspath(fl.workdir), "ablation.md")}')


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file('config', None, 'the run config; model.kwargs.n_harmonic is '
                                  'set per run', lock_config=True)
  flags.DEFINE_string('workdir', None, 'directory of the study: one H<k>/ run per value')
  flags.DEFINE_string('harmonics', ','.join(str(h) for h in DEFAULT_HARMONICS),
                      'comma-separated numbers of harmonics')
  flags.mark_flags_as_required(['config', 'workdir'])


if __name__ == '__main__':
  from absl import app  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import flag_errors  # pylint: disable=import-outside-toplevel
  _define_flags()
  app.run(main, flags_parser=flag_errors.flags_parser('ablation'))
