"""load_audio decodes every format the builders meet and names each bad file with its reason."""
import pickle

import numpy as np
import pytest
import soundfile as sf

from hcnn_jax.data.audio import AudioError, from_int16, load_audio, to_int16


def _tone(seconds, rate, freq=440.0, channels=1):
  t = np.arange(int(seconds * rate)) / rate
  x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
  return np.stack([x] * channels, axis=1) if channels > 1 else x


def _dominant_freq(x, rate):
  spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return np.argmax(spec) * rate / len(x)


@pytest.mark.parametrize('fmt,ext,rate', [
    ('WAV', 'wav', 16000), ('WAV', 'wav', 44100), ('FLAC', 'flac', 8000),
    ('OGG', 'ogg', 22050), ('MP3', 'mp3', 44100)])
def test_formats_decode_and_resample(tmp_path, fmt, ext, rate):
  path = tmp_path / f'a.{ext}'
  sf.write(path, _tone(0.5, rate), rate, format=fmt)
  x = load_audio(path)
  assert x.dtype == np.float32 and x.ndim == 1
  # MP3 encoders add priming/padding samples; the others keep the exact duration.
  assert abs(len(x) - 8000) <= (2000 if fmt == 'MP3' else 1)
  assert abs(_dominant_freq(x, 16000) - 440.0) < 5.0


def test_stereo_is_mixed_down_and_kept_when_asked(tmp_path):
  path = tmp_path / 's.wav'
  left = _tone(0.25, 16000)
  sf.write(path, np.stack([left, -left * 0.5], axis=1), 16000, subtype='FLOAT')
  np.testing.assert_allclose(load_audio(path), 0.25 * left, atol=1e-6)
  both = load_audio(path, mono=False)
  assert both.shape == (4000, 2)
  np.testing.assert_allclose(both[:, 1], -0.5 * left, atol=1e-6)


def test_native_rate_and_dtype(tmp_path):
  path = tmp_path / 'n.wav'
  sf.write(path, _tone(0.1, 8000), 8000, subtype='FLOAT')
  x = load_audio(path, sample_rate=None, dtype=np.float64)
  assert x.dtype == np.float64 and len(x) == 800
  with pytest.raises(ValueError, match='sample_rate'):
    load_audio(path, sample_rate=0)


def _bad_files(tmp_path):
  """(path, expected words in the reason) for every kind of bad file."""
  text = tmp_path / 'text.wav'
  text.write_text('this is not audio at all\n' * 10)
  empty = tmp_path / 'empty.wav'
  empty.write_bytes(b'')
  header_only = tmp_path / 'header_only.wav'
  sf.write(header_only, np.zeros(0, np.float32), 16000)
  whole = tmp_path / 'whole.wav'
  sf.write(whole, _tone(0.2, 16000), 16000, subtype='PCM_16')
  cut_wav = tmp_path / 'cut.wav'
  cut_wav.write_bytes(whole.read_bytes()[:3000])
  flac = tmp_path / 'whole.flac'
  sf.write(flac, _tone(0.5, 16000), 16000)
  cut_flac = tmp_path / 'cut.flac'
  cut_flac.write_bytes(flac.read_bytes()[: len(flac.read_bytes()) // 2])
  mp3 = tmp_path / 'whole.mp3'
  sf.write(mp3, _tone(1.0, 44100), 44100, format='MP3')
  cut_mp3 = tmp_path / 'cut.mp3'
  cut_mp3.write_bytes(mp3.read_bytes()[: len(mp3.read_bytes()) // 2])
  nan = tmp_path / 'nan.wav'
  y = _tone(0.1, 16000)
  y[100] = np.nan
  sf.write(nan, y, 16000, subtype='FLOAT')
  return [
      (tmp_path / 'missing.wav', 'not found'),
      (tmp_path, 'not a regular file'),
      (text, 'not decodable'),
      (empty, 'empty'),
      (header_only, '0 frames'),
      (cut_wav, 'truncated'),
      (cut_flac, 'corrupt'),
      (cut_mp3, ''),  # libsndfile refuses to open it or decodes half: either reason names it
      (nan, 'NaN'),
  ]


def test_every_bad_file_raises_audio_error_with_path_and_reason(tmp_path):
  for path, words in _bad_files(tmp_path):
    with pytest.raises(AudioError) as info:
      load_audio(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert err.path == str(path)
    assert words in err.reason, (path, err.reason)
    assert str(err) == f'{path}: {err.reason}' and '\n' not in str(err)
    clone = pickle.loads(pickle.dumps(err))
    assert (clone.path, clone.reason) == (err.path, err.reason)


def test_int16_round_trip_and_clipping(tmp_path):
  x = np.array([-2.0, -1.0, -0.5, 0.0, 0.25, 0.999, 1.0, 3.0], np.float32)
  q = to_int16(x)
  assert q.dtype == np.int16
  np.testing.assert_array_equal(q, [-32768, -32768, -16384, 0, 8192, 32735, 32767, 32767])
  np.testing.assert_allclose(from_int16(q)[2:6], x[2:6], atol=1 / 32768)
  # A 16-bit file comes back to its exact samples through load_audio → to_int16.
  pcm = (np.arange(-3000, 3000, 7)).astype(np.int16)
  path = tmp_path / 'pcm.wav'
  sf.write(path, pcm, 16000, subtype='PCM_16')
  np.testing.assert_array_equal(to_int16(load_audio(path)), pcm)
  assert from_int16(pcm).dtype == np.float32
