"""Constant-Q transform as fixed complex kernels applied at the full sample rate.

The filters are librosa's (`librosa.filters.wavelet` with gamma=0): for bin k at f_k = fmin·2^(k/B),
a periodic-Hann-windowed complex exponential of length l_k = Q·sr/f_k, Q = filter_scale/α,
α = (2^(2/B) − 1)/(2^(2/B) + 1), L1-normalised, and (scale=True) multiplied by √l_k — so a steady
tone gives what `librosa.cqt` gives.

Design choice: one resolution, no recursive downsampling. librosa computes the top octave at the
full rate, then halves the signal (soxr) for each lower octave; that is cheap on a CPU but is a
data-dependent chain of resamplers, awkward to batch, differentiate and shard. Here every bin is a
direct inner product with the signal at the full rate, so the transform is one linear map per
octave, jit/vmap/grad friendly and exact in float32. The cost is arithmetic: an octave whose longest
filter spans N_o samples costs T·N_o·2·B multiply-adds per example, and N_o doubles per octave
down, so the total is about 4·B·N_0·T (N_0 ≈ 8,500 samples for C1 at 16 kHz): ~70 MFLOP per second
of audio at hop 256 with 84 bins, versus ~1 MFLOP for the multirate path. Frames are never
materialised: the signal is cut into hop-sized blocks and each octave is a 1-D convolution over
blocks (kernel width ⌈N_o/hop⌉ blocks, hop input channels), which accelerators run as a plain conv.
Against `librosa.cqt` the top octave agrees to float precision; lower octaves differ by the
resamplers' ripple (about 1–3 % of the maximum), see tests/frontends/test_cqt.py.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

# Equivalent noise bandwidth of the Hann window in bins (librosa's WINDOW_BANDWIDTHS['hann']).
_HANN_BANDWIDTH = 1.50018310546875


def cqt_frequencies(n_bins: int = 84, fmin: float = 32.70, bins_per_octave: int = 12) -> np.ndarray:
  """Centre frequencies fmin·2^(k/bins_per_octave), k = 0..n_bins−1."""
  return fmin * 2.0 ** (np.arange(n_bins) / bins_per_octave)


def cqt_filter_lengths(sample_rate: int = 16000, fmin: float = 32.70, n_bins: int = 84,
                       bins_per_octave: int = 12, filter_scale: float = 1.0) -> np.ndarray:
  """Fractional filter length l_k = Q·sr/f_k in samples, Q = filter_scale/α (librosa's rule)."""
  alpha = (2.0 ** (2.0 / bins_per_octave) - 1) / (2.0 ** (2.0 / bins_per_octave) + 1)
  return (filter_scale / alpha) * sample_rate / cqt_frequencies(n_bins, fmin, bins_per_octave)


def _check(sample_rate, hop_length, fmin, n_bins, bins_per_octave, filter_scale):
  if hop_length < 1:
    raise ValueError(f'hop_length must be >= 1, got {hop_length}.')
  if n_bins < 1 or bins_per_octave < 1:
    raise ValueError(f'n_bins and bins_per_octave must be >= 1, got {n_bins}, {bins_per_octave}.')
  if fmin <= 0 or filter_scale <= 0:
    raise ValueError(f'fmin and filter_scale must be positive, got {fmin}, {filter_scale}.')
  f_top = cqt_frequencies(n_bins, fmin, bins_per_octave)[-1]
  alpha = (2.0 ** (2.0 / bins_per_octave) - 1) / (2.0 ** (2.0 / bins_per_octave) + 1)
  cutoff = f_top * (1 + 0.5 * _HANN_BANDWIDTH * alpha / filter_scale)
  if cutoff > sample_rate / 2.0:
    raise ValueError(f'CQT top bin {f_top:.1f} Hz has its band reaching {cutoff:.1f} Hz, above '
                     f'Nyquist {sample_rate / 2.0} Hz; reduce n_bins or fmin.')


@functools.lru_cache(maxsize=32)
def cqt_kernels(sample_rate: int = 16000, fmin: float = 32.70, n_bins: int = 84,
                bins_per_octave: int = 12, filter_scale: float = 1.0,
                scale: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """Time-domain kernels, centred: (offsets (N,), kernels (N, n_bins) complex128).

  Row j holds each filter's weight at the sample offsets[j] relative to the frame centre; the
  response at centre c is Σ_j x[c + offsets[j]]·kernels[j]. Values: w(m)·e^{-iω_k m}/Σw times √l_k
  (scale=True) or l_k (scale=False) — librosa's wavelet, so the result equals librosa's
  full-rate inner product Σ_k B[k]·X[k] up to its positive-frequency truncation (~1e-5).
  """
  _check(sample_rate, 1, fmin, n_bins, bins_per_octave, filter_scale)
  freqs = cqt_frequencies(n_bins, fmin, bins_per_octave)
  lengths = cqt_filter_lengths(sample_rate, fmin, n_bins, bins_per_octave, filter_scale)
  lo = int(np.floor(-lengths.max() / 2))  # the longest filter spans the widest offsets
  offsets = np.arange(lo, -lo + 1)
  kernels = np.zeros((len(offsets), n_bins), np.complex128)
  for k, (length, freq) in enumerate(zip(lengths, freqs)):
    m = np.arange(np.floor(-length / 2), np.floor(length / 2))
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(len(m)) / len(m))  # periodic Hann
    filt = window * np.exp(2j * np.pi * freq * m / sample_rate) / window.sum()
    # librosa's unscaled response carries a factor l_k (its FFT basis is rescaled by l_k/n_fft);
    # scale=True divides that by √l_k, as norm='ortho' would.
    filt *= np.sqrt(length) if scale else length
    # librosa's inner product pairs its filter at m with x[c − m], so it lands at offset −m.
    kernels[(-m - lo).astype(int), k] = filt
  return offsets, kernels


def cqt(x: jnp.ndarray, sample_rate: int = 16000, hop_length: int = 256, fmin: float = 32.70,
        n_bins: int = 84, bins_per_octave: int = 12, filter_scale: float = 1.0,
        scale: bool = True, power: float = 1.0, pad_mode: str = 'constant',
        dtype=None) -> jnp.ndarray:
  """Constant-Q magnitude (power=1) or power (power=2) of (..., L) → (..., n_bins, T).

  Frames are centred at t·hop_length, T = 1 + L // hop_length (as `librosa.cqt`, whose default
  zero padding pad_mode='constant' this shares; 'reflect' needs L longer than half the longest
  filter). `dtype` is the dtype of the kernel products (default float32).
  """
  _check(sample_rate, hop_length, fmin, n_bins, bins_per_octave, filter_scale)
  if power not in (1.0, 2.0):
    raise ValueError(f'CQT power must be 1 (magnitude) or 2 (power), got {power}.')
  x = jnp.asarray(x, jnp.float32)
  lead, length = x.shape[:-1], x.shape[-1]
  if length < 1:
    raise ValueError('CQT input is empty.')
  dtype = jnp.float32 if dtype is None else jnp.dtype(dtype)
  precision = jax.lax.Precision.HIGHEST if dtype == jnp.float32 else None
  offsets, kernels = cqt_kernels(sample_rate, float(fmin), n_bins, bins_per_octave,
                                 float(filter_scale), scale)
  n_frames = 1 + length // hop_length
  # Left padding is a whole number of blocks ≥ the widest half-filter, so frame t starts at block t.
  left = hop_length * math.ceil(-offsets[0] / hop_length)
  width = math.ceil((left + offsets[-1] + 1) / hop_length)  # blocks spanned by one frame
  right = (n_frames - 1 + width) * hop_length - left - length
  if pad_mode == 'reflect' and length <= max(left, right):
    raise ValueError(f'CQT reflect padding needs more than {max(left, right)} samples, got '
                     f'{length}; use pad_mode="constant" or a longer input.')
  xp = jnp.pad(x.reshape(-1, length), ((0, 0), (left, max(right, 0))), mode=pad_mode)
  xp = xp[:, :(n_frames - 1 + width) * hop_length]
  blocks = xp.reshape(xp.shape[0], -1, hop_length).astype(dtype)  # (B, n_blocks, hop)

  # One conv per octave (lowest first), each only as wide as its own longest filter.
  outputs = []
  for start in range(0, n_bins, bins_per_octave):
    k = kernels[:, start:start + bins_per_octave]
    used = np.nonzero(np.any(k != 0, axis=1))[0]
    first = (left + offsets[used[0]]) // hop_length
    last = (left + offsets[used[-1]]) // hop_length
    dense = np.zeros(((last - first + 1) * hop_length, k.shape[1]), np.complex128)
    rows = left + offsets - first * hop_length
    keep = (rows >= 0) & (rows < dense.shape[0])
    dense[rows[keep]] = k[keep]
    rhs = np.concatenate([dense.real, dense.imag], axis=1)
    rhs = rhs.reshape(last - first + 1, hop_length, -1)  # (W, hop, 2·n_oct): WIO
    lhs = blocks[:, first:first + n_frames - 1 + (last - first + 1)]
    out = jax.lax.conv_general_dilated(
        lhs, jnp.asarray(rhs, dtype), window_strides=(1,), padding='VALID',
        dimension_numbers=('NWC', 'WIO', 'NWC'), precision=precision)
    outputs.append(out.astype(jnp.float32))  # (B, T, 2·n_oct)
  n_oct = [o.shape[-1] // 2 for o in outputs]
  re = jnp.concatenate([o[..., :n] for o, n in zip(outputs, n_oct)], axis=-1)
  im = jnp.concatenate([o[..., n:] for o, n in zip(outputs, n_oct)], axis=-1)
  sq = re ** 2 + im ** 2
  if power == 2.0:
    out = sq
  else:
    # sqrt with a finite gradient at exact zeros (silence), where the true one is unbounded.
    positive = sq > 0
    out = jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
  return jnp.swapaxes(out, -1, -2).reshape(*lead, n_bins, n_frames)
