"""The H ablation: two values of H, one short epoch each; tables, parameter counts, resume."""
from __future__ import annotations

import csv
import json
import math
import os

import jax
import jax.numpy as jnp
import pytest

from hcnn_jax.models import get_model
from hcnn_jax.tools import ablation

import _trained  # tests/tools/_trained.py


def expected_parameters(n_harmonic: int) -> int:
  model = get_model('hcnn', num_classes=5, width=4, n_harmonic=n_harmonic,
                    pools=((2, 2), (2, 2), (2, 2), (2, 2), (2, 2), (2, 1), (2, 1)))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16000))))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes['params']))


@pytest.fixture(scope='module')
def study(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('ablation'))
  rows = ablation.run_ablation(_trained.tiny_config(), workdir, harmonics=[1, 2])
  return workdir, rows


@pytest.mark.slow
def test_one_run_per_h_and_the_tables(study):
  workdir, rows = study
  assert [r['H'] for r in rows] == [1, 2]
  # Only the first conv's input channels and the harmonic BatchNorm grow with H:
  # 3·3·width weights + 2 BN parameters per harmonic.
  assert [r['parameters'] for r in rows] == [expected_parameters(1), expected_parameters(2)]
  assert rows[1]['parameters'] - rows[0]['parameters'] == 3 * 3 * 4 + 2
  for h, r in zip((1, 2), rows):
    run = os.path.join(workdir, f'H{h}')
    with open(os.path.join(run, 'config.json')) as f:
      assert json.load(f)['model']['kwargs']['n_harmonic'] == h
    with open(os.path.join(run, 'metrics.json')) as f:
      assert json.load(f)['roc_auc'] == pytest.approx(r['roc_auc'])
    assert 0.0 <= r['roc_auc'] <= 1.0 and 0.0 <= r['pr_auc'] <= 1.0
    assert r['train_clips_per_sec'] > 0
    assert r['throughput_includes_compile']  # one step: a single logged window
  with open(os.path.join(workdir, 'ablation.csv')) as f:
    table = list(csv.DictReader(f))
  assert [int(t['H']) for t in table] == [1, 2]
  assert list(table[0]) == list(ablation.COLUMNS)
  md = open(os.path.join(workdir, 'ablation.md')).read()
  assert '| H | parameters | ROC-AUC | PR-AUC | train clips/s |' in md
  assert f'| 1 | {rows[0]["parameters"]:,} |' in md and 'includes the compilation' in md


@pytest.mark.slow
def test_finished_values_are_skipped_and_an_interrupted_one_resumes(study):
  workdir, rows = study
  done = os.path.join(workdir, 'H1', ablation.RESULT_FILE)
  before = os.path.getmtime(done)
  # H2 "interrupted" after its last checkpoint: its result file is missing, its checkpoints stay.
  os.remove(os.path.join(workdir, 'H2', ablation.RESULT_FILE))
  steps = sorted(os.listdir(os.path.join(workdir, 'H2', 'checkpoints')))
  again = ablation.run_ablation(_trained.tiny_config(), workdir, harmonics=[1, 2])
  assert os.path.getmtime(done) == before  # H1 not rerun
  assert sorted(os.listdir(os.path.join(workdir, 'H2', 'checkpoints'))) == steps  # no new steps
  assert again[1]['roc_auc'] == pytest.approx(rows[1]['roc_auc'])
  assert again[1]['parameters'] == rows[1]['parameters']


def test_bad_harmonics_fail_before_any_training(tmp_path):
  with pytest.raises(ValueError, match='distinct integers'):
    ablation.parse_harmonics('2,2')
  with pytest.raises(ValueError, match='comma-separated integers'):
    ablation.parse_harmonics('two')
  # 400 harmonics leave no fundamental above C1 at 16 kHz: refused by the config check, before
  # H=1 is trained.
  with pytest.raises(ValueError, match=r'(?s)H=400: .*n_harmonic=400'):
    ablation.run_ablation(_trained.tiny_config(), str(tmp_path), harmonics=[1, 400])
  assert not os.path.exists(tmp_path / 'H1')


