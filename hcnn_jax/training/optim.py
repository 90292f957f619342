"""Optax transformations for the phases of `schedule.py`, and the switch between phases.

- 'adam':  Adam with *coupled* L2, torch's `Adam(params, lr, weight_decay=wd)`: the decay is added
           to the gradient before the moments, `chain(add_decayed_weights(wd), adam(lr))`, which
           is not AdamW.
- 'sgd':   torch's `SGD(lr, momentum=0.9, nesterov=True, weight_decay=wd)`: the same coupled L2,
           then optax's trace (buf = μ·buf + g; Nesterov step g + μ·buf), then −lr. The lr scales
           after the momentum as in torch, so lr drops leave the buffers meaningful.
- 'adamw_cosine': `optax.adamw` (decoupled decay) under a warmup + cosine schedule.

Every transformation is wrapped in `optax.inject_hyperparams`, so the opt_state carries the current
learning rate: `learning_rate(opt_state)` reads it for logging and `set_learning_rate` changes it
without touching the momentum buffers. Call `tx.update(grads, opt_state, params)` with params (the
weight decay needs them).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import ml_collections

import jax
import jax.numpy as jnp
import optax

from hcnn_jax.training import schedule as schedule_lib
from hcnn_jax.training.schedule import Phase


def decay_mask(name: str) -> Callable | None:
  """Which parameters the weight decay touches.

  'reference': all of them, as torch's optimiser weight_decay does (sota's `torch.optim.Adam(...,
    weight_decay=1e-4)` in `training/solver.py`: the harmonic Q and BN γ/β decay too); returns
    None (no mask).
  'no_bn_no_bias': only parameters with ≥ 2 dimensions (conv and dense kernels); biases, BN/LN
    scales and scalars such as Q are left alone.
  """
  if name == 'reference':
    return None
  if name == 'no_bn_no_bias':
    return lambda params: jax.tree_util.tree_map(lambda p: jnp.ndim(p) >= 2, params)
  raise ValueError(f'decay_mask must be one of {schedule_lib.DECAY_MASKS}; got {name!r}.')


def _factory(phase: Phase) -> Callable[..., optax.GradientTransformation]:
  mask = decay_mask(phase.decay_mask)
  if phase.optimizer_name == 'adam':
    def adam(learning_rate):
      return optax.chain(optax.add_decayed_weights(phase.weight_decay, mask),
                         optax.adam(learning_rate, b1=phase.b1, b2=phase.b2, eps=phase.eps))
    return adam
  if phase.optimizer_name == 'sgd':
    def sgd(learning_rate):
      return optax.chain(optax.add_decayed_weights(phase.weight_decay, mask),
                         optax.sgd(learning_rate, momentum=phase.momentum,
                                   nesterov=phase.nesterov))
    return sgd
  if phase.optimizer_name == 'adamw_cosine':
    def adamw(learning_rate):
      return optax.adamw(learning_rate, b1=phase.b1, b2=phase.b2, eps=phase.eps,
                         weight_decay=phase.weight_decay, mask=mask)
    return adamw
  raise ValueError(f'Unknown optimizer_name {phase.optimizer_name!r}; expected adam, sgd or '
                   'adamw_cosine.')


def learning_rate_schedule(phase: Phase) -> optax.Schedule | float:
  """The lr of a phase as optax sees it: a constant, or adamw_cosine's step schedule."""
  if phase.optimizer_name != 'adamw_cosine':
    return phase.learning_rate
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=phase.learning_rate, warmup_steps=phase.warmup_steps,
      decay_steps=phase.decay_steps, end_value=phase.end_learning_rate)


def make_optimizer(phase_or_config, steps_per_epoch: int | None = None
                   ) -> optax.GradientTransformation:
  """The transformation of a Phase, or of a config's first phase (what training starts with)."""
  phase = phase_or_config
  if not isinstance(phase, Phase):
    phase = schedule_lib.phases(phase_or_config, steps_per_epoch)[0]
  return optax.inject_hyperparams(_factory(phase))(learning_rate=learning_rate_schedule(phase))


