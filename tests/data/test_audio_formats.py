"""load_audio / iter_audio on what libsndfile reads beyond WAV/FLAC/OGG/MP3: the codecs soundfile
cannot read "to the end", truncated containers, extreme lengths and rates, loud floats, names that
are not UTF-8, random bytes. Every file is written by soundfile itself (or cut from one)."""
import os
import struct

import numpy as np
import pytest
import soundfile as sf
import soxr

from hcnn_jax.data import audio, containers
from hcnn_jax.data.audio import AudioError, iter_audio, load_audio


def _tone(num, rate, freq=440.0, channels=1, amp=0.5):
  x = (amp * np.sin(2 * np.pi * freq * np.arange(num) / rate)).astype(np.float32)
  return np.stack([x] * channels, axis=1) if channels > 1 else x


def _dominant_freq(x, rate):
  spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return np.argmax(spec) * rate / len(x)


# libsndfile marks these non-seekable; soundfile's read() of "all frames" refused them with
# "frames must be specified for non-seekable files".
@pytest.mark.parametrize('fmt,subtype,rate', [
    ('WAV', 'GSM610', 8000), ('AIFF', 'GSM610', 8000), ('W64', 'GSM610', 8000),
    ('WAV', 'G721_32', 8000), ('AU', 'G721_32', 8000), ('AU', 'G723_24', 8000),
    ('AU', 'G723_40', 8000), ('WAV', 'NMS_ADPCM_16', 8000), ('WAV', 'NMS_ADPCM_24', 8000),
    ('WAV', 'NMS_ADPCM_32', 8000), ('XI', 'DPCM_16', 44100), ('XI', 'DPCM_8', 44100)])
