"""Decoding audio files into 16 kHz mono float blocks, with one clear error for every bad file.

soundfile (libsndfile >= 1.1) decodes WAV, FLAC, OGG/Vorbis, Opus, MP3 (MPEG layer I-III), AIFF,
AU, CAF, W64, RF64 and the rest of libsndfile's formats; soxr resamples. `iter_audio` decodes and
resamples block by block (soxr's streaming resampler gives the same samples as resampling the whole
file at once), so a caller that consumes blocks holds one block whatever the file's length;
`load_audio` joins the blocks for callers that want the whole clip.

Every way a file can be bad (missing, not audio, empty, truncated, corrupt, NaN/Inf samples,
samples far outside [-1, 1]) raises `AudioError`, a `ValueError` whose message is the single line
"PATH: reason", so that dataset builders can skip the file and report why, and the tagging CLI
can tell the user what is wrong with their file. File names need not be UTF-8: a path is given to
libsndfile as the bytes the file system holds, and messages show undecodable bytes as \\xNN.
"""
from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from hcnn_jax.data import containers

# 'HQ' is soxr's default and transparent for 16-bit audio; VHQ doubles the cost for no audible gain.
RESAMPLE_QUALITY = 'HQ'
# Samples (frames × channels) decoded per block: 1 MB of float32, whatever the channel count.
BLOCK_SAMPLES = 1 << 18
# Float files may hold any value; audio lies in [-1, 1] (a little beyond after clipping overs).
# Samples past this are no signal a model was trained on (a float file written with integer
# scaling reaches 2^31 at most), and near 1e19 a float32 power spectrogram overflows to NaN.
MAX_AMPLITUDE = float(1 << 31)

# MP3 headers without a Xing/Info frame only estimate the length (from the first frame's bitrate),
# so a slightly short decode is normal there; a truncated file falls far below the estimate.
_MP3_SHORTFALL_TOLERANCE = 0.02
_MP3_FRAME = 1152

# libsndfile's error codes (sndfile.h) → what a user can act on. MP3 files libsndfile cannot
# parse come back as code 7, whose text ("File does not exist ... (possibly a pipe?)") misleads.
_OPEN_ERRORS = {
    1: 'not a recognised audio format',
    3: 'malformed audio file',
    4: 'unsupported audio encoding',
    7: 'not a recognised audio format',
}


def display_path(path) -> str:
  """A path as one printable line: bytes that are not UTF-8 appear as \\xNN, controls escaped."""
  raw = os.fsencode(path)
  text = raw.decode('utf-8', 'backslashreplace')
  return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class AudioError(ValueError):
  """A file that cannot be used as audio; `path` and `reason` say which and why."""

  def __init__(self, path, reason: str):
    self.path = os.fsdecode(path)
    self.reason = ' '.join(str(reason).split())  # one line, whatever libsndfile said
    super().__init__(f'{display_path(self.path)}: {self.reason}')

  def __reduce__(self):
    # Exceptions pickle through their args; keep (path, reason) so they cross process pools.
    return (type(self), (self.path, self.reason))


_QUIET_LOCK = threading.Lock()


@contextlib.contextmanager
def _native_stderr_silenced(enabled: bool):
  """Points fd 2 at /dev/null around one libsndfile call: mpg123 prints resync notes and warnings
  straight to the C stderr, which would break the one line a bad file gets. Only for callers that
  decode in one thread (the tagger): other threads' stderr would be lost meanwhile."""
  if not enabled:
    yield
    return
  with _QUIET_LOCK:
    saved = os.dup(2)
    try:
      null = os.open(os.devnull, os.O_WRONLY)
      os.dup2(null, 2)
      os.close(null)
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def _libsndfile_reason(err: Exception) -> str:
  code = getattr(err, 'code', None)
  text = getattr(err, 'error_string', None) or str(err)
  if code in (1, 7):  # libsndfile's own text for these adds nothing, or misleads
    return f'not decodable as audio: {_OPEN_ERRORS[code]}'
  if 'SF_INFO struct incomplete' in text:  # a header whose rate or channel count is impossible
    return ('not decodable as audio: invalid header (sample rate, channel count or encoding '
            'out of range)')
  if code in _OPEN_ERRORS:
    return f'not decodable as audio: {_OPEN_ERRORS[code]} (libsndfile: {text})'
  return f'not decodable as audio (libsndfile: {text})'


def _open(path: str, quiet: bool) -> sf.SoundFile:
  """Opens a regular, non-empty, complete-looking file; AudioError for anything else."""
  if not os.path.lexists(path):
    raise AudioError(path, 'file not found')
  if not os.path.exists(path):
    raise AudioError(path, 'file not found (a broken symbolic link)')
  if not os.path.isfile(path):
    raise AudioError(path, 'not a regular file')
  try:
    size = os.path.getsize(path)
    if size == 0:
      raise AudioError(path, 'empty file (0 bytes)')
    # Before libsndfile: it would shorten these files silently (and mpg123 would print).
    missing = containers.shortfall(path, size)
  except OSError as e:
    raise AudioError(path, f'cannot be read ({e.strerror or e})') from e
  if missing:
    raise AudioError(path, missing)
  try:
    with _native_stderr_silenced(quiet):
      # The file system's bytes, not str: soundfile encodes str strictly, which fails on names
      # that are not UTF-8.
      f = sf.SoundFile(os.fsencode(path))
  except Exception as e:  # pylint: disable=broad-except
    # LibsndfileError, and TypeError / ValueError / RuntimeError from soundfile on odd headers.
    raise AudioError(path, _libsndfile_reason(e)) from e
  if f.samplerate <= 0 or f.channels <= 0:
    f.close()
    raise AudioError(path, f'invalid header: {f.samplerate} Hz, {f.channels} channels')
  return f


