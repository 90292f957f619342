"""Where a train step's time goes: variants of one model side by side, FLOPs, and a kernel profile.

  python -m bench.breakdown [--model hcnn] [--batch 256] [--dtype bfloat16] [--steps 20]
      [--variants '{"base": {}, "fb_high": {"filterbank_precision": "high"}}']
      [--trace DIR] [--hlo DIR] [--json OUT.json]

In one process, for each named variant, it compiles and times the steps below. A variant is extra
`get_model` kwargs, plus two keys of its own: "speed", the `hcnn_jax.speed.Choices` forced while
it is built and traced (e.g. {"pool_first": true}), and "fold_bn": true, inference on
`blocks.fold_batchnorm` of the variables.
- `train`: the data-parallel train step of `hcnn_jax.training.parallel` (as `bench.run`);
- `infer`: the evaluation step on the same batch;
- `frontend`: the model's front-end alone, forward, and forward + gradient of its parameters;
and reads XLA's FLOP count of the compiled train and eval steps (`cost_analysis`), so that
clips/s can be set against the arithmetic done. With --trace, it profiles five train steps of the
first variant (`jax.profiler`, perfetto JSON) and prints the kernels that took the most device
time; with --hlo it writes each variant's optimised train-step HLO, to map fusion names to ops.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import time
from typing import Any, Dict, List

from bench import common

# Per model, the alternatives still to be measured on an accelerator (the first is the baseline).
# The settled filterbank precision stays reachable through --variants.
_POOL_FIRST = {'base': {}, 'pool_first': {'speed': {'pool_first': True}}}
DEFAULT_VARIANTS = {
    'hcnn': {**_POOL_FIRST, 'fold_bn': {'fold_bn': True}},
    **{name: _POOL_FIRST for name in ('fcn', 'short_chunk', 'crnn')},
    'musicnn': {'reference': {'speed': {'pool_first': False, 'conv_grads': 'xla'}},
                'pool_first': {'speed': {'pool_first': True, 'conv_grads': 'xla'}},
                'matmul_grads': {'speed': {'pool_first': False, 'conv_grads': 'matmul'}},
                'default': {}},
}


def split_variant(variant: Dict[str, Any]):
  """(get_model kwargs, forced `speed.Choices` fields, fold_bn) of a variant."""
  kwargs = dict(variant)
  return kwargs, dict(kwargs.pop('speed', {}) or {}), bool(kwargs.pop('fold_bn', False))


def _flops(compiled, key: str = 'flops') -> float:
  """A figure of XLA's cost analysis: 'flops', or 'bytes accessed' (its memory-traffic estimate,
  which, like the FLOPs, leaves out what runs inside cuDNN calls)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return float((cost or {}).get(key, float('nan')))


def measure_variant(model_name: str, variant: Dict[str, Any], *, batch: int, dtype: str,
                    steps: int, hlo_path: str | None = None) -> Dict[str, Any]:
  from hcnn_jax import speed
  _, choices, _ = split_variant(variant)
  with speed.choose(**choices):
    return _measure(model_name, variant, batch=batch, dtype=dtype, steps=steps, hlo_path=hlo_path)


