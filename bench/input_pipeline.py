"""Input-pipeline throughput: training crops delivered per second with 0 and N grain workers.

  python -m bench.input_pipeline [--name fake|synth_gm|...] [--data_dir DIR] [--config C]
      [--workers 0,2,4] [--batch 16] [--seconds 10] [--input_length 80000] [--json OUT.json]

With --name fake (the default) it first writes a temporary array_record TFDS dataset of fake
29 s tracks (`sources.write_fake_dataset`; into --data_dir when given, where it is reused), so
the benchmark reads through the same path as a prepared dataset; any other name reads the
prepared dataset in --data_dir. For each worker count it reports the time to the first batch
(process start-up included) and then the steady clips/s over --seconds.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

from hcnn_jax.data import pipeline, sources

from bench import common


def measure(source, *, workers: int, batch: int, input_length: int, seconds: float,
            read_threads: int | None, seed: int = 0) -> dict:
  """Start-up time and steady throughput of one train_loader configuration."""
  loader = pipeline.train_loader(source, input_length=input_length, global_batch_size=batch,
                                 seed=seed, shard_index=0, shard_count=1, worker_count=workers,
                                 read_threads=read_threads)
  t0 = time.perf_counter()
  it = iter(loader)
  next(it)
  startup = time.perf_counter() - t0
  batches, t1 = 0, time.perf_counter()
  while time.perf_counter() - t1 < seconds:
    b = next(it)
    batches += 1
  elapsed = time.perf_counter() - t1
  assert b['audio'].shape == (batch, input_length)
  clips = batches * batch / elapsed
  return {'workers': workers, 'batch': batch, 'startup_s': round(startup, 3),
          'batches': batches, 'seconds': round(elapsed, 3), 'clips_per_s': round(clips, 1),
          'mb_per_s': round(clips * input_length * 4 / 1e6, 1)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--name', default='fake')
  parser.add_argument('--data_dir', default=None)
  parser.add_argument('--config', default=None, help='dataset config name')
  parser.add_argument('--split', default='train')
  parser.add_argument('--workers', default='0,2,4', help='comma-separated worker counts')
  parser.add_argument('--batch', type=int, default=16)
  parser.add_argument('--seconds', type=float, default=10.0)
  parser.add_argument('--input_length', type=int, default=80_000)
  parser.add_argument('--read_threads', type=int, default=None)
  parser.add_argument('--fake_tracks', type=int, default=64,
                      help='tracks of the fake dataset (29 s each, 50 classes)')
  parser.add_argument('--json', default=None, help='where to write the results')
  args = parser.parse_args(argv)
  try:
    workers = [int(w) for w in args.workers.split(',') if w.strip()]
  except ValueError:
    parser.error(f'--workers must be comma-separated integers, got {args.workers!r}')

  tmp = None
  if args.name == 'fake':
    data_dir = args.data_dir or (tmp := tempfile.TemporaryDirectory(prefix='bench_fake_')).name
    config = args.config or f'tracks={args.fake_tracks},classes=50,samples={29 * 16000}'
    t = time.perf_counter()
    sources.write_fake_dataset(data_dir, config, splits=(args.split,))
    print(f'fake dataset ({config}) ready in {time.perf_counter() - t:.1f} s: {data_dir}')
    name, config_name = sources.FAKE_TRACKS_NAME, None
  else:
    data_dir, name, config_name = args.data_dir, args.name, args.config
  try:
    source, meta = sources.load(name, args.split, data_dir, config_name)
    rows = [measure(source, workers=w, batch=args.batch, input_length=args.input_length,
                    seconds=args.seconds, read_threads=args.read_threads) for w in workers]
  finally:
    if tmp is not None:
      tmp.cleanup()

  result = {'dataset': args.name, 'split': args.split, 'tracks': len(source),
            'input_length': args.input_length, 'cpu_count': os.cpu_count(),
            'load_average': os.getloadavg(), 'python': platform.python_version(),
            'rows': rows}
  print(f'{"workers":>7} {"startup s":>9} {"clips/s":>9} {"MB/s":>7} {"batches":>7}')
  for r in rows:
    print(f'{r["workers"]:>7} {r["startup_s"]:>9.2f} {r["clips_per_s"]:>9.1f} '
          f'{r["mb_per_s"]:>7.1f} {r["batches"]:>7}')
  if args.json:
    common.write_json(args.json, result)
    print(f'wrote {args.json}')
  return result


if __name__ == '__main__':
  main()
