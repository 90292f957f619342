"""Our models against the sota PyTorch models on this machine's CPU, in one run: speed ratios.

  python -m bench.vs_torch [--models hcnn,short_chunk,...] [--batch 16] [--rounds 3]
      [--steps 3] [--warmup 1] [--json OUT.json]
  python -m bench.vs_torch --profile hcnn [--batch 4]      # where our train step's time goes

For each model, `rounds` times and in alternating order (ours first in even rounds, PyTorch first
in odd ones), a fresh process times our float32 train and inference steps (`bench.run.measure`:
the data-parallel train step with Adam + coupled L2 and the non-finite guard, the evaluation
step) and another times the PyTorch twin of the reference class at its default size: the Adam
step of the reference recipe (Adam lr 1e-4, weight_decay 1e-4, BCE on the sigmoid outputs,
`model.train()`) and `model.eval()` forward passes under `no_grad`, both on the same random
clips of the model's registered input length. Each round gives a ratio (ours / PyTorch clips/s);
the table shows their minimum and median with the machine's load average around the round, since
a shared machine's other jobs slow the two sides differently.

The twins: `bench/torch_hcnn.py` (sota's HarmonicCNN) and `tests/tools/_torch_twins.py` (the
rest of sota's zoo, written from the reference's equations with its key names), at the sizes
whose parameter counts `docs/zoo.md` lists. hcnn_keywords / hcnn_events (ddhf's variants) and
fcn4 have no sota class here. PyTorch uses its default thread count (the machine's cores).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List

from bench import common

_HERE = os.path.dirname(os.path.abspath(__file__))
SOTA_WIDE = (128, 128, 256, 256, 256, 256, 512)
SAMPLE_WIDE = (128, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512)


def _zoo_twins():
  path = os.path.join(_HERE, os.pardir, 'tests', 'tools', '_torch_twins.py')
  spec = importlib.util.spec_from_file_location('_torch_twins', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def twin(name: str, classes: int = 50):
  """The PyTorch twin of sota's class for our model `name`, at the reference's default size."""
  if name == 'hcnn':
    from bench.torch_hcnn import HarmonicCNN
    return HarmonicCNN(128, classes, 6)
  tw = _zoo_twins()
  makers: Dict[str, Callable[[], Any]] = {
      'short_chunk': lambda: tw.ShortChunkCNN(SOTA_WIDE, classes),
      'short_chunk_res': lambda: tw.ShortChunkCNN(SOTA_WIDE, classes, residual=True),
      'fcn': lambda: tw.FCN((64, 128, 128, 128, 64),
                            ((2, 4), (2, 4), (2, 4), (3, 5), (4, 4)), classes),
      'musicnn': lambda: tw.Musicnn(classes),
      'crnn': lambda: tw.CRNN((64, 128, 128, 128), ((2, 2), (3, 3), (4, 4), (4, 4)), classes),
      'sample': lambda: tw.SampleCNN(SAMPLE_WIDE, classes),
      'sample_se': lambda: tw.SampleCNN(SAMPLE_WIDE, classes, se=True),
      'attention': lambda: tw.CNNSA(128, classes),
  }
  if name not in makers:
    raise ValueError(f'no PyTorch twin of {name!r}; twins: hcnn, {", ".join(makers)}')
  return makers[name]()


TWINNED = ('hcnn', 'short_chunk', 'short_chunk_res', 'fcn', 'musicnn', 'crnn', 'sample',
           'sample_se', 'attention')


def measure_torch(model_name: str, batch: int, steps: int, warmup: int, length: int,
                  classes: int = 50) -> Dict[str, Any]:
  import torch
  torch.manual_seed(0)
  model = twin(model_name, classes)
  opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
  loss_fn = torch.nn.BCELoss()
  x = torch.rand(batch, length) * 2 - 1
  y = (torch.rand(batch, classes) < 0.1).float()

  def train_step():
    loss = loss_fn(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  @torch.no_grad()
  def infer():
    model(x)

  def timed(fn):
    for _ in range(warmup):
      fn()
    start = time.perf_counter()
    for _ in range(steps):
      fn()
    return (time.perf_counter() - start) / steps

  model.train()
  train_s = timed(train_step)
  model.eval()
  infer_s = timed(infer)
  return {'train_clips_per_s': batch / train_s, 'infer_clips_per_s': batch / infer_s,
          'train_step_ms': 1e3 * train_s, 'threads': torch.get_num_threads(),
          'params': sum(p.numel() for p in model.parameters()), 'torch': torch.__version__}


def _one(config: Dict[str, Any]) -> Dict[str, Any]:
  side = config.pop('side')
  if side == 'torch':
    return measure_torch(**config)
  from bench import run
  return run.measure(config['model_name'], 'float32', config['batch'], config['steps'],
                     config['warmup'], {}, config['length'])


def _isolated(config: Dict[str, Any]) -> Dict[str, Any]:
  proc = subprocess.run([sys.executable, '-m', 'bench.vs_torch', '--one', json.dumps(config)],
                        capture_output=True, text=True)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
    return {'error': tail[0]}
  return json.loads(lines[-1])


def _load() -> float:
  return os.getloadavg()[0]


def compare(name: str, batch: int, rounds: int, steps: int, warmup: int) -> Dict[str, Any]:
  from hcnn_jax.models import default_input_length
  length = default_input_length(name)
  base = {'batch': batch, 'steps': steps, 'warmup': warmup}
  sides = {'ours': {'side': 'ours', 'model_name': name, 'length': length, **base},
           'torch': {'side': 'torch', 'model_name': name, 'length': length, **base}}
  out: Dict[str, Any] = {'model': name, 'batch': batch, 'length': length, 'rounds': []}
  for r in range(rounds):
    order = ('ours', 'torch') if r % 2 == 0 else ('torch', 'ours')
    entry: Dict[str, Any] = {'order': order, 'load_before': _load()}
    for side in order:
      entry[side] = _isolated(dict(sides[side]))
    entry['load_after'] = _load()
    if 'error' not in entry['ours'] and 'error' not in entry['torch']:
      for k in ('train', 'infer'):
        entry[f'{k}_ratio'] = (entry['ours'][f'{k}_clips_per_s']
                               / entry['torch'][f'{k}_clips_per_s'])
    out['rounds'].append(entry)
    print(f"{name} round {r + 1}: {json.dumps(entry)}", file=sys.stderr, flush=True)
  return out


def _summary(rows: List[Dict[str, Any]]) -> str:
  head = ('| model | batch | rounds | ours train / infer clips/s (median) | PyTorch train / infer '
          '(median) | train ratio min / median | infer ratio min / median | our train compile s '
          '| load (1-min) |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  for row in rows:
    good = [e for e in row['rounds'] if 'train_ratio' in e]
    if not good:
      errs = [e[s]['error'] for e in row['rounds'] for s in ('ours', 'torch') if 'error' in e[s]]
      lines.append(f"| {row['model']} | {row['batch']} | error: {errs[:1]} |" + ' |' * 6)
      continue

    def med(side, key):
      return statistics.median(e[side][key] for e in good)

    def ratios(key):
      values = [e[key] for e in good]
      return f'{min(values):.2f} / {statistics.median(values):.2f}'

    loads = [e[k] for e in good for k in ('load_before', 'load_after')]
    lines.append(
        f"| {row['model']} | {row['batch']} | {len(good)} | {med('ours', 'train_clips_per_s'):.2f}"
        f" / {med('ours', 'infer_clips_per_s'):.2f} | {med('torch', 'train_clips_per_s'):.2f} / "
        f"{med('torch', 'infer_clips_per_s'):.2f} | {ratios('train_ratio')} | "
        f"{ratios('infer_ratio')} | {med('ours', 'train_compile_s'):.1f} | "
        f'{min(loads):.1f}–{max(loads):.1f} |')
  return '\n'.join(lines)


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='hcnn', help='comma-separated; twins: ' +
                      ','.join(TWINNED))
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--warmup', type=int, default=1)
  parser.add_argument('--json', default=None)
  parser.add_argument('--profile', default=None, metavar='MODEL',
                      help="print our train step's slowest XLA ops instead (bench.cpu_profile)")
  parser.add_argument('--one', default=None, help=argparse.SUPPRESS)  # internal: one side
  args = parser.parse_args(argv)
  if args.one is not None:
    print(json.dumps(_one(json.loads(args.one))))
    return {}
  if args.profile:
    from bench import cpu_profile
    return cpu_profile.main(['--model', args.profile, '--batch', str(args.batch)])
  models = [m.strip() for m in args.models.split(',') if m.strip()]
  for name in models:
    if name not in TWINNED:
      parser.error(f'no PyTorch twin of {name!r}; choose from {", ".join(TWINNED)}')
  if args.rounds < 1 or args.steps < 1 or args.batch < 1 or args.warmup < 0:
    parser.error('--rounds, --steps and --batch must be positive, --warmup non-negative')
  rows = [compare(name, args.batch, args.rounds, args.steps, args.warmup) for name in models]
  import jax
  meta = {'jax': jax.__version__, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'cpus': os.cpu_count(), 'time': time.strftime('%Y-%m-%dT%H:%M:%S')}
  print(f"\nCPU × {meta['cpus']}, jax {meta['jax']}, XLA_FLAGS={meta['xla_flags']!r}, "
        f'{args.steps} timed steps after {args.warmup} warm-up, float32\n')
  print(_summary(rows))
  result = {'meta': meta, 'results': rows}
  if args.json:
    common.write_json(args.json, result)
  return result


if __name__ == '__main__':
  main()
