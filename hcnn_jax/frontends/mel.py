"""Mel filterbank, mel spectrogram, log-mel and MFCC: numpy for the fixed matrices, jnp at run time.

The matrices follow librosa's definitions (`librosa.filters.mel`, `scipy.fft.dct` type II) so the
outputs compare directly with librosa; they are laid out (n_in, n_out) so that a spectrogram
(..., n_in, T) maps with one contraction over its frequency axis. htk=True with norm=None is the
torchaudio 0.3.0 `MelSpectrogram` filterbank used by every mel model of the reference zoo.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hcnn_jax.frontends.stft import amplitude_to_db, power_spectrogram

# Slaney's (Auditory Toolbox) mel scale: linear below 1 kHz, logarithmic above.
_SLANEY_F_SP = 200.0 / 3.0
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = np.log(6.4) / 27.0


def _xp(x):
  """jnp for traced/JAX arrays, numpy otherwise: the scales serve both the fixed matrices and jit."""
  return jnp if isinstance(x, jax.Array) else np


def hz_to_mel(f, htk: bool = True):
  """Frequency in Hz to mels: HTK 2595·log10(1 + f/700), or Slaney's piecewise scale."""
  xp = _xp(f)
  f = xp.asarray(f, dtype=xp.float64 if xp is np else None)
  if htk:
    return 2595.0 * xp.log10(1.0 + f / 700.0)
  linear = f / _SLANEY_F_SP
  safe = xp.maximum(f, _SLANEY_MIN_LOG_HZ)  # keeps log() finite on the branch where() drops
  log_part = _SLANEY_MIN_LOG_MEL + xp.log(safe / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
  return xp.where(f >= _SLANEY_MIN_LOG_HZ, log_part, linear)


def mel_to_hz(m, htk: bool = True):
  """Mels to Hz, the inverse of `hz_to_mel` on the same scale."""
  xp = _xp(m)
  m = xp.asarray(m, dtype=xp.float64 if xp is np else None)
  if htk:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
  linear = _SLANEY_F_SP * m
  log_part = _SLANEY_MIN_LOG_HZ * xp.exp(_SLANEY_LOGSTEP * (m - _SLANEY_MIN_LOG_MEL))
  return xp.where(m >= _SLANEY_MIN_LOG_MEL, log_part, linear)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int = 128, f_min: float = 0.0,
                   f_max: float | None = None, htk: bool = True,
                   norm: str | None = None) -> np.ndarray:
  """Triangular mel filters over the one-sided FFT bins, (n_fft // 2 + 1, n_mels) float32.

  Equals `librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=f_min,
  fmax=f_max, htk=htk, norm=norm).T`. norm='slaney' scales each triangle to unit area
  (2 / bandwidth in Hz); None keeps peak 1 (torchaudio's and the reference models').
  """
  f_max = sample_rate / 2.0 if f_max is None else float(f_max)
  if n_mels < 1:
    raise ValueError(f'n_mels must be >= 1, got {n_mels}.')
  if not 0.0 <= f_min < f_max <= sample_rate / 2.0:
    raise ValueError(f'Mel range needs 0 <= f_min < f_max <= sample_rate / 2 = '
                     f'{sample_rate / 2.0}; got f_min={f_min}, f_max={f_max}.')
  if norm not in (None, 'slaney'):
    raise ValueError(f"mel norm must be None or 'slaney', got {norm!r}.")
  # k·sr/n_fft, librosa's bin frequencies; for odd n_fft they differ from the torchaudio-style
  # linspace(0, sr/2, n_bins) of `stft.fft_frequencies` (identical for even n_fft).
  fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
  edges = mel_to_hz(np.linspace(hz_to_mel(f_min, htk), hz_to_mel(f_max, htk), n_mels + 2), htk)
  widths = np.diff(edges)
  ramps = edges[:, None] - fft_freqs[None, :]
  rising = -ramps[:-2] / widths[:-1, None]
  falling = ramps[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(rising, falling))
  if norm == 'slaney':
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
  return weights.T.astype(np.float32)


def apply_filterbank(spec: jnp.ndarray, fb: np.ndarray, dtype=None) -> jnp.ndarray:
  """(..., n_in, T) × fixed (n_in, n_out) → (..., n_out, T), in `dtype` (default: spec's).

  float32 contracts at HIGHEST precision so accelerators (TF32/bf16 passes by default) still
  match librosa; lower dtypes take the fast path they were asked for.
  """
  dtype = spec.dtype if dtype is None else jnp.dtype(dtype)
  precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
  return jnp.einsum('...ft,fm->...mt', spec.astype(dtype), jnp.asarray(fb, dtype),
                    precision=precision)


