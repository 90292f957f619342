"""Training and inference throughput, compile time and peak memory of the registry's models.

  python -m bench.run --preset cpu|gpu [--models hcnn,...] [--batch 16,64]
      [--dtype float32,bfloat16] [--steps N] [--warmup N] [--input_length L]
      [--model_kwargs '{"width": 8}'] [--json OUT.json]

Each (model, dtype, batch) runs in a fresh subprocess so that its compile time is a cold compile
and its peak memory is its own (XLA's peak counter never goes down within a process). A run:
1. builds the model (`precision.model_kwargs(dtype)`) and its state (the reference's Adam with
   coupled L2) on a `('data',)` mesh over all local devices;
2. traces and compiles the sharded train step (`compile_s`), runs `warmup` steps, then times
   `steps` steps on one device-resident random batch of the model's default input length (the
   input pipeline is `bench.input_pipeline`'s business, not this one's);
3. reads the peak device memory (`device.memory_stats()['peak_bytes_in_use']`, the largest over
   the local devices; where a backend has no such counter, as on CPU, the process's peak RSS);
4. compiles and times the evaluation step (forward, sigmoid, loss) on batches of the same size.
Presets: `cpu` = HCNN at width 4, batch 2, 3 steps (a smoke run, < 1 minute on a laptop core);
`gpu` = full-width HCNN, batches 16 and 128, float32 and bfloat16, 30 timed steps. See README.md.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from bench import common

PRESETS: Dict[str, Dict[str, Any]] = {
    'cpu': {'models': ['hcnn'], 'batch': [2], 'dtype': ['float32'], 'steps': 3, 'warmup': 1,
            'model_kwargs': {'width': 4}},
    'gpu': {'models': ['hcnn'], 'batch': [16, 128], 'dtype': ['float32', 'bfloat16'],
            'steps': 30, 'warmup': 5, 'model_kwargs': {}},
}

# The brief's PyTorch figures (HCNN, one H100, float32, 80,000-sample clips), clips/s.
PYTORCH_H100_FP32 = {'train': {16: 1260.0, 128: 1471.0}, 'inference': 5674.0}

NUM_CLASSES = 50


def _csv(text: str, cast=str) -> List[Any]:
  items = [t.strip() for t in text.split(',') if t.strip()]
  if not items:
    raise argparse.ArgumentTypeError(f'expected a comma-separated list, got {text!r}')
  try:
    return [cast(t) for t in items]
  except ValueError:
    raise argparse.ArgumentTypeError(f'bad list {text!r}') from None


def _peak_memory() -> Dict[str, Any]:
  import jax
  peaks = []
  for device in jax.local_devices():
    stats = device.memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
      peaks.append(stats['peak_bytes_in_use'])
  if peaks:
    return {'peak_mem_mb': max(peaks) / 2**20, 'mem_source': 'device'}
  # ru_maxrss is in KiB on Linux (bytes on macOS).
  scale = 1 if platform.system() == 'Darwin' else 1024
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
  return {'peak_mem_mb': rss / 2**20, 'mem_source': 'rss'}


def measure(model_name: str, dtype: str, batch: int, steps: int, warmup: int,
            model_kwargs: Dict[str, Any], input_length: Optional[int] = None) -> Dict[str, Any]:
  """One benchmark row (runs in the current process)."""
  import jax
  import numpy as np
  import optax

  from hcnn_jax import tasks
  from hcnn_jax.models import default_input_length, get_model
  from hcnn_jax.training import parallel, precision, state as state_lib

  length = int(input_length or default_input_length(model_name))
  model = get_model(model_name, NUM_CLASSES, **precision.model_kwargs(dtype, **model_kwargs))
  task = tasks.get_task('tagging')
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-4))  # reference §4.1
  mesh = parallel.make_mesh()
  if batch % mesh.devices.size:
    raise ValueError(f'batch {batch} does not split over {mesh.devices.size} devices')
  row: Dict[str, Any] = {'model': model_name, 'dtype': dtype, 'batch': batch,
                         'input_length': length, 'model_kwargs': model_kwargs,
                         'devices': mesh.devices.size, 'steps': steps}

  start = time.perf_counter()
  state = state_lib.create_train_state(model, tx, jax.random.PRNGKey(0), length)
  jax.block_until_ready(state)
  row['init_s'] = time.perf_counter() - start
  row['params'] = int(sum(x.size for x in jax.tree.leaves(state.params)))
  state = parallel.replicate(state, mesh)
  rng = np.random.default_rng(0)
  host_batch = {'audio': rng.uniform(-1, 1, (batch, length)).astype(np.float32),
                'labels': (rng.uniform(size=(batch, NUM_CLASSES)) < 0.1).astype(np.float32)}
  train_batch = parallel.shard_batch(host_batch, mesh)

  start = time.perf_counter()
  train_step = parallel.make_train_step(model, task.loss, tx, mesh).lower(
      state, train_batch).compile()
  row['train_compile_s'] = time.perf_counter() - start

  def train_args(out):  # the state is donated: always pass the latest one
    return (state if out is None else out[0]), train_batch

  seconds, (state, metrics) = common.timed(train_step, train_args, steps, warmup)
  row['train_step_ms'] = 1e3 * seconds
  row['train_clips_per_s'] = batch / seconds
  row['finite'] = bool(float(metrics['finite']) == 1.0)
  row.update(_peak_memory())

  variables = state_lib.variables(state)
  eval_batch = parallel.shard_batch({'audio': host_batch['audio'][:, None, :],
                                     'labels': host_batch['labels'],
                                     'mask': np.ones((batch,), bool)}, mesh)
  start = time.perf_counter()
  eval_step = parallel.make_eval_step(model, task.loss, task.predict, mesh).lower(
      variables, eval_batch).compile()
  row['infer_compile_s'] = time.perf_counter() - start
  seconds, _ = common.timed(eval_step, lambda _: (variables, eval_batch), steps, warmup)
  row['infer_step_ms'] = 1e3 * seconds
  row['infer_clips_per_s'] = batch / seconds
  return row


def _run_isolated(config: Dict[str, Any]) -> Dict[str, Any]:
  proc = subprocess.run([sys.executable, '-m', 'bench.run', '--one', json.dumps(config)],
                        capture_output=True, text=True)
  lines = proc.stdout.strip().splitlines()
  if proc.returncode != 0 or not lines:
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ['no output']
    return {'model': config['model_name'], 'dtype': config['dtype'], 'batch': config['batch'],
            'error': tail[0]}
  return json.loads(lines[-1])


def _fmt(value, digits=1):
  return '—' if value is None else f'{value:,.{digits}f}'


def markdown(rows: List[Dict[str, Any]]) -> str:
  head = ('| model | dtype | batch | params | train clips/s | train step ms | train compile s | '
          'infer clips/s | infer compile s | peak MiB | PyTorch H100 fp32 train / infer |')
  lines = [head, '|' + '---|' * (head.count('|') - 1)]
  for r in rows:
    if 'error' in r:
      lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | error: {r['error']} |"
                   + ' |' * 7)  # 11 columns
      continue
    ref_train = PYTORCH_H100_FP32['train'].get(r['batch'])
    ref = (f"{_fmt(ref_train, 0)} / {_fmt(PYTORCH_H100_FP32['inference'], 0)}"
           if r['model'] == 'hcnn' and not r['model_kwargs'] else '—')
    lines.append(
        f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['params']:,} | "
        f"{_fmt(r['train_clips_per_s'])} | {_fmt(r['train_step_ms'])} | "
        f"{_fmt(r['train_compile_s'])} | {_fmt(r['infer_clips_per_s'])} | "
        f"{_fmt(r['infer_compile_s'])} | {_fmt(r['peak_mem_mb'], 0)} ({r['mem_source']}) | "
        f"{ref} |")
  return '\n'.join(lines)


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', choices=sorted(PRESETS), default='cpu')
  parser.add_argument('--models', type=_csv, default=None, help='comma-separated model names')
  parser.add_argument('--batch', type=lambda s: _csv(s, int), default=None)
  parser.add_argument('--dtype', type=_csv, default=None, help='float32,bfloat16')
  parser.add_argument('--steps', type=int, default=None)
  parser.add_argument('--warmup', type=int, default=None)
  parser.add_argument('--input_length', type=int, default=None,
                      help="samples per clip (default: each model's registered input length)")
  parser.add_argument('--model_kwargs', type=json.loads, default=None,
                      help='JSON dict for get_model, replacing the preset\'s (e.g. {"width": 8})')
  parser.add_argument('--json', default=None, help='write the results here')
  parser.add_argument('--one', default=None, help=argparse.SUPPRESS)  # internal: one run
  args = parser.parse_args(argv)

  if args.one is not None:
    print(json.dumps(measure(**json.loads(args.one))))
    return {}

  preset = PRESETS[args.preset]
  models = args.models or preset['models']
  batches = args.batch or preset['batch']
  dtypes = args.dtype or preset['dtype']
  steps = preset['steps'] if args.steps is None else args.steps
  warmup = preset['warmup'] if args.warmup is None else args.warmup
  kwargs = preset['model_kwargs'] if args.model_kwargs is None else args.model_kwargs
  if steps < 1 or warmup < 0 or min(batches) < 1:
    parser.error('--steps and --batch must be positive, --warmup non-negative')

  from hcnn_jax.models import list_models
  from hcnn_jax.training import precision
  known = list_models()
  for name in models:
    if name not in known:
      parser.error(f'unknown model {name!r}; known: {", ".join(known)}')
  for name in dtypes:
    try:
      precision.compute_dtype(name)
    except ValueError as e:
      parser.error(str(e))

  rows = []
  for model in models:
    for dtype in dtypes:
      for batch in batches:
        config = dict(model_name=model, dtype=dtype, batch=batch, steps=steps, warmup=warmup,
                      model_kwargs=kwargs, input_length=args.input_length)
        row = _run_isolated(config)
        rows.append(row)
        print(f"{model} {dtype} batch {batch}: " + (
            row['error'] if 'error' in row else
            f"{row['train_clips_per_s']:.1f} train / {row['infer_clips_per_s']:.1f} infer clips/s"),
              file=sys.stderr, flush=True)

  import jax
  device = jax.devices()[0]
  result = {'meta': {'preset': args.preset, 'jax': jax.__version__,
                     'backend': jax.default_backend(), 'device_kind': device.device_kind,
                     'device_count': jax.device_count(), 'host': platform.node(),
                     'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
                     'pytorch_h100_fp32_clips_per_s': PYTORCH_H100_FP32},
            'results': rows}
  print(f"\n{device.device_kind} × {jax.device_count()} ({jax.default_backend()}), "
        f"jax {jax.__version__}, {steps} timed steps after {warmup} warm-up\n")
  print(markdown(rows))
  if args.json:
    common.write_json(args.json, result)
  return result


if __name__ == '__main__':
  main()
