"""Interpretation tools: filterbank before/after training, saliency on the harmonic tensor,
[CLS] attention maps and the tag-wise contribution of the self-attention back-end, and what their
figures say (read off the matplotlib Figure objects the CLI saves)."""
from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import soundfile as sf

from hcnn_jax.configs import base
from hcnn_jax.models import get_model
from hcnn_jax.tools import import_torch, interpret, interpret_cli, interpret_plots, plots
from hcnn_jax.training import checkpoint

import _trained  # tests/tools/_trained.py

SR = 16000
CLASSES = [f'tone_{i:02d}' for i in range(5)]


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return _trained.trained_workdir(tmp_path_factory)


@pytest.fixture(scope='module')
def clip(tmp_path_factory):
  """2 s: a 700 Hz tone for the first second, 2.4 kHz for the second, over faint noise."""
  t = np.arange(2 * SR) / SR
  x = 0.01 * np.random.default_rng(0).standard_normal(len(t))
  x += 0.3 * np.sin(2 * np.pi * 700 * t) * (t < 1) + 0.3 * np.sin(2 * np.pi * 2400 * t) * (t >= 1)
  path = str(tmp_path_factory.mktemp('clips') / 'clip.wav')
  sf.write(path, x.astype(np.float32), SR)
  return path


@pytest.fixture
def figures(monkeypatch):
  """{file name: Figure} of every PNG written through plots.save during the test."""
  saved = {}
  real_save = plots.save

  def save(fig, path):
    saved[os.path.basename(path)] = fig
    return real_save(fig, path)

  monkeypatch.setattr(plots, 'save', save)
  return saved


def colorbar_labels(fig):
  """The label of every image's colour bar (a missing bar is None)."""
  return [im.colorbar.ax.get_ylabel() if im.colorbar is not None else None
          for ax in fig.axes for im in ax.images]


def titles(fig):
  return [ax.get_title() for ax in fig.axes if ax.get_title()]


@pytest.fixture(scope='module')
def attention_run(tmp_path_factory):
  """A tiny self-attention model written as a checkpoint (initial weights: the maps' mechanics
  do not need training, and it saves a second compile of a train step)."""
  kwargs = dict(width=4, num_heads=2, n_mels=32)
  model = get_model('attention', num_classes=len(CLASSES), **kwargs)
  variables = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, SR)))
  config = base.get_base_config()
  config.dataset.name = 'fake'
  config.task = 'tagging'
  config.model.name = 'attention'
  config.model.kwargs = ml_collections.ConfigDict(kwargs)
  config.input_length = SR
  path = str(tmp_path_factory.mktemp('attention_run'))
  import_torch.write_checkpoint(jax.device_get(variables), path, CLASSES, config)
  return path


def test_filters_before_and_after_training(workdir, tmp_path, figures):
  written = interpret_cli.run_command('filters', workdir, str(tmp_path))
  assert [os.path.basename(p) for p in written] == ['filters.npz', 'filters.png']
  assert os.path.getsize(tmp_path / 'filters.png') > 20_000
  model, variables, _, _ = checkpoint.load_for_inference(workdir)
  state = interpret.filterbank_state(model, variables)
  assert state['n_harmonic'] == 2 and state['level'] == 166
  assert state['initial']['filterbank'].shape == (257, 2 * 166)
  assert state['initial']['q'] == 1.0  # the config's q_init
  learned_q = float(variables['params']['frontend']['bw_Q'])
  assert state['learned']['q'] == pytest.approx(learned_q)
  assert learned_q != 1.0  # one Adam step moved it
  # The learned bank is the front-end's formula at the learned Q: wider filters when Q drops.
  widths = [np.count_nonzero(state[k]['filterbank'][:, -1]) for k in ('initial', 'learned')]
  assert (widths[1] >= widths[0]) == (learned_q <= 1.0)
  with np.load(tmp_path / 'filters.npz') as saved:
    np.testing.assert_allclose(saved['learned_filterbank'], state['learned']['filterbank'])
  # The figure: labelled colour bars, harmonics named on the axes, the checkpoint in the title,
  # and the dashed initial responses drawn over the solid learned ones (visible where equal).
  fig = figures['filters.png']
  assert colorbar_labels(fig) == ['filter weight'] * 2
  assert os.path.normpath(workdir) in fig.get_suptitle()
  bank_ax, responses_ax = fig.axes[0], fig.axes[2]
  assert [t.get_text() for t in bank_ax.get_xticklabels()] == ['harmonic 1', 'harmonic 2']
  dashed = [l for l in responses_ax.get_lines() if l.get_linestyle() == '--']
  solid = [l for l in responses_ax.get_lines() if l.get_linestyle() == '-']
  assert len(dashed) == len(solid) == 3 * 2  # 3 fundamentals × 2 harmonics
  assert min(l.get_zorder() for l in dashed) > max(l.get_zorder() for l in solid)
  assert all((l.get_alpha() or 1.0) == 1.0 for l in dashed)
  assert 'initial (dashed)' in [t.get_text() for t in responses_ax.get_legend().get_texts()]