def _injected(path, value) -> bool:
  # The value in `hyperparams`, not the schedule's own state under `hyperparams_states`.
  del value
  return len(path) >= 2 and getattr(path[-2], 'name', None) == 'hyperparams'


def learning_rate(opt_state) -> jnp.ndarray:
  """The learning rate of the last update (for the constant phases: of every update)."""
  found = optax.tree_utils.tree_get_all_with_path(opt_state, 'learning_rate', _injected)
  if len(found) != 1:
    raise ValueError(f'Expected one injected learning_rate in the optimiser state, found '
                     f'{len(found)}; build the optimiser with make_optimizer.')
  return found[0][1]


def set_learning_rate(opt_state, value: float):
  """opt_state with a new injected learning rate; every other leaf (momentum, counts) kept."""
  dtype = jnp.asarray(learning_rate(opt_state)).dtype
  scheduled = optax.tree_utils.tree_get_all_with_path(
      opt_state, 'learning_rate',
      lambda path, v: len(path) >= 2 and getattr(path[-2], 'name', None) == 'hyperparams_states')
  if scheduled:
    raise ValueError('This optimiser follows a learning-rate schedule (adamw_cosine); its lr '
                     'cannot be set by hand.')
  return optax.tree_utils.tree_set(opt_state, _injected,
                                   learning_rate=jnp.asarray(value, dtype))


def needs_new_optimizer(previous: Phase | None, new: Phase) -> bool:
  """True when entering `new` needs a fresh optimiser (start, Adam→SGD, any setting but the lr)."""
  if previous is None:
    return True
  strip = dict(start_epoch=0, learning_rate=0.0, reload_best=False)
  return (previous.optimizer_name == 'adamw_cosine'
          or dataclasses.replace(previous, **strip)
          != dataclasses.replace(new, **strip))


class PhaseEntry(NamedTuple):
  """What entering a phase means for the loop.

  action: 'init' (new optimiser: use `tx`, whose fresh state is `opt_state`), 'set_lr' (keep the
    current tx; `opt_state` has the new lr and the old momentum) or 'none' (same phase).
  tx: the new transformation for 'init', else None (the current one reads the lr from opt_state,
    so it needs no rebuild and the jitted step no recompilation).
  opt_state: the state to continue with.
  reload_best: whether to load the best weights (params and batch_stats) first; `init` with the
    reloaded params is equivalent, as a fresh optimiser state depends only on their shapes.
  """
  action: str
  tx: optax.GradientTransformation | None
  opt_state: object
  reload_best: bool


def enter_phase(new: Phase, previous: Phase | None, params, opt_state=None) -> PhaseEntry:
  """How to move from `previous` (None at the start) into `new`.

  Typical use, after validating epoch e:
    for after, phase in switch_events(phases): if after == e: entry = enter_phase(phase, old, ...)
  """
  if previous is not None and previous == new:
    return PhaseEntry('none', None, opt_state, False)
  if needs_new_optimizer(previous, new):
    tx = make_optimizer(new)
    return PhaseEntry('init', tx, tx.init(params), new.reload_best)
  if opt_state is None:
    raise ValueError('enter_phase needs the current opt_state to change only the learning rate.')
  return PhaseEntry('set_lr', None, set_learning_rate(opt_state, new.learning_rate),
                    new.reload_best)


def check_config(config) -> None:
  """ValueError naming the key when `config.optimizer` is not a recipe that fits the run."""
  opt = config.optimizer
  name = opt.get('name', 'reference') if hasattr(opt, 'get') else None
  if isinstance(opt, ml_collections.ConfigDict) and name in schedule_lib.DEFAULTS:
    known = {'name'} | set(schedule_lib.DEFAULTS[name])
    unknown = set(opt.keys()) - known
    if unknown:
      from hcnn_jax.configs import base  # pylint: disable=import-outside-toplevel
      raise ValueError(base.unknown_keys('optimizer: ', unknown, known))
  # adamw_cosine needs steps_per_epoch: when the loop derives it from the dataset, any positive
  # value checks the rest here, and the loop checks the warmup again with the real one.
  try:
    schedule_lib.phases(config, config.get('steps_per_epoch') or 10**9)
  except (ValueError, TypeError) as err:
    raise ValueError(f'optimizer: {err}') from None
