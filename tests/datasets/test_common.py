"""ManualAudioBuilder: shard plan, key order, clear errors, and builds past TFDS's shuffler limit.

TFDS's GeneratorBasedBuilder shuffles every split through `tensorflow_datasets.core.shuffle`,
which spills to `tf.io.gfile` files once a split passes `MAX_MEM_BUFFER_SIZE` (1 GB), i.e. it needs
TensorFlow, which we do not install. The subprocess test lowers that limit to a few KB, so a split
of a few hundred KB stands for a real one: the old-style builder then fails for want of
TensorFlow, ours builds, reads back, and never imports it.
"""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from datasets import common
import fake_trees

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _clip(key, seconds=None):
  return common.Clip(key=key, id=key, path=f'/nowhere/{key}.wav', labels=np.zeros(2, np.float32),
                     seconds=seconds)


def test_plan_shards_bounds_bytes_and_keeps_order():
  bytes_per_second = 2 * common.SAMPLE_RATE
  # 10 clips of the default 1 s in shards of 3 s: 3 + 3 + 3 + 1, in order.
  clips = [_clip(f'k{i}') for i in range(10)]
  shards = common.plan_shards(clips, 1.0, 3 * bytes_per_second)
  assert [len(s) for s in shards] == [3, 3, 3, 1]
  assert [c.key for s in shards for c in s] == [c.key for c in clips]
  # Per-clip lengths win over the default; a clip longer than the budget gets a shard alone.
  clips = [_clip('a', 1.0), _clip('b', 1.5), _clip('c', 10.0), _clip('d'), _clip('e', 0.5)]
  shards = common.plan_shards(clips, 2.0, 3 * bytes_per_second)
  assert [[c.key for c in s] for s in shards] == [['a', 'b'], ['c'], ['d', 'e']]
  assert common.plan_shards([], 1.0) == []
  with pytest.raises(ValueError, match='clip_seconds'):
    common.plan_shards(clips, 0.0)


def test_audio_is_stored_as_raw_int16_bytes():
  audio = common.features(3)['audio']
  assert audio.np_dtype == np.int16 and audio.shape == (None,)
  x = np.array([-32768, -1, 0, 1, 32767], np.int16)
  encoded = audio.encode_example(x)
  assert encoded == x.tobytes()      # 2 bytes a sample, no int64 widening
  np.testing.assert_array_equal(audio.decode_example_np(encoded), x)


class _Tiny(common.ManualAudioBuilder, skip_registration=True):
  """Every .wav in manual_dir, split by the name's prefix before '_'."""
  MANUAL_DOWNLOAD_INSTRUCTIONS = 'test tree'
  CLASS_NAMES = ('a', 'b')
  CLIP_SECONDS = 0.5
  SHARD_BYTES = 2 * common.SAMPLE_RATE  # two 0.5 s clips per shard

  def _make_splits(self, root):
    splits = {}
    for name in os.listdir(root):
      split, key = name.split('_', 1)
      splits.setdefault(split, []).append(common.Clip(
          key=key.split('.')[0], id=name, path=os.path.join(root, name),
          labels=np.zeros(2, np.float32)))
    return splits


def test_empty_split_duplicate_keys_and_undecodable_split_are_clear_errors(tmp_path, caplog):
  manual = tmp_path / 'manual'
  fake_trees.write_tone(manual / 'train_x.wav')
  fake_trees.write_tone(manual / 'train_x.flac')
  with pytest.raises(ValueError, match="key 'x' appears twice in the train split"):
    fake_trees.build(_Tiny, manual, tmp_path / 'd1')
  os.remove(manual / 'train_x.flac')
  fake_trees.write_empty(manual / 'test_y.wav')
  fake_trees.write_not_audio(manual / 'test_z.wav')
  with caplog.at_level(logging.WARNING), pytest.raises(
      ValueError, match=r'no file of the test split\(s\) could be decoded'):
    fake_trees.build(_Tiny, manual, tmp_path / 'd2')
  assert 'test_z.wav' in caplog.text
  assert not os.path.exists(tmp_path / 'd2' / '_tiny' / '1.1.0')  # nothing half-built is left

  class NoClips(_Tiny, skip_registration=True):
    def _make_splits(self, root):
      return {**super()._make_splits(root), 'validation': []}
  with pytest.raises(ValueError, match='validation split has no clips'):
    fake_trees.build(NoClips, manual, tmp_path / 'd3')


