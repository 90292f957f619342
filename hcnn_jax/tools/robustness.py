"""Robustness of a trained model to realistic deformations of the test audio (reference section 7).

    python -m hcnn_jax.tools.robustness --workdir runs/mtat --config hcnn_jax/configs/hcnn_mtat.py \
        [--split test] [--out DIR] [--perturbations noise_0.1,drc_music] [--max_tracks N]

As in sota's `robustness.py` (after MUDA, McFee et al. 2015): every full track of the split is
deformed once, then evaluated by the usual track-level protocol (`eval_chunks` chunks, mean of the
predictions, macro ROC-AUC / PR-AUC). Writes `robustness.csv`, `robustness.md` and the grouped
bar plot `robustness.png` into `--out` (default: the workdir).

Deformations (`PERTURBATIONS`):
- time_stretch_0.71 / _1.41: `librosa.effects.time_stretch`, rate 2^−0.5 and 2^0.5 (the ends of
  the reference's range; the length changes);
- pitch_shift_-1 / _+1: `librosa.effects.pitch_shift`, ±1 semitone;
- drc_music / drc_speech: dynamic-range compression with MUDA's sox `compand` presets
  "music standard" and "speech", rendered with pedalboard (see `drc_board` for the mapping);
- noise_0.1 / _0.4: x' = (1 − r)·x + r·n, n white Gaussian noise scaled to peak max|x|, seeded per
  track so that a rerun gives the same numbers.
"""
from __future__ import annotations

import concurrent.futures
import csv
import logging
import math
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hcnn_jax.data import audio as audio_lib, chunking

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000

# MUDA's sox compand presets (attack,decay / transfer points in dB / gain / initial volume / delay).
COMPAND_PRESETS = {
    'music standard': ('0.1,0.3', '-90,-90,-70,-58,-55,-43,-31,-31,-21,-21,0,-20', 0, 0, 0.1),
    'speech': ('0.1,0.3', '-90,-90,-70,-55,-50,-35,-31,-31,-21,-21,0,-20', 0, 0, 0.1),
}

# name → (kind, parameter); 'original' is the undeformed baseline.
PERTURBATIONS: Dict[str, Tuple[str, Any]] = {
    'original': ('original', None),
    'time_stretch_0.71': ('time_stretch', 2.0 ** -0.5),
    'time_stretch_1.41': ('time_stretch', 2.0 ** 0.5),
    'pitch_shift_-1': ('pitch_shift', -1.0),
    'pitch_shift_+1': ('pitch_shift', 1.0),
    'drc_music': ('drc', 'music standard'),
    'drc_speech': ('drc', 'speech'),
    'noise_0.1': ('white_noise', 0.1),
    'noise_0.4': ('white_noise', 0.4),
}

# The optional package each kind of deformation imports (extra [tools]; hcnn_jax/cli/extras.py).
NEEDS = {'time_stretch': 'librosa', 'pitch_shift': 'librosa', 'drc': 'pedalboard'}


def lacking_packages(names: Sequence[str]) -> Optional[str]:
  """One line when the perturbations `names` need a package that is not installed, else None."""
  from hcnn_jax.cli import extras  # pylint: disable=import-outside-toplevel
  kinds = sorted({PERTURBATIONS[n][0] for n in names if n in PERTURBATIONS} & set(NEEDS))
  line = extras.problem('deforming by ' + ', '.join(kinds), sorted({NEEDS[k] for k in kinds}))
  if line is None:
    return None
  others = ','.join(n for n, (k, _) in PERTURBATIONS.items() if k not in NEEDS and k != 'original')
  return f'{line} (or --perturbations {others}, which need neither)'


# ----------------------------------------------------------------------------- deformations

def _transfer_points(points: str) -> List[Tuple[float, float]]:
  values = [float(v) for v in points.split(',')]
  return list(zip(values[0::2], values[1::2]))


