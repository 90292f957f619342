"""configs/base.py: the one schema of run-config keys, its defaults and the combined early check."""
from __future__ import annotations

import ml_collections
import pytest

from hcnn_jax.configs import base, fake_tiny
from tests.configs._edit import set_key


def _leaves(config, prefix=''):
  out = {}
  for key in config.keys():
    value = config[key]
    if isinstance(value, ml_collections.ConfigDict) and key not in ('kwargs', 'optimizer'):
      out.update(_leaves(value, f'{prefix}{key}.'))
    else:
      out[prefix + key] = value
  return out


def test_the_base_config_is_the_schema_with_its_defaults():
  config = base.get_base_config()
  leaves = _leaves(config)
  assert set(leaves) == {k.path for k in base.SCHEMA}
  for key in base.SCHEMA:
    if key.type is dict:
      assert isinstance(leaves[key.path], ml_collections.ConfigDict), key.path
    elif key.default is None:  # a typed placeholder: settable from the command line
      assert leaves[key.path] is None and config.get_type(key.path.split('.')[-1]) is key.type
    else:
      assert leaves[key.path] == key.default and type(leaves[key.path]) is key.type, key.path
  assert config.optimizer.name == 'reference'
  base.validate(fake_tiny.get_config())  # the shipped configs: tests/test_cli.py


def test_every_owner_exists_and_reads_schema_keys():
  import importlib  # pylint: disable=import-outside-toplevel
  groups = {k.path.split('.')[0] for k in base.SCHEMA}
  for module, function, reads in base.OWNERS:
    assert callable(getattr(importlib.import_module(module), function)), module
    assert set(reads) <= groups, module


def _changed(**values):
  config = fake_tiny.get_config()
  for path, value in values.items():
    set_key(config, path.replace('__', '.'), value)
  return config


def test_every_problem_in_one_line_each_naming_its_key():
  config = _changed(batch_size='8', data_in_memory='yes', final_eval_split='dev', task='captions',
                    dataset__config_name='tracks=x', selection_mode='up', seed=1.5,
                    model__kwargs__n_harmonic=0)
  with pytest.raises(ValueError) as err:
    base.validate(config)
  message = str(err.value)
  assert '\n' not in message and message.startswith('bad config: - ')
  for part in ("batch_size: must be an integer >= 1, got '8'",
               "data_in_memory: must be True or False, got 'yes'",
               "final_eval_split: 'dev'; use one of ['train', 'validation', 'test']",
               "task: 'captions' is not a task", "dataset.config_name: Bad value 'x' for 'tracks'",
               "selection_mode: 'up'", 'seed: must be an integer, got 1.5',
               'model.kwargs: n_harmonic must be an integer >= 1'):
    assert f'- {part}' in message, (part, message)
  # The device check reads batch_size, which is mistyped: it is skipped, not crashed.
  assert 'devices' not in message


def test_missing_keys_and_model_keys_out_of_place():
  config = fake_tiny.get_config()
  del config['seed']
  with config.unlocked():
    config.model.width = 4
  with pytest.raises(ValueError) as err:
    base.validate(config)
  message = str(err.value)
  assert "missing key(s) ['seed']; start from hcnn_jax/configs/base.py" in message
  assert "model: unknown key(s) ['width']; put model options under model.kwargs" in message
  config = fake_tiny.get_config()
  del config['progress_bar']  # optional: a config saved before the key existed
  base.validate(config)


def test_describe_is_a_table_of_every_key():
  rows = base.describe().splitlines()
  assert len(rows) == 2 + len(base.SCHEMA)
  assert all(row.count(' | ') == 3 for row in rows[2:]), rows
  assert any('`model.kwargs`' in row for row in rows)
