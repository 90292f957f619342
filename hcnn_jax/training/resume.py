"""What a run resumes from: the newest periodic checkpoint that reads back whole and finite,
on whatever devices and processes the run has now.

A checkpoint that cannot be read (a truncated data file, a missing item, a corrupt `_METADATA`)
or that holds a non-finite value is skipped with a warning naming it, and moved to
`checkpoints.damaged/` so that the resumed run can write its step again (`RunCheckpoints.save`
skips a step that exists). The arrays take the sharding of the caller's template, so a run
written on 4 devices resumes on 1 and back; the meta records the device layout, and a change is
reported, since dropout masks (drawn per device) and float reductions change with it, and the
per-process data iterator states only fit the process count that wrote them.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional, Tuple

import jax

from hcnn_jax.training import checkpoint as ckpt_lib
from hcnn_jax.training import step as step_lib

log = logging.getLogger(__name__)


_all_finite = jax.jit(step_lib.all_finite)


def is_finite(state: Any) -> bool:
  """Whether every float leaf of `state` is finite (one reduction on the devices, one scalar
  back)."""
  return bool(jax.device_get(_all_finite(state)))


def warn_topology_change(saved: Optional[Dict[str, int]], path: str) -> None:
  """Warns when checkpoint `path` was written by another process or device count (`saved`, its
  meta's topology; None for checkpoints from before it was recorded)."""
  now = ckpt_lib.topology()
  if not saved or saved == now:
    return
  data = ('the data iterator restarts, so the data order changes'
          if saved.get('process_count') != now['process_count'] else
          'the data order is kept')
  log.warning('Resuming %s, written by %s process(es) x %s device(s), on %d x %d: dropout masks '
              '(drawn per device) and float reductions change and %s; the run is no longer an '
              'exact continuation.', path, saved.get('process_count'), saved.get('device_count'),
              now['process_count'], now['device_count'], data)


def restore_intact(ckpts: ckpt_lib.RunCheckpoints, make_state: Callable[[int], Any]
                   ) -> Tuple[Optional[int], Any, Optional[bytes], Optional[Dict[str, Any]]]:
  """`(step, state, data_state, meta)` of the newest periodic checkpoint that reads back whole and
  finite (all None when there is none). Newer ones that do not are set aside with a warning, so
  that the resumed run can write those steps again. `make_state(phase)` is the restore target."""
  skipped = []
  found = (None, None, None, None)
  for step in sorted(ckpts.periodic.all_steps(), reverse=True):
    path = ckpts.path(step)
    try:
      meta = ckpts.restore_meta(step)
      state, data_state, _ = ckpts.restore(make_state(meta['bookkeeping']['phase']), step)
      if not is_finite(state):
        raise ckpt_lib.CheckpointError(f'checkpoint {path} holds non-finite values')
    except (ckpt_lib.CheckpointError, KeyError, TypeError) as err:
      log.warning('Not resuming from %s: %s', path, ckpt_lib.one_line(err))
      skipped.append(step)
      continue
    found = (step, state, data_state, meta)
    break
  if skipped:
    moved = ckpts.set_aside(skipped)
    log.warning('Set aside %s; resuming from %s.', moved,
                ckpts.path(found[0]) if found[0] is not None else 'scratch (no intact checkpoint)')
  return found
