"""Mel filterbank, mel/log-mel spectrogram, DCT and MFCC against librosa and scipy."""
import importlib

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import pytest
import scipy.fft

M = importlib.import_module('hcnn_jax.frontends.mel')

TOL = 1e-4  # relative to the maximum, float32 against librosa's float64 filters


def _rel_err(ours, ref):
  return float(np.max(np.abs(np.asarray(ours, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.mark.parametrize('htk', [True, False])
def test_mel_scale_matches_librosa_and_round_trips(htk):
  f = np.array([0.0, 31.25, 440.0, 999.0, 1000.0, 1001.0, 4000.0, 8000.0])
  np.testing.assert_allclose(M.hz_to_mel(f, htk), librosa.hz_to_mel(f, htk=htk), rtol=1e-12)
  m = M.hz_to_mel(f, htk)
  np.testing.assert_allclose(M.mel_to_hz(m, htk), f, atol=1e-9)
  np.testing.assert_allclose(M.mel_to_hz(m, htk), librosa.mel_to_hz(m, htk=htk), rtol=1e-12)
  # The same functions trace under jit (float32 there).
  np.testing.assert_allclose(jax.jit(lambda z: M.hz_to_mel(z, htk))(jnp.asarray(f)), m, rtol=1e-5)


@pytest.mark.parametrize('sr,n_fft,n_mels,f_min,f_max,htk,norm', [
    (16000, 512, 128, 0.0, None, True, None),    # short-chunk / attention front-end
    (16000, 512, 96, 0.0, 8000.0, True, None),   # FCN / musicnn / CRNN front-end
    (16000, 513, 96, 0.0, None, True, None),     # odd n_fft: bins at k·sr/n_fft
    (22050, 2048, 128, 30.0, 11000.0, False, 'slaney'),
    (16000, 256, 40, 100.0, 7000.0, False, None),
])
def test_filterbank_matches_librosa(sr, n_fft, n_mels, f_min, f_max, htk, norm):
  ours = M.mel_filterbank(sr, n_fft, n_mels, f_min, f_max, htk, norm)
  ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=f_min, fmax=f_max, htk=htk,
                            norm=norm).T
  assert ours.shape == (n_fft // 2 + 1, n_mels) and ours.dtype == np.float32
  assert _rel_err(ours, ref) < 1e-6


@pytest.mark.parametrize('kind,n_fft,hop,length,n_mels,htk,norm,power', [
    ('chirp', 512, 256, 16000, 128, True, None, 2.0),
    ('chord', 1024, 333, 12345, 64, False, 'slaney', 2.0),
    ('noise', 513, 160, 7001, 40, True, None, 1.0),
])
def test_mel_spectrogram_matches_librosa(make_signal, kind, n_fft, hop, length, n_mels, htk,
                                         norm, power):
  x = make_signal(kind, length)
  ref = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=16000, n_fft=n_fft,
                                       hop_length=hop, n_mels=n_mels, htk=htk, norm=norm,
                                       power=power, pad_mode='reflect')
  ours = M.mel_spectrogram(x, 16000, n_fft, hop, n_mels, htk=htk, norm=norm, power=power)
  assert ours.shape == ref.shape == (n_mels, 1 + length // hop)
  assert _rel_err(ours, ref) < TOL
  log = M.log_mel_spectrogram(x, 16000, n_fft, hop, n_mels, htk=htk, norm=norm, power=power,
                              top_db=80.0)
  ref_db = librosa.power_to_db(ref ** (2.0 / power), ref=1.0, amin=1e-10, top_db=80.0)
  # float32 against float64: the quietest bins kept (80 dB under the peak) carry the float32
  # spectrum's absolute rounding as a relative error of ~1e-4, i.e. ~1e-3 dB (1.03e-3 seen, and
  # the summation order of the STFT moves with XLA's thread pool). A wrong filter or scale is
  # off by tenths of a dB or more.
  np.testing.assert_allclose(log, ref_db, atol=5e-3)


@pytest.mark.parametrize('norm', ['ortho', None])
def test_dct_matrix_matches_scipy(norm):
  x = np.random.default_rng(0).standard_normal((3, 40))
  ours = x @ M.dct_matrix(40, 13, norm)
  np.testing.assert_allclose(ours, scipy.fft.dct(x, type=2, norm=norm, axis=-1)[:, :13],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kind,kwargs', [
    ('chord', dict()),                                         # librosa's own defaults (Slaney)
    ('noise', dict(n_mfcc=13, n_mels=40, htk=True, norm=None, hop_length=160, lifter=22.0)),
    ('chirp', dict(n_fft=1024, hop_length=255, top_db=None)),
])
def test_mfcc_matches_librosa(make_signal, kind, kwargs):
  x = make_signal(kind, 9001)
  ours = M.mfcc(x, 16000, **kwargs)
  ref_kwargs = dict(n_mfcc=20, n_fft=512, hop_length=256, n_mels=128, htk=False, norm='slaney',
                    top_db=80.0, lifter=0.0)
  ref_kwargs.update(kwargs)
  n_mfcc, lifter, top_db = (ref_kwargs.pop(k) for k in ('n_mfcc', 'lifter', 'top_db'))
  # librosa.feature.mfcc(y=...) is exactly this with top_db=80; spelt out to vary top_db.
  mel = librosa.feature.melspectrogram(y=x.astype(np.float64), sr=16000, pad_mode='reflect',
                                       **ref_kwargs)
  ref = librosa.feature.mfcc(S=librosa.power_to_db(mel, top_db=top_db), n_mfcc=n_mfcc,
                             lifter=lifter)
  if top_db == 80.0 and lifter == 0.0 and ref_kwargs['norm'] == 'slaney':
    # librosa.feature.mfcc's own `norm` is the DCT's; its mel filters keep their Slaney default.
    mel_kwargs = {k: v for k, v in ref_kwargs.items() if k != 'norm'}
    direct = librosa.feature.mfcc(y=x.astype(np.float64), sr=16000, pad_mode='reflect',
                                  n_mfcc=n_mfcc, **mel_kwargs)
    np.testing.assert_allclose(direct, ref, rtol=1e-6, atol=1e-6)
  ref_kwargs['n_mfcc'] = n_mfcc
  assert ours.shape == ref.shape == (ref_kwargs['n_mfcc'], 1 + 9001 // ref_kwargs['hop_length'])
  assert _rel_err(ours, ref) < TOL


def test_batched_mfcc_clips_each_example_on_its_own(chord, noise):
  x = np.stack([chord[:6000], 1e-4 * noise[:6000]])
  batched = M.mfcc(x)
  assert batched.shape == (2, 20, 1 + 6000 // 256)
  for i in range(2):
    np.testing.assert_allclose(batched[i], M.mfcc(x[i]), rtol=1e-5, atol=1e-3)


def test_jit_grad_and_bfloat16(chirp):
  x = jnp.asarray(chirp[:4000])
  fn = lambda y: M.mel_spectrogram(y, n_mels=32, hop_length=100)
  eager = fn(x)
  np.testing.assert_allclose(jax.jit(fn)(x), eager, atol=1e-5 * float(eager.max()))
  g = jax.grad(lambda y: jnp.mean(M.log_mel_spectrogram(y, n_mels=32)))(x)
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).max()) > 0
  g = jax.grad(lambda y: jnp.mean(M.mfcc(y)))(jnp.zeros(4000))  # silence: all at amin
  assert bool(jnp.all(jnp.isfinite(g)))
  low = M.mel_spectrogram(x, n_mels=32, hop_length=100, dtype=jnp.bfloat16)
  assert low.dtype == jnp.bfloat16
  assert _rel_err(low, np.asarray(eager)) < 2e-2  # bf16 keeps ~3 significant digits


def test_bad_arguments_raise_clear_errors():
  with pytest.raises(ValueError, match='f_max'):
    M.mel_filterbank(16000, 512, f_max=9000.0)
  with pytest.raises(ValueError, match='norm'):
    M.mel_filterbank(16000, 512, norm='area')
  with pytest.raises(ValueError, match='n_mfcc'):
    M.mfcc(np.zeros(2000, np.float32), n_mfcc=50, n_mels=40)
  with pytest.raises(ValueError, match='lifter'):
    M.mfcc(np.zeros(2000, np.float32), lifter=-1.0)
