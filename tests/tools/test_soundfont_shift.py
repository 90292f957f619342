"""soundfont_shift: the per-tag table, its errors, and a tiny synth_gm run scored on two renders."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hcnn_jax.tools import soundfont_shift

import _trained  # tests/tools/_trained.py

TAGS = ['piano', 'organ', 'loud', 'quiet']


def _result(roc, pr, positives):
  return {'per_class': {'roc_auc': dict(zip(TAGS, roc)), 'pr_auc': dict(zip(TAGS, pr))},
          'positives': dict(zip(TAGS, positives))}


def test_rows_and_table_compare_each_render_with_the_test_split():
  results = {'default': _result([0.6, 0.8, 1.0, 0.9], [0.3, 0.5, 0.9, 0.7], [3, 4, 5, 2]),
             'default_fluidr3': _result([0.5, 0.7, float('nan'), 0.9], [0.2, 0.5, 0.8, 0.6],
                                        [3, 4, 6, 2])}
  rows = soundfont_shift.shift_rows(results, 'default', TAGS, ['piano', 'organ'])
  assert [r['tag'] for r in rows] == TAGS + ['mean of the 2 instrument tags', 'mean of all 4 tags']
  piano, instruments, overall = rows[0], rows[-2], rows[-1]
  assert piano['default_fluidr3/delta_roc_auc'] == pytest.approx(-0.1)
  assert instruments['default/roc_auc'] == pytest.approx(0.7)
  assert instruments['default_fluidr3/delta_roc_auc'] == pytest.approx(-0.1)
  assert instruments['default_fluidr3/delta_pr_auc'] == pytest.approx(-0.05)
  # An undefined AUC is left out of the mean, not counted as 0.
  assert overall['default_fluidr3/roc_auc'] == pytest.approx((0.5 + 0.7 + 0.9) / 3)
  assert np.isnan(rows[2]['default_fluidr3/delta_roc_auc'])
  text = soundfont_shift.markdown(rows, list(results), 'default', 'title')
  lines = text.splitlines()
  assert lines[0] == '# title'
  assert lines[2] == ('| tag | ROC default | ROC default_fluidr3 | Δ | PR default | '
                      'PR default_fluidr3 | Δ |')
  assert '| piano | 0.6000 | 0.5000 | -0.1000 | 0.3000 | 0.2000 | -0.1000 |' in lines
  assert '| loud | 1.0000 | n/a | n/a | 0.9000 | 0.8000 | -0.1000 |' in lines
  # Only loud's positives moved between the renders: the note names it and no other tag.
  assert lines[-1] == ('Positives that differ between renders (read off each waveform): '
                       'loud (default 5, default_fluidr3 6).')


def test_bad_requests_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match=r"--soundfonts: unknown \['timgm'\]"):
    soundfont_shift.companions('default', ['timgm'])
  with pytest.raises(ValueError, match="no config 'paper_fluidr3'"):
    soundfont_shift.companions('paper')
  # A run on the multi-bank training set is tested on the base config's test split.
  assert soundfont_shift.companions('default_multibank') == soundfont_shift.companions('default')
  assert soundfont_shift.companions('tiny') == {'tiny_fluidr3': 'FluidR3_GM',
                                                'tiny_musescore': 'MuseScore_General'}
  with pytest.raises(ValueError, match="dataset.name: 'fake'"):
    soundfont_shift.evaluate_shift(_trained.tiny_config(), str(tmp_path))
  with pytest.raises(ValueError, match='no instrument tags'):
    soundfont_shift.shift_rows({'a': _result([0.5] * 4, [0.5] * 4, [1] * 4)}, 'a', TAGS, ['sax'])
  config = _synth_tiny_config(str(tmp_path))
  with pytest.raises(ValueError, match='no best/ checkpoint'):
    soundfont_shift.evaluate_shift(config, str(tmp_path / 'untrained'))


def test_cli_says_what_is_wrong_in_one_line(tmp_path):
  cmd = [sys.executable, '-m', 'hcnn_jax.tools.soundfont_shift', '--config',
         'hcnn_jax/configs/fake_tiny.py', '--workdir', str(tmp_path)]
  done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), check=False,
                        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == (
      "soundfont_shift: error: dataset.name: 'fake'; this tool compares renders of synth_gm "
      '(pass the config of a synth_gm run)')


def _synth_tiny_config(data_dir: str):
  """fake_tiny's model and one-epoch recipe, on synth_gm/tiny (26 tags, 6-s clips)."""
  config = _trained.tiny_config()
  config.dataset.name = 'synth_gm'
  config.dataset.config_name = 'tiny'
  config.dataset.data_dir = data_dir
  return config


