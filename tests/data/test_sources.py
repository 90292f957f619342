"""Record sources: prepared array_record TFDS datasets read from files alone, and the fake set."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from hcnn_jax.data import sources

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLASSES = ['yes', 'no', 'up']


class SpeechCommands(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A tiny builder whose name is also in the public TFDS catalog: reading must use our files."""

  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            'audio': tfds.features.Tensor(shape=(None,), dtype=np.int16),
            'labels': tfds.features.Tensor(shape=(len(CLASSES),), dtype=np.float32),
            'id': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(class_names=CLASSES, sample_rate=16000, task='keywords',
                                        skipped_files=1, skipped=['bad/clip.wav']))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(7), 'test': self._generate_examples(3)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'audio': np.full(100 + i, i, np.int16),
                'labels': np.eye(len(CLASSES), dtype=np.float32)[i % len(CLASSES)],
                'id': f'clip_{i}.wav'}


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  SpeechCommands(data_dir=data_dir, file_format='array_record').download_and_prepare()
  return data_dir


def test_load_prepared_dataset(prepared):
  source, meta = sources.load('speech_commands', 'train', prepared)
  assert len(source) == 7
  assert meta['class_names'] == CLASSES and meta['task'] == 'keywords'
  assert meta['sample_rate'] == 16000 and meta['skipped_files'] == 1
  assert meta['skipped'] == ['bad/clip.wav']
  assert meta['num_classes'] == 3 and meta['splits'] == {'train': 7, 'test': 3}
  assert type(meta) is dict and type(meta['class_names']) is list
  json.dumps(meta)  # plain Python all the way down
  records = {source[i]['id']: source[i] for i in range(len(source))}
  assert sorted(records) == [f'clip_{i}.wav'.encode() for i in range(7)]
  r = records[b'clip_4.wav']
  assert r['audio'].dtype == np.int16 and r['audio'].shape == (104,) and (r['audio'] == 4).all()
  np.testing.assert_array_equal(r['labels'], [0, 1, 0])


def test_load_in_process_that_never_imported_the_builder(prepared):
  code = ('import sys; from hcnn_jax.data import sources\n'
          's, m = sources.load("speech_commands", "test", sys.argv[1])\n'
          'assert "tensorflow" not in sys.modules, "TensorFlow was imported"\n'
          'print(len(s), m["task"], sorted(s[i]["id"].decode() for i in range(len(s))))')
  out = subprocess.run([sys.executable, '-c', code, prepared], cwd=REPO, capture_output=True,
                       text=True, timeout=120, env={**os.environ, 'PYTHONPATH': REPO})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().splitlines()[-1] == (
      "3 keywords ['clip_0.wav', 'clip_1.wav', 'clip_2.wav']")


def test_not_prepared_names_directory_and_command(tmp_path):
  with pytest.raises(ValueError) as err:
    sources.load('mtat', 'train', str(tmp_path))
  msg = str(err.value)
  assert os.path.join(str(tmp_path), 'mtat') in msg
  assert f'hcnn-build mtat --data_dir {tmp_path}' in msg
  with pytest.raises(ValueError, match='--config small'):
    sources.load('mtat', 'train', str(tmp_path), config_name='small')
  with pytest.raises(ValueError, match='data_dir'):
    sources.load('mtat', 'train', None)


def test_incomplete_build_is_not_prepared(tmp_path):
  (tmp_path / 'mtat' / 'incomplete.ABC_1.0.0').mkdir(parents=True)
  (tmp_path / 'mtat' / '1.0.0').mkdir()  # no dataset_info.json: an interrupted build
  with pytest.raises(ValueError, match='not prepared'):
    sources.load('mtat', 'train', str(tmp_path))


def test_unknown_split(prepared):
  with pytest.raises(ValueError, match="no split 'validation'.*'test', 'train'"):
    sources.load('speech_commands', 'validation', prepared)


def test_fake_source_records_and_lengths():
  src = sources.FakeSource(num_tracks=20, num_classes=6, num_samples=4000, seed=3,
                           min_samples=1000)
  lengths = set()
  for i in range(len(src)):
    r = src[i]
    assert r['audio'].dtype == np.int16 and r['audio'].ndim == 1
    assert 1000 <= r['audio'].shape[0] <= 4000
    assert r['labels'].dtype == np.float32 and r['labels'].shape == (6,)
    assert r['labels'].sum() >= 1 and set(np.unique(r['labels'])) <= {0.0, 1.0}
    assert r['id'] == f'fake-3-{i:06d}'.encode()
    lengths.add(r['audio'].shape[0])
  assert len(lengths) > 10
  # Generated on demand, yet identical on every access and in every copy.
  again = sources.FakeSource(20, 6, 4000, seed=3, min_samples=1000)[5]
  np.testing.assert_array_equal(src[5]['audio'], again['audio'])
  np.testing.assert_array_equal(src.labels(5), again['labels'])
  assert not np.array_equal(sources.FakeSource(20, 6, 4000, seed=4)[5]['audio'],
                            sources.FakeSource(20, 6, 4000, seed=3)[5]['audio'])
  with pytest.raises(IndexError):
    src[20]


