"""Single-rate CQT against two librosa oracles.

1. librosa's own CQT arithmetic without its multirate shortcut: `librosa.filters.wavelet` filters
   (gamma=0, L1 norm), rescaled and FFT'd as `librosa.core.constantq` does, applied to the
   rectangular-window, zero-padded centred STFT at the full rate, divided by √length. This is what our kernels
   claim to compute, so it must agree to float32 precision (1e-4 of the maximum) for every bin,
   any hop (also those librosa.cqt rejects) and any length.
2. `librosa.cqt` itself (sparsity=0). It halves the signal with soxr for each octave below the top
   one, and the resampler's passband ripple and its edge transients change magnitudes: measured
   ≤ 2.4 % of the maximum on these signals (top octave, computed at the full rate like ours,
   ≤ 1e-4). We hold it to 3.5 % overall, 1e-3 on the top octave, and identical per-frame peaks.
"""
import importlib

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

C = importlib.import_module('hcnn_jax.frontends.cqt')

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')  # librosa: n_fft > signal length


def _full_rate_librosa(y, sr, hop, fmin, n_bins, bpo, filter_scale, scale=True):
  freqs = librosa.cqt_frequencies(n_bins=n_bins, fmin=fmin, bins_per_octave=bpo)
  basis, lengths = librosa.filters.wavelet(freqs=freqs, sr=sr, filter_scale=filter_scale, norm=1,
                                           pad_fft=True, window='hann', gamma=0)
  n_fft = basis.shape[1]
  fft_basis = np.fft.fft(basis * lengths[:, None] / n_fft, axis=1)[:, :n_fft // 2 + 1]
  # = librosa.stft(y, n_fft, hop, window='ones', pad_mode='constant'), spelt out: several times
  # faster here, with the same centred zero padding and framing.
  padded = np.pad(y.astype(np.float64), n_fft // 2)
  frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:1 + len(y) // hop]
  out = fft_basis @ np.fft.rfft(frames, axis=1).T
  return np.abs(out / np.sqrt(lengths)[:, None] if scale else out)


def _rel_err(ours, ref):
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(ref))


@pytest.mark.parametrize('hop,length,fmin,n_bins,bpo,filter_scale', [
    (256, 16000, 32.70, 84, 12, 1.0),   # the default: C1..B7 at 16 kHz
    (333, 5003, 65.41, 48, 24, 0.8),    # odd hop and length, quarter tones, shorter filters
    (100, 4001, 110.0, 36, 12, 1.0),
])
def test_matches_librosa_filters_at_full_rate(make_signal, hop, length, fmin, n_bins, bpo,
                                              filter_scale):
  signals = np.stack([make_signal(k, length) for k in ('chirp', 'chord', 'noise')])
  ours = C.cqt(signals, 16000, hop, fmin, n_bins, bpo, filter_scale)
  assert ours.shape == (3, n_bins, 1 + length // hop)
  for i, y in enumerate(signals):
    ref = _full_rate_librosa(y, 16000, hop, fmin, n_bins, bpo, filter_scale)
    assert _rel_err(ours[i], ref) < 1e-4


def test_unscaled_and_power(chord):
  y = chord[:6000]
  ref = _full_rate_librosa(y, 16000, 256, 65.41, 48, 12, 1.0, scale=False)
  ours = C.cqt(y, fmin=65.41, n_bins=48, scale=False)
  assert _rel_err(ours, ref) < 1e-4
  power = C.cqt(y, fmin=65.41, n_bins=48, scale=False, power=2.0)
  assert _rel_err(power, ref ** 2) < 2e-4


def test_close_to_librosa_multirate_cqt(chord):
  tone = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(16000) / 16000)).astype(np.float32)
  ours = np.asarray(C.cqt(np.stack([chord, tone])))
  for i, (y, peak) in enumerate([(chord, 33), (tone, 45)]):  # A3 = 220 Hz, A4 = 440 Hz
    ref = np.abs(librosa.cqt(y.astype(np.float64), sr=16000, hop_length=256, fmin=32.70,
                             n_bins=84, sparsity=0))
    assert ours[i].shape == ref.shape
    assert _rel_err(ours[i], ref) < 0.035
    top = np.abs(ours[i, -12:] - ref[-12:]).max() / ref.max()
    assert top < 1e-3
    np.testing.assert_array_equal(ours[i].argmax(0), ref.argmax(0))
    assert np.all(ours[i, :, 1:-1].argmax(0) == peak)  # the end frames are half silence


def test_jit_vmap_grad_and_bfloat16(chirp, noise):
  x = jnp.asarray(np.stack([chirp[:3000], noise[:3000]]))
  fn = lambda y: C.cqt(y, fmin=220.0, n_bins=24, hop_length=160)
  eager = fn(x)
  scale = float(eager.max())
  np.testing.assert_allclose(jax.jit(fn)(x), eager, atol=1e-5 * scale)
  np.testing.assert_allclose(jax.vmap(fn)(x), eager, atol=1e-5 * scale)
  for y in (x, jnp.zeros_like(x)):  # silence: magnitude exactly 0, gradient must stay finite
    g = jax.grad(lambda z: jnp.sum(fn(z)))(y)
    assert bool(jnp.all(jnp.isfinite(g)))
  assert float(jnp.abs(jax.grad(lambda z: jnp.sum(fn(z)))(x)).max()) > 0
  low = C.cqt(x, fmin=220.0, n_bins=24, hop_length=160, dtype=jnp.bfloat16)
  assert _rel_err(low, np.asarray(eager)) < 3e-2  # bf16 products keep ~3 significant digits


def test_frequencies_and_lengths_follow_librosa():
  np.testing.assert_allclose(C.cqt_frequencies(84, 32.70, 12),
                             librosa.cqt_frequencies(n_bins=84, fmin=32.70), rtol=1e-12)
  freqs = librosa.cqt_frequencies(n_bins=48, fmin=65.41, bins_per_octave=24)
  lengths, _ = librosa.filters.wavelet_lengths(freqs=freqs, sr=16000, filter_scale=0.8, gamma=0)
  np.testing.assert_allclose(C.cqt_filter_lengths(16000, 65.41, 48, 24, 0.8), lengths, rtol=1e-9)


def test_bad_arguments_raise_clear_errors():
  x = np.zeros(2000, np.float32)
  with pytest.raises(ValueError, match='Nyquist'):
    C.cqt(x, fmin=32.70, n_bins=96)  # C1 + 8 octaves reaches past 8 kHz
  with pytest.raises(ValueError, match='power'):
    C.cqt(x, power=3.0)
  with pytest.raises(ValueError, match='reflect'):
    C.cqt(x, pad_mode='reflect')  # the C1 filter needs ~4,200 samples on each side
  with pytest.raises(ValueError, match='fmin'):
    C.cqt(x, fmin=0.0)
  with pytest.raises(ValueError, match='hop_length'):
    C.cqt(x, hop_length=0)
