"""Where a CPU train step's time goes: XLA's ops by time, from one profiled step.

  python -m bench.cpu_profile [--model hcnn] [--batch 4] [--model_kwargs '{}'] [--top 25]
      [--infer]

Builds the train step (or with --infer the evaluation step: forward with `train=False`, sigmoid,
per-clip loss) as `bench.run` does (float32), runs it twice, then profiles one step with
`jax.profiler` and sums the trace's events per XLA op (fusions, convolutions, YNNPACK fusions),
each shown with the op that XLA's optimised HLO names for it, so that a slow op maps back to a
layer (its `op_name` metadata). The sum of the ops can be lower than the step: the convolutions'
thread-pool work and the waits between ops are not all attributed.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time
from typing import Any, Dict

from bench import common


def _op_lines(hlo: str) -> Dict[str, str]:
  """op name → a short description: its shape, kind and the model path in its metadata."""
  out = {}
  for m in re.finditer(r'^\s*(?:ROOT )?%([\w.\-]+) = (\S+) (\w+)\(.*?(?:op_name="([^"]+)")?',
                       hlo, re.M):
    name, shape, kind, op_name = m.groups()
    path = (op_name or '').replace('jit(train_step)/', '').replace('jit(eval_step)/', '')
    out[name] = f'{shape} {kind} {path[-70:]}'
  return out


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='hcnn')
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--model_kwargs', type=json.loads, default={})
  parser.add_argument('--top', type=int, default=25)
  parser.add_argument('--infer', action='store_true',
                      help='profile the evaluation step instead of the train step')
  args = parser.parse_args(argv)
  import jax
  import numpy as np
  import optax

  from hcnn_jax import tasks
  from hcnn_jax.models import default_input_length, get_model
  from hcnn_jax.training import parallel, state as state_lib

  length = default_input_length(args.model)
  model = get_model(args.model, 50, **args.model_kwargs)
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-4))
  mesh = parallel.make_mesh()
  state = common.replicated_state(model, tx, length, mesh)
  batch = common.random_batch(args.batch, length, 50, mesh)
  task = tasks.get_task('tagging')
  start = time.perf_counter()
  if args.infer:
    batch = parallel.shard_batch({'audio': np.asarray(batch['audio'])[:, None, :],
                                  'labels': np.asarray(batch['labels']),
                                  'mask': np.ones((args.batch,), bool)}, mesh)
    step = parallel.make_eval_step(model, task.loss, task.predict, mesh).lower(
        state_lib.variables(state), batch).compile()
    variables = state_lib.variables(state)

    def run_once(_):
      return step(variables, batch)
  else:
    step = parallel.make_train_step(model, task.loss, tx, mesh).lower(state, batch).compile()

    def run_once(prev):  # the state is donated: pass the latest one
      return step(prev[0], batch)
  compile_s = time.perf_counter() - start
  described = _op_lines(step.as_text())
  out = step(variables, batch) if args.infer else step(state, batch)
  seconds = []
  for _ in range(2):
    start = time.perf_counter()
    out = run_once(out)
    jax.block_until_ready(out)
    seconds.append(time.perf_counter() - start)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      out = run_once(out)
      jax.block_until_ready(out)
    path = glob.glob(os.path.join(trace_dir, '**', '*perfetto_trace.json.gz'), recursive=True)[0]
    with gzip.open(path, 'rt') as f:
      events = json.load(f)
  events = events.get('traceEvents', events) if isinstance(events, dict) else events
  total: Dict[str, float] = collections.Counter()
  for e in events:
    if e.get('ph') == 'X' and e.get('name') in described:
      total[e['name']] += float(e.get('dur', 0.0)) / 1e3
  ops_ms = sum(total.values())
  kind = 'inference' if args.infer else 'train'
  print(f'{args.model} {kind} batch {args.batch}: compile {compile_s:.1f} s, steps '
        f"{', '.join(f'{s:.2f}' for s in seconds)} s, ops attributed {ops_ms / 1e3:.2f} s, "
        f'load {os.getloadavg()[0]:.1f}\n')
  print('| op | ms | share of attributed | what |\n|---|---|---|---|')
  top = sorted(total.items(), key=lambda kv: -kv[1])[:args.top]
  for name, ms in top:
    print(f'| {name} | {ms:.1f} | {100 * ms / ops_ms:.1f} % | {described[name]} |')
  return {'compile_s': compile_s, 'step_s': seconds, 'ops_ms': dict(top)}


if __name__ == '__main__':
  main()
