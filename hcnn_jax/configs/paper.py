"""Every (model, dataset) cell of the SMC 2020 and ICASSP 2020 result tables, as one config file.

    python train.py --config hcnn_jax/configs/paper.py:model=fcn,dataset=mtat --workdir runs/fcn
    python train.py --config hcnn_jax/configs/paper.py:model=hcnn,dataset=mtat,n_harmonic=3 \
        --workdir runs/hcnn_h3_mtat          # the ICASSP "effect of H" ablation
    python eval.py --config hcnn_jax/configs/paper.py:model=fcn,dataset=mtat --workdir runs/fcn

SMC 2020 ("Evaluation of CNN-based automatic music tagging models", Won et al. 2020): models fcn,
fcn128, musicnn, musicnn128, sample, se, crnn, crnn128, attention, hcnn, short, short_res on
datasets mtat, msd, jamendo. ICASSP 2020 ("Data-driven harmonic filters"): hcnn,
musicnn, sample and se on mtat, and hcnn, sample and se on speech_commands and dcase. The external
baselines of the ICASSP table (Attention RNN, Surrey-cvssp) are not models of this zoo; its "+SE"
row without residuals is not either (`se` is the residual SE model, ICASSP's "+Res+SE").

Dataset settings (task, batch, schedule, evaluation chunks) are those of the matching
hcnn_<dataset>.py config; the input length is the model's registered default
(`hcnn_jax.models.default_input_length`). Extra `key=value` items of the argument are model
options (e.g. `n_harmonic=3`, `width=64`).
"""
from __future__ import annotations

import ast
from typing import Any, Dict, Tuple

import ml_collections

from hcnn_jax.configs import (hcnn_dcase, hcnn_jamendo, hcnn_msd, hcnn_mtat,
                              hcnn_speech_commands)
from hcnn_jax.models import registry

# Table model name → (registered model, builder options).
MODELS: Dict[str, Tuple[str, Dict[str, Any]]] = {
    'fcn': ('fcn', {}),
    'fcn128': ('fcn', {'n_mels': 128}),
    'musicnn': ('musicnn', {}),
    'musicnn128': ('musicnn', {'n_mels': 128, 'heights': (67, 38)}),  # sota keeps 96-bin heights
    'sample': ('sample', {}),
    'se': ('sample_se', {}),
    'crnn': ('crnn', {}),
    'crnn128': ('crnn', {'n_mels': 128}),
    'attention': ('attention', {}),
    'hcnn': ('hcnn', {}),
    'short': ('short_chunk', {}),
    'short_res': ('short_chunk_res', {}),
}
DATASETS = {
    'mtat': hcnn_mtat.get_config,
    'msd': hcnn_msd.get_config,
    'jamendo': hcnn_jamendo.get_config,
    'speech_commands': hcnn_speech_commands.get_config,
    'dcase': hcnn_dcase.get_config,
}
# The HCNN has a back-end variant per task (ddhf's ResNet_keyword / ResNet_dcase).
_HCNN_BY_DATASET = {'speech_commands': 'hcnn_keywords', 'dcase': 'hcnn_events'}

_SMC = {(m, d) for m in MODELS for d in ('mtat', 'msd', 'jamendo')}
_ICASSP = ({(m, 'mtat') for m in ('hcnn', 'musicnn', 'sample', 'se')}
           | {(m, d) for m in ('hcnn', 'sample', 'se') for d in ('speech_commands', 'dcase')})
PAIRS = frozenset(_SMC | _ICASSP)


def _parse(arg: str) -> Dict[str, Any]:
  items = {}
  for item in filter(None, (s.strip() for s in (arg or '').split(','))):
    key, sep, value = item.partition('=')
    if not sep:
      raise ValueError(f'paper.py argument item {item!r}: use key=value, e.g. '
                       "'model=fcn,dataset=mtat'")
    try:
      items[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      items[key.strip()] = value.strip()
  return items


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  items = _parse(arg)
  model, dataset = items.pop('model', None), items.pop('dataset', None)
  if (model, dataset) not in PAIRS:
    pairs = ', '.join(f'model={m},dataset={d}' for m, d in sorted(PAIRS))
    raise ValueError(f'paper.py needs one of the table cells as its argument '
                     f'(hcnn_jax/configs/paper.py:model=M,dataset=D); got model={model}, '
                     f'dataset={dataset}. Cells: {pairs}')
  name, kwargs = MODELS[model]
  if model == 'hcnn':
    name = _HCNN_BY_DATASET.get(dataset, name)
  kwargs = dict(kwargs)
  if name == 'musicnn' and dataset == 'msd':
    # sota training/model.py: 512 back-end channels and a 500-unit dense layer
    kwargs['variant'] = 'msd'
  kwargs.update(items)
  c = DATASETS[dataset]()
  c.model.name = name
  c.model.kwargs = ml_collections.ConfigDict(kwargs)
  c.input_length = registry.default_input_length(name)
  return c