def drc_chain(preset: str) -> Dict[str, float]:
  """The pedalboard settings that approximate a compand preset's static transfer curve.

  The presets raise quiet passages by a fixed gain (−70 → −58 dB: +12 for music, +15 for
  speech), compress gently up to −21 dB, and limit everything above −21 dB to about −20 dBFS
  (slope 1/21). pedalboard has only downward compressors, so the chain is
    Gain(+g) → Compressor(threshold = knee₁ + g, ratio r₁) → Compressor(threshold −21 dB, 21:1)
  with knee₁ the preset's third point (−55 music, −50 speech) and r₁ set so that the curve passes
  exactly through the preset's points at knee₁ and −21 dB. Differences that remain: compand's 1:1
  stretch between −31 and −21 dB is folded into the gentle slope (the chain is 3.5 dB (music) or
  5 dB (speech) louder at −31 dB input), below −70 dB compand expands while the chain keeps the
  +g, and compand's 0.1 s look-ahead delay is not applied. Attack and release (0.1 s / 0.3 s) are
  the preset's attack and decay.
  """
  if preset not in COMPAND_PRESETS:
    raise ValueError(f'unknown compand preset {preset!r}; use one of {sorted(COMPAND_PRESETS)}')
  attack_decay, points, _, _, _ = COMPAND_PRESETS[preset]
  attack, decay = (float(v) for v in attack_decay.split(','))
  pts = dict(_transfer_points(points))
  ins = sorted(pts)
  quiet_in = ins[1]  # −70 dB
  knee1 = ins[2]
  knee2 = -21.0
  gain = pts[quiet_in] - quiet_in
  ratio1 = (knee2 - knee1) / (pts[knee2] - pts[knee1])
  ratio2 = (0.0 - knee2) / (pts[0.0] - pts[knee2])
  return {'gain_db': gain, 'threshold1_db': knee1 + gain, 'ratio1': ratio1,
          'threshold2_db': pts[knee2], 'ratio2': ratio2, 'attack_ms': 1000.0 * attack,
          'release_ms': 1000.0 * decay}


def drc_board(preset: str):
  """A pedalboard.Pedalboard rendering `drc_chain(preset)`."""
  import pedalboard  # pylint: disable=import-outside-toplevel
  s = drc_chain(preset)
  return pedalboard.Pedalboard([
      pedalboard.Gain(gain_db=s['gain_db']),
      pedalboard.Compressor(threshold_db=s['threshold1_db'], ratio=s['ratio1'],
                            attack_ms=s['attack_ms'], release_ms=s['release_ms']),
      pedalboard.Compressor(threshold_db=s['threshold2_db'], ratio=s['ratio2'],
                            attack_ms=s['attack_ms'], release_ms=s['release_ms']),
  ])


def compress(audio: np.ndarray, preset: str, sample_rate: int = SAMPLE_RATE,
             warmup_seconds: float = 0.5) -> np.ndarray:
  """Dynamic-range compression of a mono track with `drc_board(preset)`.

  The compressors' level detectors start from silence, so the +g gain would pass the track's first
  attack time uncompressed (peaks far above full scale). compand instead starts from a given
  initial level and looks 0.1 s ahead; the nearest pedalboard equivalent is to run the chain over
  the track's first `warmup_seconds` played backwards first and drop that pre-roll, so the
  detectors meet the track already at its level.
  """
  audio = np.asarray(audio, dtype=np.float32)
  warm = audio[:int(warmup_seconds * sample_rate)][::-1]
  out = drc_board(preset)(np.concatenate([warm, audio])[None, :], sample_rate)[0]
  return out[warm.shape[0]:].astype(np.float32)


def white_noise(audio: np.ndarray, r: float, rng: np.random.Generator) -> np.ndarray:
  """(1 − r)·x + r·n with n white Gaussian noise scaled to the peak of x (reference section 7)."""
  if not 0.0 <= r <= 1.0:
    raise ValueError(f'noise ratio r must be in [0, 1], got {r}')
  noise = rng.standard_normal(audio.shape[0])
  peak = float(np.max(np.abs(audio))) if audio.size else 0.0
  noise_peak = float(np.max(np.abs(noise))) if noise.size else 0.0
  noise = noise * (peak / noise_peak) if noise_peak > 0 else noise * 0.0
  return ((1.0 - r) * audio + r * noise).astype(np.float32)


