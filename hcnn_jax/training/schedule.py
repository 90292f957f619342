"""The optimiser schedule as data: which optimiser and learning rate each epoch uses.

The sota recipe (minzwon/sota-music-tagging-models, `training/solver.py`), epochs 1-based as
there: its `opt_schedule` runs after each epoch's validation, so "switch after epoch 80" means
epoch 81 is the first SGD epoch.

  epochs   1 –  80  Adam lr 1e-4 (coupled L2 1e-4)                         phase 1
  epochs  81 – 100  reload best, fresh SGD lr 1e-3, Nesterov 0.9, L2 1e-4    phase 2
  epochs 101 – 120  reload best, SGD lr 1e-4 (momentum buffers kept)         phase 3
  epochs 121 – 200  reload best, SGD lr 1e-5 (momentum buffers kept)         phase 4

ddhf (minzwon/data-driven-harmonic-filters, `training/solver.py`) switches after 60 Adam epochs
(so 60, 80, 100) and, through its `self.load = path` bug, never reloads;
`optimizer_config('reference', variant='ddhf')` reproduces both. "Reload best" swaps params and
batch_stats for the best-by-validation-loss ones (torch's `load_state_dict` restores BN buffers
too) and leaves the optimiser state alone.

The modern alternative, 'adamw_cosine', is one phase: AdamW with decoupled weight decay and a linear
warmup into a cosine decay over all training steps.

`config.optimizer.name` picks the recipe; its other keys are listed in `DEFAULTS`;
`config.num_epochs` (and, for adamw_cosine, `config.steps_per_epoch`) come from the top level of
the config.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import ml_collections
from ml_collections.config_dict import placeholder

DEFAULTS: dict[str, dict[str, Any]] = {
    'reference': dict(
        adam_lr=1e-4, adam_epochs=80,
        sgd_lrs=(1e-3, 1e-4, 1e-5), sgd_epochs=(20, 20),
        momentum=0.9, nesterov=True,
        b1=0.9, b2=0.999, eps=1e-8,          # torch.optim.Adam defaults
        weight_decay=1e-4, decay_mask='reference', reload_best=True),
    'adamw_cosine': dict(
        learning_rate=1e-3, warmup_epochs=5, warmup_steps=None, end_learning_rate=0.0,
        b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=1e-2, decay_mask='no_bn_no_bias'),
}
VARIANTS = {'sota': dict(adam_epochs=80, reload_best=True),
            'ddhf': dict(adam_epochs=60, reload_best=False)}
DECAY_MASKS = ('reference', 'no_bn_no_bias')
_KNOWN_KEYS = {'name'} | {k for d in DEFAULTS.values() for k in d}


@dataclasses.dataclass(frozen=True)
class Phase:
  """One stretch of epochs trained with one optimiser setting.

  Attributes:
    start_epoch: first (1-based) epoch of the phase; it lasts until the next phase starts.
    optimizer_name: 'adam' | 'sgd' | 'adamw_cosine'.
    learning_rate: the constant lr ('adam', 'sgd') or the peak lr after warmup ('adamw_cosine').
    reload_best: reload the best-by-validation-loss weights before the phase's first epoch.
    weight_decay, decay_mask: L2 coefficient (coupled for adam/sgd, decoupled for adamw) and
      which parameters it touches (see `optim.decay_mask`).
    momentum, nesterov: SGD only.
    b1, b2, eps: Adam(W) only.
    warmup_steps, decay_steps, end_learning_rate: adamw_cosine's schedule in optimiser steps;
      decay_steps counts all steps, warmup included (optax's convention).
  """
  start_epoch: int
  optimizer_name: str
  learning_rate: float
  reload_best: bool
  weight_decay: float = 1e-4
  decay_mask: str = 'reference'
  momentum: float = 0.9
  nesterov: bool = True
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  warmup_steps: int = 0
  decay_steps: int = 0
  end_learning_rate: float = 0.0


def _get(obj, key: str, default=None):
  if obj is None:
    return default
  if isinstance(obj, Mapping):
    return obj.get(key, default)
  if isinstance(obj, ml_collections.ConfigDict):
    return obj.get(key, default)
  return getattr(obj, key, default)


def _as_dict(obj) -> dict:
  if obj is None:
    return {}
  if hasattr(obj, 'to_dict'):
    return obj.to_dict()
  if isinstance(obj, Mapping):
    return dict(obj)
  raise ValueError(f'config.optimizer must be a ConfigDict or a mapping; got {type(obj).__name__}.')


def optimizer_config(name: str = 'reference', variant: str = 'sota') -> ml_collections.ConfigDict:
  """A complete `config.optimizer` for a recipe (variant 'sota' or 'ddhf' for 'reference')."""
  if name not in DEFAULTS:
    raise ValueError(f'Unknown optimizer {name!r}; expected one of {", ".join(DEFAULTS)}.')
  values = dict(DEFAULTS[name], name=name)
  if name == 'reference':
    if variant not in VARIANTS:
      raise ValueError(f'Unknown reference variant {variant!r}; expected one of '
                       f'{", ".join(VARIANTS)}.')
    values.update(VARIANTS[variant])
  if 'warmup_steps' in values and values['warmup_steps'] is None:
    # A typed placeholder: an untyped None could not be set with --config.optimizer.warmup_steps.
    values['warmup_steps'] = placeholder(int)
  return ml_collections.ConfigDict(values)


def resolve(optimizer) -> dict:
  """config.optimizer merged over its recipe's DEFAULTS, with the keys checked."""
  given = _as_dict(optimizer)
  name = given.get('name', 'reference')
  if name not in DEFAULTS:
    raise ValueError(f'Unknown config.optimizer.name {name!r}; expected one of '
                     f'{", ".join(DEFAULTS)}.')
  unknown = sorted(set(given) - _KNOWN_KEYS)
  if unknown:
    raise ValueError(f'Unknown config.optimizer keys {unknown}; known keys: '
                     f'{sorted(_KNOWN_KEYS)}.')
  merged = dict(DEFAULTS[name], **{k: v for k, v in given.items() if k in DEFAULTS[name]})
  merged['name'] = name
  if merged['decay_mask'] not in DECAY_MASKS:
    raise ValueError(f'config.optimizer.decay_mask must be one of {DECAY_MASKS}; got '
                     f'{merged["decay_mask"]!r}.')
  if merged['weight_decay'] < 0:
    raise ValueError(f'config.optimizer.weight_decay must be >= 0; got {merged["weight_decay"]}.')
  return merged


def _positive_int(value, what: str) -> int:
  if value is None or int(value) != value or value < 1:
    raise ValueError(f'{what} must be a positive integer; got {value!r}.')
  return int(value)


def phases(config, steps_per_epoch: int | None = None) -> list[Phase]:
  """The phases of a run, in order, trimmed to config.num_epochs.

  Args:
    config: the run config (reads `num_epochs`, `optimizer`, and `steps_per_epoch` for
      adamw_cosine).
    steps_per_epoch: overrides config.steps_per_epoch (e.g. when the loop derives it from the
      dataset size); only adamw_cosine needs it.
  """
  num_epochs = _positive_int(_get(config, 'num_epochs'), 'config.num_epochs')
  opt = resolve(_get(config, 'optimizer'))
  common = dict(weight_decay=float(opt['weight_decay']), decay_mask=opt['decay_mask'],
                b1=float(opt['b1']), b2=float(opt['b2']), eps=float(opt['eps']))

  if opt['name'] == 'adamw_cosine':
    spe = steps_per_epoch if steps_per_epoch is not None else _get(config, 'steps_per_epoch')
    spe = _positive_int(spe, 'steps_per_epoch (config.steps_per_epoch, needed by adamw_cosine)')
    total = num_epochs * spe
    warmup = opt['warmup_steps']
    warmup = spe * int(opt['warmup_epochs']) if warmup is None else int(warmup)
    if not 0 <= warmup < total:
      raise ValueError(f'adamw_cosine: warmup ({warmup} steps) must be shorter than training '
                       f'({num_epochs} epochs x {spe} steps = {total}); lower '
                       'config.optimizer.warmup_epochs or set warmup_steps.')
    return [Phase(1, 'adamw_cosine', float(opt['learning_rate']), False, warmup_steps=warmup,
                  decay_steps=total, end_learning_rate=float(opt['end_learning_rate']),
                  **common)]

  sgd_lrs, sgd_epochs = tuple(opt['sgd_lrs']), tuple(opt['sgd_epochs'])
  if len(sgd_lrs) != len(sgd_epochs) + 1:
    raise ValueError(f'config.optimizer.sgd_lrs needs one more entry than sgd_epochs (the last lr '
                     f'runs to num_epochs); got {len(sgd_lrs)} lrs and {len(sgd_epochs)} epochs.')
  adam_epochs = _positive_int(opt['adam_epochs'], 'config.optimizer.adam_epochs')
  sgd = dict(momentum=float(opt['momentum']), nesterov=bool(opt['nesterov']), **common)
  result = [Phase(1, 'adam', float(opt['adam_lr']), False, **sgd)]
  start = adam_epochs + 1
  for i, lr in enumerate(sgd_lrs):
    if start > num_epochs:
      break
    result.append(Phase(start, 'sgd', float(lr), bool(opt['reload_best']), **sgd))
    if i < len(sgd_epochs):
      start += _positive_int(sgd_epochs[i], f'config.optimizer.sgd_epochs[{i}]')
  return result


def phase_at(epoch: int, phase_list: list[Phase]) -> Phase:
  """The phase that trains (1-based) `epoch`."""
  if epoch < 1:
    raise ValueError(f'Epochs are 1-based; got epoch {epoch}.')
  current = phase_list[0]
  for phase in phase_list[1:]:
    if phase.start_epoch <= epoch:
      current = phase
  return current


def switch_events(phase_list: list[Phase]) -> list[tuple[int, Phase]]:
  """(after_epoch, phase): run the switch to `phase` after validating epoch `after_epoch`."""
  return [(p.start_epoch - 1, p) for p in phase_list[1:]]
