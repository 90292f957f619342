"""synth_gm: the soundfont, the scores and tags, the builder, and the clips "listened to in numbers"."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import librosa
import numpy as np
import pretty_midi
import pytest
import tensorflow_datasets as tfds

from datasets.synth_gm import clips, compose, render
from datasets.synth_gm import tags as synth_tags
from datasets.synth_gm.synth_gm import MULTIBANK, OTHER_SOUNDFONTS, SynthGm, SynthGmConfig


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
  """A TFDS data_dir holding synth_gm/tiny, built once for this module."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  SynthGm(data_dir=data_dir, config='tiny', file_format='array_record',
          num_workers=1).download_and_prepare()
  return data_dir


@pytest.fixture(scope='module')
def tiny(tiny_dir):
  return tfds.builder('synth_gm/tiny', data_dir=tiny_dir)


def _note_rms(program: int, is_drum: bool = False, soundfont: str = render.DEFAULT_SOUNDFONT,
              pitch: int = 60) -> float:
  midi = pretty_midi.PrettyMIDI()
  inst = pretty_midi.Instrument(program=program, is_drum=is_drum)
  for k, key in enumerate((36, 38, 42) if is_drum else (pitch,)):
    inst.notes.append(pretty_midi.Note(velocity=100, pitch=key, start=0.1 * k, end=0.4))
  midi.instruments.append(inst)
  return float(np.sqrt(np.mean(render.render(midi, 8000, soundfont_name=soundfont) ** 2)))


def _need(soundfont: str) -> None:
  """Skips, naming the package, where the Debian soundfont is not installed (`make soundfonts`)."""
  try:
    render.soundfont_path(soundfont)
  except ValueError as err:
    pytest.skip(str(err))


# ---- The soundfont ---------------------------------------------------------------------------

def test_soundfont_has_every_gm_program_and_the_kits_we_use():
  missing = [p for p in range(128) if render.preset_name(p) is None]
  assert not missing, f'TimGM6mb lacks GM programs {missing}'
  for kit in compose.DRUM_KITS.values():
    assert render.preset_name(kit, is_drum=True) is not None, kit


def test_every_program_and_kit_the_generator_uses_sounds():
  used = sorted({p for roles in compose.FAMILIES.values() for ps in roles.values() for p in ps})
  silent = [p for p in used if not _note_rms(p) > 1e-4]
  assert not silent, f'programs render silence: {silent}'
  silent_kits = [k for k in compose.DRUM_KITS.values() if not _note_rms(k, is_drum=True) > 1e-4]
  assert not silent_kits, f'drum kits render silence: {silent_kits}'


