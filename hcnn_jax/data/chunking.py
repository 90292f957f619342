"""Where a clip is cut: the reference's training crop and its 16-chunk track-level evaluation.

Training (sota `training/data_loader/*_loader.py`, ddhf `dcase_loader.py`): one crop per track per
epoch at offset = floor(U[0, 1) · (len − input_length)); a track shorter than input_length is
zero-padded to input_length at a uniformly random offset instead.

Evaluation (sota `training/eval.py`, `get_tensor`): num_chunks chunks with hop = floor((len −
input_length) / num_chunks), chunk i starting at i · hop. The reference's slicing is broken for
tracks shorter than input_length and ddhf pads at a random offset, which makes evaluation
non-deterministic; here a short track is zero-padded **at the end** (the track starts at sample 0 of
every chunk), so its num_chunks chunks are identical and the result is reproducible.
"""
from __future__ import annotations

import numpy as np


def check_input_length(input_length: int) -> None:
  """ValueError unless input_length is a positive number of samples."""
  if int(input_length) < 1:
    raise ValueError(f'input_length must be a positive number of samples, got {input_length}.')


def _check_audio(audio: np.ndarray) -> np.ndarray:
  audio = np.asarray(audio)
  if audio.ndim != 1:
    raise ValueError(f'audio must be a mono waveform of shape (num_samples,), got shape '
                     f'{audio.shape}; mix down to mono before cropping.')
  return audio


def chunk_starts(num_samples: int, input_length: int, num_chunks: int = 16) -> np.ndarray:
  """Start samples (num_chunks,) of the reference's evaluation chunks of a track.

  hop = floor((num_samples − input_length) / num_chunks) and start_i = i · hop. For a track no
  longer than input_length every start is 0 (the track is padded at the end, see eval_chunks).
  """
  check_input_length(input_length)
  if int(num_chunks) < 1:
    raise ValueError(f'num_chunks must be >= 1, got {num_chunks}.')
  if num_samples < 0:
    raise ValueError(f'num_samples must be >= 0, got {num_samples}.')
  hop = max(int(num_samples) - int(input_length), 0) // int(num_chunks)
  return np.arange(int(num_chunks), dtype=np.int64) * hop


def pad_to(audio: np.ndarray, input_length: int, offset: int = 0) -> np.ndarray:
  """Zero-pads a track shorter than input_length so that it starts at `offset`."""
  audio = _check_audio(audio)
  if not 0 <= offset <= input_length - audio.shape[0]:
    raise ValueError(f'offset {offset} does not fit a track of {audio.shape[0]} samples into '
                     f'{input_length}.')
  out = np.zeros((input_length,), dtype=audio.dtype)
  out[offset:offset + audio.shape[0]] = audio
  return out


def eval_chunks(audio: np.ndarray, input_length: int, num_chunks: int = 16) -> np.ndarray:
  """The (num_chunks, input_length) evaluation chunks of one track, in its own dtype."""
  audio = _check_audio(audio)
  check_input_length(input_length)
  if audio.shape[0] < input_length:
    audio = pad_to(audio, input_length)
  starts = chunk_starts(audio.shape[0], input_length, num_chunks)
  # One fancy-index gather copies exactly the chunks, without materialising the whole track twice.
  return audio[starts[:, None] + np.arange(input_length)[None, :]]


def crop_offset(num_samples: int, input_length: int, rng: np.random.Generator) -> int:
  """The reference's training offset: floor(U[0, 1) · (len − input_length)), 0 for short tracks."""
  if num_samples <= input_length:
    return 0
  return int(np.floor(rng.random() * (num_samples - input_length)))


def random_crop(audio: np.ndarray, input_length: int, rng: np.random.Generator) -> np.ndarray:
  """One training example of input_length samples from a track, in the track's dtype.

  Long tracks: a crop at the reference's offset. Short tracks: the whole track, zero-padded at a
  uniformly random offset in [0, input_length − len] (ddhf's rule for short clips).
  """
  audio = _check_audio(audio)
  check_input_length(input_length)
  n = audio.shape[0]
  if n < input_length:
    return pad_to(audio, input_length, int(rng.integers(0, input_length - n + 1)))
  offset = crop_offset(n, input_length, rng)
  return audio[offset:offset + input_length]