def _measure(model_name: str, variant: Dict[str, Any], *, batch: int, dtype: str,
             steps: int, hlo_path: str | None = None) -> Dict[str, Any]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from hcnn_jax import tasks
  from hcnn_jax.models import blocks, default_input_length, get_model
  from hcnn_jax.training import parallel, precision, state as state_lib

  kwargs, _, fold_bn = split_variant(variant)
  length = default_input_length(model_name)
  model = get_model(model_name, 50, **precision.model_kwargs(dtype, **kwargs))
  task = tasks.get_task('tagging')
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-4))
  mesh = parallel.make_mesh()
  state = common.replicated_state(model, tx, length, mesh)
  rng = np.random.default_rng(0)
  audio = rng.uniform(-1, 1, (batch, length)).astype(np.float32)
  labels = (rng.uniform(size=(batch, 50)) < 0.1).astype(np.float32)
  train_batch = parallel.shard_batch({'audio': audio, 'labels': labels}, mesh)
  row: Dict[str, Any] = {}

  t = time.perf_counter()
  train = parallel.make_train_step(model, task.loss, tx, mesh).lower(state, train_batch).compile()
  row['train_compile_s'] = time.perf_counter() - t
  row['train_gflop_per_clip'] = _flops(train) / batch / 1e9
  row['train_mb_accessed_per_clip'] = _flops(train, 'bytes accessed') / batch / 1e6
  if hlo_path:
    with open(hlo_path, 'w') as f:
      f.write(train.as_text())

  def train_args(out):  # the state is donated: always pass the latest one
    return (state if out is None else out[0]), train_batch

  sec, (state, metrics) = common.timed(train, train_args, steps, 3)
  row['train_ms'], row['train_clips_per_s'] = 1e3 * sec, batch / sec
  row['finite'] = bool(np.isfinite(float(jax.device_get(metrics['loss']))))

  variables = state_lib.variables(state)
  if fold_bn:
    variables = blocks.fold_batchnorm(variables)
  eval_batch = parallel.shard_batch({'audio': audio[:, None, :], 'labels': labels,
                                     'mask': np.ones((batch,), bool)}, mesh)
  infer = parallel.make_eval_step(model, task.loss, task.predict, mesh).lower(
      variables, eval_batch).compile()
  row['infer_gflop_per_clip'] = _flops(infer) / batch / 1e9
  sec, _ = common.timed(infer, lambda _: (variables, eval_batch), steps, 3)
  row['infer_ms'], row['infer_clips_per_s'] = 1e3 * sec, batch / sec

  # The front-end alone, on the same (single-device) batch.
  frontend = model.frontend
  fe_vars = {k: v['frontend'] for k, v in variables.items() if 'frontend' in v}
  x = jax.device_put(audio)

  @jax.jit
  def fe_forward(v, x):
    return frontend.apply(v, x, train=False)

  @jax.jit
  def fe_grad(v, x):
    def loss(p):
      out, _ = frontend.apply({**v, 'params': p}, x, train=True, mutable=['batch_stats'])
      return jnp.mean(out.astype(jnp.float32))
    return jax.grad(loss)(v['params'])

  sec, _ = common.timed(fe_forward, lambda _: (fe_vars, x), steps, 3)
  row['frontend_fwd_ms'] = 1e3 * sec
  if fe_vars.get('params'):
    sec, _ = common.timed(fe_grad, lambda _: (fe_vars, x), steps, 3)
    row['frontend_fwd_bwd_ms'] = 1e3 * sec
  return row