def mel_spectrogram(x: jnp.ndarray, sample_rate: int = 16000, n_fft: int = 512,
                    hop_length: int = 256, n_mels: int = 128, f_min: float = 0.0,
                    f_max: float | None = None, htk: bool = True, norm: str | None = None,
                    power: float = 2.0, win_length: int | None = None, center: bool = True,
                    pad_mode: str = 'reflect', dtype=None) -> jnp.ndarray:
  """Mel spectrogram of (..., L) → (..., n_mels, T), T = 1 + L // hop_length when centred.

  The STFT runs in float32 (FFTs have no bf16 kernel); `dtype` applies to the filterbank product.
  """
  spec = power_spectrogram(x, n_fft, hop_length, win_length, power, center, pad_mode)
  fb = mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max, htk, norm)
  return apply_filterbank(spec, fb, dtype)


def log_mel_spectrogram(x: jnp.ndarray, sample_rate: int = 16000, n_fft: int = 512,
                        hop_length: int = 256, n_mels: int = 128, f_min: float = 0.0,
                        f_max: float | None = None, htk: bool = True, norm: str | None = None,
                        power: float = 2.0, amin: float = 1e-10, top_db: float | None = None,
                        win_length: int | None = None, center: bool = True,
                        pad_mode: str = 'reflect') -> jnp.ndarray:
  """Mel spectrogram in dB, 10·log10(max(mel, amin)) (20· for power=1), optionally top_db-clipped."""
  mel = mel_spectrogram(x, sample_rate, n_fft, hop_length, n_mels, f_min, f_max, htk, norm,
                        power, win_length, center, pad_mode)
  multiplier = 10.0 if power == 2.0 else 20.0 / power
  return amplitude_to_db(mel, amin=amin, top_db=top_db, multiplier=multiplier)


def dct_matrix(n_in: int, n_out: int, norm: str | None = 'ortho') -> np.ndarray:
  """DCT-II as an (n_in, n_out) float32 matrix: y = x @ D keeps the first n_out coefficients.

  norm='ortho' and None match `scipy.fft.dct(x, type=2, norm=...)` (None is the factor-2 form).
  """
  if not 0 < n_out <= n_in:
    raise ValueError(f'DCT needs 1 <= n_out <= n_in = {n_in}, got n_out={n_out} '
                     '(e.g. n_mfcc must not exceed n_mels).')
  if norm not in (None, 'ortho'):
    raise ValueError(f"DCT norm must be None or 'ortho', got {norm!r}.")
  n = np.arange(n_in)[:, None]
  k = np.arange(n_out)[None, :]
  basis = np.cos(np.pi * k * (2 * n + 1) / (2.0 * n_in))
  if norm == 'ortho':
    scale = np.full(n_out, np.sqrt(2.0 / n_in))
    scale[0] = np.sqrt(1.0 / n_in)
    basis = basis * scale[None, :]
  else:
    basis = 2.0 * basis
  return basis.astype(np.float32)


def mfcc(x: jnp.ndarray, sample_rate: int = 16000, n_mfcc: int = 20, n_fft: int = 512,
         hop_length: int = 256, n_mels: int = 128, htk: bool = False, norm: str = 'slaney',
         top_db: float | None = 80.0, f_min: float = 0.0, f_max: float | None = None,
         dct_norm: str | None = 'ortho', lifter: float = 0.0, win_length: int | None = None,
         center: bool = True, pad_mode: str = 'reflect', dtype=None) -> jnp.ndarray:
  """MFCC of (..., L) → (..., n_mfcc, T): DCT-II of the power mel spectrogram in dB.

  Matches `librosa.feature.mfcc(y=x, sr=..., n_mfcc=..., n_fft=..., hop_length=..., n_mels=...,
  htk=..., norm=..., pad_mode=...)`, except that top_db clips per example (librosa clips against the
  maximum of the whole array it is given, which for a batch mixes examples).
  """
  if lifter < 0:
    raise ValueError(f'lifter must be non-negative, got {lifter}.')
  mel = mel_spectrogram(x, sample_rate, n_fft, hop_length, n_mels, f_min, f_max, htk, norm,
                        2.0, win_length, center, pad_mode, dtype)
  db = amplitude_to_db(mel.astype(jnp.float32), top_db=top_db)
  coeffs = apply_filterbank(db, dct_matrix(n_mels, n_mfcc, dct_norm), dtype)
  if lifter > 0:
    # Cepstral liftering, librosa's 1 + (L/2)·sin(π(k+1)/L).
    k = np.arange(n_mfcc, dtype=np.float64)
    lift = 1.0 + (lifter / 2.0) * np.sin(np.pi * (k + 1) / lifter)
    coeffs = coeffs * jnp.asarray(lift[:, None], coeffs.dtype)
  return coeffs