def test_saliency_is_the_gradient_of_the_model(workdir, clip, tmp_path, figures):
  model, variables, _, _ = checkpoint.load_for_inference(workdir)
  audio = np.pad(sf.read(clip, dtype='float32')[0][:SR], (0, 0))
  result = interpret.saliency(model, variables, audio)
  # The head on the extracted tensor is the whole model.
  logits = np.asarray(model.apply(variables, audio[None], train=False))[0]
  np.testing.assert_allclose(result['logits'], logits, atol=1e-5)
  assert result['class_index'] == int(np.argmax(logits))
  assert result['features'].shape == result['saliency'].shape == (166, 63, 2)
  # A step along the gradient's sign raises the logit by about step · Σ|gradient|.
  step = 1e-3
  head = interpret.saliency(model, variables, audio, result['class_index'])
  assert np.array_equal(head['saliency'], result['saliency'])
  sal = result['saliency']
  assert np.abs(sal).sum() > 0
  from hcnn_jax.models import blocks  # pylint: disable=import-outside-toplevel
  bn = {c: t['frontend']['hstft_bn'] for c, t in variables.items()}
  backend = {c: t['backend'] for c, t in variables.items()}

  def logit(feat):
    feat = blocks.batch_norm(False).apply(bn, jnp.asarray(feat)[None])
    return float(model.backend.apply(backend, feat, train=False)[0, result['class_index']])

  moved = logit(result['features'] + step * np.sign(sal)) - logit(result['features'])
  assert moved == pytest.approx(step * np.abs(sal).sum(), rel=0.2)

  # Every --audio file is used (one figure each); an unreadable one is refused by name.
  other = str(tmp_path / 'other.wav')
  sf.write(other, sf.read(clip, dtype='float32')[0][::-1], SR)
  refused = []
  written = interpret_cli.run_command('saliency', workdir, str(tmp_path / 'out'),
                                      [clip, other, str(tmp_path / 'gone.wav')], tag='tone_02',
                                      refused=refused)
  assert [os.path.basename(p) for p in written] == [
      'saliency_clip.npz', 'saliency_clip.png', 'saliency_other.npz', 'saliency_other.png']
  assert len(refused) == 1 and 'gone.wav' in refused[0]
  assert os.path.getsize(written[1]) > 20_000
  with np.load(tmp_path / 'out' / 'saliency_clip.npz') as saved:
    assert int(saved['class_index']) == 2
  for name in ('clip.wav', 'other.wav'):
    fig = figures[f'saliency_{name[:-4]}.png']
    assert fig.get_suptitle().startswith(name) and '"tone_02"' in fig.get_suptitle()
    assert all(label for label in colorbar_labels(fig)) and len(colorbar_labels(fig)) == 4
    assert sorted(titles(fig)) == sorted([
        'harmonic tensor (dB): harmonic 1', 'harmonic tensor (dB): harmonic 2 (energy at 2·f0)',
        'saliency: harmonic 1', 'saliency: harmonic 2 (energy at 2·f0)'])
    # Pitch in Hz and note names, on the C rows of the fundamentals' grid (C1 = 32.7 Hz).
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[:3] == ['65 Hz C2', '131 Hz C3', '262 Hz C4'], labels
    assert fig.axes[0].get_ylabel() == 'fundamental f0'


