"""Harmonic filterbank: the reference's centres, the triangle formula, layout, module, gradients."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcnn_jax.frontends import (HarmonicFrontend, harmonic_center_frequencies, harmonic_filterbank,
                                harmonic_fundamentals, harmonic_spectrogram, power_spectrogram)
from hcnn_jax.frontends.harmonic import harmonic_filter_response, note_to_midi

SR = 16000


def reference_triangles(freqs, centres, q, alpha=0.1079, beta=24.7):
  """The reference's min(rising, falling) clipped at 0, in float64 numpy."""
  bw = (alpha * centres[None, :] + beta) / q
  d = freqs[:, None] - centres[None, :]
  return np.maximum(0.0, np.minimum(1.0 + 2.0 * d / bw, 1.0 - 2.0 * d / bw))


def test_reference_center_frequencies():
  f0, level = harmonic_fundamentals(SR, n_harmonic=6, semitone_scale=2, low_note='C1')
  assert level == 128 and f0.shape == (128,)
  np.testing.assert_allclose(f0[0], 32.7032, atol=1e-4)
  np.testing.assert_allclose(f0[-1], 1280.9748, atol=1e-4)
  # Quarter tones: every step is 2^(1/24).
  np.testing.assert_allclose(f0[1:] / f0[:-1], 2.0 ** (1 / 24), rtol=1e-12)
  centres = harmonic_center_frequencies(SR, 6, 2, 'C1')
  assert centres.shape == (768,)
  for n in range(1, 7):  # harmonic-major: index (n − 1)·128 + m
    np.testing.assert_allclose(centres[(n - 1) * 128:n * 128], n * f0, rtol=1e-12)
  np.testing.assert_allclose(centres[-1], 7685.85, atol=0.01)
  assert centres.max() < SR / 2


@pytest.mark.parametrize('sample_rate,n_harmonic,scale,low', [
    (16000, 6, 2, 'C1'), (16000, 1, 1, 'C1'), (16000, 7, 2, 'A0'), (22050, 5, 2, 'C2'),
    (8000, 3, 1, 'F#1')])
def test_grid_matches_librosa_rounding(sample_rate, n_harmonic, scale, low):
  librosa = pytest.importorskip('librosa')
  low_midi = librosa.note_to_midi(low)
  high_midi = librosa.note_to_midi(librosa.hz_to_note(sample_rate / (2 * n_harmonic)))
  level = (high_midi - low_midi) * scale
  expected = librosa.midi_to_hz(np.linspace(low_midi, high_midi, level + 1)[:-1])
  f0, got_level = harmonic_fundamentals(sample_rate, n_harmonic, scale, low)
  assert got_level == level and note_to_midi(low) == low_midi
  np.testing.assert_allclose(f0, expected, rtol=1e-10)


def test_filterbank_matches_numpy_formula_and_has_the_reference_zero_filter():
  f0, _ = harmonic_fundamentals()
  fb = np.asarray(harmonic_filterbank(jnp.asarray(f0), 1.0, sample_rate=SR, n_fft=512,
                                      n_harmonic=6))
  freqs = np.linspace(0, SR / 2, 257)
  expected = reference_triangles(freqs, harmonic_center_frequencies(), 1.0)
  assert fb.shape == (257, 768)
  np.testing.assert_allclose(fb, expected, atol=2e-5)
  # h = 1, m = 12 (46.25 Hz) falls between the 31.25-Hz bins at Q = 1: the only all-zero filter.
  np.testing.assert_array_equal(np.flatnonzero(fb.max(axis=0) == 0), [12])
  assert (np.asarray(harmonic_filterbank(f0, 0.9)).max(axis=0) > 0).all()
  # 'full' bandwidths: other α, β, Q follow the same formula.
  fb2 = np.asarray(harmonic_filterbank(f0, 1.7, 0.2, 10.0))
  np.testing.assert_allclose(fb2, reference_triangles(freqs, harmonic_center_frequencies(), 1.7,
                                                      0.2, 10.0), atol=2e-5)