def profile_kernels(step_fn, args_fn, trace_dir: str, steps: int = 5, top: int = 30
                    ) -> Dict[str, List[Dict[str, Any]]]:
  """Device time per name over `steps` profiled calls, largest first, for each line of the
  device's trace ('kernels' of the CUDA streams, 'XLA Ops', 'XLA Modules')."""
  import jax
  out = None
  for _ in range(2):
    out = step_fn(*args_fn(out))
  jax.block_until_ready(out)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(steps):
      out = step_fn(*args_fn(out))
    jax.block_until_ready(out)
  files = glob.glob(os.path.join(trace_dir, '**', '*perfetto_trace.json.gz'), recursive=True)
  if not files:
    return {}
  with gzip.open(files[0], 'rt') as f:
    events = json.load(f)
  events = events.get('traceEvents', events) if isinstance(events, dict) else events
  names = {e['pid']: e.get('args', {}).get('name', '') for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  threads = {(e['pid'], e.get('tid')): e.get('args', {}).get('name', '') for e in events
             if e.get('ph') == 'M' and e.get('name') == 'thread_name'}
  device_pids = {pid for pid, n in names.items() if 'GPU' in n or 'TPU' in n or '/device' in n}
  # A device's lines: CUDA streams hold kernels; derived lines ('XLA Ops', 'XLA Modules') repeat
  # the same time per HLO op or per program, so each line is summed on its own.
  total: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  count: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for e in events:
    if e.get('ph') == 'X' and e.get('pid') in device_pids:
      line = threads.get((e['pid'], e.get('tid')), '')
      line = 'XLA Ops' if 'XLA Ops' in line else ('XLA Modules' if 'Modules' in line else
                                                 ('kernels' if 'Stream' in line else line))
      total[line][e.get('name', '?')] += float(e.get('dur', 0.0))
      count[line][e.get('name', '?')] += 1
  out = {}
  for line, counter in total.items():
    busy = sum(counter.values()) or 1.0
    out[line] = [{'name': k, 'ms_per_step': v / 1e3 / steps, 'share': v / busy,
                  'calls_per_step': count[line][k] / steps} for k, v in counter.most_common(top)]
  return out


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='hcnn')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--variants', type=json.loads, default=None,
                      help='JSON {name: get_model kwargs [+ "speed": {...}, "fold_bn": true]}; '
                      'default per model: '
                      + json.dumps(DEFAULT_VARIANTS) + ', else {"base": {}}')
  parser.add_argument('--trace', default=None, help='profile the first variant into this dir')
  parser.add_argument('--hlo', default=None, help='write optimised train-step HLO here')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  import jax

  variants = args.variants or DEFAULT_VARIANTS.get(args.model, {'base': {}})
  rows = {}
  for name, kwargs in variants.items():
    hlo = os.path.join(args.hlo, f'{name}.hlo.txt') if args.hlo else None
    if hlo:
      os.makedirs(args.hlo, exist_ok=True)
    try:
      rows[name] = measure_variant(args.model, kwargs, batch=args.batch, dtype=args.dtype,
                                   steps=args.steps, hlo_path=hlo)
    except Exception as e:  # one broken variant must not lose the others' figures
      rows[name] = {'error': f'{type(e).__name__}: {e}'[:300]}
    print(name, json.dumps(rows[name]), flush=True)

  kernels: Dict[str, List[Dict[str, Any]]] = {}
  if args.trace:
    import optax
    from hcnn_jax import speed, tasks
    from hcnn_jax.models import default_input_length, get_model
    from hcnn_jax.training import parallel, precision
    first, choices, _ = split_variant(next(iter(variants.values())))
    length = default_input_length(args.model)
    model = get_model(args.model, 50, **precision.model_kwargs(args.dtype, **first))
    tx = optax.adam(1e-4)
    mesh = parallel.make_mesh()
    state = common.replicated_state(model, tx, length, mesh)
    batch = common.random_batch(args.batch, length, 50, mesh)
    step = parallel.make_train_step(model, tasks.get_task('tagging').loss, tx, mesh)

    def args_fn(out):
      return (state if out is None else out[0]), batch
    with speed.choose(**choices):
      kernels = profile_kernels(step, args_fn, args.trace)

  print(f'\n{jax.devices()[0].device_kind}, jax {jax.__version__}, {args.model} {args.dtype} '
        f'batch {args.batch}\n')
  cols = ['train_clips_per_s', 'train_ms', 'infer_clips_per_s', 'frontend_fwd_ms',
          'frontend_fwd_bwd_ms', 'train_gflop_per_clip', 'train_mb_accessed_per_clip',
          'infer_gflop_per_clip',
          'train_compile_s']
  print('| variant | ' + ' | '.join(cols) + ' |')
  print('|---' * (len(cols) + 1) + '|')
  for name, r in rows.items():
    if 'error' in r:
      print(f'| {name} | error: {r["error"]} |')
      continue
    print(f'| {name} | ' + ' | '.join(
        f'{r[c]:,.2f}' if isinstance(r.get(c), float) else '—' for c in cols) + ' |')
  for line in ('XLA Modules', 'XLA Ops', 'kernels'):
    if line not in kernels:
      continue
    print(f'\n| {line} | ms/step | share | calls/step |\n|---|---|---|---|')
    for k in kernels[line][:5 if line == 'XLA Modules' else 30]:
      print(f"| {k['name'][:100]} | {k['ms_per_step']:.3f} | {100 * k['share']:.1f} % | "
            f"{k['calls_per_step']:.0f} |")
  result = {'device': jax.devices()[0].device_kind, 'jax': jax.__version__, 'model': args.model,
            'dtype': args.dtype, 'batch': args.batch, 'variants': variants, 'rows': rows,
            'kernels': kernels}
  if args.json:
    common.write_json(args.json, result)
  return result


if __name__ == '__main__':
  main()