@pytest.mark.parametrize('soundfont', sorted({*OTHER_SOUNDFONTS.values(), *MULTIBANK[1:]}))
def test_other_soundfonts_play_every_program_and_kit_the_generator_uses(soundfont):
  _need(soundfont)
  missing = [p for p in range(128) if render.preset_name(p, soundfont_name=soundfont) is None]
  assert not missing, f'{soundfont} lacks GM programs {missing}'
  used = sorted({p for roles in compose.FAMILIES.values() for ps in roles.values() for p in ps})
  # In the middle of the range the generator folds each program's notes into (a bank may leave
  # the extremes silent: FluidR3's contrabass has no sample above A#3, see the README).
  ranges = compose._RANGES  # pylint: disable=protected-access
  middle = {p: sum(ranges.get(p, (36, 96))) // 2 for p in used}
  silent = [p for p in used if not _note_rms(p, soundfont=soundfont, pitch=middle[p]) > 1e-4]
  assert not silent, f'{soundfont}: programs render silence: {silent}'
  silent_kits = [k for k in compose.DRUM_KITS.values()
                 if not _note_rms(k, is_drum=True, soundfont=soundfont) > 1e-4]
  assert not silent_kits, f'{soundfont}: drum kits render silence: {silent_kits}'


def test_a_missing_soundfont_fails_in_one_line_naming_its_package(tmp_path, monkeypatch):
  gone = render.Soundfont('FluidR3_GM', str(tmp_path / 'FluidR3_GM.sf2'),
                          'apt-get install fluid-soundfont-gm (or: make soundfonts)')
  monkeypatch.setitem(render.SOUNDFONTS, 'FluidR3_GM', gone)
  with pytest.raises(ValueError, match=r'FluidR3_GM .* is missing: install it with '
                     r'`apt-get install fluid-soundfont-gm'):
    render.soundfont_path('FluidR3_GM')
  builder = SynthGm(data_dir=str(tmp_path), config='tiny_fluidr3', file_format='array_record',
                    num_workers=1)
  with pytest.raises(ValueError, match='fluid-soundfont-gm'):
    builder.download_and_prepare()
  assert not builder.is_prepared()
  with pytest.raises(ValueError, match="Unknown soundfont 'GeneralUser'"):
    render.soundfont_path('GeneralUser')


def test_the_default_soundfont_renders_what_it_always_rendered():
  # Digests of clips rendered by the builder before other soundfonts existed (version 1.0.0, the
  # x86-64 tinysoundfont 0.3.7 wheel): adding banks must not change a byte of tiny/default/large.
  for args, digest in (((11, 'test', 3, 6.0), 'd048fb0a9361ed298bdf6c0b7de40627d064fa64'),
                       ((2020, 'train', 0, 8.0), '80158a10ed93f8826f94ffa8a38202eb995eb631')):
    audio = clips.make_clip(*args).audio
    assert hashlib.sha256(audio.tobytes()).hexdigest()[:40] == digest, args


def test_render_is_stateless_between_clips():
  # The soundfont object is cached per process: a clip must not hear the tail of the previous one.
  first = clips.make_clip(3, 'train', 5, 2.0).audio
  clips.make_clip(3, 'train', 6, 2.0)
  again = clips.make_clip(3, 'train', 5, 2.0).audio
  assert first.tobytes() == again.tobytes()
  assert first.tobytes() != clips.make_clip(3, 'train', 6, 2.0).audio.tobytes()


# ---- Scores and tags -------------------------------------------------------------------------

def test_tags_are_many_unique_and_cover_the_issue():
  assert len(synth_tags.TAGS) >= 20
  assert len(set(synth_tags.TAGS)) == len(synth_tags.TAGS)
  for tag in ('piano', 'organ', 'guitar', 'bass', 'strings', 'violin', 'cello', 'brass', 'trumpet',
              'sax', 'flute', 'clarinet', 'choir', 'synth', 'drums', 'no_drums', 'fast', 'slow',
              'loud', 'quiet', 'high', 'low', 'solo', 'ensemble'):
    assert tag in synth_tags.TAGS
  for members in synth_tags.INSTRUMENT_TAGS.values():
    assert members and all(0 <= p < 128 for p in members)


def test_score_tag_frequencies_are_useful_and_distinct():
  n, seconds = 300, 8.0
  rows = []
  for i in range(n):
    score = compose.compose(clips.clip_rng(1, 'train', i), seconds)
    rows.append(synth_tags.multi_hot(synth_tags.score_tags(score, seconds)))
  labels = np.stack(rows)
  freq = dict(zip(synth_tags.TAGS, labels.mean(0)))
  for tag in set(synth_tags.TAGS) - {'loud', 'quiet'}:  # those two need the rendered audio
    assert 0.03 <= freq[tag] <= 0.7, (tag, freq[tag])
  assert np.all(labels[:, synth_tags.TAGS.index('drums')] + labels[:, synth_tags.TAGS.index('no_drums')] == 1)
  corr = np.corrcoef(labels[:, [synth_tags.TAGS.index(t) for t in set(synth_tags.TAGS) - {'loud', 'quiet'}]].T)
  np.fill_diagonal(corr, 0.0)
  # Only drums/no_drums are complements; every other pair must carry its own information.
  strong = np.argwhere(np.abs(corr) > 0.9)
  names = [t for t in set(synth_tags.TAGS) - {'loud', 'quiet'}]
  pairs = {frozenset((names[a], names[b])) for a, b in strong}
  assert pairs <= {frozenset(('drums', 'no_drums'))}, pairs


def test_tags_follow_the_score():
  score = compose.compose(clips.clip_rng(5, 'train', 0), 6.0)
  tags = synth_tags.score_tags(score, 6.0)
  programs = {p.program for p in score.parts if not p.is_drum}
  for tag, members in synth_tags.INSTRUMENT_TAGS.items():
    assert (tag in tags) == bool(programs & members), tag
  assert ('drums' in tags) == any(p.is_drum for p in score.parts)
  assert ('fast' in tags) == (score.tempo >= synth_tags.FAST_BPM)
  assert ('slow' in tags) == (score.tempo <= synth_tags.SLOW_BPM)


def test_multi_hot_rejects_unknown_tags():
  with pytest.raises(ValueError, match='Unknown tags'):
    synth_tags.multi_hot(frozenset({'kazoo'}))


def test_clip_is_deterministic_int16_with_headroom():
  a = clips.make_clip(42, 'validation', 17, 3.0)
  b = clips.make_clip(42, 'validation', 17, 3.0)
  assert a.audio.dtype == np.int16 and a.audio.shape == (3 * clips.SAMPLE_RATE,)
  assert a.audio.tobytes() == b.audio.tobytes() and a.tags == b.tags
  assert np.abs(a.audio.astype(np.int32)).max() <= round(clips.PEAK_CEILING * 32767)
  assert a.id == 'validation/000017'
  other = clips.make_clip(43, 'validation', 17, 3.0)
  assert other.audio.tobytes() != a.audio.tobytes()


# ---- The builder -----------------------------------------------------------------------------

def test_features_splits_and_ids(tiny, tiny_dir):
  features = tiny.info.features
  assert features['audio'].np_dtype == np.int16 and features['audio'].shape == (None,)
  assert features['labels'].np_dtype == np.float32
  assert features['labels'].shape == (len(synth_tags.TAGS),)
  assert isinstance(features['id'], tfds.features.Text)
  cfg = tiny.builder_config
  ids = {}
  for split, n in cfg.split_sizes().items():
    assert tiny.info.splits[split].num_examples == n > 0
    ids[split] = set()
  source = tfds.data_source('synth_gm/tiny', data_dir=tiny_dir)
  for split in ids:
    for record in source[split]:
      assert record['audio'].dtype == np.int16
      assert record['audio'].shape == (int(cfg.clip_seconds * clips.SAMPLE_RATE),)
      assert record['labels'].dtype == np.float32 and set(np.unique(record['labels'])) <= {0.0, 1.0}
      ids[split].add(record['id'].decode() if isinstance(record['id'], bytes) else record['id'])
    assert len(ids[split]) == cfg.split_sizes()[split]
  assert not (ids['train'] & ids['validation']) and not (ids['train'] & ids['test'])
  assert not (ids['validation'] & ids['test'])
  assert 'tensorflow' not in sys.modules  # built and read back without TensorFlow


def test_metadata(tiny, tiny_dir):
  meta = tiny.info.metadata
  assert list(meta['class_names']) == list(synth_tags.TAGS)
  assert meta['sample_rate'] == 16000 and meta['task'] == 'tagging'
  assert meta['skipped_files'] == 0 and list(meta['skipped']) == []
  source = tfds.data_source('synth_gm/tiny', data_dir=tiny_dir)
  for split in ('train', 'validation', 'test'):
    labels = np.stack([r['labels'] for r in source[split]])
    assert meta['tag_counts'][split] == dict(zip(synth_tags.TAGS, labels.sum(0).astype(int).tolist()))


def test_stored_clip_equals_a_fresh_render(tiny, tiny_dir):
  cfg = tiny.builder_config
  source = tfds.data_source('synth_gm/tiny', data_dir=tiny_dir)
  by_id = {r['id'].decode(): r for r in source['test']}
  fresh = clips.make_clip(cfg.seed, 'test', 3, cfg.clip_seconds)
  assert by_id[fresh.id]['audio'].tobytes() == fresh.audio.tobytes()
  np.testing.assert_array_equal(by_id[fresh.id]['labels'], fresh.labels)


def test_parallel_build_writes_the_same_bytes(tmp_path):
  cfg = SynthGmConfig(name='par', num_train=48, num_validation=8, num_test=8, clip_seconds=1.0,
                      seed=9)
  builder = SynthGm(data_dir=str(tmp_path), config=cfg, file_format='array_record', num_workers=2)
  builder.download_and_prepare()
  source = builder.as_data_source()
  for split, index in (('train', 0), ('train', 47), ('test', 7)):
    record = next(r for r in source[split] if r['id'].decode() == f'{split}/{index:06d}')
    assert record['audio'].tobytes() == clips.make_clip(9, split, index, 1.0).audio.tobytes()


def test_bad_configs_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match='num_workers'):
    SynthGm(data_dir=str(tmp_path), config='tiny', num_workers=0)
  cfg = SynthGmConfig(name='empty', num_train=0, num_validation=1, num_test=1, clip_seconds=1.0)
  with pytest.raises(ValueError, match='num_train'):
    SynthGm(data_dir=str(tmp_path), config=cfg, file_format='array_record').download_and_prepare()


