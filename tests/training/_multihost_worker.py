"""One process of a small multi-process JAX job on 127.0.0.1, for `test_multihost.py`.

    JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \
        python -m tests.training._multihost_worker MODE

The distributed set-up is the project's own (`parallel.maybe_initialize_distributed`, reading
those variables). Every process runs all-reduces over the 4 devices of the job in a loop inside
`parallel.fail_together`; MODE says what goes wrong:
  raise     process 1 raises at step 20;
  stop      process 1 sends itself SIGSTOP at step 20 (a stalled host);
  kill      process 1 sends itself SIGKILL at step 20 (a host that dies);
  build     no failure: process 0 first spends BUILD_S seconds "building a dataset" (a sleep in
            place of `datasets.build.build`) while the others wait in `build_on_first_process`
            for at most WAIT_S seconds; then all run the collectives.
Each process prints 'step N' lines and 'done' when it finishes.
"""
from __future__ import annotations

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=2').strip()
os.environ['JAX_PLATFORMS'] = 'cpu'

import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from hcnn_jax.training import parallel  # noqa: E402

STEPS = 60
FAIL_AT = 20


def _collectives(mode: str) -> None:
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import NamedSharding, PartitionSpec as P

  mesh = parallel.make_mesh()
  me = jax.process_index()
  total = jax.jit(jnp.sum)
  x = jax.make_array_from_process_local_data(NamedSharding(mesh, P('data')),
                                             np.full((2,), me + 1, np.float32))
  for step in range(STEPS):
    value = float(total(x))  # an all-reduce over both processes
    print(f'step {step} {value}', flush=True)
    if me == (0 if mode == 'kill_coordinator' else 1) and step == FAIL_AT:
      if mode == 'kill_coordinator':
        os.kill(os.getpid(), signal.SIGKILL)
      if mode == 'raise':
        raise RuntimeError('a bad track in the shard of process 1')
      if mode == 'stop':
        os.kill(os.getpid(), signal.SIGSTOP)
      if mode == 'kill':
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.05)


def main(mode: str) -> None:
  assert parallel.maybe_initialize_distributed()
  with parallel.fail_together('worker'):
    if mode == 'build':
      import datasets.build  # pylint: disable=import-outside-toplevel
      build_s, wait_s = float(os.environ['BUILD_S']), float(os.environ['WAIT_S'])
      built = []
      # The real builder is replaced by a slow stand-in; the wait logic is the real one.
      module = sys.modules['datasets.build']
      module.is_built = lambda *a, **k: bool(built)
      module.build = lambda *a, **k: (time.sleep(build_s), built.append(1))
      start = time.time()
      if os.environ.get('JAX_PROCESS_ID') != '0':
        built.append(1)  # the shared data_dir: the files appear once process 0 is done
      module.build_on_first_process('synth_gm', '/nonexistent', None, timeout_s=wait_s)
      print(f'waited {time.time() - start:.1f}', flush=True)
    _collectives(mode)
  print('done', flush=True)


if __name__ == '__main__':
  main(sys.argv[1])
