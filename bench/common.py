"""What the benchmarks share: timing a device function and writing the JSON results."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable


def timed(fn: Callable, args_fn: Callable, steps: int, warmup: int):
  """(seconds per call of `fn` after `warmup` calls, last output); args_fn(prev_output) gives the
  next call's arguments (so a donated state can be threaded through)."""
  import jax
  out = None
  for _ in range(warmup):
    out = fn(*args_fn(out))
  jax.block_until_ready(out)
  start = time.perf_counter()
  for _ in range(steps):
    out = fn(*args_fn(out))
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps, out


def write_json(path: str, obj: Any) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(obj, f, indent=2)
