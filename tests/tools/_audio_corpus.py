"""A corpus of audio files a tagger may be handed: valid in every format and subtype libsndfile
writes, odd (1 sample, 1 Hz, 2^31 - 1 Hz, 6 channels, loud floats), corrupted, truncated, and with
hostile names (not UTF-8, a newline, a leading '-').

`make_corpus(root)` returns [(path as bytes, kind)] where kind is 'valid' (must be tagged), 'bad'
(must be refused with one line naming it) or 'either' (damage no header can reveal, e.g. bytes
flipped inside PCM data, or a cut in a format that does not state its length: tagged or refused,
never a traceback). Every file is written by soundfile itself or derived from one it wrote.
"""
from __future__ import annotations

import os
import struct
from typing import List, Tuple

import numpy as np
import soundfile as sf

# Containers whose header states the audio's length, so that a cut file must be refused.
LENGTH_IN_HEADER = {'WAV', 'WAVEX', 'AU', 'AIFF', 'W64', 'RF64', 'CAF', 'OGG', 'MP3', 'SVX',
                    'FLAC'}
# Rates tried in turn until the format accepts one (MP3 and Opus take only a few).
RATES = (16000, 44100, 8000, 22050, 48000, 11025, 96000, 12000, 24000)
EXTENSIONS = {'WAV': 'wav', 'WAVEX': 'wav', 'AIFF': 'aiff', 'AU': 'au', 'RAW': 'raw',
              'OGG': 'ogg', 'MP3': 'mp3', 'FLAC': 'flac', 'CAF': 'caf', 'W64': 'w64',
              'RF64': 'rf64', 'IRCAM': 'sf', 'NIST': 'nist', 'MAT4': 'mat', 'MAT5': 'mat',
              'SVX': 'svx', 'XI': 'xi', 'VOC': 'voc', 'PAF': 'paf', 'PVF': 'pvf', 'HTK': 'htk',
              'SDS': 'sds', 'AVR': 'avr', 'SD2': 'sd2', 'MPC2K': 'mpc', 'WVE': 'wve'}