def _check_shortfall(path: str, fmt: str, declared: int, decoded: int) -> None:
  if decoded >= declared:
    return
  if fmt == 'MP3':
    slack = max(2 * _MP3_FRAME, int(_MP3_SHORTFALL_TOLERANCE * declared))
    if declared - decoded <= slack:
      return
  raise AudioError(path, f'truncated or corrupt: decoded {decoded} of the {declared} frames '
                         'the header declares')


def _check_samples(path: str, x: np.ndarray) -> None:
  if not x.size:
    return
  peak = float(np.max(np.abs(x)))
  if not np.isfinite(peak):
    raise AudioError(path, 'contains NaN or Inf samples')
  if peak > MAX_AMPLITUDE:
    raise AudioError(path, f'samples reach {peak:.3g}, far outside the [-1, 1] of audio; '
                           'rescale the file')


def iter_audio(path, sample_rate: int | None = 16000, mono: bool = True, *,
               block_samples: int = BLOCK_SAMPLES, quiet: bool = False
               ) -> Iterator[np.ndarray]:
  """Decodes a file block by block, resampled: float32 (n,) when mono, else (n, channels).

  Blocks are at most about `block_samples` input samples each. Every problem raises AudioError:
  those the header shows before the first block, the others (corrupt data, NaN, too few frames
  decoded) when they are met. A file shorter than one output sample (1 sample at 44.1 kHz, any
  file at 2^31 Hz) gives one silent sample rather than nothing. `quiet` silences the decoders'
  native stderr (single-threaded callers only).
  """
  path = os.fsdecode(path)
  if sample_rate is not None and sample_rate <= 0:
    raise ValueError(f'sample_rate must be positive or None, got {sample_rate}.')
  f = _open(path, quiet)
  with f:
    rate, channels, declared, fmt = f.samplerate, f.channels, f.frames, f.format
    out_channels = 1 if mono else channels
    # At most block_samples in, and at most about block_samples out when upsampling (1 Hz files).
    block = max(1, min(block_samples // channels,
                       block_samples * rate // (sample_rate or rate)))
    stream = None
    if sample_rate is not None and rate != sample_rate:
      stream = soxr.ResampleStream(rate, sample_rate, out_channels, dtype='float32',
                                   quality=RESAMPLE_QUALITY)
    # Reading a given number of frames also works where soundfile refuses to read "to the end"
    # (GSM 6.10, G.72x, NMS ADPCM, XI DPCM: libsndfile marks them non-seekable).
    quiet_reads = quiet and fmt == 'MP3'
    decoded = emitted = 0
    while True:
      try:
        with _native_stderr_silenced(quiet_reads):
          x = f.read(block, dtype='float32', always_2d=True)
      except Exception as e:  # pylint: disable=broad-except
        raise AudioError(path, f'truncated or corrupt: decoding failed after {decoded} frames '
                               f'({getattr(e, "error_string", None) or e})') from e
      decoded += x.shape[0]
      last = x.shape[0] < block
      _check_samples(path, x)
      x = x.mean(axis=1) if mono else x
      y = x if stream is None else stream.resample_chunk(x, last=last)
      if y.shape[0]:
        emitted += y.shape[0]
        yield y
      if last:
        break
  if decoded == 0:
    raise AudioError(path, 'no audio samples (0 frames)')
  _check_shortfall(path, fmt, declared, decoded)
  if emitted == 0:
    yield np.zeros((1,) if mono else (1, out_channels), np.float32)


def load_audio(path, sample_rate: int | None = 16000, mono: bool = True,
               dtype=np.float32) -> np.ndarray:
  """Decodes a whole audio file to floats (in [-1, 1] for any integer encoding).

  Args:
    path: file to read (wav, flac, ogg, mp3, or anything else libsndfile decodes); str or bytes.
    sample_rate: output rate; the file is resampled with soxr when it differs. None keeps the
      file's own rate.
    mono: average the channels into one.
    dtype: float dtype of the result.

  Returns:
    (num_samples,) when mono, else (num_samples, num_channels); at least one sample.

  Raises:
    AudioError: the file is missing, not audio, empty, truncated/corrupt, or holds NaN/Inf or
      samples far outside [-1, 1].
  """
  blocks = list(iter_audio(path, sample_rate, mono))
  x = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)
  return np.ascontiguousarray(x, dtype=dtype)


# int16 PCM ↔ float: soundfile's PCM_16 convention, so a 16-bit file read as floats comes back to
# its exact samples. The one definition of the scale: the pipeline and the train step use it too.
INT16_SCALE = 32768.0


def to_int16(x: np.ndarray) -> np.ndarray:
  """Floats in [-1, 1] → int16 PCM (scale `INT16_SCALE`), clipping what lies outside."""
  x = np.asarray(x, dtype=np.float64)
  return np.clip(np.round(x * INT16_SCALE), -32768, 32767).astype(np.int16)


def from_int16(x: np.ndarray, dtype=np.float32) -> np.ndarray:
  """int16 PCM → floats in [-1, 1): the inverse of `to_int16` for unclipped samples."""
  return (np.asarray(x, dtype=np.int16) / np.float32(INT16_SCALE)).astype(dtype)
