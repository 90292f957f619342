"""Does the input pipeline keep up? Training steps/s fed by grain vs. fed one device-resident batch.

  python -m bench.end_to_end [--model hcnn] [--batch 256] [--dtype bfloat16]
      [--feeds disk:15:float32,disk:15:int16,memory:15:int16] [--tracks 1000] [--steps 100]
      [--data_dir DIR] [--dataset NAME[/CONFIG]] [--json OUT.json]

1. Writes (or reuses, in --data_dir) an array_record TFDS dataset of --tracks fake 29.1-s tracks
   at 16 kHz with 50 labels (`sources.write_fake_dataset`, in one process per core: raw int16
   audio, as the real builders store it; MTAT's clip length), and reads it back through
   `sources.load` as training does. With --dataset, reads that prepared dataset's train split
   from --data_dir instead, e.g. the MTAT-sized rendered set:
     python -m datasets.build synth_gm --config large --data_dir DIR --num_workers 16
     python -m bench.end_to_end --dataset synth_gm/large --data_dir DIR
2. Builds the model's data-parallel train step (`hcnn_jax.training.parallel`) and times it on one
   device-resident random batch: the synthetic rate, the ceiling.
3. For each feed `source:workers:audio_dtype`, times the same step fed as `training.loop` feeds
   it: `pipeline.train_loader` (shuffle, random crop, batch; in grain workers when workers > 0)
   → `parallel.shard_batch` → step, with the loop's periodic host read-back, after a warm-up
   that lets the workers start. source `disk` reads the array_record files (decompressing each
   track), `memory` the split decoded once into a shared file in /dev/shm
   (`data.in_memory`, the loop's `data_in_memory`); audio_dtype int16 sends the stored samples
   and the step rescales them (the loop's choice). Also times the loader alone (no training), to
   tell a slow host from a slow hand-over.
The figure of merit is pipeline rate / synthetic rate (target ≥ 0.9). Page cache: the tracks are
read many times over, as an MTAT-sized set (14.5 GB) is on a host with more memory than that.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any, Dict

from bench import common

SAMPLE_RATE = 16_000
TRACK_SECONDS = 29.1
NUM_CLASSES = 50
LOG_EVERY = 50  # the loop reads metrics back to the host this often (training.log_every)


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='hcnn')
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--feeds', default='disk:15:float32,disk:15:int16,memory:15:int16',
                      help='comma-separated source:workers:audio_dtype, source disk|memory')
  parser.add_argument('--tracks', type=int, default=1000)
  parser.add_argument('--steps', type=int, default=100)
  parser.add_argument('--warmup', type=int, default=20)
  parser.add_argument('--model_kwargs', type=json.loads, default={})
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--dataset', default=None,
                      help='NAME[/CONFIG] of a prepared dataset in --data_dir '
                      '(default: fake tracks)')
  parser.add_argument('--decoded_dir', default=None,
                      help="where the 'memory' feeds' decoded file goes (default /dev/shm; a "
                      'disk folder is page cache on a host with the memory to spare)')
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  feeds = []
  for item in filter(None, (f.strip() for f in args.feeds.split(','))):
    try:
      where, w, dtype = item.split(':')
      feeds.append((where, int(w), dtype))
      assert where in ('disk', 'memory') and dtype in ('float32', 'int16')
    except (ValueError, AssertionError):
      parser.error(f'bad feed {item!r}: use source:workers:audio_dtype, e.g. disk:15:int16')

  import jax
  import numpy as np
  import optax

  from hcnn_jax import tasks
  from hcnn_jax.data import in_memory, pipeline, sources
  from hcnn_jax.models import default_input_length, get_model
  from hcnn_jax.training import parallel, precision

  if args.dataset and not args.data_dir:
    parser.error('--dataset reads a prepared dataset: give its --data_dir')
  tmp = None
  data_dir = args.data_dir or (tmp := tempfile.TemporaryDirectory(prefix='e2e_')).name
  t = time.perf_counter()
  if args.dataset:
    name, _, config_name = args.dataset.partition('/')
    source, meta = sources.load(name, 'train', data_dir, config_name or None)
  else:
    config = (f'tracks={args.tracks},classes={NUM_CLASSES},'
              f'samples={int(TRACK_SECONDS * SAMPLE_RATE)}')
    sources.write_fake_dataset(data_dir, config, splits=('train',), workers=os.cpu_count())
    source, meta = sources.load(sources.FAKE_TRACKS_NAME, 'train', data_dir)
  num_classes = meta['num_classes']
  seconds = np.asarray(source[0]['audio']).shape[0] / meta.get('sample_rate', SAMPLE_RATE)
  print(f'{args.dataset or "fake tracks"}: {len(source)} tracks ({seconds:.1f} s each, '
        f'{num_classes} classes) ready in {time.perf_counter() - t:.1f} s', flush=True)

  length = default_input_length(args.model)
  model = get_model(args.model, num_classes,
                    **precision.model_kwargs(args.dtype, **args.model_kwargs))
  task = tasks.get_task('tagging')
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-4))
  mesh = parallel.make_mesh()
  state = common.replicated_state(model, tx, length, mesh)
  step = parallel.make_train_step(model, task.loss, tx, mesh)

  def run(next_batch, steps):
    nonlocal state
    metrics = None
    for i in range(steps):
      state, metrics = step(state, next_batch())
      if (i + 1) % LOG_EVERY == 0:
        jax.device_get(metrics)  # the loop's periodic read-back (loss, grad norm, guard)
    jax.block_until_ready(state)

  fixed = common.random_batch(args.batch, length, num_classes, mesh)
  run(lambda: fixed, args.warmup)
  t = time.perf_counter()
  run(lambda: fixed, args.steps)
  synthetic = args.batch * args.steps / (time.perf_counter() - t)
  print(f'synthetic (device-resident batch): {synthetic:,.0f} clips/s', flush=True)

  rows = []
  memory_source = None
  for where, w, audio_dtype in feeds:
    if where == 'memory' and memory_source is None:
      t = time.perf_counter()
      memory_source = in_memory.DecodedSource(source, directory=args.decoded_dir)
      print(f'{memory_source} read in {time.perf_counter() - t:.1f} s', flush=True)
    loader = pipeline.train_loader(memory_source if where == 'memory' else source,
                                   input_length=length, global_batch_size=args.batch,
                                   seed=0, worker_count=w, audio_dtype=audio_dtype)
    it = iter(loader)
    t = time.perf_counter()
    next(it)
    startup = time.perf_counter() - t
    for _ in range(args.warmup):  # let every worker fill its buffer
      next(it)
    t = time.perf_counter()
    for _ in range(args.steps):
      next(it)
    host = args.batch * args.steps / (time.perf_counter() - t)
    feed = lambda: parallel.shard_batch(next(it), mesh)
    run(feed, args.warmup)
    t = time.perf_counter()
    run(feed, args.steps)
    fed = args.batch * args.steps / (time.perf_counter() - t)
    rows.append({'source': where, 'workers': w, 'audio_dtype': audio_dtype, 'startup_s': startup,
                 'loader_clips_per_s': host, 'train_clips_per_s': fed, 'ratio': fed / synthetic})
    print(json.dumps(rows[-1]), flush=True)
    del it, loader

  print(f'\n{jax.devices()[0].device_kind} × {jax.device_count()}, {os.cpu_count()} CPUs, '
        f'jax {jax.__version__}; {args.model} {args.dtype} batch {args.batch}, '
        f'{args.dataset or "fake"}, {len(source)} tracks of {seconds:.1f} s; '
        f'synthetic {synthetic:,.0f} clips/s\n')
  print('| source | grain workers | audio sent as | start-up s | loader alone clips/s | '
        'training clips/s | / synthetic |\n|---|---|---|---|---|---|---|')
  for r in rows:
    print(f"| {r['source']} | {r['workers']} | {r['audio_dtype']} | {r['startup_s']:.1f} | "
          f"{r['loader_clips_per_s']:,.0f} | "
          f"{r['train_clips_per_s']:,.0f} | {r['ratio']:.2f} |")
  result = {'device': jax.devices()[0].device_kind, 'cpus': os.cpu_count(),
            'model': args.model, 'dtype': args.dtype, 'batch': args.batch,
            'dataset': args.dataset or sources.FAKE_TRACKS_NAME, 'tracks': len(source),
            'track_seconds': seconds, 'synthetic_clips_per_s': synthetic, 'rows': rows}
  if args.json:
    common.write_json(args.json, result)
  if tmp is not None:
    tmp.cleanup()
  return result


if __name__ == '__main__':
  main()  # train_loader marks absl flags parsed for grain's workers