def tone(num: int, rate: int, channels: int = 1, amp: float = 0.4) -> np.ndarray:
  t = np.arange(num) / rate
  x = (amp * np.sin(2 * np.pi * min(440.0, rate / 4) * t)).astype(np.float32)
  return np.stack([x * (1 - 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else x


def _write(path: bytes, x, fmt: str, subtype: str, rates=RATES) -> bool:
  for rate in rates:
    try:
      sf.write(path, x, rate, format=fmt, subtype=subtype)
      with sf.SoundFile(path) as f:  # libsndfile reads back what it wrote (DWVW in AIFF: not)
        if f.frames > 0 and len(f.read(f.frames)) > 0:
          return True
    except Exception:  # pylint: disable=broad-except
      pass
  if os.path.exists(path):
    os.remove(path)
  return False


def make_corpus(root) -> List[Tuple[bytes, str]]:
  root = os.fsencode(root)
  os.makedirs(root, exist_ok=True)
  out: List[Tuple[bytes, str]] = []
  rng = np.random.default_rng(0)

  def p(name: str) -> bytes:
    return os.path.join(root, name.encode())

  # Every (format, subtype) soundfile can write, short and 2-channel on alternate entries.
  written = []
  for i, (fmt, subtypes) in enumerate(sorted((f, sf.available_subtypes(f))
                                             for f in sf.available_formats())):
    if fmt == 'RAW':  # headerless: nothing to read the rate from
      continue
    for j, subtype in enumerate(sorted(subtypes)):
      channels = 2 if (i + j) % 2 else 1
      path = p(f'v_{fmt}_{subtype}.{EXTENSIONS.get(fmt, "bin")}')
      if _write(path, tone(int(0.6 * 16000), 16000, channels), fmt, subtype):
        out.append((path, 'valid'))
        written.append((path, fmt, subtype))
  # Lengths, rates and channel counts.
  for n, rate, ch in [(1, 16000, 1), (1, 44100, 1), (1, 44100, 2), (2, 8000, 1), (100, 44100, 1),
                      (3, 1, 1), (20, 7, 2), (1000, 2 ** 31 - 1, 1), (5000, 2 ** 20, 1),
                      (16000 * 3, 16000, 6), (30000, 96000, 2), (24000, 48000, 1)]:
    path = p(f'v_len{n}_rate{rate}_ch{ch}.wav')
    sf.write(path, tone(n, rate, ch), rate, subtype='FLOAT')
    out.append((path, 'valid'))
  for amp in (2.0, 1e3, 1e6):
    path = p(f'v_float_amp{amp:g}.wav')
    sf.write(path, tone(8000, 16000, amp=amp), 16000, subtype='FLOAT')
    out.append((path, 'valid'))
  # Hostile names, valid audio.
  for raw in (b'v_caf\xe9_latin1.wav', b'v_bad\xff\xfe_bytes.flac', b'v_new\nline.wav',
              b'-v_dash.wav', b'v space \xc3\xa9\xe2\x99\xab.ogg'):
    path = os.path.join(root, raw)
    fmt = {b'wav': 'WAV', b'flac': 'FLAC', b'ogg': 'OGG'}[raw.rsplit(b'.', 1)[1]]
    sf.write(path, tone(12000, 16000), 16000, format=fmt)
    out.append((path, 'valid'))

  # Bad: not audio at all.
  for ext in ('mp3', 'wav', 'flac', 'ogg', 'aiff', 'caf'):
    path = p(f'b_random.{ext}')
    with open(path, 'wb') as f:
      f.write(rng.integers(0, 256, 3000, dtype=np.uint8).tobytes())
    out.append((path, 'bad'))
  for name, data in (('b_empty.wav', b''), ('b_text.mp3', b'these are my notes\n' * 30),
                     ('b_id3_only.mp3', b'ID3\x03\x00\x00\x00\x00\x00\x0aabcdefghij'),
                     ('b_riff_only.wav', b'RIFF\x24\x00\x00\x00WAVE'),
                     ('b_zeros.mp3', b'\x00' * 500)):
    path = p(name)
    with open(path, 'wb') as f:
      f.write(data)
    out.append((path, 'bad'))
  path = os.path.join(root, b'b_not\xe9_audio.wav')
  with open(path, 'wb') as f:
    f.write(b'not audio\n' * 40)
  out.append((path, 'bad'))
  out.append((p('b_missing.wav'), 'bad'))
  os.makedirs(p('b_a_folder.wav'))
  out.append((p('b_a_folder.wav'), 'bad'))
  os.symlink(p('nowhere.wav'), p('b_broken_link.wav'))
  out.append((p('b_broken_link.wav'), 'bad'))
  # Bad samples: NaN, Inf, a float amplitude no audio has (1e19 made the model's scores NaN).
  for name, value in (('nan', np.nan), ('inf', np.inf), ('huge', 1e19)):
    x = tone(8000, 16000)
    x[4000] = value
    path = p(f'b_float_{name}.wav')
    sf.write(path, x, 16000, subtype='FLOAT')
    out.append((path, 'bad'))
  # Bad headers: impossible rates and channel counts patched into a WAV.
  sf.write(p('header.tmp'), tone(800, 8000), 8000, format='WAV', subtype='PCM_16')
  with open(p('header.tmp'), 'rb') as f:
    good = bytearray(f.read())
  os.remove(p('header.tmp'))
  for name, offset, fmt, value in (('rate0', 24, '<I', 0), ('rate2e31', 24, '<I', 2 ** 31),
                                   ('ratemax', 24, '<I', 2 ** 32 - 1),
                                   ('channels0', 22, '<H', 0)):
    data = bytearray(good)
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path = p(f'b_header_{name}.wav')
    with open(path, 'wb') as f:
      f.write(bytes(data))
    out.append((path, 'bad'))

  # Truncated and corrupted copies of the valid files (1.5 s long, so that a cut drops frames).
  for path, fmt, subtype in written:
    if fmt in ('XI',):
      continue
    longer = path.replace(b'v_', b'long_', 1)
    if not _write(longer, tone(24000, 16000), fmt, subtype):
      continue
    with open(longer, 'rb') as f:
      data = f.read()
    os.remove(longer)
    for frac in (0.1, 0.5, 0.9):
      cut = path.replace(b'v_', f'cut{int(frac * 100)}_'.encode(), 1)
      with open(cut, 'wb') as f:
        f.write(data[:max(1, int(len(data) * frac))])
      out.append((cut, 'bad' if fmt in LENGTH_IN_HEADER else 'either'))
    flipped = bytearray(data)
    for k in rng.integers(len(data) // 4, len(data), 20):
      flipped[k] ^= 0xFF
    bent = path.replace(b'v_', b'flip_', 1)
    with open(bent, 'wb') as f:
      f.write(bytes(flipped))
    out.append((bent, 'either'))
  return out