def test_fake_source_classes_are_audible_tones():
  src = sources.FakeSource(num_tracks=12, num_classes=5, num_samples=16000, seed=1)
  freqs = sources.tone_frequencies(5)
  for i in range(len(src)):
    r = src[i]
    spectrum = np.abs(np.fft.rfft(r['audio'].astype(np.float64)))  # 1 Hz bins for 1 s
    energy = np.array([spectrum[int(round(f)) - 2:int(round(f)) + 3].sum() for f in freqs])
    active = r['labels'] > 0
    assert energy[active].min() > 20 * energy[~active].max(initial=1e-9) or not (~active).any()


def test_fake_source_one_hot():
  src = sources.FakeSource(num_tracks=30, num_classes=4, num_samples=500, multi_label=False)
  labels = np.stack([src[i]['labels'] for i in range(len(src))])
  np.testing.assert_array_equal(labels.sum(axis=1), 1.0)
  assert len(set(labels.argmax(axis=1))) == 4


def test_load_fake_config_and_splits():
  src, meta = sources.load('fake', 'train', None,
                           'tracks=9,classes=3,samples=2000,min_samples=500,multi_label=0')
  assert isinstance(src, sources.FakeSource) and len(src) == 9
  assert (src.num_classes, src.num_samples, src.min_samples, src.multi_label) == (3, 2000, 500,
                                                                                 False)
  assert meta['task'] == 'keywords' and meta['num_classes'] == 3 and meta['sample_rate'] == 16000
  assert meta['class_names'] == ['tone_00', 'tone_01', 'tone_02']
  val, _ = sources.load('fake', 'validation', None, 'tracks=9,classes=3,samples=2000')
  train, _ = sources.load('fake', 'train', None, 'tracks=9,classes=3,samples=2000')
  assert not np.array_equal(val[0]['audio'], train[0]['audio'])
  for bad in ('tracks=x', 'colours=3', 'tracks', 'multi_label=maybe'):
    with pytest.raises(ValueError, match='fake dataset config'):
      sources.load('fake', 'train', None, bad)
  with pytest.raises(ValueError, match='split'):
    sources.load('fake', 'dev', None)


def test_write_fake_dataset_round_trip(tmp_path):
  config = 'tracks=5,classes=3,samples=3000,min_samples=1000'
  path = sources.write_fake_dataset(tmp_path, config, splits=('train', 'test'))
  assert os.path.isfile(os.path.join(path, 'dataset_info.json'))
  source, meta = sources.load('fake_tracks', 'test', str(tmp_path))
  fake, fake_meta = sources.load('fake', 'test', None, config)
  assert meta['class_names'] == fake_meta['class_names'] and meta['task'] == 'tagging'
  assert meta['splits'] == {'train': 5, 'test': 5}
  by_id = {source[i]['id']: source[i] for i in range(len(source))}
  for i in range(len(fake)):
    want = fake[i]
    np.testing.assert_array_equal(by_id[want['id']]['audio'], want['audio'])
    np.testing.assert_array_equal(by_id[want['id']]['labels'], want['labels'])


def _records(path_dir, split='train'):
  source, _ = sources.load('fake_tracks', split, str(path_dir))
  return [source[i] for i in range(len(source))]


def test_write_fake_dataset_in_workers_keeps_index_order_across_shards(tmp_path, monkeypatch):
  config = 'tracks=7,classes=4,samples=2000,min_samples=500'
  # 2 tracks a shard (4 shards), and workers even for 7 tracks.
  monkeypatch.setattr(sources, '_FAKE_SHARD_BYTES', 2 * 2 * 2000)
  monkeypatch.setattr(sources, '_MIN_TRACKS_FOR_WORKERS', 1)
  path = sources.write_fake_dataset(tmp_path / 'w2', config, workers=2)
  assert len([f for f in os.listdir(path) if '.array_record-' in f]) == 4
  sources.write_fake_dataset(tmp_path / 'w1', config, workers=1)
  fake, _ = sources.load('fake', 'train', None, config)
  for parallel, serial, (i, want) in zip(_records(tmp_path / 'w2'), _records(tmp_path / 'w1'),
                                         enumerate(fake[i] for i in range(len(fake)))):
    for got in (parallel, serial):
      assert got['id'] == want['id'], i  # index order, not TFDS's shuffled order
      np.testing.assert_array_equal(got['audio'], want['audio'])
      np.testing.assert_array_equal(got['labels'], want['labels'])


def test_write_fake_dataset_beyond_the_shuffle_buffer_needs_no_tensorflow(tmp_path, monkeypatch):
  # TFDS's shuffler spills more than MAX_MEM_BUFFER_SIZE (1 GB) through tf.io.gfile; TensorFlow
  # is not installed, so a builder that shuffles fails here, as it would at 1,100 tracks of 29 s.
  monkeypatch.setattr(tfds_shuffle, 'MAX_MEM_BUFFER_SIZE', 1_000)
  sources.write_fake_dataset(tmp_path, 'tracks=6,classes=3,samples=4000', workers=1)
  assert len(_records(tmp_path)) == 6


def test_write_fake_dataset_rejects_zero_workers(tmp_path):
  with pytest.raises(ValueError, match='workers must be >= 1'):
    sources.write_fake_dataset(tmp_path, 'tracks=3,classes=2,samples=100', workers=0)
