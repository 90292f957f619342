"""bfloat16 vs float32 training on the embedded dataset: test ROC-AUC / PR-AUC over several seeds.

  python -m bench.bf16_parity [--seeds 0,1,2] [--widths 16,128] [--data_dir data]
      [--workdir runs/bf16_parity] [--eval_chunks 16] [--json OUT.json]

For every width, dtype and seed, trains `hcnn_jax/configs/hcnn_synth_tiny.py` (the demo's recipe:
synth_gm/default, 8 epochs of AdamW-cosine at batch 16) with `model.kwargs.width` and `dtype`
overridden, evaluates its best checkpoint on the test split with --eval_chunks chunks per clip,
and prints the per-dtype mean and spread and the paired difference (bf16 − fp32, same seed, so the
same initial weights and batches). The criterion: |mean difference| ≤ 0.005 ROC-AUC.
Builds synth_gm/default into --data_dir first when it is missing (about a minute).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Dict

from bench import common


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seeds', default='0,1,2')
  parser.add_argument('--widths', default='16')
  parser.add_argument('--dtypes', default='float32,bfloat16')
  parser.add_argument('--data_dir', default='data')
  parser.add_argument('--workdir', default='runs/bf16_parity')
  parser.add_argument('--eval_chunks', type=int, default=16)
  parser.add_argument('--num_epochs', type=int, default=None)
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  seeds = [int(s) for s in args.seeds.split(',')]
  widths = [int(w) for w in args.widths.split(',')]
  dtypes = [d.strip() for d in args.dtypes.split(',')]

  import jax

  from datasets import build, is_built
  from hcnn_jax.configs import hcnn_synth_tiny
  from hcnn_jax.training import loop, writers

  writers.configure_cli_logging()
  if not is_built('synth_gm', args.data_dir, 'default'):
    t = time.perf_counter()
    build('synth_gm', args.data_dir, 'default')
    print(f'built synth_gm/default in {time.perf_counter() - t:.0f} s', flush=True)

  rows = []
  for width in widths:
    for dtype in dtypes:
      for seed in seeds:
        config = hcnn_synth_tiny.get_config()
        config.dataset.data_dir = args.data_dir
        config.model.kwargs.width = width
        config.dtype = dtype
        config.seed = seed
        config.progress_bar = False
        if args.num_epochs:
          config.num_epochs = args.num_epochs
        workdir = os.path.join(args.workdir, f'w{width}_{dtype}_s{seed}')
        t = time.perf_counter()
        loop.train_and_evaluate(config, workdir)
        config.eval_chunks = args.eval_chunks
        result = loop.evaluate(config, workdir, split='test')
        row = {'width': width, 'dtype': dtype, 'seed': seed, 'roc_auc': result['roc_auc'],
               'pr_auc': result['pr_auc'], 'seconds': time.perf_counter() - t}
        rows.append(row)
        print(json.dumps(row), flush=True)

  print(f'\n{jax.devices()[0].device_kind}, jax {jax.__version__}; synth_gm/default test split, '
        f'{args.eval_chunks} chunks per clip, seeds {seeds}\n')
  print('| width | dtype | ROC-AUC mean | ROC-AUC per seed | PR-AUC mean |\n|---|---|---|---|---|')
  summary = []
  for width in widths:
    for dtype in dtypes:
      sel = [r for r in rows if r['width'] == width and r['dtype'] == dtype]
      roc = [r['roc_auc'] for r in sel]
      pr = [r['pr_auc'] for r in sel]
      print(f'| {width} | {dtype} | {statistics.mean(roc):.4f} | '
            f'{", ".join(f"{v:.4f}" for v in roc)} | {statistics.mean(pr):.4f} |')
    if len(dtypes) == 2:
      a, b = dtypes
      by = {(r['dtype'], r['seed']): r for r in rows if r['width'] == width}
      diffs = [by[(b, s)]['roc_auc'] - by[(a, s)]['roc_auc'] for s in seeds]
      mean = statistics.mean(diffs)
      spread = statistics.stdev(diffs) if len(diffs) > 1 else float('nan')
      summary.append({'width': width, 'mean_roc_diff': mean, 'sd_roc_diff': spread,
                      'diffs': diffs, 'within_0.005': abs(mean) <= 0.005})
  for s in summary:
    print(f"\nwidth {s['width']}: ROC-AUC {dtypes[1]} − {dtypes[0]} per seed "
          f"{', '.join(f'{d:+.4f}' for d in s['diffs'])}; mean {s['mean_roc_diff']:+.4f} "
          f"(sd {s['sd_roc_diff']:.4f}); |mean| ≤ 0.005: {s['within_0.005']}")
  result = {'device': jax.devices()[0].device_kind, 'rows': rows, 'summary': summary}
  if args.json:
    common.write_json(args.json, result)
  return result


if __name__ == '__main__':
  main()
