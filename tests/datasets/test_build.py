"""datasets.build: the name table, lazy imports, build-once semantics and the CLI."""
from __future__ import annotations

import importlib
import os

import pytest

import datasets

# The package exports the function `build`, which shadows the module of the same name.
build_lib = importlib.import_module('datasets.build')


@pytest.fixture(scope='module')
def built_dir(tmp_path_factory):
  """synth_gm/tiny built once through `datasets.build`."""
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  assert not datasets.is_built('synth_gm', data_dir, 'tiny')
  builder = datasets.build('synth_gm', data_dir, 'tiny', num_workers=1)
  assert builder.is_prepared()
  return data_dir


def test_package_exports():
  assert datasets.build is build_lib.build and datasets.is_built is build_lib.is_built
  assert datasets.DATASETS is build_lib.DATASETS


def test_table_names_every_dataset_as_module_and_class():
  assert set(datasets.DATASETS) == {'synth_gm', 'mtat', 'mtg_jamendo', 'msd', 'speech_commands35',
                                    'dcase2017_task4'}
  for target in datasets.DATASETS.values():
    module, cls = target.split(':')
    assert module.startswith('.') and cls[0].isupper()  # relative: installed under any name
  assert build_lib.builder_class('synth_gm').__name__ == 'SynthGm'


def test_unknown_or_missing_datasets_fail_clearly(monkeypatch, tmp_path):
  with pytest.raises(ValueError, match="Unknown dataset 'nope'.*synth_gm"):
    datasets.build('nope', str(tmp_path))
  monkeypatch.setitem(build_lib.DATASETS, 'ghost', 'datasets.ghost.ghost:Ghost')
  with pytest.raises(ValueError, match="Dataset 'ghost': cannot import"):
    datasets.is_built('ghost', str(tmp_path))
  monkeypatch.setitem(build_lib.DATASETS, 'wrong_class', 'datasets.synth_gm.synth_gm:Nope')
  with pytest.raises(ValueError, match='has no builder class Nope'):
    build_lib.builder_class('wrong_class')


def test_bad_config_and_manual_dir_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="no config 'huge'.*tiny"):
    datasets.build('synth_gm', str(tmp_path), 'huge')
  with pytest.raises(ValueError, match='manual_dir .* is not a directory'):
    datasets.build('synth_gm', str(tmp_path), 'tiny', manual_dir=str(tmp_path / 'missing'))


def test_build_prepares_array_record_once(built_dir, monkeypatch):
  assert datasets.is_built('synth_gm', built_dir, 'tiny')
  assert not datasets.is_built('synth_gm', built_dir)  # the default config is another folder
  folder = os.path.join(built_dir, 'synth_gm', 'tiny', '1.0.0')
  assert any(f.startswith('synth_gm-train.array_record') for f in os.listdir(folder))
  synth_gm = importlib.import_module('datasets.synth_gm.synth_gm')

  def refuse(*args, **kwargs):
    raise AssertionError('a prepared dataset must not be prepared again')

  monkeypatch.setattr(synth_gm.SynthGm, 'download_and_prepare', refuse)
  builder = datasets.build('synth_gm', built_dir, 'tiny')
  assert builder.info.splits['train'].num_examples == builder.builder_config.num_train


def test_cli_reports_time_size_and_tag_frequencies(tmp_path, capsys):
  data_dir = str(tmp_path)
  assert build_lib.main(['synth_gm', '--data_dir', data_dir, '--config', 'tiny',
                         '--num_workers', '1']) == 0
  out = capsys.readouterr().out
  assert 'built in' in out and 'size on disk' in out and 'MiB' in out
  assert 'tag frequencies over 40 clips' in out
  assert any(line.split()[:1] == ['no_drums'] for line in out.splitlines())
  assert build_lib.main(['synth_gm', '--data_dir', data_dir, '--config', 'tiny']) == 0
  assert 'already prepared' in capsys.readouterr().out


def test_cli_error_is_one_line_and_exit_code_2(tmp_path, capsys):
  assert build_lib.main(['synth_gm', '--data_dir', str(tmp_path), '--config', 'huge']) == 2
  err = capsys.readouterr().err
  assert err.startswith('error: ') and "no config 'huge'" in err