# ---- Listening in numbers --------------------------------------------------------------------

def _auc(x: np.ndarray, in_tag: np.ndarray) -> float:
  """P(statistic of a tagged clip > that of an untagged one) (Mann-Whitney), ties count half."""
  a, b = x[in_tag][:, None], x[~in_tag][None, :]
  return float(np.mean(a > b) + 0.5 * np.mean(a == b))


@pytest.fixture(scope='module')
def heard():
  """Statistics of 64 rendered 4 s clips, computed with librosa/numpy, and their tags."""
  sr, n_fft = clips.SAMPLE_RATE, 2048
  freqs = librosa.fft_frequencies(sr=sr, n_fft=n_fft)
  band = (freqs >= 50) & (freqs <= 4000)
  stats, tags = [], []
  for i in range(64):
    clip = clips.make_clip(7, 'listen', i, 4.0)
    y = clip.audio.astype(np.float32) / 32768.0
    mag = np.abs(librosa.stft(y, n_fft=n_fft, hop_length=512))
    power = mag[band] ** 2
    stats.append(dict(
        rms_db=20 * np.log10(np.sqrt(np.mean(y ** 2)) + 1e-9),
        onset_rate=len(librosa.onset.onset_detect(y=y, sr=sr, hop_length=256, units='time')) / 4.0,
        flatness=float(np.median(librosa.feature.spectral_flatness(S=mag))),
        # Spectral centroid on a log-frequency axis (octaves), where pitch register lives.
        log_centroid=float(np.sum(power * np.log2(freqs[band])[:, None]) / np.sum(power)),
    ))
    tags.append(clip.tags)
  stats = {k: np.array([s[k] for s in stats]) for k in stats[0]}
  has = {t: np.array([t in ts for ts in tags]) for t in synth_tags.TAGS}
  return stats, has


