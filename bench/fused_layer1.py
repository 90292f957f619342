"""HCNN's layer 1 alone, in training: the fused kernel (`fused_conv_pool`) against the XLA path.

  python -m bench.fused_layer1 [--batch 256] [--frames 313] [--width 128]
      [--dtypes bfloat16,float32] [--steps 20] [--repeats 3] [--sweep] [--json OUT.json]

For each dtype, on the shape HCNN's layer 1 sees (batch, 128 pitch bins, `frames`, 6 harmonics →
`width` channels; 313 frames = 5 s at hop 256):

- parity: the outputs (pooled, Σc, Σc²) and the gradients (input, kernel, bias) of
  `fused_conv_pool.conv_pool_sums` against XLA's conv + pool, as max |Δ| / max |reference|;
- speed: forward + backward of one `blocks.ConvBlock2d(width, 2)` in training (conv → BatchNorm
  with batch statistics → ReLU → 2×2 max-pool, gradients of its parameters and its input) under
  three `hcnn_jax.speed` choices: the reference order, `pool_first`, and `fused_conv_pool`. The
  three run in turn, the order rotated each repeat; min and median ms over the repeats.

On the CPU the fused kernel runs in Pallas interpret mode (a smoke run: `--batch 2 --frames 37
--width 16 --steps 2`); its speed means something on a GPU only.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Dict, List

from bench import common

VARIANTS = {'reference': {}, 'pool_first': {'pool_first': True},
            'fused': {'fused_conv_pool': True}}


def _reference(x, kernel, bias, sign):
  import jax.numpy as jnp
  from jax import lax
  c = lax.conv_general_dilated(x, kernel.astype(x.dtype), (1, 1), ((1, 1), (1, 1)),
                               dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                               precision=lax.Precision.HIGHEST)
  c = (c + bias.astype(x.dtype)).astype(jnp.float32)
  b, f, t, ch = c.shape
  s = sign.astype(jnp.float32)
  v = (c * s)[:, :f // 2 * 2, :t // 2 * 2].reshape(b, f // 2, 2, t // 2, 2, ch).max((2, 4)) * s
  return v.astype(x.dtype), c.sum((0, 1, 2)), (c * c).sum((0, 1, 2))


def parity(batch: int, frames: int, width: int, dtype: str) -> Dict[str, float]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from hcnn_jax.models import fused_conv_pool

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(0, 1, (batch, 128, frames, 6)), dtype)
  kernel = jnp.asarray(rng.normal(0, 0.2, (3, 3, 6, width)), jnp.float32)
  bias = jnp.asarray(rng.normal(0, 0.1, width), dtype)
  sign = jnp.asarray(np.where(np.arange(width) % 4 == 0, -1, 1), dtype)
  up = jnp.asarray(rng.normal(0, 1, (batch, 64, frames // 2, width)), jnp.float32)

  def run(fn):
    def loss(x, kernel, bias):
      pooled, s1, s2 = fn(x, kernel, bias, sign)
      n = pooled.size
      return (jnp.sum(pooled.astype(jnp.float32) * up) / n
              + jnp.sum(s1 * jnp.linspace(-1, 1, width)) / n + jnp.sum(s2) / n ** 1.5)
    outs = jax.jit(lambda *a: fn(*a, sign))(x, kernel, bias)
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, kernel, bias)
    return dict(zip(('pooled', 'sum', 'sum_sq', 'd_input', 'd_kernel', 'd_bias'),
                    (*outs, *grads)))

  def err(got, want):
    return {k: float(jnp.abs(got[k].astype(jnp.float32) - want[k].astype(jnp.float32)).max()
                     / max(float(jnp.abs(want[k].astype(jnp.float32)).max()), 1e-30))
            for k in want}

  fused, xla = run(fused_conv_pool.conv_pool_sums), run(_reference)
  # The exact values for these (rounded) inputs: the XLA path in float32 with HIGHEST precision.
  x, bias, sign = x.astype(jnp.float32), bias.astype(jnp.float32), sign.astype(jnp.float32)
  kernel = kernel.astype(dtype).astype(jnp.float32)
  exact = run(_reference)
  return {'fused': err(fused, exact), 'xla': err(xla, exact)}


def timings(batch: int, frames: int, width: int, dtype: str, steps: int,
            repeats: int) -> Dict[str, List[float]]:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from hcnn_jax import speed
  from hcnn_jax.models import blocks

  block = blocks.ConvBlock2d(width, 2, dtype=jnp.dtype(dtype))
  x = jnp.asarray(np.random.default_rng(1).normal(0, 1, (batch, 128, frames, 6)), dtype)
  variables = block.init(jax.random.key(0), x[:1], train=False)
  steps_fns = {}
  for name, choice in VARIANTS.items():
    def loss(params, x):
      out, upd = block.apply({**variables, 'params': params}, x, train=True,
                             mutable=['batch_stats'])
      return jnp.mean(out.astype(jnp.float32) ** 2), upd
    with speed.choose(**choice):
      steps_fns[name] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)).lower(
          variables['params'], x).compile()
  out: Dict[str, List[float]] = {name: [] for name in VARIANTS}
  names = list(VARIANTS)
  for r in range(repeats):
    for name in names[r % len(names):] + names[:r % len(names)]:
      fn = steps_fns[name]
      jax.block_until_ready(fn(variables['params'], x))
      t = time.perf_counter()
      for _ in range(steps):
        res = fn(variables['params'], x)
      jax.block_until_ready(res)
      out[name].append(1e3 * (time.perf_counter() - t) / steps)
  return out


def sweep(batch: int, frames: int, width: int, dtype: str, steps: int, repeats: int,
          tiles=(16, 32, 64, 128), warps=((4, 8), (8, 8), (4, 4))) -> List[Dict[str, Any]]:
  """ms of the forward kernel, the backward kernel (dc) and XLA's conv gradients of dc, per
  (pooled columns per program, (forward warps, backward warps)); XLA's conv alone as a floor."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax import lax
  from hcnn_jax.models import fused_conv_pool as fcp

  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(0, 1, (batch, 128, frames, 6)), dtype)
  kernel = jnp.asarray(rng.normal(0, 0.2, (3, 3, 6, width)), jnp.float32)
  bias = jnp.zeros(width, dtype)
  sign = jnp.ones(width, dtype)
  g = jnp.ones((batch, 64, frames // 2, width), dtype)
  g1 = jnp.zeros(width, jnp.float32)

  def clock(fn, *args):
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    out = []
    for _ in range(repeats):
      t = time.perf_counter()
      for _ in range(steps):
        res = fn(*args)
      jax.block_until_ready(res)
      out.append(1e3 * (time.perf_counter() - t) / steps)
    return statistics.median(out)

  conv = lambda x, k: lax.conv_general_dilated(  # noqa: E731
      x, k.astype(x.dtype), (1, 1), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  rows = [{'config': 'xla conv forward', 'ms': clock(conv, x, kernel)}]
  _, vjp = jax.vjp(conv, x, kernel)
  dc = jnp.ones((batch, 128, frames, width), dtype)
  rows.append({'config': 'xla conv gradients (dx, dw)', 'ms': clock(lambda d: vjp(d), dc)})
  saved = fcp.BT, fcp.WARPS
  try:
    for bt in tiles:
      for w in warps:
        fcp.BT, fcp.WARPS = bt, w
        row = {'config': f'BT {bt}, warps {w}'}
        try:
          # pylint: disable=protected-access
          row['forward_ms'] = clock(fcp._forward, x, kernel, bias, sign)
          row['dc_ms'] = clock(fcp._conv_output_grad, x, kernel, bias, sign, g, g1, g1)
        except Exception as e:  # pylint: disable=broad-except
          row['error'] = str(e).split('\n')[0][:120]
        rows.append(row)
        print(row, flush=True)
  finally:
    fcp.BT, fcp.WARPS = saved
  return rows


def main(argv=None) -> Dict[str, Any]:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=256)
  parser.add_argument('--parity_batch', type=int, default=16)
  parser.add_argument('--frames', type=int, default=313)
  parser.add_argument('--width', type=int, default=128)
  parser.add_argument('--dtypes', default='bfloat16,float32')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--json', default=None)
  parser.add_argument('--sweep', action='store_true',
                      help='time the two kernels alone per tile size and warps (first dtype)')
  args = parser.parse_args(argv)
  import jax
  result: Dict[str, Any] = {'device': str(jax.devices()[0].device_kind),
                            'backend': jax.default_backend(), 'jax': jax.__version__,
                            'args': vars(args), 'parity': {}, 'ms': {}}
  if args.sweep:
    result['sweep'] = rows = sweep(args.batch, args.frames, args.width,
                                   args.dtypes.split(',')[0], args.steps, args.repeats)
    print('\n| config | ms | forward kernel ms | dc kernel ms |\n|---|---:|---:|---:|')
    for r in rows:
      print(f"| {r['config']} | {r.get('ms', '')} | {r.get('forward_ms', r.get('error', ''))} "
            f"| {r.get('dc_ms', '')} |")
    args.dtypes = ''
  for dtype in filter(None, args.dtypes.split(',')):
    result['parity'][dtype] = p = parity(args.parity_batch, args.frames, args.width, dtype)
    print(f'\n| {dtype}, batch {args.parity_batch}: max |Δ| / max |exact| | '
          + ' | '.join(p['fused']) + ' |')
    print('|---|' + '---:|' * len(p['fused']))
    for side, errs in p.items():
      print(f'| {side} | ' + ' | '.join(f'{v:.1e}' for v in errs.values()) + ' |')
    result['ms'][dtype] = ms = timings(args.batch, args.frames, args.width, dtype, args.steps,
                                       args.repeats)
    base = statistics.median(ms['reference'])
    print(f'\n| layer 1, {dtype}, batch {args.batch} | min ms | median ms | × reference |')
    print('|---|---:|---:|---:|')
    for name, values in ms.items():
      med = statistics.median(values)
      print(f'| {name} | {min(values):.2f} | {med:.2f} | {base / med:.2f} |')
    print(flush=True)
  if args.json:
    common.write_json(args.json, result)
  return result


if __name__ == '__main__':
  main()
