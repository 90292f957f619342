"""The command line of `hcnn-interpret`, also `python -m hcnn_jax.tools.interpret` (see that
module for the commands).

Reads the checkpoint and the audio, runs the analyses of `interpret` and draws the figures of
`interpret_plots`.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import List, Optional, Sequence

import numpy as np

from hcnn_jax.tools.interpret import (COMMANDS, attention_scores, feature_rows_hz,
                                      filterbank_state, saliency, tag_contribution)

PROG = 'hcnn-interpret'
DESCRIPTION = ('What a trained model looks at: its learned filterbank, saliency, attention and '
               'tag contributions.')


def _chunk(path: str, input_length: int, start_seconds: float, sample_rate: int) -> np.ndarray:
  from hcnn_jax.data.audio import load_audio  # pylint: disable=import-outside-toplevel
  audio = load_audio(path, sample_rate)
  start = int(round(start_seconds * sample_rate))
  if start < 0 or (start >= audio.shape[0] and start > 0):
    raise ValueError(f'{path}: --start_seconds {start_seconds} is outside the file '
                     f'({audio.shape[0] / sample_rate:.2f} s)')
  chunk = audio[start:start + input_length]
  return np.pad(chunk, (0, input_length - chunk.shape[0]))


def _stems(files: Sequence[str]) -> List[str]:
  """A distinct output-name part per file: its stem, numbered when two files share one."""
  stems = [os.path.splitext(os.path.basename(f))[0] for f in files]
  return [s if stems.count(s) == 1 else f'{s}_{i + 1}' for i, s in enumerate(stems)]


def run_command(command: str, path: str, out_dir: str, audio_files: Sequence[str] = (),
                start_seconds: float = 0.0, tag: Optional[str] = None,
                refused: Optional[List[str]] = None) -> List[str]:
  """Runs one interpretation command on the checkpoint at `path`; returns the files written.

  Every file of `audio_files` is used: `saliency` writes one figure per file
  (saliency_<stem>.png), `attention` and `contribution` one row per file. A file that cannot be
  read is left out and its one-line reason appended to `refused`; when none is left, ValueError.
  """
  from hcnn_jax.tools import interpret_plots  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  if command not in COMMANDS:
    raise ValueError(f'unknown command {command!r}; use one of {COMMANDS}')
  if command != 'filters' and not audio_files:
    raise ValueError(f'{command} needs --audio FILE')
  if command == 'filters' and audio_files:
    raise ValueError(f'filters reads no audio; drop --audio {" ".join(audio_files)}')
  model, variables, config, class_names = checkpoint.load_for_inference(path)
  rate = getattr(model.frontend, 'sample_rate', 16000)
  length = int(config.input_length)
  os.makedirs(out_dir, exist_ok=True)
  written = []

  def save_npz(name, **arrays):
    target = os.path.join(out_dir, f'{name}.npz')
    np.savez(target, **arrays)
    written.append(target)

  if command == 'filters':
    state = filterbank_state(model, variables)
    save_npz('filters', frequencies=state['frequencies'],
             **{f'{k}_{n}': np.asarray(v) for k in ('initial', 'learned')
                for n, v in state[k].items()})
    written.append(interpret_plots.plot_filterbank(state, os.path.join(out_dir, 'filters.png'),
                                                   source=os.path.normpath(path)))
    return written
  index = None
  if command == 'saliency' and tag is not None:
    if tag not in class_names:
      raise ValueError(f'--tag {tag!r} is not a class of this model: {class_names}')
    index = class_names.index(tag)
  chunks = []  # (file, stem, chunk) of the files that could be read
  for f, stem in zip(audio_files, _stems(audio_files)):
    try:
      chunks.append((f, stem, _chunk(f, length, start_seconds, rate)))
    except ValueError as err:  # AudioError names the file; so does the start check
      if refused is None:
        raise
      refused.append(' '.join(str(err).split()))
  if not chunks:
    raise ValueError('no --audio file could be read: ' + '; '.join(refused or []))
  span = (start_seconds, start_seconds + length / rate)
  if command == 'saliency':
    rows_hz, rows_label = feature_rows_hz(model, variables)
    for f, stem, audio in chunks:
      result = saliency(model, variables, audio, index)
      save_npz(f'saliency_{stem}', features=result['features'], saliency=result['saliency'],
               logits=result['logits'], class_index=result['class_index'],
               rows_hz=np.asarray([] if rows_hz is None else rows_hz), audio=os.fspath(f))
      written.append(interpret_plots.plot_saliency(
          result, class_names, span, os.path.join(out_dir, f'saliency_{stem}.png'),
          os.path.basename(f), rows_hz, rows_label))
    return written
  items = []
  for f, _, audio in chunks:
    if command == 'attention':
      item = attention_scores(model, variables, audio, rate)
    else:
      item = tag_contribution(model, variables, audio, sample_rate=rate)
    item['name'] = os.path.basename(f)
    item['times'] = item['times'] + start_seconds  # seconds in the file
    items.append(item)
  key = 'scores' if command == 'attention' else 'contribution'
  files = np.asarray([os.fspath(f) for f, _, _ in chunks])
  save_npz(command, **{f'{key}_{i}': it[key] for i, it in enumerate(items)},
           **{f'probs_{i}': it['probs'] for i, it in enumerate(items)},
           times=items[0]['times'], files=files)
  plot = (interpret_plots.plot_attention if command == 'attention'
          else interpret_plots.plot_contribution)
  written.append(plot(items, class_names, os.path.join(out_dir, f'{command}.png')))
  return written


def main(argv: Optional[Sequence[str]] = None) -> int:
  """0: all written; 1: written, but some --audio file refused (one stderr line each); 2: none."""
  parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
  parser.add_argument('command', choices=COMMANDS)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='training workdir (its best checkpoint)')
  source.add_argument('--checkpoint', help='a checkpoint directory')
  parser.add_argument('--audio', nargs='+', default=[], help='audio file(s) to interpret')
  parser.add_argument('--start_seconds', type=float, default=0.0,
                      help='where the analysed chunk starts in the file')
  parser.add_argument('--tag', default=None, help='saliency: the tag to explain (default: top)')
  parser.add_argument('--out', required=True, help='output directory for PNGs and .npz')
  args = parser.parse_args(argv)
  logging.getLogger('absl').setLevel(logging.ERROR)
  refused: List[str] = []
  try:
    written = run_command(args.command, args.workdir or args.checkpoint, args.out, args.audio,
                          args.start_seconds, args.tag, refused)
  except ValueError as err:  # bad checkpoint, audio, tag or model kind: one line
    print(f'interpret: error: {" ".join(str(err).split())}', file=sys.stderr)
    return 2
  for reason in refused:
    print(f'interpret: skipped: {reason}', file=sys.stderr)
  for path in written:
    print(path)
  return 1 if refused else 0


if __name__ == '__main__':
  sys.exit(main())
