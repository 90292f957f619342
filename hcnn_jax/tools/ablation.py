"""The number-of-harmonics ablation (Won et al., ICASSP 2020, "Data-driven harmonic filters"): one run per H.

    python -m hcnn_jax.tools.ablation --config hcnn_jax/configs/hcnn_mtat.py --workdir runs/abl \
        [--harmonics 1,2,3,4,5,6,7] [--seeds 0,1,2] [--config.num_epochs=...]

For each H, `config.model.kwargs.n_harmonic = H` and nothing else changes; the run trains and
evaluates in `DIR/H<k>` with `loop.train_and_evaluate`. `DIR/ablation.md` and `DIR/ablation.csv`
list H, the trainable parameters, test ROC-AUC and PR-AUC, and the training throughput in clips
per second (the median of the trainer's logged steps/s windows, leaving out the first, which
holds the compilation, × batch size).

With --seeds, every H trains once per seed (`config.seed`; `DIR/H<k>_seed<s>`), and ablation.md
adds the mean ± sample sd over seeds per H and, for every pair of H, whether the difference of
the mean ROC-AUCs exceeds the seed spread (|Δ| > sd₁ + sd₂, i.e. the mean ± sd intervals do not
overlap), so that a one-seed difference is not read as an effect of H.

Resumable: a run whose `ablation_result.json` exists is not run again; one that was interrupted
resumes from its latest checkpoint (the trainer's own resume).
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


def _distinct_ints(text: str, flag: str, minimum: int, example: str) -> List[int]:
  """'1,2,3' → [1, 2, 3]; ValueError naming `flag` unless distinct integers >= minimum."""
  try:
    values = [int(v) for v in str(text).split(',') if v.strip()]
  except ValueError:
    raise ValueError(f'{flag} {text!r}: give comma-separated integers, e.g. {example}') from None
  if not values or min(values) < minimum or len(set(values)) != len(values):
    raise ValueError(f'{flag} {text!r}: give distinct integers >= {minimum}')
  return values


def parse_harmonics(text: str) -> List[int]:
  """'1,2,3' → [1, 2, 3]; ValueError unless distinct positive integers."""
  return _distinct_ints(text, '--harmonics', 1, '1,2,3')


def parse_seeds(text: str) -> Optional[List[int]]:
  """'0,1,2' → [0, 1, 2]; '' → None (one run per H with the config's seed)."""
  if not str(text).strip():
    return None
  return _distinct_ints(text, '--seeds', 0, '0,1,2')


def harmonic_config(config, n_harmonic: int, seed: Optional[int] = None):
  """A copy of `config` with model.kwargs.n_harmonic = n_harmonic (and seed, if given) and
  nothing else changed."""
  out = copy.deepcopy(config)
  with out.unlocked():
    out.model.kwargs.n_harmonic = int(n_harmonic)
    if seed is not None:
      out.seed = int(seed)
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


def run_one(config, workdir: str, n_harmonic: int, num_classes: int,
            seed: Optional[int] = None) -> Dict[str, Any]:
  """Trains + evaluates one H (and seed) in workdir (resuming), and saves its
  ablation_result.json, with the per-tag scores and what the metrics were measured on."""
  from hcnn_jax.training import loop  # pylint: disable=import-outside-toplevel
  cfg = harmonic_config(config, n_harmonic, seed)
  result = loop.train_and_evaluate(cfg, workdir)
  clips_per_sec, with_compile = train_clips_per_second(workdir, int(cfg.batch_size))
  row = {
      'H': int(n_harmonic),
      'seed': int(cfg.seed),
      'parameters': count_parameters(cfg, num_classes),
      'roc_auc': result.get('roc_auc'),
      'pr_auc': result.get('pr_auc'),
      'train_clips_per_sec': clips_per_sec,
      'throughput_includes_compile': with_compile,
  }
  for key in ('accuracy', 'loss', 'split', 'checkpoint_step', 'eval_chunks', 'input_length',
              'best_epoch'):
    if key in result:
      row[key] = result[key]
  row = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
         for k, v in row.items()}
  row['per_class'] = {metric: {c: (None if not math.isfinite(v) else float(v))
                               for c, v in values.items()}
                      for metric, values in (result.get('per_class') or {}).items()
                      if metric in ('roc_auc', 'pr_auc')}
  tmp = os.path.join(workdir, RESULT_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(row, f, indent=2, sort_keys=True)
  os.replace(tmp, os.path.join(workdir, RESULT_FILE))  # present only once complete
  return row


def run_ablation(config, workdir: str, harmonics: Sequence[int] = DEFAULT_HARMONICS,
                 seeds: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
  """Runs (or reuses) every H (× seed) and writes ablation.md / ablation.csv; returns the rows.

  seeds None: one run per H in `H<k>` with the config's seed; otherwise one per H and seed in
  `H<k>_seed<s>`, the runs ordered seed-major so that a partial study covers every H.
  """
  from hcnn_jax.configs import base  # pylint: disable=import-outside-toplevel
  harmonics = parse_harmonics(','.join(str(h) for h in harmonics))
  if seeds is not None:
    seeds = parse_seeds(','.join(str(v) for v in seeds))
  # Every H is checked before the first is trained: a bad one fails now, not hours later.
  problems = []
  for h in harmonics:
    try:
      base.validate(harmonic_config(config, h, None if seeds is None else seeds[0]))
    except ValueError as err:
      problems.append(f'H={h}: {err}')
  if problems:
    raise ValueError('; '.join(problems))
  num_classes = len(_class_names(config))
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  runs = [(h, None, f'H{h}') for h in harmonics] if seeds is None else [
      (h, s, f'H{h}_seed{s}') for s in seeds for h in harmonics]
  rows = []
  for h, seed, name in runs:
    run_dir = os.path.join(workdir, name)
    done = os.path.join(run_dir, RESULT_FILE)
    if os.path.exists(done):
      log.info('%s: results exist in %s, skipped.', name, done)
      with open(done) as f:
        rows.append(json.load(f))
      continue
    log.info('%s: training in %s', name, run_dir)
    rows.append(run_one(config, run_dir, h, num_classes, seed))
    write_tables(rows, workdir, config)  # a partial table after every run
  write_tables(rows, workdir, config)
  return rows


def _fmt(value, digits: int = 4) -> str:
  if value is None:
    return 'n/a'
  if isinstance(value, float):
    return f'{value:.{digits}f}'
  return f'{value:,}' if isinstance(value, int) else str(value)


def seed_summary(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Per H (in first-seen order): runs, mean and sample sd (None for one run) of ROC-/PR-AUC."""
  out = []
  for h in dict.fromkeys(r['H'] for r in rows):
    mine = [r for r in rows if r['H'] == h]
    entry = {'H': h, 'runs': len(mine), 'seeds': [r.get('seed') for r in mine],
             'parameters': mine[0].get('parameters')}
    for key in ('roc_auc', 'pr_auc'):
      values = np.asarray([r[key] for r in mine if r.get(key) is not None], float)
      entry[key] = values.tolist()
      entry[f'{key}_mean'] = float(values.mean()) if values.size else None
      entry[f'{key}_sd'] = float(values.std(ddof=1)) if values.size > 1 else None
    out.append(entry)
  return out


def pairwise(summary: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Every pair of H: Δ mean ROC-AUC, the spread sd₁ + sd₂, and whether |Δ| exceeds it."""
  pairs = []
  for i, a in enumerate(summary):
    for b in summary[i + 1:]:
      if None in (a['roc_auc_mean'], b['roc_auc_mean'], a['roc_auc_sd'], b['roc_auc_sd']):
        continue
      diff = b['roc_auc_mean'] - a['roc_auc_mean']
      spread = a['roc_auc_sd'] + b['roc_auc_sd']
      pairs.append({'H_a': a['H'], 'H_b': b['H'], 'diff': diff, 'spread': spread,
                    'exceeds': abs(diff) > spread})
  return pairs


def _summary_lines(rows: Sequence[Dict[str, Any]]) -> List[str]:
  summary = seed_summary(rows)
  pm = lambda e, k: (f"{e[k + '_mean']:.4f} ± {e[k + '_sd']:.4f}" if e[k + '_sd'] is not None
                     else _fmt(e[k + '_mean']))
  lines = ['', '## Over seeds', '', 'Mean ± sample sd over the seeds of each H.', '',
           '| H | runs | ROC-AUC | PR-AUC | ROC-AUC per seed |', '|---:|---:|---:|---:|---|']
  for e in summary:
    lines.append(f"| {e['H']} | {e['runs']} | {pm(e, 'roc_auc')} | {pm(e, 'pr_auc')} | "
                 + ', '.join(f'{v:.4f}' for v in e['roc_auc']) + ' |')
  pairs = pairwise(summary)
  if not pairs:
    return lines + ['', 'Fewer than two seeds for some H: no spread to compare differences with.']
  lines += ['', '| H pair | Δ mean ROC-AUC | seed spread (sd₁ + sd₂) | exceeds the spread |',
            '|---|---:|---:|---|']
  for p in pairs:
    lines.append(f"| {p['H_b']} − {p['H_a']} | {p['diff']:+.4f} | {p['spread']:.4f} | "
                 f"{'yes' if p['exceeds'] else 'no'} |")
  beyond = [p for p in pairs if p['exceeds']]
  if beyond:
    lines += ['', 'Beyond the seed spread: ' + '; '.join(
        f"H={p['H_b']} − H={p['H_a']} {p['diff']:+.4f}" for p in beyond) + '.']
  else:
    lines += ['', 'No difference between two values of H exceeds the seed spread: at this budget '
              'the runs do not show an effect of the number of harmonics.']
  return lines


def write_tables(rows: Sequence[Dict[str, Any]], workdir: str, config=None) -> None:
  """ablation.csv (plain numbers, one row per run) and ablation.md (a readable table, and the
  over-seeds summary when an H has several runs) in workdir."""
  seeded = len({r.get('seed') for r in rows}) > 1
  extra = [k for k in ('accuracy',) if any(k in r for r in rows)]
  columns = list(COLUMNS[:1]) + (['seed'] if seeded else []) + list(COLUMNS[1:]) + extra
  with open(os.path.join(workdir, 'ablation.csv'), 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(columns)
    for r in rows:
      writer.writerow(['' if r.get(c) is None else r.get(c) for c in columns])
  titles = {'H': 'H', 'seed': 'seed', 'parameters': 'parameters', 'roc_auc': 'ROC-AUC',
            'pr_auc': 'PR-AUC', 'train_clips_per_sec': 'train clips/s', 'accuracy': 'accuracy'}
  where = ''
  if config is not None:
    where = f' ({config.model.name} on {config.dataset.name}, {config.num_epochs} epochs)'
  chunks = sorted({r['eval_chunks'] for r in rows if r.get('eval_chunks')})
  lines = [f'# Number of harmonics{where}', '',
           'Only `model.kwargs.n_harmonic` changes between rows; test-split metrics of each '
           "run's best checkpoint" + (f" ({', '.join(map(str, chunks))} chunks per track)"
                                      if chunks else '') +
           '; train clips/s is the median logged throughput without the compiling first '
           'window.', '',
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
  if seeded:
    lines += _summary_lines(rows)
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
    rows = run_ablation(fl.config, fl.workdir, parse_harmonics(fl.harmonics),
                        parse_seeds(fl.seeds))
  except (ValueError, FloatingPointError) as err:
    print(f'ablation: error: {err}', file=sys.stderr)
    sys.exit(1)
  for r in rows:
    print(f'H={r["H"]}' + (f' seed {r["seed"]}' if fl.seeds else '') +
          f': {r["parameters"]:,} parameters, ROC-AUC {_fmt(r.get("roc_auc"))}, '
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
  flags.DEFINE_string('seeds', '', 'comma-separated seeds, one run per H and seed (default: one '
                      'run per H with the config\'s seed)')
  flags.mark_flags_as_required(['config', 'workdir'])


if __name__ == '__main__':
  from absl import app  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import flag_errors  # pylint: disable=import-outside-toplevel
  _define_flags()
  app.run(main, flags_parser=flag_errors.flags_parser('ablation'))
