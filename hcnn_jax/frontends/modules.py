"""Linen front-ends: waveform (B, L) float32 → NHWC features (B, F, T, C).

Each wraps the pure functions of stft.py / mel.py / cqt.py, and holds only what trains: the
BatchNorm over the single input channel (`spec_bn`, the reference's `BatchNorm2d(1)`), 2 params.
Fixed matrices are numpy constants built at trace time. The filterbank/DCT/CQT products run in
`dtype` (bf16 works); FFTs and the dB run in float32, because log10 of a power spectrum in bf16
loses the quiet bins. `output_shape(num_samples)` is pure arithmetic, so a model can reject a
too-short input before compiling anything.
"""
from __future__ import annotations

from typing import Any, Optional, Tuple

import chex
import jax.numpy as jnp
from flax import linen as nn

from hcnn_jax.frontends.cqt import cqt
from hcnn_jax.frontends.mel import mel_filterbank, mel_spectrogram, mfcc
from hcnn_jax.frontends.stft import amplitude_to_db, power_spectrogram
from hcnn_jax.models import blocks

Dtype = Any
Shape = Tuple[int, int, int]


class _SpectralFrontend(nn.Module):
  """Shared fields and tail: (B, F, T) features → (B, F, T, 1) → BatchNorm (`spec_bn`)."""
  sample_rate: int = 16000
  hop_length: int = 256
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None
  input_norm: bool = True

  def _num_frames(self, num_samples: int) -> int:
    if self.hop_length < 1:
      raise ValueError(f'{type(self).__name__}: hop_length must be >= 1, got {self.hop_length}.')
    return 1 + int(num_samples) // self.hop_length

  def _finish(self, features: jnp.ndarray, waveform: jnp.ndarray, train: bool) -> jnp.ndarray:
    chex.assert_shape(features, (waveform.shape[0], *self.output_shape(waveform.shape[-1])[:2]))
    x = features[..., None]
    if self.input_norm:
      x = blocks.batch_norm(train, self.bn_axis_name, self.dtype, name='spec_bn')(x)
    return x.astype(self.dtype)


class _StftFrontend(_SpectralFrontend):
  """An STFT-based front-end: centred, reflect-padded, periodic Hann (torchaudio's rule)."""
  n_fft: int = 512

  def _stft_frames(self, num_samples: int) -> int:
    if num_samples <= self.n_fft // 2:
      raise ValueError(f'{type(self).__name__} needs more than n_fft // 2 = {self.n_fft // 2} '
                       f'samples (reflect padding), got {num_samples}.')
    return self._num_frames(num_samples)  # = stft.num_frames(..., center=True)


class LinearFrontend(_StftFrontend):
  """Power STFT in dB + BN: (B, n_fft // 2 + 1, T, 1)."""

  def output_shape(self, num_samples: int) -> Shape:
    return self.n_fft // 2 + 1, self._stft_frames(num_samples), 1

  @nn.compact
  def __call__(self, waveform: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    spec = power_spectrogram(waveform.astype(jnp.float32), self.n_fft, self.hop_length)
    return self._finish(amplitude_to_db(spec), waveform, train)


class MelFrontend(_StftFrontend):
  """The reference zoo's front-end: power mel → 10·log10(max(·, 1e-10)) → BN: (B, n_mels, T, 1).

  Defaults are torchaudio 0.3.0's MelSpectrogram (HTK scale, no filter normalisation); f_max None
  means sample_rate / 2 (8 kHz at 16 kHz, as the reference sets it).
  """
  n_mels: int = 128
  f_min: float = 0.0
  f_max: Optional[float] = None
  htk: bool = True
  norm: Optional[str] = None

  def output_shape(self, num_samples: int) -> Shape:
    self._filterbank()  # validates the mel range before any shape is promised
    return self.n_mels, self._stft_frames(num_samples), 1

  def _filterbank(self):
    return mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max,
                          self.htk, self.norm)

  @nn.compact
  def __call__(self, waveform: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    mel = mel_spectrogram(waveform.astype(jnp.float32), self.sample_rate, self.n_fft,
                          self.hop_length, self.n_mels, self.f_min, self.f_max, self.htk,
                          self.norm, dtype=self.dtype)
    return self._finish(amplitude_to_db(mel.astype(jnp.float32)), waveform, train)


class MFCCFrontend(_StftFrontend):
  """MFCC (DCT-II of the dB Slaney mel, librosa's defaults) + BN: (B, n_mfcc, T, 1)."""
  n_mfcc: int = 20
  n_mels: int = 128
  f_min: float = 0.0
  f_max: Optional[float] = None
  htk: bool = False
  norm: Optional[str] = 'slaney'
  top_db: Optional[float] = 80.0

  def output_shape(self, num_samples: int) -> Shape:
    if not 0 < self.n_mfcc <= self.n_mels:
      raise ValueError(f'MFCCFrontend needs 1 <= n_mfcc <= n_mels = {self.n_mels}, '
                       f'got n_mfcc={self.n_mfcc}.')
    mel_filterbank(self.sample_rate, self.n_fft, self.n_mels, self.f_min, self.f_max, self.htk,
                   self.norm)
    return self.n_mfcc, self._stft_frames(num_samples), 1

  @nn.compact
  def __call__(self, waveform: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    coeffs = mfcc(waveform.astype(jnp.float32), self.sample_rate, self.n_mfcc, self.n_fft,
                  self.hop_length, self.n_mels, self.htk, self.norm, self.top_db, self.f_min,
                  self.f_max, dtype=self.dtype)
    return self._finish(coeffs.astype(jnp.float32), waveform, train)


class CQTFrontend(_SpectralFrontend):
  """Constant-Q power in dB (10·log10 max(|C|², 1e-10)) + BN: (B, n_bins, T, 1).

  Single-rate kernels (see cqt.py), zero-padded centred frames: any input length works.
  """
  n_bins: int = 84
  bins_per_octave: int = 12
  fmin: float = 32.70
  filter_scale: float = 1.0

  def output_shape(self, num_samples: int) -> Shape:
    if num_samples < 1:
      raise ValueError(f'CQTFrontend needs at least one sample, got {num_samples}.')
    return self.n_bins, self._num_frames(num_samples), 1

  @nn.compact
  def __call__(self, waveform: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    power = cqt(waveform.astype(jnp.float32), self.sample_rate, self.hop_length, self.fmin,
                self.n_bins, self.bins_per_octave, self.filter_scale, power=2.0,
                dtype=self.dtype)
    return self._finish(amplitude_to_db(power), waveform, train)


class RawFrontend(nn.Module):
  """The waveform itself as (B, L, 1, 1); no parameters (sample-level models squeeze it)."""
  sample_rate: int = 16000
  dtype: Dtype = jnp.float32

  def output_shape(self, num_samples: int) -> Shape:
    if num_samples < 1:
      raise ValueError(f'RawFrontend needs at least one sample, got {num_samples}.')
    return int(num_samples), 1, 1

  def __call__(self, waveform: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    chex.assert_rank(waveform, 2)
    return waveform[:, :, None, None].astype(self.dtype)