def test_codecs_soundfile_cannot_read_to_the_end(tmp_path, fmt, subtype, rate):
  path = tmp_path / f'a.{fmt.lower()}'
  sf.write(path, _tone(rate // 2, rate), rate, format=fmt, subtype=subtype)
  with sf.SoundFile(path) as f:
    assert not f.seekable()
    with pytest.raises(ValueError, match='frames must be specified'):
      f.read()
  x = load_audio(path)
  # Block codecs pad their last block (WAV GSM: up to 2 × 320 samples, G.72x: a few bytes).
  assert 8000 <= len(x) <= 8000 + 16000 * 640 // rate
  assert abs(_dominant_freq(x[:8000], 16000) - 440.0) < 10.0


def _cut(path, frac):
  data = path.read_bytes()
  cut = path.with_name('cut_' + path.name)
  cut.write_bytes(data[:int(len(data) * frac)])
  return cut


@pytest.mark.parametrize('fmt,subtype,ext', [
    ('WAV', 'PCM_16', 'wav'), ('WAVEX', 'FLOAT', 'wav'), ('AU', 'PCM_16', 'au'),
    ('AIFF', 'PCM_24', 'aiff'), ('AIFF', 'GSM610', 'aiff'), ('W64', 'PCM_16', 'w64'),
    ('RF64', 'PCM_16', 'rf64'), ('CAF', 'PCM_16', 'caf'), ('CAF', 'ALAC_16', 'caf'),
    ('OGG', 'VORBIS', 'ogg'), ('OGG', 'OPUS', 'opus'), ('MP3', 'MPEG_LAYER_III', 'mp3'),
    ('SVX', 'PCM_16', 'svx')])
@pytest.mark.parametrize('frac', [0.1, 0.5, 0.9])
def test_truncated_containers_are_errors(tmp_path, fmt, subtype, ext, frac):
  path = tmp_path / f'whole.{ext}'
  rate = 48000 if subtype == 'OPUS' else 16000
  sf.write(path, _tone(rate * 2, rate), rate, format=fmt, subtype=subtype)
  assert containers.shortfall(path, os.path.getsize(path)) is None
  assert len(load_audio(path)) >= 31000  # the whole file decodes
  cut = _cut(path, frac)
  with pytest.raises(AudioError) as info:
    load_audio(cut)
  assert info.value.path == str(cut)
  assert 'truncated' in info.value.reason or 'malformed' in info.value.reason, info.value.reason


def test_a_w64_cut_to_a_tenth_names_the_missing_bytes(tmp_path):
  path = tmp_path / 'long.w64'
  sf.write(path, _tone(16000 * 3, 16000), 16000, format='W64', subtype='PCM_16')
  cut = _cut(path, 0.1)
  with sf.SoundFile(cut) as f:  # what libsndfile alone makes of it: a shorter file
    assert 0 < f.frames < 16000 * 3 // 5
  with pytest.raises(AudioError, match=r'truncated: the W64 data chunk lacks \d+ bytes'):
    load_audio(cut)


@pytest.mark.parametrize('num,rate,expected', [
    (1, 16000, 1), (1, 44100, 1), (1, 8000, 2), (3, 1, 48000), (1000, 2 ** 31 - 1, 1),
    (1000, 2 ** 20, 15)])
def test_any_length_and_rate_gives_at_least_one_sample(tmp_path, num, rate, expected):
  path = tmp_path / 'odd.wav'
  sf.write(path, _tone(num, rate, freq=min(440.0, rate / 4)), rate, subtype='FLOAT')
  x = load_audio(path)
  assert x.shape == (expected,) and np.isfinite(x).all()


def test_blocks_equal_the_whole_file_and_soxr(tmp_path):
  path = tmp_path / 'stereo.wav'
  x = np.random.default_rng(0).uniform(-0.5, 0.5, (44100 * 2 + 17, 2)).astype(np.float32)
  sf.write(path, x, 44100, subtype='FLOAT')
  small = list(iter_audio(path, block_samples=2000))
  assert len(small) > 40 and max(len(b) for b in small) <= 1000  # 1000 frames in a block
  whole = load_audio(path)
  np.testing.assert_array_equal(np.concatenate(small), whole)
  np.testing.assert_array_equal(whole, soxr.resample(x.mean(axis=1), 44100, 16000))
  both = load_audio(path, mono=False)
  assert both.shape == (len(whole), 2)


def test_loud_floats_pass_and_absurd_ones_are_refused(tmp_path):
  ok = tmp_path / 'overs.wav'
  sf.write(ok, _tone(800, 16000, amp=3.0), 16000, subtype='FLOAT')
  assert np.abs(load_audio(ok)).max() == pytest.approx(3.0, rel=1e-3)
  for amp in (1e19, 1e12):
    bad = tmp_path / f'amp{amp:g}.wav'
    sf.write(bad, _tone(800, 16000, amp=amp), 16000, subtype='FLOAT')
    with pytest.raises(AudioError, match=r'samples reach 1e\+\d+, far outside'):
      load_audio(bad)
  assert audio.MAX_AMPLITUDE >= 2.0 ** 31


def test_names_that_are_not_utf8(tmp_path):
  raw = os.path.join(os.fsencode(tmp_path), b'caf\xe9.wav')
  sf.write(raw, _tone(1600, 16000), 16000)
  for path in (raw, os.fsdecode(raw)):
    assert len(load_audio(path)) == 1600
  bad = os.path.join(os.fsencode(tmp_path), b'not\xff.wav')
  with open(bad, 'wb') as f:
    f.write(b'x' * 100)
  with pytest.raises(AudioError) as info:
    load_audio(bad)
  assert str(info.value).startswith(f'{tmp_path}/not\\xff.wav: not decodable as audio')
  str(info.value).encode('utf-8')  # printable anywhere: no lone surrogates


def test_random_bytes_and_impossible_headers_say_what_is_wrong(tmp_path):
  rnd = tmp_path / 'song.mp3'
  rnd.write_bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes())
  with pytest.raises(AudioError) as info:
    load_audio(rnd)
  assert 'not a recognised audio format' in info.value.reason
  assert 'does not exist' not in info.value.reason and 'pipe' not in info.value.reason
  wav = tmp_path / 'rate.wav'
  sf.write(wav, _tone(800, 8000), 8000, subtype='PCM_16')
  data = bytearray(wav.read_bytes())
  data[24:28] = struct.pack('<I', 2 ** 31)  # a rate no int32 holds
  wav.write_bytes(bytes(data))
  with pytest.raises(AudioError, match='not decodable as audio: invalid header'):
    load_audio(wav)


def test_an_unexpected_ogg_without_end_of_stream_is_truncated(tmp_path):
  path = tmp_path / 'a.ogg'
  sf.write(path, _tone(32000, 16000), 16000, format='OGG')
  data = bytearray(path.read_bytes())
  # Clear the end-of-stream flag of the last page (RFC 3533: header_type bit 0x04); a stream cut
  # at a page boundary looks like this.
  last = data.rfind(b'OggS')
  data[last + 5] &= ~0x04 & 0xFF
  path.write_bytes(bytes(data))
  assert containers.shortfall(path, len(data)) == 'truncated: the Ogg stream has no ' \
                                                   'end-of-stream page'
