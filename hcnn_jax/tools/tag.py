"""`hcnn-tag`: tag your own audio files with a trained (or imported) model.

    hcnn-tag FILE... (--workdir DIR | --checkpoint PATH) [--top_k 5] [--json] [--plot out.png]
                     [--hop_seconds S] [--batch_chunks N]

Any format soundfile decodes (wav, flac, ogg, mp3), any sample rate (resampled with soxr), mono
or multi-channel (averaged), any length. A file shorter than the model's chunk is zero-padded at
the end; a longer one is covered by overlapping chunks, `hop_seconds` apart (default half a chunk)
with one more chunk flush with the end, and the per-chunk scores are averaged (the reference's
track-level rule, reference 4.5, with a regular hop instead of 16 chunks, so that a 10-minute
file is covered evenly). The reference's own demo scored a single centre chunk (4.7).

Chunks are scored in batches of at most `batch_chunks` (a power of two); a short last batch is
padded to the next power of two, so a file of any length compiles at most log2(batch_chunks) + 1
shapes and memory stays bounded by one batch whatever the length.

Exit codes: 0 all files tagged, 1 some file could not be read (a one-line error on stderr for
each, the others are still tagged), 2 usage errors (bad flags, no loadable checkpoint).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from hcnn_jax.data.audio import AudioError, load_audio

PROG = 'hcnn-tag'
SAMPLE_RATE = 16000
DEFAULT_BATCH_CHUNKS = 16


def tagging_starts(num_samples: int, input_length: int, hop_length: int) -> np.ndarray:
  """Chunk starts covering a track: 0, hop, 2·hop, ... and a last chunk ending at the track's end.

  A track no longer than one chunk has the single start 0 (it is zero-padded at the end).
  """
  if input_length < 1 or hop_length < 1:
    raise ValueError(f'input_length and hop_length must be >= 1, got {input_length}, '
                     f'{hop_length}.')
  last = num_samples - input_length
  if last <= 0:
    return np.zeros((1,), np.int64)
  starts = np.arange(0, last + 1, hop_length, dtype=np.int64)
  if starts[-1] != last:
    starts = np.append(starts, last)
  return starts


def _bucket(n: int, cap: int) -> int:
  """The smallest power of two >= n, at most cap (itself a power of two)."""
  return min(cap, 1 << max(0, int(n) - 1).bit_length())


@dataclasses.dataclass
class TagResult:
  """Scores of one file: per chunk (num_chunks, C), their mean (C,), chunk centres in seconds."""
  path: str
  duration: float
  chunk_probs: np.ndarray
  probs: np.ndarray
  times: np.ndarray

  def top(self, class_names: Sequence[str], k: int):
    order = np.argsort(-self.probs, kind='stable')[:k]
    return [(class_names[i], float(self.probs[i])) for i in order]


class Tagger:
  """Scores waveforms or files with one model; jitted once per chunk-batch shape.

  Args:
    model, variables: a model mapping waveform (B, L) to logits, and its variables.
    input_length: samples per chunk (the model's training crop).
    task: 'tagging' / 'events' (sigmoid scores) or 'keywords' (softmax).
    hop_seconds: distance between chunk starts; None = half a chunk.
    batch_chunks: most chunks per model call (rounded down to a power of two).
  """

  def __init__(self, model, variables, input_length: int, task: str = 'tagging',
               hop_seconds: Optional[float] = None, batch_chunks: int = DEFAULT_BATCH_CHUNKS,
               sample_rate: int = SAMPLE_RATE):
    import jax  # pylint: disable=import-outside-toplevel
    from hcnn_jax import tasks  # pylint: disable=import-outside-toplevel
    if hop_seconds is not None and not hop_seconds > 0:
      raise ValueError(f'hop_seconds must be positive, got {hop_seconds}.')
    if batch_chunks < 1:
      raise ValueError(f'batch_chunks must be >= 1, got {batch_chunks}.')
    self.input_length = int(input_length)
    self.sample_rate = int(sample_rate)
    self.hop_length = (max(1, self.input_length // 2) if hop_seconds is None
                       else max(1, int(round(hop_seconds * self.sample_rate))))
    self.batch_chunks = 1 << (int(batch_chunks).bit_length() - 1)
    predict = tasks.get_task(task).predict
    self.variables = variables
    self._predict = jax.jit(lambda v, x: predict(model.apply(v, x, train=False)))

  def tag_waveform(self, audio: np.ndarray):
    """(starts (n,), chunk probabilities (n, C)) of a mono waveform at the model's rate."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.shape[0] == 0:
      raise ValueError(f'audio must be a non-empty mono waveform, got shape {audio.shape}.')
    if audio.shape[0] < self.input_length:
      audio = np.pad(audio, (0, self.input_length - audio.shape[0]))
    starts = tagging_starts(audio.shape[0], self.input_length, self.hop_length)
    offsets = np.arange(self.input_length)[None, :]
    out = []
    for b in range(0, len(starts), self.batch_chunks):
      batch_starts = starts[b:b + self.batch_chunks]
      size = _bucket(len(batch_starts), self.batch_chunks)
      chunks = np.zeros((size, self.input_length), np.float32)
      # Gather only this batch's chunks: a long file is never materialised as all its chunks.
      chunks[:len(batch_starts)] = audio[batch_starts[:, None] + offsets]
      probs = np.asarray(self._predict(self.variables, chunks))
      out.append(probs[:len(batch_starts)])
    return starts, np.concatenate(out, axis=0)

  def tag_file(self, path: str) -> TagResult:
    """Decodes, resamples and scores one file; AudioError (a ValueError) if it is not audio."""
    audio = load_audio(path, self.sample_rate)
    starts, chunk_probs = self.tag_waveform(audio)
    duration = audio.shape[0] / self.sample_rate
    centres = (starts + min(self.input_length, audio.shape[0]) / 2.0) / self.sample_rate
    return TagResult(os.fspath(path), duration, chunk_probs, chunk_probs.mean(axis=0), centres)


def load_tagger(path: str, hop_seconds: Optional[float] = None,
                batch_chunks: int = DEFAULT_BATCH_CHUNKS):
  """(Tagger, class_names, config) for a workdir or checkpoint directory."""
  from hcnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  model, variables, config, class_names = checkpoint.load_for_inference(path)
  rate = getattr(getattr(model, 'frontend', None), 'sample_rate', SAMPLE_RATE)
  tagger = Tagger(model, variables, int(config.input_length), config.get('task') or 'tagging',
                  hop_seconds=hop_seconds, batch_chunks=batch_chunks, sample_rate=rate)
  return tagger, class_names, config


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=PROG, description='Tag audio files with a trained hcnn-jax model.')
  parser.add_argument('files', nargs='+', metavar='FILE', help='audio files (wav, flac, ogg, mp3)')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='training workdir (its best checkpoint is used)')
  source.add_argument('--checkpoint',
                      help='a checkpoint directory (best/, checkpoints/, or a step)')
  parser.add_argument('--top_k', type=int, default=5, help='tags printed per file (default 5)')
  parser.add_argument('--json', action='store_true', help='print JSON instead of text')
  parser.add_argument('--plot', metavar='PNG', help='draw a tagogram (tags × time) of every file')
  parser.add_argument('--hop_seconds', type=float, default=None,
                      help='distance between chunk starts (default: half a chunk)')
  parser.add_argument('--batch_chunks', type=int, default=DEFAULT_BATCH_CHUNKS,
                      help=f'chunks per model call (default {DEFAULT_BATCH_CHUNKS})')
  return parser


