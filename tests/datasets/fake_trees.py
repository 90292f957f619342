"""Tiny fake manual_dir trees for the builder tests: short tones plus deliberately bad files."""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import tensorflow_datasets as tfds

FORMAT_OF_EXT = {'.wav': 'WAV', '.flac': 'FLAC', '.mp3': 'MP3', '.ogg': 'OGG'}


def write_tone(path, seconds=0.25, rate=16000, channels=1, freq=440.0):
  """A sine tone at `rate` with `channels` channels, in the format the extension names."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  t = np.arange(int(round(seconds * rate))) / rate
  x = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
  if channels > 1:
    x = np.stack([x] * channels, axis=1)
  sf.write(path, x, rate, format=FORMAT_OF_EXT[os.path.splitext(path)[1].lower()])
  return path


def write_not_audio(path):
  """Text under an audio extension."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    f.write('this is a text file, not audio\n' * 20)
  return path


def write_empty(path):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  open(path, 'wb').close()
  return path


def write_truncated(path):
  """A one-second tone cut to half of its bytes."""
  write_tone(path, seconds=1.0, rate=44100)
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[: len(data) // 2])
  return path


BAD_WRITERS = {'not_audio': write_not_audio, 'empty': write_empty, 'truncated': write_truncated}


def build(builder_cls, manual_dir, data_dir, config=None):
  """Builds into data_dir and reads it back the way users do: {split: source}, metadata."""
  kwargs = {} if config is None else {'config': config}
  builder = builder_cls(data_dir=os.fspath(data_dir), **kwargs)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  name = builder.name if config is None else f'{builder.name}/{config.name}'
  sources = tfds.data_source(name, data_dir=os.fspath(data_dir), download=False)
  meta = tfds.builder(name, data_dir=os.fspath(data_dir)).info.metadata
  return sources, meta


def records(source):
  """{id: record} of a split, ids decoded to str."""
  out = {}
  for i in range(len(source)):
    r = source[i]
    out[r['id'].decode() if isinstance(r['id'], bytes) else r['id']] = r
  return out


def assert_skipped(meta, caplog, bad_paths):
  """Every bad file is in metadata['skipped'] and named in a warning; the count matches."""
  assert meta['skipped_files'] == len(bad_paths)
  assert len(meta['skipped']) == len(bad_paths)
  listed = {s.split(': ', 1)[0] for s in meta['skipped']}
  assert listed == set(bad_paths), (listed, bad_paths)
  warned = '\n'.join(r.getMessage() for r in caplog.records if r.levelname == 'WARNING')
  for p in bad_paths:
    assert p in warned, (p, warned)
