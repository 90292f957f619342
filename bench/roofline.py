"""How fast a model could train and infer on a card, per layer, from its FLOPs and tensor sizes.

  python -m bench.roofline [--model hcnn] [--dtype bfloat16] [--peak_tflops 989]
      [--bandwidth_tbs 3.35] [--measured_train 7112] [--measured_infer 26848] [--json OUT.json]

No timing: it runs on any machine. Per clip, for every top-level block of the model:
- FLOPs of the forward pass and of forward + VJP (the training step's arithmetic), from flax's
  `nn.tabulate` counts (XLA cost analysis of each module's lowered program: these do count the
  convolutions, which the compiled GPU program's cost analysis leaves inside cuDNN calls);
- the bytes of every convolution's output in the compute dtype: the tensors that BatchNorm, ReLU
  and pooling stream through memory around each convolution.
From these come two floors on the time per clip: arithmetic at `--peak_tflops` (dense bf16: 989
on an H100 SXM by its data sheet) and memory traffic at `--bandwidth_tbs` (3.35 for the H100's
HBM3, 4.8 for the H200), with each conv output moved `--passes_infer` times in inference (2:
written once, read once, everything else fused into the kernels around it) and `--passes_train`
times in training (6: forward write and read; backward one read for the BatchNorm gradient, one
write of the conv's output gradient and two reads of it, for the input and the kernel gradient).
Both are lower bounds that no real kernel reaches; the table says what fraction of them a target
rate demands. The default target rates are 15,000 and 50,000 clips/s
(train and inference on one accelerator).
"""
from __future__ import annotations

import argparse
import collections
import json
from typing import Any, Dict, List

from bench import common