def _row(h, seed, roc):
  return {'H': h, 'seed': seed, 'parameters': 10 * h, 'roc_auc': roc, 'pr_auc': roc / 2,
          'train_clips_per_sec': 5.0, 'eval_chunks': 4}


def test_seed_summary_and_which_differences_exceed_the_spread(tmp_path):
  rows = [_row(1, s, v) for s, v in enumerate((0.70, 0.72, 0.74))] + \
         [_row(2, s, v) for s, v in enumerate((0.71, 0.73, 0.75))] + \
         [_row(6, s, v) for s, v in enumerate((0.80, 0.81, 0.82))]
  summary = ablation.seed_summary(rows)
  assert [(e['H'], e['runs']) for e in summary] == [(1, 3), (2, 3), (6, 3)]
  assert summary[0]['roc_auc_mean'] == pytest.approx(0.72)
  assert summary[0]['roc_auc_sd'] == pytest.approx(0.02)  # sample sd (n − 1)
  pairs = {(p['H_a'], p['H_b']): p for p in ablation.pairwise(summary)}
  assert not pairs[(1, 2)]['exceeds']  # +0.01 against a spread of 0.04
  assert pairs[(1, 6)]['exceeds'] and pairs[(1, 6)]['diff'] == pytest.approx(0.09)
  assert pairs[(2, 6)]['spread'] == pytest.approx(0.03)
  ablation.write_tables(rows, str(tmp_path))
  md = (tmp_path / 'ablation.md').read_text()
  assert '| H | seed | parameters | ROC-AUC |' in md and '(4 chunks per track)' in md
  assert '| 1 | 3 | 0.7200 ± 0.0200 |' in md
  assert '| 6 − 1 | +0.0900 | 0.0300 | yes |' in md and '| 2 − 1 | +0.0100 | 0.0400 | no |' in md
  assert 'Beyond the seed spread: H=6 − H=1 +0.0900; H=6 − H=2 +0.0800.' in md
  with open(tmp_path / 'ablation.csv') as f:
    assert next(csv.reader(f))[:2] == ['H', 'seed']
  close = [_row(h, s, 0.7 + 0.01 * s) for s in range(3) for h in (1, 2)]
  ablation.write_tables(close, str(tmp_path))
  assert 'No difference between two values of H exceeds the seed spread' in (
      tmp_path / 'ablation.md').read_text()


def test_bad_seeds_are_refused():
  assert ablation.parse_seeds('') is None and ablation.parse_seeds('0,1,2') == [0, 1, 2]
  with pytest.raises(ValueError, match='distinct integers'):
    ablation.parse_seeds('1,1')
  with pytest.raises(ValueError, match='comma-separated integers'):
    ablation.parse_seeds('one')


@pytest.mark.slow
def test_one_run_per_h_and_seed(tmp_path):
  rows = ablation.run_ablation(_trained.tiny_config(), str(tmp_path), harmonics=[1, 2],
                               seeds=[3, 4])
  # Seed-major, so that a study stopped early still covers every H.
  assert [(r['H'], r['seed']) for r in rows] == [(1, 3), (2, 3), (1, 4), (2, 4)]
  for r in rows:
    run = tmp_path / f"H{r['H']}_seed{r['seed']}"
    config = json.loads((run / 'config.json').read_text())
    assert (config['seed'], config['model']['kwargs']['n_harmonic']) == (r['seed'], r['H'])
    saved = json.loads((run / ablation.RESULT_FILE).read_text())
    assert (saved['eval_chunks'], saved['split']) == (2, 'test') and saved['checkpoint_step'] >= 1
    assert set(saved['per_class']) == {'roc_auc', 'pr_auc'}
  # Same H, other seed: other initial weights and batches, so other scores.
  assert rows[0]['roc_auc'] != rows[2]['roc_auc'] or rows[0]['pr_auc'] != rows[2]['pr_auc']
  assert '## Over seeds' in (tmp_path / 'ablation.md').read_text()
