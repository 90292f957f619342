"""The console scripts the wheel installs, and what they share.

    hcnn-train         train a config, evaluate its best checkpoint     (train.py)
    hcnn-eval          track-level evaluation of a trained run          (eval.py)
    hcnn-demo          the main job: synth_gm, train, evaluate, tag     (demo.py)
    hcnn-build         prepare a dataset as array_record                (python -m datasets.build)
    hcnn-tag           tag audio files                                  (-m hcnn_jax.tools.tag)
    hcnn-ablation      the harmonics study                              (-m hcnn_jax.tools.ablation)
    hcnn-robustness    accuracy under audio deformations                (-m ...tools.robustness)
    hcnn-soundfont-shift  per-tag scores on other GM soundfonts     (-m ...tools.soundfont_shift)
    hcnn-interpret     filters, saliency, attention, tag contributions  (-m ...tools.interpret)
    hcnn-import-torch  a reference best_model.pth as a checkpoint       (-m ...tools.import_torch)

In a checkout the commands in brackets do the same. Every one works from any directory: a
`--config` that is not a file there but names one of the shipped configs
(`hcnn_jax/configs/hcnn_mtat.py`, `hcnn_mtat.py` or `hcnn_mtat`) reads the installed copy.
"""
from __future__ import annotations

import os
import re
from typing import List, Sequence

CONFIG_FLAG = 'config'
# The folders a --config path may be given in to mean a shipped config.
_SHIPPED_PREFIXES = ('', 'configs', os.path.join('hcnn_jax', 'configs'))


def shipped_config(path: str) -> str:
  """`path` if it exists; else the shipped config it names, if there is one; else `path`."""
  if not path or os.path.exists(path):
    return path
  folder, name = os.path.split(os.path.normpath(path))
  if folder not in _SHIPPED_PREFIXES:
    return path
  from hcnn_jax import configs  # pylint: disable=import-outside-toplevel
  candidate = os.path.join(os.path.dirname(configs.__file__),
                           name if name.endswith('.py') else name + '.py')
  return candidate if os.path.isfile(candidate) else path


def _with_shipped(value: str) -> str:
  file_part, colon, arg = value.partition(':')  # `file.py:arg` passes arg to get_config
  return shipped_config(file_part) + colon + arg


def resolve_config_argv(argv: Sequence[str], name: str = CONFIG_FLAG) -> List[str]:
  """`argv` with its `--config FILE[:arg]` pointed at the shipped config when FILE is not a file
  here but names one (see the module docstring); `--config.<key>` overrides are left alone."""
  out = list(argv)
  for i, arg in enumerate(out):
    match = re.match(rf'^(--?{name}=)(.*)$', arg)
    if match:
      out[i] = match.group(1) + _with_shipped(match.group(2))
    elif re.match(rf'^--?{name}$', arg) and i + 1 < len(out):
      out[i + 1] = _with_shipped(out[i + 1])
  return out


def print_metrics(split: str, result: dict) -> None:
  """The last line of hcnn-train and hcnn-eval: the float metrics of `result` on `split`."""
  scalars = {k: v for k, v in result.items() if isinstance(v, float)}
  how = f' (step {result.get("checkpoint_step")}, {result.get("eval_chunks")} chunks per track)'
  print(f'{split} metrics of {result["checkpoint"]}{how}: ' +
        ', '.join(f'{k} {v:.4f}' for k, v in sorted(scalars.items())))