def test_attention_scores_and_tag_contribution(attention_run, clip, tmp_path, figures):
  model, variables, _, class_names = checkpoint.load_for_inference(attention_run)
  audio = sf.read(clip, dtype='float32')[0][:SR]
  scores = interpret.attention_scores(model, variables, audio)
  tokens = scores['scores'].shape[1]
  assert scores['scores'].shape == (2, tokens) and tokens == 8  # 63 frames / 8 in time
  np.testing.assert_allclose(scores['scores'].sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(scores['times'], (np.arange(8) + 0.5) / 8)
  # Forcing [CLS]'s own attention back in changes nothing: the override is exact...
  forced = interpret.forced_cls_attention_logits(model, variables, audio,
                                                 scores['cls_weights'][-1][None])
  np.testing.assert_allclose(jax.nn.sigmoid(forced[0]), scores['probs'], atol=1e-6)
  # ...and one-hot rows do change the outputs, differently per time step.
  result = interpret.tag_contribution(model, variables, audio)
  contribution = result['contribution']
  assert contribution.shape == (len(class_names), tokens) and result['layer'] == 1
  assert np.max(np.abs(contribution - scores['probs'][:, None])) > 1e-4
  assert np.max(np.ptp(contribution, axis=1)) > 1e-5
  first = interpret.tag_contribution(model, variables, audio, layer=0)['contribution']
  assert not np.allclose(first, contribution)

  other = str(tmp_path / 'other.wav')
  sf.write(other, audio[::-1], SR)
  for command in ('attention', 'contribution'):
    written = interpret_cli.run_command(command, attention_run, str(tmp_path), [clip, other])
    assert written[-1].endswith(f'{command}.png') and os.path.getsize(written[-1]) > 10_000
    fig = figures[f'{command}.png']
    assert [t.split(':')[0] for t in titles(fig)] == ['clip.wav', 'other.wav']  # a row per file
    assert len(colorbar_labels(fig)) == 2 and all(colorbar_labels(fig))
    with np.load(tmp_path / f'{command}.npz') as saved:
      assert list(saved['files']) == [clip, other]
  # The mel front-end's saliency: rows are mel bands, labelled with their centres in Hz.
  interpret_cli.run_command('saliency', attention_run, str(tmp_path), [clip])
  fig = figures['saliency_clip.png']
  assert fig.axes[0].get_title() == 'MelFrontend output: channel 1'
  labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
  assert len(labels) >= 4 and all(re.fullmatch(r'\d+ Hz', t) for t in labels), labels


def test_pitch_ticks_and_note_names():
  assert interpret_plots.note_name(440.0) == 'A4'
  assert interpret_plots.note_name(440.0 * 2 ** (0.5 / 12)) == 'A4+50¢'
  f0 = 32.703 * 2 ** (np.arange(166) / 24)  # C1 upwards, 2 per semitone
  rows, labels = interpret_plots.pitch_ticks(f0)
  assert rows == [0, 24, 48, 72, 96, 120, 144] and labels[0] == '33 Hz C1'
  assert labels[-1] == '2093 Hz C7'


def test_cli_errors_are_one_line(workdir, attention_run, clip, tmp_path, capsys):
  cases = [['attention', '--workdir', workdir, '--audio', clip],  # HCNN has no attention
           ['filters', '--workdir', attention_run],  # mel front-end has no harmonic filters
           ['saliency', '--workdir', workdir],  # no audio
           ['saliency', '--workdir', workdir, '--audio', clip, '--tag', 'banjo'],
           ['saliency', '--workdir', workdir, '--audio', str(tmp_path / 'missing.wav')],
           ['filters', '--workdir', str(tmp_path / 'nowhere')],
           ['filters', '--workdir', workdir, '--audio', clip]]  # filters uses no audio
  for argv in cases:
    assert interpret_cli.main(argv + ['--out', str(tmp_path)]) == 2, argv
    err = capsys.readouterr().err
    assert err.startswith('interpret: error:') and err.count('\n') == 1, err
  assert 'drop --audio' in err and clip in err  # the last case names the file it refuses
  assert interpret_cli.main(['filters', '--workdir', workdir, '--out', str(tmp_path / 'ok')]) == 0
  assert capsys.readouterr().out.strip().endswith('filters.png')
  # One unreadable file among good ones: the others are drawn, it is named, exit code 1.
  missing = str(tmp_path / 'missing.wav')
  assert interpret_cli.main(['attention', '--workdir', attention_run, '--audio', clip, missing,
                             '--out', str(tmp_path / 'some')]) == 1
  out, err = capsys.readouterr()
  assert err == f'interpret: skipped: {missing}: file not found\n'
  assert out.strip().endswith('attention.png')