def perturb(audio: np.ndarray, name: str, sample_rate: int = SAMPLE_RATE,
            seed: Sequence[int] = (0,)) -> np.ndarray:
  """Deforms one full mono track by the perturbation `name` (a key of PERTURBATIONS)."""
  if name not in PERTURBATIONS:
    raise ValueError(f'unknown perturbation {name!r}; use some of {list(PERTURBATIONS)}')
  kind, param = PERTURBATIONS[name]
  audio = np.asarray(audio, dtype=np.float32)
  if kind == 'original':
    return audio
  if kind == 'white_noise':
    return white_noise(audio, float(param), np.random.default_rng(list(seed)))
  if kind == 'drc':
    return compress(audio, param, sample_rate)
  import librosa  # pylint: disable=import-outside-toplevel
  if kind == 'time_stretch':
    return librosa.effects.time_stretch(audio, rate=float(param)).astype(np.float32)
  return librosa.effects.pitch_shift(audio, sr=sample_rate, n_steps=float(param)).astype(
      np.float32)


# ------------------------------------------------------------------------------ evaluation

def _predictor(model, task) -> Callable:
  """`fn(variables, batch)`: the trainer's track-level evaluation step (`step.eval_step`: the
  mean over each track's chunks) on one device, for `{'audio': (tracks, chunks, L), 'labels'}`."""
  import functools  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import step  # pylint: disable=import-outside-toplevel
  return jax.jit(functools.partial(step.eval_step, model=model, loss_fn=task.loss,
                                   predict_fn=task.predict))


def _track_audio(record: Dict[str, Any]) -> np.ndarray:
  audio = np.asarray(record['audio'])
  if np.issubdtype(audio.dtype, np.integer):
    return audio_lib.from_int16(audio)
  return audio.astype(np.float32)


def evaluate_perturbation(name: str, predict: Callable, variables, source, *, input_length: int,
                          num_chunks: int, tracks_per_batch: int, task, class_names,
                          max_tracks: Optional[int] = None, seed: int = 0,
                          threads: int = 2) -> Dict[str, Any]:
  """Track-level metrics of `source` with every track deformed by `name` before chunking."""
  n = len(source) if max_tracks is None else min(len(source), int(max_tracks))

  def one(i: int):
    record = source[int(i)]
    audio = perturb(_track_audio(record), name, SAMPLE_RATE, seed=(seed, int(i)))
    chunks = chunking.eval_chunks(audio, input_length, num_chunks)
    return chunks, np.asarray(record['labels'], np.float32)

  probs, labels = [], []
  with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
    for start in range(0, n, tracks_per_batch):
      rows = list(pool.map(one, range(start, min(n, start + tracks_per_batch))))
      batch = np.zeros((tracks_per_batch, num_chunks, input_length), np.float32)
      batch_labels = np.zeros((tracks_per_batch, len(class_names)), np.float32)
      for r, (chunks, label) in enumerate(rows):
        batch[r], batch_labels[r] = chunks, label
        labels.append(label)
      # A fixed batch shape: one compilation for every batch and every perturbation.
      out = np.asarray(predict(variables, {'audio': batch, 'labels': batch_labels})['probs'])
      probs.append(out[:len(rows)])
  probs_arr, labels_arr = np.concatenate(probs), np.stack(labels)
  result = dict(task.metrics(probs_arr, labels_arr, class_names=class_names))
  result['num_tracks'] = int(n)
  return result


def _metric_keys(task_kind: str) -> List[str]:
  return ['accuracy'] if task_kind == 'keywords' else ['roc_auc', 'pr_auc']