def _untrained_run(config, workdir: str, class_names) -> None:
  """A run folder whose best/ checkpoint is the model's initialisation, written by the trainer's
  own checkpoint code with the meta a finished run writes (training it would only add minutes of
  compilation: the tool reads the checkpoint, whatever its weights)."""
  import jax  # pylint: disable=import-outside-toplevel
  from hcnn_jax import tasks  # pylint: disable=import-outside-toplevel
  from hcnn_jax.models import registry  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import (  # pylint: disable=import-outside-toplevel
      checkpoint, loop, state)
  model = registry.build_model(config, len(class_names))
  variables = state.init_variables(model, jax.random.PRNGKey(0), int(config.input_length))
  # pylint: disable=protected-access
  book = dict(loop._fresh_book(), epochs_done=1, best_epoch=1, best_step=3)
  meta = loop._meta(book, list(class_names), tasks.get_task('tagging'))
  # pylint: enable=protected-access
  with checkpoint.RunCheckpoints(workdir, async_save=False) as ckpts:
    ckpts.save_best(3, variables, meta=meta, config=config)


def _strict_json(path: str):
  def refuse(constant):
    raise AssertionError(f'{path} holds {constant}, which is not JSON')
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


def test_a_tiny_run_on_the_test_split_and_the_fluidr3_render(tmp_path):
  import datasets  # pylint: disable=import-outside-toplevel
  from datasets.synth_gm import render  # pylint: disable=import-outside-toplevel
  from datasets.synth_gm import tags as synth_tags  # pylint: disable=import-outside-toplevel
  from hcnn_jax.data import sources  # pylint: disable=import-outside-toplevel
  try:
    render.soundfont_path('FluidR3_GM')
  except ValueError as err:
    pytest.skip(str(err))
  data_dir, workdir = str(tmp_path / 'data'), str(tmp_path / 'run')
  config = _synth_tiny_config(data_dir)
  datasets.build('synth_gm', data_dir, 'tiny', num_workers=1)
  _untrained_run(config, workdir, synth_tags.TAGS)
  shift = soundfont_shift.evaluate_shift(config, workdir, soundfonts=['fluidr3'])
  assert shift['renders'] == {'tiny': 'TimGM6mb', 'tiny_fluidr3': 'FluidR3_GM'}
  out = os.path.join(workdir, 'soundfont_shift')
  for name, result in shift['results'].items():
    # Each render's numbers are the eval entry point's, written where hcnn-eval writes them.
    assert _strict_json(os.path.join(out, name, 'metrics_test.json'))['roc_auc'] == \
        pytest.approx(result['roc_auc'])
    source, _ = sources.load('synth_gm', 'test', data_dir, name)
    labels = np.stack([r['labels'] for r in source])
    assert result['positives'] == dict(zip(synth_tags.TAGS, labels.sum(0).astype(int).tolist()))
  rows = shift['rows']
  overall, instruments = rows[-1], rows[-2]
  assert overall['tiny/roc_auc'] == pytest.approx(shift['results']['tiny']['roc_auc'])
  assert overall['tiny_fluidr3/pr_auc'] == pytest.approx(shift['results']['tiny_fluidr3']['pr_auc'])
  per_tag = shift['results']['tiny']['per_class']['roc_auc']
  assert instruments['tiny/roc_auc'] == pytest.approx(
      np.nanmean([per_tag[t] for t in synth_tags.INSTRUMENT_TAGS]))
  # Another bank's samples change the model's scores (the same audio would give zero deltas).
  assert any(abs(r['tiny_fluidr3/delta_pr_auc']) > 1e-6 for r in rows[:-2]
             if np.isfinite(r['tiny_fluidr3/delta_pr_auc']))
  text = open(os.path.join(out, 'soundfont_shift.md')).read()
  assert text == shift['markdown'] and '| mean of the 16 instrument tags |' in text
  saved = _strict_json(os.path.join(out, 'soundfont_shift.json'))
  assert saved['renders'] == shift['renders'] and len(saved['rows']) == 26 + 2