@pytest.mark.parametrize('tag, stat, subset, direction', [
    ('loud', 'rms_db', None, +1), ('quiet', 'rms_db', None, -1),
    ('fast', 'onset_rate', None, +1), ('slow', 'onset_rate', None, -1),
    ('drums', 'flatness', None, +1), ('no_drums', 'flatness', None, -1),
    # Drums are broadband whatever the register, so pitch height is compared among drum-less clips.
    ('high', 'log_centroid', 'no_drums', +1), ('low', 'log_centroid', 'no_drums', -1),
    ('ensemble', 'flatness', None, +1), ('solo', 'flatness', None, -1),
])
def test_tagged_clips_sound_different(heard, tag, stat, subset, direction):
  stats, has = heard
  keep = has[subset] if subset else np.ones_like(has[tag])
  in_tag = has[tag][keep]
  assert in_tag.sum() >= 4 and (~in_tag).sum() >= 4, f'too few clips to compare for {tag}'
  auc = _auc(stats[stat][keep], in_tag)
  score = auc if direction > 0 else 1.0 - auc
  assert score >= 0.75, f'{tag}: {stat} separates tagged clips from the rest with AUC {auc:.2f}'


def test_loud_and_quiet_are_far_apart(heard):
  stats, has = heard
  gap = np.median(stats['rms_db'][has['loud']]) - np.median(stats['rms_db'][has['quiet']])
  assert gap >= 12.0, gap


# ---- The same test scores through another soundfont ------------------------------------------

def test_companion_configs_mirror_their_base():
  configs = {c.name: c for c in SynthGm.BUILDER_CONFIGS}
  for base in ('tiny', 'default', 'large'):
    for suffix, soundfont in OTHER_SOUNDFONTS.items():
      other, ref = configs[f'{base}_{suffix}'], configs[base]
      assert other.split_sizes() == {'test': ref.num_test}
      assert (other.seed, other.clip_seconds, other.soundfont) == (ref.seed, ref.clip_seconds,
                                                                   soundfont)
    assert configs[base].soundfont == render.DEFAULT_SOUNDFONT


def test_fluidr3_render_holds_the_same_scores_as_the_test_split(tiny, tiny_dir):
  _need('FluidR3_GM')
  builder = SynthGm(data_dir=tiny_dir, config='tiny_fluidr3', file_format='array_record',
                    num_workers=1)
  builder.download_and_prepare()
  assert list(builder.info.splits) == ['test']
  meta = builder.info.metadata
  assert meta['soundfont']['name'] == 'FluidR3_GM'
  assert meta['soundfont']['bytes'] == os.path.getsize(render.soundfont_path('FluidR3_GM'))
  assert len(meta['soundfont']['sha256']) == 64
  assert 'soundfont' not in tiny.info.metadata  # the base configs' metadata is as it was
  ours = {r['id']: r for r in tfds.data_source('synth_gm/tiny', data_dir=tiny_dir)['test']}
  other = {r['id']: r for r in builder.as_data_source()['test']}
  assert sorted(other) == sorted(ours)
  score_tags = [i for i, t in enumerate(synth_tags.TAGS) if t not in ('loud', 'quiet')]
  for clip_id, record in other.items():
    # Every tag read off the score is the same; loud/quiet are read off this render's waveform.
    np.testing.assert_array_equal(record['labels'][score_tags], ours[clip_id]['labels'][score_tags])
    assert record['audio'].tobytes() != ours[clip_id]['audio'].tobytes()
  cfg = builder.builder_config
  fresh = clips.make_clip(cfg.seed, 'test', 5, cfg.clip_seconds, 'FluidR3_GM')
  assert other[fresh.id.encode()]['audio'].tobytes() == fresh.audio.tobytes()
  np.testing.assert_array_equal(other[fresh.id.encode()]['labels'], fresh.labels)