def evaluate_robustness(config, workdir: str, split: str = 'test', out_dir: Optional[str] = None,
                        perturbations: Optional[Sequence[str]] = None,
                        max_tracks: Optional[int] = None,
                        checkpoint: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
  """Evaluates the best checkpoint of `workdir` (or `checkpoint`) under each perturbation.

  `config` names the dataset and the evaluation protocol (input_length, eval_chunks,
  eval_tracks_per_batch). Returns {perturbation: metrics} and writes the table and the plot.
  """
  from hcnn_jax import tasks  # pylint: disable=import-outside-toplevel
  from hcnn_jax.data import sources  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  names = list(perturbations) if perturbations else list(PERTURBATIONS)
  unknown = [p for p in names if p not in PERTURBATIONS]
  if unknown:
    raise ValueError(f'perturbations: unknown {unknown}; use some of {list(PERTURBATIONS)}')
  if 'original' not in names:
    names = ['original'] + names  # the baseline every deformation is compared with
  if max_tracks is not None and max_tracks < 1:
    raise ValueError(f'max_tracks must be >= 1, got {max_tracks}')
  model, variables, _, class_names = ckpt_lib.load_for_inference(
      checkpoint or os.path.join(workdir, ckpt_lib.BEST_DIR))
  ds = config.dataset
  data_dir = os.path.expanduser(ds.data_dir) if ds.get('data_dir') else None
  source, metadata = sources.load(ds.name, split, data_dir, ds.get('config_name') or None)
  if [str(c) for c in metadata['class_names']] != [str(c) for c in class_names]:
    raise ValueError(f'dataset: the {split} split of {ds.name!r} has classes '
                     f'{metadata["class_names"]}, the checkpoint {class_names}; use the config '
                     'of the run')
  task = tasks.get_task(config.get('task') or metadata.get('task') or 'tagging')
  predict = _predictor(model, task)
  results: Dict[str, Dict[str, Any]] = {}
  for name in names:
    log.info('robustness: %s on %s/%s', name, ds.name, split)
    results[name] = evaluate_perturbation(
        name, predict, variables, source, input_length=int(config.input_length),
        num_chunks=int(config.eval_chunks), tracks_per_batch=int(config.eval_tracks_per_batch),
        task=task, class_names=class_names, max_tracks=max_tracks, seed=int(config.seed))
  write_report(results, out_dir or workdir, _metric_keys(task.kind),
               title=f'{config.model.name} on {ds.name}/{split}')
  return results


def _fmt(v) -> str:
  return 'n/a' if v is None or not math.isfinite(float(v)) else f'{float(v):.4f}'


def write_report(results: Dict[str, Dict[str, Any]], out_dir: str, metric_keys: Sequence[str],
                 title: str = '') -> Dict[str, str]:
  """robustness.csv, robustness.md and robustness.png in out_dir; returns their paths."""
  from hcnn_jax.tools import plots  # pylint: disable=import-outside-toplevel
  os.makedirs(out_dir, exist_ok=True)
  base = results.get('original', {})
  rows = []
  for name, res in results.items():
    kind, param = PERTURBATIONS[name]
    if isinstance(param, float):
      param = f'{param:.4g}'
    row = {'perturbation': name, 'kind': kind, 'parameter': '' if param is None else param,
           'num_tracks': res.get('num_tracks')}
    for key in metric_keys:
      value = res.get(key)
      row[key] = value
      ref = base.get(key)
      row[f'delta_{key}'] = (None if value is None or ref is None else float(value) - float(ref))
    rows.append(row)
  columns = list(rows[0])
  paths = {'csv': os.path.join(out_dir, 'robustness.csv'),
           'md': os.path.join(out_dir, 'robustness.md'),
           'png': os.path.join(out_dir, 'robustness.png')}
  with open(paths['csv'], 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    writer.writerows([{k: ('' if v is None else v) for k, v in r.items()} for r in rows])
  lines = [f'# Robustness: {title}'.rstrip(': '), '',
           'Each full track deformed once, then the usual chunk-averaged evaluation '
           '(reference section 7). DRC: pedalboard approximation of the sox compand presets '
           '(hcnn_jax/tools/robustness.py, drc_chain).', '',
           '| perturbation | parameter | tracks | ' +
           ' | '.join(f'{k} | Δ{k}' for k in metric_keys) + ' |',
           '|---|---|---|' + '---|---|' * len(metric_keys)]
  for r in rows:
    cells = [r['perturbation'], str(r['parameter']), str(r['num_tracks'])]
    for k in metric_keys:
      delta = r[f'delta_{k}']
      cells += [_fmt(r[k]), '' if delta is None else f'{delta:+.4f}']
    lines.append('| ' + ' | '.join(cells) + ' |')
  with open(paths['md'], 'w') as f:
    f.write('\n'.join(lines) + '\n')
  labels = {'roc_auc': 'ROC-AUC', 'pr_auc': 'PR-AUC', 'accuracy': 'accuracy'}
  # Every bar group says how many tracks it scores: a --max_tracks look is not a full study.
  groups = [f'{r["perturbation"]} ({r["num_tracks"]} tracks)' for r in rows]
  plots.save_grouped_bars(paths['png'], groups,
                          {labels.get(k, k): [r[k] for r in rows] for k in metric_keys},
                          ylabel='score', title=f'Robustness: {title}', ylim=(0.0, 1.05))
  return paths


# -------------------------------------------------------------------------------------- CLI

def main(argv) -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import writers  # pylint: disable=import-outside-toplevel
  writers.configure_cli_logging()
  fl = flags.FLAGS
  if len(argv) > 1:
    print(f'robustness: error: unexpected arguments {argv[1:]}', file=sys.stderr)
    sys.exit(2)
  perturbations = [p.strip() for p in fl.perturbations.split(',') if p.strip()] \
      if fl.perturbations else None
  lacking = lacking_packages(perturbations or list(PERTURBATIONS))
  if lacking:  # before the checkpoint, the dataset and the compile
    print(f'robustness: error: {lacking}', file=sys.stderr)
    sys.exit(2)
  try:
    from hcnn_jax.training import flag_errors  # pylint: disable=import-outside-toplevel
    # Before the evaluation, not after it.
    flag_errors.check_workdir(fl.out or fl.workdir, '--out' if fl.out else '--workdir')
    results = evaluate_robustness(fl.config, fl.workdir, fl.split, fl.out, perturbations,
                                  fl.max_tracks, fl.checkpoint)
  except ValueError as err:
    print(f'robustness: error: {err}', file=sys.stderr)
    sys.exit(1)
  for name, res in results.items():
    print(f'{name:>18}: ' + ', '.join(f'{k} {_fmt(res.get(k))}' for k in ('roc_auc', 'pr_auc',
                                                                           'accuracy')
                                       if k in res))


def _define_flags() -> None:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file('config', None, 'the run config (dataset, evaluation protocol)',
                                  lock_config=True)
  flags.DEFINE_string('workdir', None, 'the trained run (its best checkpoint is evaluated)')
  flags.DEFINE_string('checkpoint', None, 'another checkpoint directory to evaluate instead')
  flags.DEFINE_string('split', 'test', 'split to deform and evaluate')
  flags.DEFINE_string('out', None, 'where to write robustness.{csv,md,png} (default: workdir)')
  flags.DEFINE_string('perturbations', None,
                      f'comma-separated subset of {",".join(PERTURBATIONS)} (default: all)')
  flags.DEFINE_integer('max_tracks', None, 'evaluate only the first N tracks (quick looks)')
  flags.mark_flags_as_required(['config', 'workdir'])


if __name__ == '__main__':
  from absl import app  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import flag_errors  # pylint: disable=import-outside-toplevel
  _define_flags()
  app.run(main, flags_parser=flag_errors.flags_parser('robustness'))
