"""Framing, windows, STFT, power spectrogram and dB: pure jnp functions of the waveform.

Conventions (those of librosa and torch.stft): centre framing with reflect padding of n_fft // 2,
periodic Hann window, one-sided spectrum. Outputs are (..., n_bins, n_frames) so that they compare
directly with librosa; the module wrappers move them to NHWC for the back-ends.
"""
from __future__ import annotations

import numpy as np
import jax.numpy as jnp


def hann_window(win_length: int, periodic: bool = True) -> np.ndarray:
  """Hann window as a numpy constant (it is fixed, so it never enters the traced graph)."""
  n = np.arange(win_length)
  denom = win_length if periodic else max(win_length - 1, 1)
  return (0.5 - 0.5 * np.cos(2.0 * np.pi * n / denom)).astype(np.float32)


def padded_window(n_fft: int, win_length: int | None = None) -> np.ndarray:
  """Periodic Hann of win_length, zero-padded to n_fft around the centre (librosa's rule)."""
  win_length = n_fft if win_length is None else win_length
  if not 0 < win_length <= n_fft:
    raise ValueError(f'win_length must be in [1, n_fft={n_fft}], got {win_length}.')
  w = hann_window(win_length)
  left = (n_fft - win_length) // 2
  return np.pad(w, (left, n_fft - win_length - left))


def num_frames(num_samples: int, n_fft: int, hop_length: int, center: bool = True) -> int:
  """Number of STFT frames for a signal of num_samples."""
  if center:
    return 1 + num_samples // hop_length
  if num_samples < n_fft:
    return 0
  return 1 + (num_samples - n_fft) // hop_length


def frame(x: jnp.ndarray, frame_length: int, hop_length: int) -> jnp.ndarray:
  """Slices (..., L) into overlapping frames (..., n_frames, frame_length).

  When the hop divides the frame (the reference's 512 / 256), frames are k = frame_length / hop
  shifted views of the signal cut into hop-sized blocks, concatenated: reshapes and slices that
  XLA fuses into the consumer, where the general path is a gather.
  """
  n = 1 + (x.shape[-1] - frame_length) // hop_length
  if frame_length % hop_length == 0:
    k = frame_length // hop_length
    blocks = x[..., :(n + k - 1) * hop_length]
    blocks = blocks.reshape(*x.shape[:-1], n + k - 1, hop_length)
    return jnp.concatenate([blocks[..., j:j + n, :] for j in range(k)], axis=-1)
  idx = np.arange(frame_length)[None, :] + hop_length * np.arange(n)[:, None]
  return x[..., idx]


def _windowed_frames(x, n_fft, hop_length, win_length, center, pad_mode):
  hop_length = n_fft // 4 if hop_length is None else hop_length
  if hop_length < 1:
    raise ValueError(f'hop_length must be >= 1, got {hop_length}.')
  x = jnp.asarray(x)
  if center:
    pad = n_fft // 2
    if pad_mode == 'reflect' and x.shape[-1] <= pad:
      raise ValueError(f'Reflect padding needs more than n_fft // 2 = {pad} samples, '
                       f'got {x.shape[-1]}; use a longer input or pad_mode="constant".')
    widths = [(0, 0)] * (x.ndim - 1) + [(pad, pad)]
    x = jnp.pad(x, widths, mode=pad_mode)
  elif x.shape[-1] < n_fft:
    raise ValueError(f'Input of {x.shape[-1]} samples is shorter than n_fft={n_fft}.')
  return frame(x, n_fft, hop_length) * padded_window(n_fft, win_length)


def stft(x: jnp.ndarray, n_fft: int = 512, hop_length: int | None = None,
         win_length: int | None = None, center: bool = True,
         pad_mode: str = 'reflect') -> jnp.ndarray:
  """Complex one-sided STFT of (..., L) → (..., n_fft // 2 + 1, n_frames)."""
  frames = _windowed_frames(x, n_fft, hop_length, win_length, center, pad_mode)
  spec = jnp.fft.rfft(frames, n=n_fft, axis=-1)
  return jnp.swapaxes(spec, -1, -2)


def power_spectrogram(x: jnp.ndarray, n_fft: int = 512, hop_length: int | None = None,
                      win_length: int | None = None, power: float = 2.0,
                      center: bool = True, pad_mode: str = 'reflect') -> jnp.ndarray:
  """|STFT|^power, (..., n_bins, n_frames). power=2 is the power spectrogram, 1 the magnitude.

  (A DFT as two float32 matmuls instead of the FFT was measured slower on an H100, −3 % train and
  −12 % inference: bench/README.md.)
  """
  spec = stft(x, n_fft, hop_length, win_length, center, pad_mode)
  re, im = jnp.real(spec), jnp.imag(spec)
  # re² + im² avoids the sqrt (and its infinite gradient at 0) when power is 2.
  sq = re ** 2 + im ** 2
  if power == 2.0:
    return sq
  return sq ** (power / 2.0)


def amplitude_to_db(x: jnp.ndarray, amin: float = 1e-10, ref: float = 1.0,
                    top_db: float | None = None, multiplier: float = 10.0,
                    reduce_axes: tuple[int, ...] = (-2, -1)) -> jnp.ndarray:
  """multiplier·log10(max(x, amin)/ref); top_db clips to (max − top_db) over reduce_axes.

  multiplier 10 is for power, 20 for magnitude. With top_db, the maximum is taken per example over
  reduce_axes (the spectrogram's axes), so a batch never mixes its examples' levels.
  """
  db = multiplier * jnp.log10(jnp.maximum(x, amin))
  db = db - multiplier * np.log10(max(amin, ref))
  if top_db is not None:
    if top_db < 0:
      raise ValueError(f'top_db must be non-negative, got {top_db}.')
    db = jnp.maximum(db, jnp.max(db, axis=reduce_axes, keepdims=True) - top_db)
  return db


def fft_frequencies(sample_rate: int, n_fft: int) -> np.ndarray:
  """Centre frequency of each one-sided FFT bin, linspace(0, sr/2, n_fft//2 + 1)."""
  return np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