@pytest.mark.parametrize('q', [0.5, 1.0, 2.0])
def test_peak_one_at_centres_and_support_half_bandwidth(q):
  f0 = np.array([100.0, 440.0, 1000.0])
  centres = (np.arange(1, 4)[:, None] * f0).reshape(-1)
  bw = (0.1079 * centres + 24.7) / q
  at_centres = np.asarray(harmonic_filter_response(centres, f0, q, n_harmonic=3))
  np.testing.assert_allclose(np.diag(at_centres), 1.0, atol=1e-6)
  inside = np.asarray(harmonic_filter_response(
      np.concatenate([centres - 0.49 * bw, centres + 0.49 * bw]), f0, q, n_harmonic=3))
  edges = np.asarray(harmonic_filter_response(
      np.concatenate([centres - 0.5 * bw, centres + 0.5 * bw, centres - 0.6 * bw,
                      centres + 0.6 * bw]), f0, q, n_harmonic=3))
  j = np.arange(9)
  np.testing.assert_allclose(inside[j, j], 0.02, atol=1e-4)
  np.testing.assert_allclose(inside[j + 9, j], 0.02, atol=1e-4)
  for k in range(4):
    np.testing.assert_allclose(edges[j + 9 * k, j], 0.0, atol=1e-5)


def test_spectrogram_layout_is_pitch_time_harmonic(make_signal):
  x = np.stack([make_signal('chord', 4000), make_signal('chirp', 4000)])
  f0, level = harmonic_fundamentals(SR, n_harmonic=3, semitone_scale=1, low_note='C2')
  out = np.asarray(harmonic_spectrogram(x, f0, 1.0, sample_rate=SR, n_harmonic=3))
  assert out.shape == (2, level, 1 + 4000 // 256, 3)
  spec = np.asarray(power_spectrogram(x, n_fft=512, hop_length=256), np.float64)
  fb = reference_triangles(np.linspace(0, SR / 2, 257),
                           harmonic_center_frequencies(SR, 3, 1, 'C2'), 1.0)
  flat = np.einsum('bkt,kj->btj', spec, fb)  # (B, T, H·level), harmonic-major
  for n in range(3):
    np.testing.assert_allclose(out[..., n], flat[:, :, n * level:(n + 1) * level].transpose(0, 2, 1),
                               rtol=2e-4, atol=1e-3)
  # A 440-Hz tone is loudest near the pitch row of A4 in the first harmonic channel.
  tone = np.sin(2 * np.pi * 440.0 * np.arange(4000) / SR).astype(np.float32)[None]
  h = np.asarray(harmonic_spectrogram(tone, f0, 1.0, sample_rate=SR, n_harmonic=3))
  assert abs(f0[h[0, :, 8, 0].argmax()] - 440.0) < 15


def test_frontend_output_db_and_batchnorm(make_signal):
  fe = HarmonicFrontend(n_harmonic=4)
  x = jnp.asarray(np.stack([make_signal('chord', 3000)] * 2))
  level, frames, h = fe.output_shape(3000)
  assert (frames, h) == (1 + 3000 // 256, 4)
  variables = fe.init(jax.random.key(0), x)
  assert set(variables['params']) == {'bw_Q', 'hstft_bn'}
  assert variables['params']['hstft_bn']['scale'].shape == (4,)
  y, updates = fe.apply(variables, x, train=True, mutable=['batch_stats'])
  assert y.shape == (2, level, frames, h)
  f0, _ = fe.fundamentals()
  db = 10 * np.log10(np.maximum(np.asarray(harmonic_spectrogram(
      x, f0, 1.0, sample_rate=SR, n_harmonic=4)), 1e-10))
  mean = db.mean(axis=(0, 1, 2))
  np.testing.assert_allclose(updates['batch_stats']['hstft_bn']['mean'], 0.1 * mean, rtol=1e-3)
  np.testing.assert_allclose(np.asarray(y).mean(axis=(0, 1, 2)), 0.0, atol=1e-3)
  raw = HarmonicFrontend(n_harmonic=4, input_norm=False)
  y_raw = raw.apply(raw.init(jax.random.key(0), x), x)
  np.testing.assert_allclose(y_raw, db, rtol=1e-4, atol=1e-3)
  assert np.asarray(y_raw).min() >= -100.0


@pytest.mark.parametrize('learn_bw,learn_f0,expected', [
    ('only_Q', False, {'bw_Q'}), ('fix', False, set()), ('full', False, {'bw_Q', 'bw_alpha', 'bw_beta'}),
    ('only_Q', True, {'bw_Q', 'f0_shift'}), ('fix', True, {'f0_shift'}),
    ('full', True, {'bw_Q', 'bw_alpha', 'bw_beta', 'f0_shift'})])
def test_trainable_filter_parameters_per_mode(learn_bw, learn_f0, expected):
  fe = HarmonicFrontend(learn_bw=learn_bw, learn_f0=learn_f0)
  shapes = jax.eval_shape(fe.init, jax.random.key(0), jnp.zeros((1, 2048)))['params']
  assert set(shapes) - {'hstft_bn'} == expected
  assert all(shapes[k].shape == () for k in expected - {'f0_shift'})
  if learn_f0:
    assert shapes['f0_shift'].shape == (128,)


# Together these differentiate Q, α, β and f0 in each mode that trains them.
@pytest.mark.parametrize('learn_bw,learn_f0', [('only_Q', False), ('fix', True), ('full', True)])
def test_gradients_reach_every_filter_parameter(make_signal, learn_bw, learn_f0):
  fe = HarmonicFrontend(learn_bw=learn_bw, learn_f0=learn_f0)  # the reference's 128 × 6 at Q = 1
  x = jnp.asarray(make_signal('chord', 2048)[None] + 0.1 * make_signal('noise', 2048)[None])
  variables = fe.init(jax.random.key(0), x)
  filt = {k: v for k, v in variables['params'].items() if k != 'hstft_bn'}
  assert filt
  w = jax.random.normal(jax.random.key(1), (1, 128, 9, 6))

  def loss(p):
    out = fe.apply({**variables, 'params': {**variables['params'], **p}}, x)
    return jnp.sum(out * w)

  # Q = 1 leaves one filter all zero (its rows sit at the dB floor): no NaN may come from it.
  grads = jax.jit(jax.grad(loss))(filt)
  for name, g in grads.items():
    g = np.asarray(g)
    assert np.isfinite(g).all(), name
    assert np.abs(g).max() > 0, name
  if learn_f0:  # each shift moves all harmonics of its fundamental, so nearly all get a gradient
    assert (np.asarray(grads['f0_shift']) != 0).mean() > 0.9


def test_learned_f0_keeps_the_harmonic_tie(make_signal):
  fe = HarmonicFrontend(n_harmonic=3, learn_f0=True, input_norm=False)
  x = jnp.asarray(make_signal('chord', 2048)[None])
  variables = fe.init(jax.random.key(0), x)
  f0_grid, level = fe.fundamentals()
  shift = jnp.zeros((level,)).at[:level // 2].set(12.0)  # the lower half one octave up
  params = {**variables['params'], 'f0_shift': shift}
  f0, q, _, _ = fe.filters(params)
  expected_f0 = f0_grid * np.where(np.arange(level) < level // 2, 2.0, 1.0)
  np.testing.assert_allclose(f0, expected_f0, rtol=1e-5)
  assert float(q) == 1.0
  # Every harmonic of a moved fundamental moves with it: the module equals the fixed-grid
  # function evaluated at the moved fundamentals.
  out = fe.apply({'params': params}, x)
  want = 10 * np.log10(np.maximum(np.asarray(harmonic_spectrogram(
      x, expected_f0, 1.0, sample_rate=SR, n_harmonic=3)), 1e-10))
  np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-3)


def test_errors_are_clear():
  with pytest.raises(ValueError, match='above Nyquist'):
    harmonic_fundamentals(16000, n_harmonic=7, semitone_scale=4)
  with pytest.raises(ValueError, match='n_harmonic must be'):
    harmonic_center_frequencies(n_harmonic=0)
  with pytest.raises(ValueError, match='semitone_scale'):
    harmonic_center_frequencies(semitone_scale=0)
  with pytest.raises(ValueError, match='No fundamental fits.*fewer harmonics'):
    harmonic_center_frequencies(n_harmonic=300)
  with pytest.raises(ValueError, match='No fundamental fits'):
    harmonic_center_frequencies(low_note='C8')
  with pytest.raises(ValueError, match="not a note name"):
    harmonic_center_frequencies(low_note='H2')
  with pytest.raises(ValueError, match='learn_bw'):
    HarmonicFrontend(learn_bw='none').output_shape(16000)
  with pytest.raises(ValueError, match='more than n_fft // 2'):
    HarmonicFrontend().output_shape(200)
  with pytest.raises(ValueError, match='above Nyquist'):
    HarmonicFrontend(n_harmonic=7, semitone_scale=4).init(jax.random.key(0), jnp.zeros((1, 2048)))
