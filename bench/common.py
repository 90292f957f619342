"""What the benchmarks share: a model's replicated state and a random batch, timing a device
function, and writing the JSON results."""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable


def replicated_state(model, tx, length: int, mesh):
  """`model`'s train state (init key 0) for clips of `length` samples, replicated over `mesh`."""
  import jax
  from hcnn_jax.training import parallel, state as state_lib
  return parallel.replicate(
      state_lib.create_train_state(model, tx, jax.random.PRNGKey(0), length), mesh)


def random_batch(batch: int, length: int, num_classes: int, mesh):
  """A seeded batch sharded over `mesh`: uniform audio in [-1, 1), 10 % of the labels on."""
  import numpy as np
  from hcnn_jax.training import parallel
  rng = np.random.default_rng(0)
  audio = rng.uniform(-1, 1, (batch, length)).astype(np.float32)
  labels = (rng.uniform(size=(batch, num_classes)) < 0.1).astype(np.float32)
  return parallel.shard_batch({'audio': audio, 'labels': labels}, mesh)


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
