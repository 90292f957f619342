"""The STFT's alternative code paths against the ones they replace: frame()'s reshape path (hop
divides the frame) against an explicit numpy gather and the power spectrogram against a float64
numpy reference, the harmonic front-end's filterbank precisions against 'highest', and the option
checks (HarmonicFrontend fields, build_hcnn). These paths exist for speed on accelerators; on CPU
they must give the reference's numbers."""
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcnn_jax.frontends import HarmonicFrontend
from hcnn_jax.frontends.harmonic import (FILTERBANK_PRECISIONS, harmonic_fundamentals,
                                         harmonic_spectrogram)
from hcnn_jax.models.hcnn import build_hcnn

# The package re-exports the function `stft`, which shadows the submodule as an attribute.
S = importlib.import_module('hcnn_jax.frontends.stft')

SR = 16000


def gather_frames(x, frame_length, hop_length):
  """The general path, written out: x[..., t·hop + i] for each frame t and offset i."""
  n = 1 + (x.shape[-1] - frame_length) // hop_length
  idx = np.arange(frame_length)[None, :] + hop_length * np.arange(n)[:, None]
  return x[..., idx]


def reference_power(x, n_fft, hop, center):
  """|rfft|² of reflect-padded, framed, Hann-windowed float64 frames, (n_bins, n_frames)."""
  x = np.asarray(x, np.float64)
  if center:
    x = np.pad(x, n_fft // 2, mode='reflect')
  frames = gather_frames(x, n_fft, hop) * S.padded_window(n_fft).astype(np.float64)
  return (np.abs(np.fft.rfft(frames, axis=-1)) ** 2).T


def rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


# (frame_length, hop): the first six take the reshape path (hop | frame), the rest the gather.
FRAME_CASES = [(8, 2), (8, 4), (8, 8), (9, 3), (12, 1), (512, 256),
               (8, 3), (7, 2), (10, 4), (4, 6), (513, 255)]


@pytest.mark.parametrize('frame_length,hop', FRAME_CASES)
@pytest.mark.parametrize('lead', [(), (3,), (2, 3)])
def test_frame_equals_explicit_gather(frame_length, hop, lead):
  rng = np.random.default_rng(frame_length * 100 + hop)
  for length in (frame_length, frame_length + 1, 3 * frame_length + 7, 2049):
    x = rng.standard_normal((*lead, length)).astype(np.float32)
    expected = gather_frames(x, frame_length, hop)
    n = 1 + (length - frame_length) // hop
    assert expected.shape == (*lead, n, frame_length)
    got = S.frame(jnp.asarray(x), frame_length, hop)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(np.asarray(got), expected)  # pure data movement: exact


def test_frame_reshape_path_under_jit():
  x = jnp.arange(2 * 1001, dtype=jnp.float32).reshape(2, 1001)
  got = jax.jit(S.frame, static_argnums=(1, 2))(x, 64, 16)
  np.testing.assert_array_equal(np.asarray(got), gather_frames(np.asarray(x), 64, 16))
  # Frame t starts at sample t·hop: the values of arange make that visible directly.
  np.testing.assert_array_equal(np.asarray(got[1, :, 0]), 1001 + 16 * np.arange(got.shape[1]))


@pytest.mark.parametrize('n_fft,hop', [(512, 256), (256, 100)])
@pytest.mark.parametrize('center', [True, False])
@pytest.mark.parametrize('kind', ['chirp', 'chord', 'noise'])
def test_power_matches_numpy(make_signal, kind, n_fft, hop, center):
  x = make_signal(kind, 5001)  # odd, not a multiple of either hop
  ref = reference_power(x, n_fft, hop, center)
  power = S.power_spectrogram(x, n_fft, hop, center=center)
  assert power.shape == ref.shape == (n_fft // 2 + 1, S.num_frames(5001, n_fft, hop, center))
  assert power.dtype == jnp.float32
  assert rel_err(power, ref) < 1e-5
  mag = S.power_spectrogram(x, n_fft, hop, center=center, power=1.0)
  assert rel_err(mag, np.sqrt(ref)) < 1e-5


def harmonic_input(make_signal, length=4000):
  # Noise under the chord keeps every filter well above float32's floor relative to the peak;
  # bins ~130 dB below it carry float32 rounding in either method (and in the FFT itself).
  return jnp.asarray(np.stack([make_signal('chord', length) + 0.1 * make_signal('noise', length),
                               make_signal('noise', length)]))


@pytest.mark.parametrize('precision', sorted(FILTERBANK_PRECISIONS))
def test_harmonic_precisions_agree_with_highest(make_signal, precision):
  x = harmonic_input(make_signal)
  f0, level = harmonic_fundamentals(SR, n_harmonic=6)
  kw = dict(sample_rate=SR, n_fft=512, hop_length=256, n_harmonic=6)
  ref = S.amplitude_to_db(harmonic_spectrogram(x, f0, 1.0, precision='highest', **kw))
  out = S.amplitude_to_db(harmonic_spectrogram(x, f0, 1.0, precision=precision, **kw))
  assert out.shape == ref.shape == (2, level, 1 + 4000 // 256, 6)
  assert float(jnp.max(jnp.abs(out - ref))) < 0.01
  assert float(jnp.max(ref)) > 0.0  # a real signal, not the dB floor everywhere


def test_harmonic_spectrogram_rejects_unknown_precision(make_signal):
  f0, _ = harmonic_fundamentals(SR, n_harmonic=6)
  with pytest.raises(ValueError, match='filterbank precision must be one of'):
    harmonic_spectrogram(harmonic_input(make_signal, 1000), f0, 1.0, sample_rate=SR,
                         precision='float32')


@pytest.mark.parametrize('field,value', [('filterbank_precision', 'fp8'),
                                         ('filterbank_precision', 'HIGHEST'),
                                         ('learn_bw', 'all')])
def test_harmonic_frontend_checks_its_fields(field, value):
  fe = HarmonicFrontend(**{field: value})
  with pytest.raises(ValueError, match=field):
    fe.output_shape(16000)
  with pytest.raises(ValueError, match=field):
    jax.eval_shape(fe.init, jax.random.key(0), jnp.zeros((1, 2048)))


def test_harmonic_frontend_accepts_every_listed_option():
  for precision in FILTERBANK_PRECISIONS:
    fe = HarmonicFrontend(filterbank_precision=precision)
    assert fe.output_shape(2048) == (128, 9, 6)


def test_build_hcnn_passes_the_options_on_and_has_no_speed_switches():
  model = build_hcnn(num_classes=3, width=4, filterbank_precision='high')
  assert model.frontend.filterbank_precision == 'high'
  assert build_hcnn(num_classes=3, width=4).frontend.filterbank_precision == 'default'
  # How it computes is hcnn_jax.speed's choice, not an option of the model.
  for option in ('pool_impl', 'pool_first', 'fold_bn', 'stft_method'):
    with pytest.raises(TypeError):
      build_hcnn(num_classes=3, width=4, **{option: None})


@pytest.mark.parametrize('option', [{'filterbank_precision': 'bad'}, {'learn_bw': 'nope'}])
def test_build_hcnn_rejects_bad_frontend_options_at_construction(option):
  # A bad front-end option must fail when the model is built, not at init.
  with pytest.raises(ValueError, match=next(iter(option))):
    build_hcnn(num_classes=3, width=4, **option)
