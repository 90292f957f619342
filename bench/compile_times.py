"""Cold compile time of every registered model's train step at its CPU test width.

  python -m bench.compile_times [--models hcnn,attention,...] [--batch 2] [--json OUT.json]

Each model compiles in a fresh process (no compilation cache): its tiny configuration of the
test suite (`TINY`: the widths `tests/models/test_zoo.py` trains), the model's registered input
length, and the train step of `bench.run` (data-parallel, Adam + coupled L2, the non-finite
guard). Reported: tracing + lowering, XLA's compilation, the optimised HLO's number of
instructions, and whether XLA printed its "Very slow compile" warning.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict

from bench import common

_HCNN_TINY = {'width': 4}
TINY: Dict[str, Dict[str, Any]] = {
    'hcnn': _HCNN_TINY, 'hcnn_keywords': _HCNN_TINY, 'hcnn_events': _HCNN_TINY,
    'fcn4': {'channels': (2, 3), 'pools': ((2, 4), (4, 5))},
    'fcn': {'channels': (2, 2), 'pools': ((2, 4), (4, 4))},
    'musicnn': {'timbral_channels': 2, 'temporal_channels': 2, 'backend_channels': 3,
                'dense': 16},
    'crnn': {'channels': (2, 3), 'pools': ((2, 2), (3, 3)), 'gru_hidden': 3},
    'sample': {'channels': (2, 3, 4)},
    'sample_se': {'channels': (2, 3, 8)},
    'short_chunk': {'channels': (2, 8)},
    'short_chunk_res': {'channels': (2, 8)},
    'attention': {'width': 4, 'num_layers': 1, 'cnn_layers': ((1, (2, 2)), (2, (2, 1)))},
}


def measure(model_name: str, batch: int) -> Dict[str, Any]:
  import optax

  from hcnn_jax import tasks
  from hcnn_jax.models import default_input_length, get_model
  from hcnn_jax.training import parallel

  length = default_input_length(model_name)
  model = get_model(model_name, 50, **TINY.get(model_name, {}))
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-4))
  mesh = parallel.make_mesh()
  state = common.replicated_state(model, tx, length, mesh)
  data = common.random_batch(batch, length, 50, mesh)
  step = parallel.make_train_step(model, tasks.get_task('tagging').loss, tx, mesh)
  start = time.perf_counter()
  lowered = step.lower(state, data)
  lower_s = time.perf_counter() - start
  start = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  text = compiled.as_text()
  return {'model': model_name, 'input_length': length, 'lower_s': lower_s,
          'compile_s': compile_s, 'hlo_instructions': text.count(' = ')}


def _isolated(model_name: str, batch: int) -> Dict[str, Any]:
  proc = subprocess.run([sys.executable, '-m', 'bench.compile_times', '--one', model_name,
                         '--batch', str(batch)], capture_output=True, text=True)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
    return {'model': model_name, 'error': tail[0]}
  row = json.loads(lines[-1])
  row['slow_compile_warning'] = 'Very slow compile' in proc.stderr
  return row


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default=None, help='comma-separated; default: all registered')
  parser.add_argument('--batch', type=int, default=2)
  parser.add_argument('--json', default=None)
  parser.add_argument('--one', default=None, help=argparse.SUPPRESS)  # internal: one model
  args = parser.parse_args(argv)
  if args.one is not None:
    print(json.dumps(measure(args.one, args.batch)))
    return {}
  from hcnn_jax.models import list_models
  models = args.models.split(',') if args.models else list_models()
  rows = []
  for name in models:
    load = os.getloadavg()[0]
    row = _isolated(name, args.batch)
    row['load'] = load
    rows.append(row)
    print(json.dumps(row), file=sys.stderr, flush=True)
  print(f"\nXLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, batch {args.batch}\n")
  print('| model | input samples | lower s | compile s | HLO instructions | slow-compile warning '
        '| load |\n|---|---|---|---|---|---|---|')
  for r in rows:
    if 'error' in r:
      print(f"| {r['model']} | error: {r['error']} | | | | | {r['load']:.1f} |")
      continue
    print(f"| {r['model']} | {r['input_length']:,} | {r['lower_s']:.1f} | {r['compile_s']:.1f} | "
          f"{r['hlo_instructions']:,} | {'yes' if r['slow_compile_warning'] else 'no'} | "
          f"{r['load']:.1f} |")
  result = {'xla_flags': os.environ.get('XLA_FLAGS', ''), 'batch': args.batch, 'results': rows}
  if args.json:
    common.write_json(args.json, result)
  return result


if __name__ == '__main__':
  main()
