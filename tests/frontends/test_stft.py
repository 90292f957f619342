"""STFT, power spectrogram and dB against librosa on the cases that usually break ports:
odd n_fft, odd hops, lengths that are odd or not a multiple of the hop, win_length < n_fft,
center=False; plus jit, vmap and gradients."""
import importlib

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest

# The package re-exports the function `stft`, which shadows the submodule as an attribute.
S = importlib.import_module('hcnn_jax.frontends.stft')

TOL = 1e-4  # float32 FFT vs librosa's float64-windowed complex64 STFT, relative to the maximum

# (signal, n_fft, hop, length, win_length, center): each row mixes several awkward choices.
CASES = [
    ('chirp', 256, 100, 4001, None, True),
    ('chord', 512, 256, 16000, None, True),
    ('noise', 513, 255, 7777, None, True),
    ('chirp', 1024, 333, 12345, 700, True),
    ('chord', 2048, 160, 9999, None, True),
    ('noise', 512, 160, 8000, 400, False),
    ('chirp', 513, 333, 5003, None, False),
    ('chord', 2048, 255, 2049, 1500, False),
]


def _rel_err(ours, ref):
  return float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize('kind,n_fft,hop,length,win,center', CASES)
def test_stft_and_power_match_librosa(make_signal, kind, n_fft, hop, length, win, center):
  x = make_signal(kind, length)
  ref = librosa.stft(x.astype(np.float64), n_fft=n_fft, hop_length=hop, win_length=win,
                     center=center, pad_mode='reflect')
  ours = S.stft(x, n_fft=n_fft, hop_length=hop, win_length=win, center=center)
  expected_frames = 1 + length // hop if center else 1 + (length - n_fft) // hop
  assert ours.shape == ref.shape == (n_fft // 2 + 1, expected_frames)
  assert S.num_frames(length, n_fft, hop, center) == expected_frames
  assert _rel_err(ours, ref) < TOL
  power = S.power_spectrogram(x, n_fft=n_fft, hop_length=hop, win_length=win, center=center)
  assert _rel_err(power, np.abs(ref) ** 2) < TOL
  mag = S.power_spectrogram(x, n_fft=n_fft, hop_length=hop, win_length=win, center=center,
                            power=1.0)
  assert _rel_err(mag, np.abs(ref)) < TOL


def test_batched_input_keeps_leading_axes(chord, noise):
  x = np.stack([chord[:5000], noise[:5000]])[None]  # (1, 2, L)
  out = S.power_spectrogram(x, n_fft=512, hop_length=160)
  assert out.shape == (1, 2, 257, 1 + 5000 // 160)
  ref = np.abs(librosa.stft(noise[:5000].astype(np.float64), n_fft=512, hop_length=160,
                            pad_mode='reflect')) ** 2
  assert _rel_err(out[0, 1], ref) < TOL


def test_constant_padding_matches_librosa_default(chirp):
  x = chirp[:3001]
  ref = librosa.stft(x.astype(np.float64), n_fft=512, hop_length=100, pad_mode='constant')
  assert _rel_err(S.stft(x, 512, 100, pad_mode='constant'), ref) < TOL


def test_window_and_frequencies():
  np.testing.assert_allclose(S.hann_window(400), librosa.filters.get_window('hann', 400),
                             atol=1e-7)
  w = S.padded_window(512, 301)
  assert w.shape == (512,) and w[:105].max() == 0 and w[105 + 301:].max() == 0
  np.testing.assert_allclose(S.fft_frequencies(16000, 512), librosa.fft_frequencies(sr=16000,
                                                                                     n_fft=512))


@pytest.mark.parametrize('top_db', [None, 80.0])
def test_db_matches_librosa(noise, chord, top_db):
  quiet = S.power_spectrogram(np.stack([noise, 1e-3 * chord]), n_fft=512, hop_length=256)
  quiet = quiet.at[0, :, :3].set(0.0)  # exact zeros hit amin
  db = S.amplitude_to_db(quiet, top_db=top_db)
  for i in range(2):  # top_db clips per example, against that example's own maximum
    ref = librosa.power_to_db(np.asarray(quiet[i]), ref=1.0, amin=1e-10, top_db=top_db)
    np.testing.assert_allclose(db[i], ref, atol=1e-3)
  mag = jnp.sqrt(quiet[1])
  np.testing.assert_allclose(
      S.amplitude_to_db(mag, amin=1e-5, multiplier=20.0, top_db=top_db),
      librosa.amplitude_to_db(np.asarray(mag), ref=1.0, amin=1e-5, top_db=top_db), atol=1e-3)


def test_bad_arguments_raise_clear_errors():
  x = np.zeros(300, np.float32)
  with pytest.raises(ValueError, match='n_fft // 2'):
    S.stft(x, n_fft=1024)
  with pytest.raises(ValueError, match='shorter than n_fft'):
    S.stft(x, n_fft=512, center=False)
  with pytest.raises(ValueError, match='win_length'):
    S.stft(x, n_fft=256, win_length=300)
  with pytest.raises(ValueError, match='hop_length'):
    S.stft(x, n_fft=256, hop_length=0)
  with pytest.raises(ValueError, match='top_db'):
    S.amplitude_to_db(jnp.ones((2, 2)), top_db=-1.0)


def test_jit_vmap_and_grad(chirp, noise):
  x = np.stack([chirp[:4001], noise[:4001]])
  fn = lambda y: S.power_spectrogram(y, n_fft=513, hop_length=333)
  eager = fn(x)
  np.testing.assert_allclose(jax.jit(fn)(x), eager, rtol=1e-5, atol=1e-5 * float(eager.max()))
  np.testing.assert_allclose(jax.vmap(fn)(x), eager, rtol=1e-5, atol=1e-5 * float(eager.max()))

  def loss(y):
    return jnp.mean(S.amplitude_to_db(S.power_spectrogram(y, n_fft=256, hop_length=100)))

  silent = np.zeros_like(x)  # |X|² = 0 everywhere: power 2 must still give finite gradients
  for y in (x, silent):
    g = jax.grad(loss)(jnp.asarray(y))
    assert g.shape == y.shape and bool(jnp.all(jnp.isfinite(g)))
  g = jax.grad(loss)(jnp.asarray(x))
  assert float(jnp.abs(g).max()) > 0

  # The gradient is the true one: |X|² is quadratic in x, so a central difference is exact up to
  # float32 rounding along any direction.
  weights = np.random.default_rng(2).uniform(size=(2, 129, 1 + 4001 // 100)).astype(np.float32)
  quad = lambda y: jnp.sum(weights * S.power_spectrogram(y, n_fft=256, hop_length=100))
  v = np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
  eps = 1e-2
  fd = (quad(x + eps * v) - quad(x - eps * v)) / (2 * eps)
  np.testing.assert_allclose(float(jnp.vdot(jax.grad(quad)(jnp.asarray(x)), v)), float(fd),
                             rtol=1e-3)
