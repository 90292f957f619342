"""Per-tag scores of a synth_gm model on its test split and on the same scores in other soundfonts.

    python -m hcnn_jax.tools.soundfont_shift --config hcnn_jax/configs/hcnn_synth_tiny.py \
        --workdir runs/demo [--data_dir data] [--soundfonts fluidr3,musescore] \
        [--checkpoint best] [--out DIR] [--config.eval_chunks=16]

synth_gm renders every clip with one General MIDI soundfont (TimGM6mb). Its companion configs
`<config>_fluidr3` and `<config>_musescore` hold the same test scores (same seed and ids) rendered
with Debian's FluidR3_GM and MuseScore General banks (datasets/synth_gm/README.md). A model that
learned instruments rather than one bank's samples scores the same on them. This tool builds the
companions the run's config names when they are missing (`make soundfonts` installs the banks),
evaluates the checkpoint on each test split with the eval entry point's protocol
(`loop.evaluate`: config.eval_chunks chunks per clip, mean of the predictions) and prints a
markdown table: ROC-AUC and PR-AUC per tag, their mean over the 16 instrument tags and over all
tags, and each render's difference to the test split.

Writes into --out (default WORKDIR/soundfont_shift): soundfont_shift.md / .json, and each render's
metrics_test.json and per_class_test.{csv,md} in a folder named for its config.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

DATASET = 'synth_gm'
METRICS = ('roc_auc', 'pr_auc')
LABELS = {'roc_auc': 'ROC', 'pr_auc': 'PR'}


def _synth_gm_module(name: str):
  """datasets.synth_gm.<name> of a checkout, or hcnn_datasets.synth_gm.<name> of the wheel."""
  from hcnn_jax.data import builders  # pylint: disable=import-outside-toplevel
  return importlib.import_module(f'{builders.package().__name__}.synth_gm.{name}')


def companions(base: str, suffixes: Optional[Sequence[str]] = None) -> Dict[str, str]:
  """{config name: soundfont} of the other-soundfont renders of synth_gm config `base`."""
  builder = _synth_gm_module('synth_gm')
  names = {c.name: c for c in builder.SynthGm.BUILDER_CONFIGS}
  known = list(builder.OTHER_SOUNDFONTS)
  suffixes = list(suffixes) if suffixes else known
  unknown = [s for s in suffixes if s not in known]
  if unknown:
    raise ValueError(f'--soundfonts: unknown {unknown}; use some of {known}')
  # A `<config>_multibank` run was tested on `<config>`'s very test split: its companions.
  root = base[:-len('_multibank')] if base.endswith('_multibank') else base
  out = {}
  for suffix in suffixes:
    name = f'{root}_{suffix}'
    if name not in names:
      raise ValueError(f'dataset.config_name: synth_gm has no config {name!r}; the other-'
                       f'soundfont renders exist for {sorted(n for n in names if "_" not in n)} '
                       'and their _multibank configs')
    out[name] = names[name].soundfont
  return out


def instrument_tags() -> List[str]:
  return list(_synth_gm_module('tags').INSTRUMENT_TAGS)


def _mean(values: Sequence[float]) -> float:
  finite = [v for v in values if v is not None and math.isfinite(v)]
  return sum(finite) / len(finite) if finite else float('nan')


def shift_rows(results: Dict[str, Dict[str, Any]], reference: str, class_names: Sequence[str],
               instruments: Sequence[str]) -> List[Dict[str, Any]]:
  """One row per tag, then the instrument-tag mean and the mean over all tags.

  `results` maps a render's name to an evaluation result (`per_class.{roc_auc, pr_auc}`,
  `positives`); `reference` is the render the others are compared with. A row holds, per render
  and metric, `<render>/<metric>` and (for the others) `<render>/delta_<metric>`.
  """
  missing = [t for t in instruments if t not in class_names]
  if missing:
    raise ValueError(f'the checkpoint has no instrument tags {missing}; is it a synth_gm run?')

  def cell(res, metric, tag):
    value = (res.get('per_class') or {}).get(metric, {}).get(tag)
    return float('nan') if value is None else float(value)

  rows = []
  groups = [(t, [t]) for t in class_names]
  groups += [(f'mean of the {len(instruments)} instrument tags', list(instruments)),
             (f'mean of all {len(class_names)} tags', list(class_names))]
  for label, tags in groups:
    row: Dict[str, Any] = {'tag': label}
    if len(tags) == 1:
      row['positives'] = {name: (res.get('positives') or {}).get(tags[0])
                          for name, res in results.items()}
    for name, res in results.items():
      for metric in METRICS:
        row[f'{name}/{metric}'] = _mean([cell(res, metric, t) for t in tags])
    for name in results:
      if name != reference:
        for metric in METRICS:
          row[f'{name}/delta_{metric}'] = row[f'{name}/{metric}'] - row[f'{reference}/{metric}']
    rows.append(row)
  return rows


def _finite(value):
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _fmt(value: float, signed: bool = False) -> str:
  if value is None or not math.isfinite(value):
    return 'n/a'
  return f'{value:+.4f}' if signed else f'{value:.4f}'


def markdown(rows: List[Dict[str, Any]], renders: Sequence[str], reference: str,
             title: str = '') -> str:
  """The table: per metric, the reference render, then each other render and its difference."""
  head, cells = ['tag'], []
  for metric in METRICS:
    head.append(f'{LABELS[metric]} {reference}')
    for name in renders:
      if name != reference:
        head += [f'{LABELS[metric]} {name}', 'Δ']
  lines = [f'# {title}' if title else '# Soundfont shift', '',
           '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for row in rows:
    cells = [row['tag']]
    for metric in METRICS:
      cells.append(_fmt(row[f'{reference}/{metric}']))
      for name in renders:
        if name != reference:
          cells += [_fmt(row[f'{name}/{metric}']), _fmt(row[f'{name}/delta_{metric}'], True)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  # Every tag but loud/quiet is read off the score, so its positives are the same in every render;
  # loud/quiet are read off each waveform, and a different count says the labels moved.
  moved = [f'{r["tag"]} ({", ".join(f"{n} {p}" for n, p in r["positives"].items())})'
           for r in rows if 'positives' in r and len(set(r['positives'].values())) > 1]
  if moved:
    lines += ['', 'Positives that differ between renders (read off each waveform): ' +
              '; '.join(moved) + '.']
  return '\n'.join(lines) + '\n'


def evaluate_shift(config, workdir: str, data_dir: Optional[str] = None,
                   soundfonts: Optional[Sequence[str]] = None, checkpoint: str = 'best',
                   out_dir: Optional[str] = None) -> Dict[str, Any]:
  """Evaluates the checkpoint on the run's synth_gm test split and its other-soundfont renders.

  Returns {'renders': {config name: soundfont}, 'results': {config name: evaluation},
  'rows': shift_rows(...), 'markdown': str} and writes them into `out_dir`.
  """
  if config.dataset.name != DATASET:
    raise ValueError(f'dataset.name: {config.dataset.name!r}; this tool compares renders of '
                     f'{DATASET} (pass the config of a synth_gm run)')
  from hcnn_jax.data import builders  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import loop  # pylint: disable=import-outside-toplevel
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if data_dir:
      config.dataset.data_dir = data_dir
  data_dir = os.path.expanduser(config.dataset.get('data_dir') or '')
  if not data_dir:
    raise ValueError('dataset.data_dir is empty: pass --data_dir (where synth_gm is built)')
  base = config.dataset.get('config_name') or 'default'
  if checkpoint in ('best', 'latest'):
    path = os.path.join(os.path.abspath(os.path.expanduser(workdir)),
                        ckpt_lib.BEST_DIR if checkpoint == 'best' else ckpt_lib.CHECKPOINT_DIR)
    if not os.path.isdir(path):
      raise ValueError(f'--workdir {workdir}: no {os.path.basename(path)}/ checkpoint there; '
                       'train first or pass the workdir of a trained run')
  else:
    path = checkpoint
  out_dir = out_dir or os.path.join(workdir, 'soundfont_shift')
  renders = {base: _synth_gm_module('render').DEFAULT_SOUNDFONT}
  renders.update(companions(base, soundfonts))
  results = {}
  for name in renders:
    # A missing soundfont stops here with the package to install (before any evaluation).
    builders.package().build(DATASET, data_dir, name)
  for name in renders:
    with config.unlocked():
      config.dataset.config_name = name
    results[name] = loop.evaluate(config, os.path.join(out_dir, name), split='test',
                                  checkpoint=path)
  class_names = list(results[base]['per_class']['roc_auc'])
  rows = shift_rows(results, base, class_names, instrument_tags())
  title = (f'{config.model.name} on synth_gm/{base} test ({results[base]["num_examples"]} clips, '
           f'{int(config.eval_chunks)} chunks each) and the same scores in '
           f'{", ".join(renders[n] for n in renders if n != base)}')
  text = markdown(rows, list(renders), base, title)
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, 'soundfont_shift.md'), 'w') as f:
    f.write(text)
  with open(os.path.join(out_dir, 'soundfont_shift.json'), 'w') as f:
    # Strict JSON: an undefined AUC (a tag without positives in a render) is null, not NaN.
    json.dump(_finite({'checkpoint': os.path.abspath(path), 'renders': renders, 'rows': rows}),
              f, indent=1)
  return {'renders': renders, 'results': results, 'rows': rows, 'markdown': text}


# -------------------------------------------------------------------------------------- CLI

def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import flag_errors, writers  # pylint: disable=import-outside-toplevel
  writers.configure_cli_logging()
  fl = flags.FLAGS
  if len(argv) > 1:
    flag_errors.fail('soundfont_shift', f'unexpected arguments {argv[1:]}')
  suffixes = [s.strip() for s in fl.soundfonts.split(',') if s.strip()] if fl.soundfonts else None
  try:
    flag_errors.check_workdir(fl.out or fl.workdir, '--out' if fl.out else '--workdir')
    shift = evaluate_shift(fl.config, fl.workdir, fl.data_dir, suffixes, fl.checkpoint, fl.out)
  except ValueError as err:
    flag_errors.fail('soundfont_shift', str(err))
  sys.stdout.write(shift['markdown'])


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file('config', None, 'the run config (a synth_gm dataset; its '
                                  'eval_chunks is the protocol)', lock_config=True)
  flags.DEFINE_string('workdir', None, 'the trained run')
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a checkpoint directory")
  flags.DEFINE_string('data_dir', None, 'where synth_gm is built (default: dataset.data_dir)')
  flags.DEFINE_string('soundfonts', None, 'comma-separated companions to compare: fluidr3, '
                      'musescore (default: both)')
  flags.DEFINE_string('out', None, 'where to write the tables (default: WORKDIR/soundfont_shift)')
  flags.mark_flags_as_required(['config', 'workdir'])


if __name__ == '__main__':
  from absl import app  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import flag_errors  # pylint: disable=import-outside-toplevel
  _define_flags()
  app.run(main, flags_parser=flag_errors.flags_parser('soundfont_shift'))