def test_make_soundfonts_installs_exactly_the_files_the_renderer_reads():
  mk = os.path.join(os.path.dirname(compose.__file__), 'soundfonts.mk')
  make = ['make', '--no-print-directory', '-f', mk]
  listed = subprocess.run(make + ['--eval', 'files: ; @echo $(SOUNDFONT_FILES)', 'files'],
                          check=True, capture_output=True, text=True).stdout.split()
  banks = {*OTHER_SOUNDFONTS.values(), *MULTIBANK} - {render.DEFAULT_SOUNDFONT}
  assert sorted(listed) == sorted(render.soundfont(s).path for s in banks)
  # A missing bank makes the target install both packages (`echo` stands in for sudo here).
  out = subprocess.run(make + ['soundfonts', 'SOUNDFONT_FILES=/nonexistent/FluidR3_GM.sf2',
                               'SOUNDFONT_SUDO=echo'], check=True, capture_output=True,
                       text=True).stdout
  assert 'missing /nonexistent/FluidR3_GM.sf2' in out
  assert ('apt-get install -y fluid-soundfont-gm musescore-general-soundfont-small '
          'csound-soundfont') in out


# ---- Training clips from several banks ---------------------------------------------------------

def test_multibank_configs_change_only_the_train_and_validation_banks():
  configs = {c.name: c for c in SynthGm.BUILDER_CONFIGS}
  for base in ('tiny', 'default', 'large'):
    multi, ref = configs[f'{base}_multibank'], configs[base]
    assert multi.split_sizes() == ref.split_sizes()
    assert (multi.seed, multi.clip_seconds, multi.soundfont) == (ref.seed, ref.clip_seconds,
                                                                 ref.soundfont)
    assert [multi.bank('train', i) for i in range(4)] == [*MULTIBANK, *MULTIBANK]
    assert multi.bank('validation', 1) == MULTIBANK[1]
    assert {multi.bank('test', i) for i in range(4)} == {ref.soundfont}
    assert {ref.bank(split, 1) for split in ('train', 'test')} == {ref.soundfont}


def test_multibank_build_renders_each_train_clip_with_its_bank(tiny, tiny_dir):
  for bank in MULTIBANK:
    _need(bank)
  builder = SynthGm(data_dir=tiny_dir, config='tiny_multibank', file_format='array_record',
                    num_workers=1)
  builder.download_and_prepare()
  assert [b['name'] for b in builder.info.metadata['train_soundfonts']] == list(MULTIBANK)
  ours = tfds.data_source('synth_gm/tiny', data_dir=tiny_dir)
  multi = builder.as_data_source()
  cfg = builder.builder_config
  score_tags = [i for i, t in enumerate(synth_tags.TAGS) if t not in ('loud', 'quiet')]
  for split in ('train', 'validation'):
    base = {r['id']: r for r in ours[split]}
    records = {r['id']: r for r in multi[split]}
    assert sorted(records) == sorted(base)
    for index in (0, 1):
      clip_id = f'{split}/{index:06d}'.encode()
      fresh = clips.make_clip(cfg.seed, split, index, cfg.clip_seconds, MULTIBANK[index % 2])
      assert records[clip_id]['audio'].tobytes() == fresh.audio.tobytes()
      np.testing.assert_array_equal(records[clip_id]['labels'][score_tags],
                                    base[clip_id]['labels'][score_tags])
    # Clip 0 is TimGM6mb's own render; clip 1 comes from the other bank.
    first, second = (f'{split}/{i:06d}'.encode() for i in (0, 1))
    assert records[first]['audio'].tobytes() == base[first]['audio'].tobytes()
    assert records[second]['audio'].tobytes() != base[second]['audio'].tobytes()
  test = {r['id']: r['audio'].tobytes() for r in multi['test']}
  assert test == {r['id']: r['audio'].tobytes() for r in ours['test']}  # the same test split
