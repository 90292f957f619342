"""Decoding audio files into 16 kHz mono float arrays, with one clear error for every bad file.

soundfile (libsndfile >= 1.1) decodes WAV, FLAC, OGG/Vorbis, Opus and MP3 (MPEG layer I-III);
soxr resamples. Every way a file can be bad (missing, not audio, empty, truncated, corrupt,
NaN/Inf samples) raises `AudioError`, a `ValueError` whose message is the single line
"PATH: reason", so that dataset builders can skip the file and report why, and the tagging CLI
can tell the user what is wrong with their file.
"""
from __future__ import annotations

import os
import struct

import numpy as np
import soundfile as sf
import soxr

# 'HQ' is soxr's default and transparent for 16-bit audio; VHQ doubles the cost for no audible gain.
RESAMPLE_QUALITY = 'HQ'

# MP3 headers without a Xing/Info frame only estimate the length (from the first frame's bitrate),
# so a slightly short decode is normal there; a truncated file falls far below the estimate.
_MP3_SHORTFALL_TOLERANCE = 0.02
_MP3_FRAME = 1152


class AudioError(ValueError):
  """A file that cannot be used as audio; `path` and `reason` say which and why."""

  def __init__(self, path, reason: str):
    self.path = os.fspath(path)
    self.reason = ' '.join(str(reason).split())  # one line, whatever libsndfile said
    super().__init__(f'{self.path}: {self.reason}')

  def __reduce__(self):
    # Exceptions pickle through their args; keep (path, reason) so they cross process pools.
    return (type(self), (self.path, self.reason))


def _riff_data_shortfall(path: str, file_size: int) -> int:
  """Bytes missing from a RIFF/WAVE `data` chunk, 0 when complete or not a plain WAV file.

  libsndfile silently shortens a WAV file whose data chunk runs past the end of the file,
  so truncation has to be read off the header.
  """
  with open(path, 'rb') as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b'RIFF' or head[8:12] != b'WAVE':
      return 0
    pos = 12
    while pos + 8 <= file_size:
      f.seek(pos)
      chunk_id, size = struct.unpack('<4sI', f.read(8))
      if chunk_id == b'data':
        # 0 and 0xFFFFFFFF mark streamed files whose writer never knew the length.
        if size in (0, 0xFFFFFFFF):
          return 0
        return max(0, pos + 8 + size - file_size)
      pos += 8 + size + (size & 1)
  return 0


def _check_shortfall(path: str, fmt: str, declared: int, decoded: int) -> None:
  if decoded >= declared:
    return
  if fmt == 'MP3':
    slack = max(2 * _MP3_FRAME, int(_MP3_SHORTFALL_TOLERANCE * declared))
    if declared - decoded <= slack:
      return
  raise AudioError(path, f'truncated or corrupt: decoded {decoded} of the {declared} frames '
                         'the header declares')


def _decode(path: str) -> tuple[np.ndarray, int]:
  """Reads every frame as float32 (frames, channels), checking the file on the way."""
  if not os.path.exists(path):
    raise AudioError(path, 'file not found')
  if not os.path.isfile(path):
    raise AudioError(path, 'not a regular file')
  size = os.path.getsize(path)
  if size == 0:
    raise AudioError(path, 'empty file (0 bytes)')
  try:
    f = sf.SoundFile(path)
  except (sf.LibsndfileError, RuntimeError, TypeError) as e:
    msg = getattr(e, 'error_string', None) or str(e)
    raise AudioError(path, f'not decodable as audio ({msg})') from e
  with f:
    declared, rate, fmt = f.frames, f.samplerate, f.format
    if rate <= 0:
      raise AudioError(path, f'invalid sample rate {rate}')
    try:
      x = f.read(dtype='float32', always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
      msg = getattr(e, 'error_string', None) or str(e)
      raise AudioError(path, f'truncated or corrupt: decoding failed ({msg})') from e
  if x.shape[0] == 0:
    raise AudioError(path, 'no audio samples (0 frames)')
  _check_shortfall(path, fmt, declared, x.shape[0])
  missing = _riff_data_shortfall(path, size)
  if missing:
    raise AudioError(path, f'truncated: the WAV data chunk lacks {missing} bytes')
  if not np.isfinite(x).all():
    raise AudioError(path, 'contains NaN or Inf samples')
  return x, rate


def load_audio(path, sample_rate: int | None = 16000, mono: bool = True,
               dtype=np.float32) -> np.ndarray:
  """Decodes an audio file to floats in [-1, 1].

  Args:
    path: file to read (wav, flac, ogg, mp3, or anything else libsndfile decodes).
    sample_rate: output rate; the file is resampled with soxr when it differs. None keeps the
      file's own rate.
    mono: average the channels into one.
    dtype: float dtype of the result.

  Returns:
    (num_samples,) when mono, else (num_samples, num_channels).

  Raises:
    AudioError: the file is missing, not audio, empty, truncated/corrupt, or holds NaN/Inf.
  """
  path = os.fspath(path)
  if sample_rate is not None and sample_rate <= 0:
    raise ValueError(f'sample_rate must be positive or None, got {sample_rate}.')
  x, rate = _decode(path)
  if mono:
    x = x.mean(axis=1, keepdims=True)
  if sample_rate is not None and rate != sample_rate:
    x = soxr.resample(x, rate, sample_rate, quality=RESAMPLE_QUALITY)
    if x.shape[0] == 0:
      raise AudioError(path, f'too short to resample from {rate} Hz to {sample_rate} Hz')
  x = np.asarray(x, dtype=dtype)
  return np.ascontiguousarray(x[:, 0] if mono else x)


def to_int16(x: np.ndarray) -> np.ndarray:
  """Floats in [-1, 1] → int16 PCM, clipping what lies outside.

  The scale is 32768 (soundfile's PCM_16 convention), so a 16-bit file read as floats comes back
  to its exact samples.
  """
  x = np.asarray(x, dtype=np.float64)
  return np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)


def from_int16(x: np.ndarray, dtype=np.float32) -> np.ndarray:
  """int16 PCM → floats in [-1, 1): the inverse of `to_int16` for unclipped samples."""
  return (np.asarray(x, dtype=np.int16) / np.float32(32768.0)).astype(dtype)