# Run in a fresh interpreter: other tests in this process may have imported TF-adjacent modules,
# and the shuffler limit must be patched before anything builds.
_SCRIPT = r'''
import json, os, sys
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle
shuffle.MAX_MEM_BUFFER_SIZE = 4096   # stands for the real 1 GB
import soundfile as sf
from array_record.python import array_record_module
from datasets import common
from test_common import _Tiny

manual, data_dir = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
# Full-scale white noise: nothing for any compressor to gain, so bytes on disk are bytes stored.
good = ['train_a', 'train_b', 'train_e', 'train_f', 'train_g', 'train_h', 'train_i']
for name in good:
  sf.write(os.path.join(manual, name + '.wav'), rng.integers(-32768, 32768, 8000, dtype=np.int16),
           16000, subtype='PCM_16')
for name in ('train_c', 'train_d'):   # one whole shard (c, d) of undecodable files
  open(os.path.join(manual, name + '.wav'), 'w').write('not audio\n')
sf.write(os.path.join(manual, 'test_z.wav'), np.zeros(8000, np.int16), 16000, subtype='PCM_16')

builder = _Tiny(data_dir=data_dir)
builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=manual))
split = builder.info.splits['train']
paths = [os.path.join(builder.data_dir, f) for f in sorted(os.listdir(builder.data_dir))
         if '-train.array_record-' in f]
samples = len(good) * 8000
record_bytes = sum(len(r) for p in paths for r in array_record_module.ArrayRecordReader(p).read_all())
reread = tfds.builder_from_directory(builder.data_dir)
source = reread.as_data_source(split='train')
records = [source[i] for i in range(len(source))]
out = dict(
    tf_imported='tensorflow' in sys.modules,
    num_bytes=int(split.num_bytes), shard_lengths=[int(n) for n in split.shard_lengths],
    num_files=len(paths), record_bytes_per_sample=record_bytes / samples,
    ids=[r['id'].decode() for r in records],
    dtypes=sorted({str(r['audio'].dtype) for r in records}),
    lengths=sorted({len(r['audio']) for r in records}),
    skipped=list(reread.info.metadata['skipped']),
    skipped_files=int(reread.info.metadata['skipped_files']))

# On disk, with array_record's compression and its 64 KiB blocks (a file is padded by up to
# ~128 KiB, nothing next to a real 256 MB shard): one shard of 3 MB of noise.
class OneShard(_Tiny, skip_registration=True):
  SHARD_BYTES = common.SHARD_BYTES

big = os.path.join(os.path.dirname(manual), 'big')
os.makedirs(big)
for i in range(6):
  sf.write(os.path.join(big, f'train_{i}.wav'),
           rng.integers(-32768, 32768, 16 * 16000, dtype=np.int16), 16000, subtype='PCM_16')
one = OneShard(data_dir=data_dir + '_big')
one.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=big))
(shard,) = [f for f in os.listdir(one.data_dir) if '-train.array_record-' in f]
out['file_bytes_per_sample'] = os.path.getsize(os.path.join(one.data_dir, shard)) / (6 * 16 * 16000)
out['tf_imported'] = out['tf_imported'] or 'tensorflow' in sys.modules


class OldStyle(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What the builders were: every example through TFDS's shuffler."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=common.features(2))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i, r in enumerate(records):
      yield i, {'audio': r['audio'], 'labels': r['labels'], 'id': r['id']}

try:
  OldStyle(data_dir=data_dir + '_old', file_format='array_record').download_and_prepare()
  out['old_style'] = 'built'
except Exception as e:
  out['old_style'] = f'{type(e).__name__}: {e}'
print('RESULT ' + json.dumps(out))
'''


def test_split_past_shuffler_limit_builds_without_tensorflow(tmp_path):
  manual = tmp_path / 'manual'
  os.makedirs(manual)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [REPO, HERE, os.environ.get('PYTHONPATH', '')]))
  proc = subprocess.run([sys.executable, '-c', _SCRIPT, str(manual), str(tmp_path / 'data')],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  lines = [l for l in proc.stdout.splitlines() if l.startswith('RESULT ')]
  assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
  out = json.loads(lines[-1][len('RESULT '):])

  # The split is far past the (patched) shuffler limit, and the build never imported TensorFlow.
  assert out['num_bytes'] > 20 * 4096
  assert out['tf_imported'] is False
  # The same examples through the old GeneratorBasedBuilder path do need TensorFlow: the patched
  # limit really sends a split of this size to the TF spill path.
  assert 'tensorflow' in out['old_style'], out['old_style']

  # Shards of at most two clips, one of them empty (both of its files undecodable), key order.
  assert out['shard_lengths'] == [2, 0, 2, 2, 1] and out['num_files'] == 5
  assert out['ids'] == ['train_a.wav', 'train_b.wav', 'train_e.wav', 'train_f.wav',
                        'train_g.wav', 'train_h.wav', 'train_i.wav']
  assert out['dtypes'] == ['int16'] and out['lengths'] == [8000]
  assert out['skipped_files'] == 2
  assert sorted(s.split(': ')[0] for s in out['skipped']) == ['train_c.wav', 'train_d.wav']
  # Raw int16: 2 bytes a sample in each record (labels, id and framing add < 1 %; the default
  # Tensor encoding would store int64 varints, 3-10 bytes a noise sample), and ~2 on disk.
  assert 2.0 < out['record_bytes_per_sample'] < 2.02, out['record_bytes_per_sample']
  assert 1.95 < out['file_bytes_per_sample'] < 2.1, out['file_bytes_per_sample']