def layer_costs(model_name: str, dtype: str = 'bfloat16',
                model_kwargs: Dict[str, Any] | None = None,
                num_classes: int = 50) -> List[Dict[str, Any]]:
  """Per top-level block (in call order), per clip: FLOPs forward and forward + VJP, and the
  bytes of its convolutions' outputs."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax.linen import summary

  from hcnn_jax.models import default_input_length, get_model
  from hcnn_jax.training import precision

  model = get_model(model_name, num_classes,
                    **precision.model_kwargs(dtype, **(model_kwargs or {})))
  x = jnp.zeros((1, default_input_length(model_name)), jnp.float32)
  # nn.tabulate only prints its table; the rows (the same counts) come from the function behind it.
  # Each module's first call only: flax cannot count the helpers that set up parameters.
  get_table = summary._get_module_table  # pylint: disable=protected-access
  table = get_table(model, depth=None, show_repeated=False, compute_flops=True,
                    compute_vjp_flops=True)(jax.random.PRNGKey(0), x, train=False)
  calls = {}
  for row in table:
    if row.method == '__call__':
      calls.setdefault(row.path, row)
  itemsize = np.dtype(precision.compute_dtype(dtype)).itemsize
  blocks: Dict[str, Dict[str, Any]] = collections.OrderedDict()
  for path, row in calls.items():
    if not path or path == ('backend',):
      continue
    block_path = path[:2] if path[0] == 'backend' else path[:1]
    block = blocks.setdefault('/'.join(block_path), {
        'block': '/'.join(block_path), 'gflop_fwd': 0.0, 'gflop_train': 0.0, 'conv_out_mb': 0.0,
        'convs': 0})
    if path == block_path:
      block['gflop_fwd'] += row.flops / 1e9
      block['gflop_train'] += row.vjp_flops / 1e9
    if isinstance(row.module_copy, nn.Conv):
      block['conv_out_mb'] += float(np.prod(row.outputs.shape)) * itemsize / 1e6
      block['convs'] += 1
  root = calls[()]
  rest = {'gflop_fwd': root.flops / 1e9 - sum(b['gflop_fwd'] for b in blocks.values()),
          'gflop_train': root.vjp_flops / 1e9 - sum(b['gflop_train'] for b in blocks.values())}
  # The front-ends' first call is a shape helper (`output_shape`), so their FLOPs are counted as
  # the whole model's less the back-end's blocks (plus the model's own glue, which is tiny).
  front = blocks.get('frontend')
  if front is not None and front['gflop_fwd'] == 0:
    front.update(block='frontend (+ glue)', gflop_fwd=rest['gflop_fwd'],
                 gflop_train=rest['gflop_train'])
  elif max(abs(v) for v in rest.values()) > 1e-4:
    blocks['(rest)'] = {'block': '(rest)', **rest, 'conv_out_mb': 0.0, 'convs': 0}
  return list(blocks.values())


def roofline(rows: List[Dict[str, Any]], *, peak_tflops: float, bandwidth_tbs: float,
             passes_train: float, passes_infer: float) -> Dict[str, Any]:
  """Adds per-block floors (µs per clip) and returns the totals and the rates they cap."""
  for r in rows:
    r['us_compute_train'] = r['gflop_train'] / peak_tflops * 1e3
    r['us_compute_infer'] = r['gflop_fwd'] / peak_tflops * 1e3
    r['us_memory_train'] = r['conv_out_mb'] * passes_train / bandwidth_tbs
    r['us_memory_infer'] = r['conv_out_mb'] * passes_infer / bandwidth_tbs
  total = {k: sum(r[k] for r in rows) for k in rows[0] if k != 'block'}
  out = {'total': total}
  for mode in ('train', 'infer'):
    compute, memory = total[f'us_compute_{mode}'], total[f'us_memory_{mode}']
    out[mode] = {
        'ceiling_compute_only': 1e6 / compute,
        'ceiling_memory_only': 1e6 / memory,
        # Perfect overlap of arithmetic and traffic, and none: the truth is in between.
        'ceiling_overlapped': 1e6 / max(compute, memory),
        'ceiling_serial': 1e6 / (compute + memory),
    }
  return out


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', default='hcnn')
  parser.add_argument('--dtype', default='bfloat16')
  parser.add_argument('--model_kwargs', type=json.loads, default={})
  parser.add_argument('--peak_tflops', type=float, default=989.0)
  parser.add_argument('--bandwidth_tbs', type=float, default=3.35)
  parser.add_argument('--passes_train', type=float, default=6.0)
  parser.add_argument('--passes_infer', type=float, default=2.0)
  parser.add_argument('--target_train', type=float, default=15_000.0)
  parser.add_argument('--target_infer', type=float, default=50_000.0)
  parser.add_argument('--measured_train', type=float, default=None,
                      help='a measured train rate (clips/s) to set against the floors')
  parser.add_argument('--measured_infer', type=float, default=None)
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  for name in ('peak_tflops', 'bandwidth_tbs', 'passes_train', 'passes_infer', 'target_train',
               'target_infer'):
    if not getattr(args, name) > 0:
      parser.error(f'--{name} must be > 0')

  rows = layer_costs(args.model, args.dtype, args.model_kwargs)
  result = roofline(rows, peak_tflops=args.peak_tflops, bandwidth_tbs=args.bandwidth_tbs,
                    passes_train=args.passes_train, passes_infer=args.passes_infer)
  print(f'{args.model} {args.dtype}, per clip; floors at {args.peak_tflops:g} TFLOP/s and '
        f'{args.bandwidth_tbs:g} TB/s, conv outputs moved {args.passes_train:g}× (train) / '
        f'{args.passes_infer:g}× (inference)\n')
  print('| block | convs | GFLOP fwd | GFLOP train | conv outputs MB | train µs: compute | memory '
        '| infer µs: compute | memory |\n|---|---|---|---|---|---|---|---|---|')
  for r in rows + [dict(result['total'], block='**total**')]:
    print(f"| {r['block']} | {r['convs']} | {r['gflop_fwd']:.3f} | {r['gflop_train']:.3f} | "
          f"{r['conv_out_mb']:.2f} | {r['us_compute_train']:.1f} | {r['us_memory_train']:.1f} | "
          f"{r['us_compute_infer']:.1f} | {r['us_memory_infer']:.1f} |")
  print('\n| | compute-only ceiling | memory-only ceiling | both, overlapped | both, serial | '
        'target | target needs, of the overlapped floor | measured |\n'
        '|---|---|---|---|---|---|---|---|')
  for mode, target, measured in (('train', args.target_train, args.measured_train),
                                 ('infer', args.target_infer, args.measured_infer)):
    c = result[mode]
    c['target'] = target
    c['target_fraction_of_floor'] = target / c['ceiling_overlapped']
    c['measured'] = measured
    c['measured_fraction_of_floor'] = measured / c['ceiling_overlapped'] if measured else None
    shown = f"{measured:,.0f} ({c['measured_fraction_of_floor']:.0%})" if measured else '—'
    print(f"| {mode} clips/s | {c['ceiling_compute_only']:,.0f} | "
          f"{c['ceiling_memory_only']:,.0f} | "
          f"{c['ceiling_overlapped']:,.0f} | {c['ceiling_serial']:,.0f} | {target:,.0f} | "
          f"{c['target_fraction_of_floor']:.0%} | {shown} |")
  result.update(model=args.model, dtype=args.dtype, rows=rows, settings={
      k: getattr(args, k)
      for k in ('peak_tflops', 'bandwidth_tbs', 'passes_train', 'passes_infer')})
  if args.json:
    common.write_json(args.json, result)
  return result


if __name__ == '__main__':
  main()