def _text(result: TagResult, class_names: Sequence[str], k: int) -> str:
  lines = [f'{result.path}  ({result.duration:.2f} s, {len(result.times)} chunk'
           f'{"s" if len(result.times) != 1 else ""})']
  width = max(len(name) for name, _ in result.top(class_names, k))
  for rank, (name, score) in enumerate(result.top(class_names, k), 1):
    lines.append(f'  {rank:2d}. {name:<{width}}  {score:.3f}')
  return '\n'.join(lines)


def _json_entry(result: TagResult, class_names: Sequence[str], k: int) -> Dict[str, Any]:
  return {
      'file': result.path,
      'duration_seconds': round(result.duration, 4),
      'num_chunks': int(len(result.times)),
      'top': [{'tag': name, 'score': round(score, 6)} for name, score in
              result.top(class_names, k)],
      'scores': {name: round(float(s), 6) for name, s in zip(class_names, result.probs)},
  }


def _error(message: str) -> None:
  print(f'{PROG}: error: {" ".join(str(message).split())}', file=sys.stderr)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)  # usage errors exit 2 here
  if args.top_k < 1:
    parser.error(f'--top_k must be >= 1, got {args.top_k}')
  if args.hop_seconds is not None and not args.hop_seconds > 0:
    parser.error(f'--hop_seconds must be positive, got {args.hop_seconds}')
  if args.batch_chunks < 1:
    parser.error(f'--batch_chunks must be >= 1, got {args.batch_chunks}')
  # Orbax reports read-only managers at WARNING through absl; a user tagging files needs none.
  logging.getLogger('absl').setLevel(logging.ERROR)
  where = args.workdir or args.checkpoint
  try:
    tagger, class_names, _ = load_tagger(where, args.hop_seconds, args.batch_chunks)
  except Exception as err:  # pylint: disable=broad-except
    # Whatever is wrong with the checkpoint directory, the user gets one line, not a traceback.
    _error(f'cannot load a model from {where}: {err}')
    return 2
  results: List[TagResult] = []
  failures: List[Dict[str, str]] = []
  for path in args.files:
    try:
      result = tagger.tag_file(path)
    except (AudioError, ValueError, OSError) as err:
      message = str(err) if isinstance(err, AudioError) else f'{path}: {err}'
      _error(message)
      failures.append({'file': path, 'error': ' '.join(message.split())})
      continue
    results.append(result)
    if not args.json:
      print(_text(result, class_names, min(args.top_k, len(class_names))), flush=True)
  k = min(args.top_k, len(class_names))
  if args.json:
    print(json.dumps({'results': [_json_entry(r, class_names, k) for r in results],
                      'errors': failures}, indent=2))
  if args.plot and results:
    from hcnn_jax.tools import plots  # pylint: disable=import-outside-toplevel
    try:
      plots.save_tagograms(args.plot, [(os.path.basename(r.path), r.chunk_probs, r.times)
                                       for r in results], class_names)
    except OSError as err:
      _error(f'cannot write the plot {args.plot}: {err}')
      return 2
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
