"""Robustness study: the deformations themselves, and the table + plot of a trained tiny run."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from hcnn_jax.tools import robustness

import _trained  # tests/tools/_trained.py

SR = 16000


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return _trained.trained_workdir(tmp_path_factory)


def sine(freq=440.0, amp=0.5, seconds=2.0):
  t = np.arange(int(seconds * SR)) / SR
  return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_frequency(x):
  spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return np.fft.rfftfreq(len(x), 1.0 / SR)[np.argmax(spectrum)]


def test_white_noise_follows_the_reference_formula():
  x = sine(amp=0.3)
  for r in (0.1, 0.4):
    y = robustness.perturb(x, f'noise_{r}', seed=(0, 7))
    noise = (y - (1 - r) * x) / r
    assert np.max(np.abs(noise)) == pytest.approx(0.3, rel=1e-4)  # peak of n = peak of x
    assert abs(np.mean(noise)) < 0.01 and np.std(noise) > 0.03
    np.testing.assert_array_equal(y, robustness.perturb(x, f'noise_{r}', seed=(0, 7)))
  assert not np.array_equal(robustness.perturb(x, 'noise_0.1', seed=(0, 1)),
                            robustness.perturb(x, 'noise_0.1', seed=(0, 2)))
  np.testing.assert_array_equal(robustness.perturb(np.zeros(100, np.float32), 'noise_0.4'), 0.0)


def test_time_stretch_and_pitch_shift():
  x = sine(440.0)
  assert len(robustness.perturb(x, 'time_stretch_0.71')) == pytest.approx(len(x) * 2 ** 0.5, abs=2)
  assert len(robustness.perturb(x, 'time_stretch_1.41')) == pytest.approx(len(x) / 2 ** 0.5, abs=2)
  up = peak_frequency(robustness.perturb(x, 'pitch_shift_+1'))
  down = peak_frequency(robustness.perturb(x, 'pitch_shift_-1'))
  assert up == pytest.approx(440 * 2 ** (1 / 12), abs=2.0)
  assert down == pytest.approx(440 * 2 ** (-1 / 12), abs=2.0)


@pytest.mark.parametrize('preset,quiet_gain', [('drc_music', 12.0), ('drc_speech', 15.0)])
def test_drc_follows_the_compand_curve(preset, quiet_gain):
  def level_out(level_db):
    y = robustness.perturb(sine(amp=10 ** (level_db / 20)), preset)
    return 20 * np.log10(np.max(np.abs(y[SR:])))  # after the attack has settled
  # Quiet passages are raised by the preset's gain; loud ones limited to about −20 dBFS.
  assert level_out(-60.0) == pytest.approx(-60.0 + quiet_gain, abs=1.0)
  assert level_out(0.0) == pytest.approx(-20.0, abs=2.5)
  assert level_out(-6.0) == pytest.approx(-20.0, abs=2.5)
  # The chain's settings pass through the preset's points at the knees.
  chain = robustness.drc_chain('music standard' if preset == 'drc_music' else 'speech')
  assert chain['threshold2_db'] == -21.0 and chain['ratio2'] == pytest.approx(21.0)


def test_unknown_perturbation_is_a_clear_error():
  with pytest.raises(ValueError, match='unknown perturbation'):
    robustness.perturb(sine(), 'reverb')


def test_report_of_a_trained_run(workdir, tmp_path):
  config = _trained.tiny_config()
  out = tmp_path / 'robustness'
  results = robustness.evaluate_robustness(config, workdir, split='test', out_dir=str(out))
  assert list(results) == list(robustness.PERTURBATIONS)
  # Undeformed, the study reproduces the trainer's own test evaluation of the best checkpoint.
  with open(os.path.join(workdir, 'metrics.json')) as f:
    reference = json.load(f)
  assert results['original']['roc_auc'] == pytest.approx(reference['roc_auc'], abs=1e-5)
  assert results['original']['pr_auc'] == pytest.approx(reference['pr_auc'], abs=1e-5)
  for name, res in results.items():
    assert res['num_tracks'] == 8
    assert 0.0 <= res['roc_auc'] <= 1.0 and 0.0 <= res['pr_auc'] <= 1.0
  # Heavy noise changes the scores (a no-op deformation would leave them bit-identical).
  assert results['noise_0.4']['roc_auc'] != results['original']['roc_auc'] or \
      results['noise_0.4']['pr_auc'] != results['original']['pr_auc']
  with open(out / 'robustness.csv') as f:
    rows = list(csv.DictReader(f))
  assert [r['perturbation'] for r in rows] == list(robustness.PERTURBATIONS)
  assert float(rows[0]['delta_roc_auc']) == 0.0
  md = (out / 'robustness.md').read_text()
  assert '| drc_music | music standard | 8 |' in md
  assert (out / 'robustness.png').stat().st_size > 10_000


def test_subset_and_bad_arguments(workdir, tmp_path):
  config = _trained.tiny_config()
  results = robustness.evaluate_robustness(config, workdir, out_dir=str(tmp_path),
                                           perturbations=['noise_0.1'], max_tracks=3)
  assert list(results) == ['original', 'noise_0.1']
  assert results['noise_0.1']['num_tracks'] == 3
  with pytest.raises(ValueError, match=r"unknown \['reverb'\]"):
    robustness.evaluate_robustness(config, workdir, perturbations=['reverb'])
  other = _trained.tiny_config()
  other.dataset.config_name = 'tracks=8,classes=3,samples=20000'
  with pytest.raises(ValueError, match='classes'):
    robustness.evaluate_robustness(other, workdir, out_dir=str(tmp_path))


def test_plot_names_the_track_count_of_each_bar(tmp_path, monkeypatch):
  """A --max_tracks look scores fewer tracks than the full study: each bar group says how many."""
  from hcnn_jax.tools import plots  # pylint: disable=import-outside-toplevel
  figures = []
  real_save = plots.save
  monkeypatch.setattr(plots, 'save', lambda fig, path: figures.append(fig) or real_save(fig, path))
  results = {'original': {'roc_auc': 0.8, 'pr_auc': 0.5, 'num_tracks': 8},
             'noise_0.4': {'roc_auc': 0.7, 'pr_auc': float('nan'), 'num_tracks': 3}}
  paths = robustness.write_report(results, str(tmp_path), ['roc_auc', 'pr_auc'], title='t')
  assert os.path.getsize(paths['png']) > 5_000 and len(figures) == 1
  ax = figures[0].axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == ['original (8 tracks)',
                                                         'noise_0.4 (3 tracks)']
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ['ROC-AUC', 'PR-AUC']
  assert 'n/a' in [t.get_text() for t in ax.texts]  # the NaN bar says so instead of 0.000
