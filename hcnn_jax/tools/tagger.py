"""Scoring audio with a trained model, chunk by chunk, in memory bounded by one batch.

A file shorter than the model's chunk is zero-padded at the end; a longer one is covered by
overlapping chunks, `hop` samples apart, with one more chunk flush with the end, and the per-chunk
scores are averaged (sota's track-level rule in `training/eval.py`, with a regular hop instead
of 16 chunks, so that a 10-minute file is covered evenly).

Files are decoded and resampled block by block (`hcnn_jax.data.audio.iter_audio`), and chunks are
cut from a rolling buffer as the blocks arrive: what is held is one decoded block plus the samples
the next batch of chunks needs, whatever the file's length. Chunks are scored in batches of at most
`batch_chunks` (a power of two); a short last batch is padded to the next power of two, so a file
of any length compiles at most log2(batch_chunks) + 1 shapes.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, List, Optional, Sequence

import numpy as np

from hcnn_jax.data.audio import AudioError, BLOCK_SAMPLES, iter_audio

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


def top_tags(probs: np.ndarray, class_names: Sequence[str], k: int):
  """The `k` best (name, score) pairs of one score vector, best first (ties in class order)."""
  order = np.argsort(-np.asarray(probs), kind='stable')[:k]
  return [(class_names[i], float(probs[i])) for i in order]


class NonFiniteScores(ValueError):
  """The model gave NaN or Inf for some chunk: such scores are never reported."""


@dataclasses.dataclass
class TagResult:
  """Scores of one file: per chunk (num_chunks, C), their mean (C,), chunk centres in seconds,
  and where each chunk starts and ends in the file (seconds; a chunk of a file shorter than the
  model's input ends with the file, the rest of it being zero padding)."""
  path: str
  duration: float
  chunk_probs: np.ndarray
  probs: np.ndarray
  times: np.ndarray
  starts: Optional[np.ndarray] = None
  ends: Optional[np.ndarray] = None

  def top(self, class_names: Sequence[str], k: int):
    return top_tags(self.probs, class_names, k)


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
    # Decoded samples per block (tests shrink it to exercise the rolling buffer).
    self.block_samples = BLOCK_SAMPLES
    # The most samples the rolling buffer held during the last file (bounded by one batch).
    self.peak_buffer = 0
    # Called between blocks: the CLI raises KeyboardInterrupt there after a lost Ctrl-C.
    self.check = lambda: None
    predict = tasks.get_task(task).predict
    self.variables = variables

    def score_chunks(v, x):  # named: the compilation cache's entries are named after it
      return predict(model.apply(v, x, train=False))
    self._predict = jax.jit(score_chunks)

  def _score(self, buf: np.ndarray, buf_at: int, starts: List[int]) -> np.ndarray:
    """Probabilities (len(starts), C) of the chunks at absolute `starts`; buf[0] is at buf_at."""
    size = _bucket(len(starts), self.batch_chunks)
    chunks = np.zeros((size, self.input_length), np.float32)
    for i, s in enumerate(starts):
      piece = buf[s - buf_at:s - buf_at + self.input_length]
      chunks[i, :len(piece)] = piece  # a track shorter than a chunk is zero-padded at the end
    probs = np.asarray(self._predict(self.variables, chunks))[:len(starts)]
    if not np.isfinite(probs).all():
      raise NonFiniteScores('the model gave NaN/Inf scores (a checkpoint with non-finite '
                            'weights, or audio it cannot handle); none are reported')
    return probs

  def tag_blocks(self, blocks: Iterable[np.ndarray]):
    """(starts (n,), chunk probabilities (n, C), num_samples) of mono blocks at the model's rate.

    The chunks are those of `tagging_starts(num_samples, ...)`, scored as soon as a batch of them
    has arrived; only the samples later chunks still need are kept.
    """
    L, hop, batch = self.input_length, self.hop_length, self.batch_chunks
    buf, buf_at, total, next_start = np.zeros((0,), np.float32), 0, 0, 0
    pending: List[int] = []
    done: List[int] = []
    out: List[np.ndarray] = []
    self.peak_buffer = 0
    for block in blocks:
      self.check()
      block = np.asarray(block, np.float32)
      if block.ndim != 1:
        raise ValueError(f'audio must be mono, got a block of shape {block.shape}.')
      buf = np.concatenate([buf, block]) if buf.size else block
      total += block.shape[0]
      self.peak_buffer = max(self.peak_buffer, buf.shape[0])
      while next_start + L <= total:
        pending.append(next_start)
        next_start += hop
        if len(pending) == batch:
          out.append(self._score(buf, buf_at, pending))
          done += pending
          pending = []
      # Keep what the next chunks need, and the last L samples: the final chunk ends at the end.
      keep = min(pending[0] if pending else next_start, max(total - L, 0), total)
      if keep > buf_at:
        buf, buf_at = buf[keep - buf_at:], keep
    if total == 0:
      raise ValueError('audio must be a non-empty mono waveform, got 0 samples.')
    last = max(total - L, 0)
    if not (done + pending) or (done + pending)[-1] != last:
      pending.append(last)
    if pending:
      out.append(self._score(buf, buf_at, pending))
      done += pending
    return np.asarray(done, np.int64), np.concatenate(out, axis=0), total

  def tag_waveform(self, audio: np.ndarray):
    """(starts (n,), chunk probabilities (n, C)) of a mono waveform at the model's rate."""
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1 or audio.shape[0] == 0:
      raise ValueError(f'audio must be a non-empty mono waveform, got shape {audio.shape}.')
    step = max(1, self.block_samples)
    starts, probs, _ = self.tag_blocks(audio[i:i + step] for i in range(0, len(audio), step))
    return starts, probs

  def tag_file(self, path, quiet: bool = False) -> TagResult:
    """Decodes, resamples and scores one file block by block; AudioError (a ValueError) if it
    is not audio or cannot be scored. `quiet` silences the decoders' native stderr."""
    blocks = iter_audio(path, self.sample_rate, block_samples=self.block_samples, quiet=quiet)
    try:
      starts, chunk_probs, total = self.tag_blocks(blocks)
    except NonFiniteScores as e:
      raise AudioError(path, str(e)) from e
    duration = total / self.sample_rate
    span = min(self.input_length, total)
    centres = (starts + span / 2.0) / self.sample_rate
    return TagResult(os.fsdecode(path), duration, chunk_probs, chunk_probs.mean(axis=0), centres,
                     starts / self.sample_rate, (starts + span) / self.sample_rate)

