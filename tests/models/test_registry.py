"""Model registry: names, default input lengths, lazy modules, front-end swaps, clear errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest
from flax import linen as nn

from hcnn_jax import models
from hcnn_jax.frontends import HarmonicFrontend
from hcnn_jax.models import (Classifier, default_input_length, get_frontend, get_model,
                             list_models, registry)
from hcnn_jax.models.hcnn import HCNNBackend
from tests.configs._edit import set_key


def test_hcnn_models_and_their_input_lengths():
  names = list_models()
  assert {'hcnn', 'hcnn_keywords', 'hcnn_events'} <= set(names) and names == sorted(names)
  assert default_input_length('hcnn') == 80_000
  assert default_input_length('hcnn_events') == 48_000
  assert default_input_length('hcnn_keywords') == 16_000
  model = get_model('hcnn', num_classes=50, n_harmonic=6)
  assert isinstance(model, Classifier) and isinstance(model.frontend, HarmonicFrontend)
  assert isinstance(model.backend, HCNNBackend) and model.num_classes == 50
  # Every registered HCNN accepts its own default input length.
  for name in ('hcnn', 'hcnn_keywords', 'hcnn_events'):
    get_model(name, num_classes=3).check_input_length(default_input_length(name))


def test_unknown_names_and_bad_options_are_value_errors():
  with pytest.raises(ValueError, match="Unknown model 'hcnnn'.*hcnn, hcnn_events, hcnn_keywords"):
    get_model('hcnnn', num_classes=2)
  with pytest.raises(ValueError, match='Unknown model'):
    default_input_length('nope')
  with pytest.raises(ValueError, match="Bad options for model 'hcnn'.*n_harmonics.*n_harmonic"):
    get_model('hcnn', num_classes=2, n_harmonics=6)
  with pytest.raises(ValueError, match='num_classes must be a positive integer'):
    get_model('hcnn', num_classes=0)
  with pytest.raises(ValueError, match="Unknown front-end 'stft'.*harmonic, mel"):
    get_frontend('stft')
  with pytest.raises(ValueError, match="no option.*'n_harmonics'"):
    get_frontend('harmonic', n_harmonics=3)


def test_register_and_lazy_module_list(monkeypatch):
  monkeypatch.setattr(registry, '_REGISTRY', dict(registry._REGISTRY))
  # Modules not written yet are skipped, not errors.
  monkeypatch.setattr(registry, '_MODEL_MODULES',
                      registry._MODEL_MODULES + ['hcnn_jax.models.not_written_yet'])

  @registry.register('tiny_test_model', input_length=1234)
  def tiny(num_classes, *, width=2, dtype=jnp.float32, bn_axis_name=None):
    return nn.Dense(num_classes)

  assert 'tiny_test_model' in list_models()
  assert default_input_length('tiny_test_model') == 1234
  assert isinstance(get_model('tiny_test_model', 4, width=3), nn.Dense)
  with pytest.raises(ValueError, match='already registered'):
    registry.register('tiny_test_model', input_length=10)(lambda num_classes: None)
  with pytest.raises(ValueError, match='input_length'):
    registry.register('other', input_length=0)
  with pytest.raises(ValueError, match='cannot be swapped'):
    get_model('tiny_test_model', 4, frontend='harmonic')


def test_frontend_swaps():
  # Options for the model's own front-end.
  model = get_model('hcnn', num_classes=5, width=4, frontend_kwargs={'learn_bw': 'full'})
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 80_000)))['params']
  assert {'bw_Q', 'bw_alpha', 'bw_beta'} <= set(params['frontend'])
  assert set(params) == {'frontend', 'backend'}
  # By name, with the model's dtype and BatchNorm axis passed on.
  model = get_model('hcnn', num_classes=5, width=4, frontend='harmonic',
                    frontend_kwargs={'n_harmonic': 3}, bn_axis_name='data')
  assert model.frontend.n_harmonic == 3 and model.frontend.bn_axis_name == 'data'
  assert model.feature_shape(80_000) == (152, 313, 3)
  # A module instance.
  model = get_model('hcnn', num_classes=5, width=4, frontend=HarmonicFrontend(n_harmonic=1))
  assert model.feature_shape(80_000)[-1] == 1
  with pytest.raises(ValueError, match='front-end name .* or a linen module'):
    get_model('hcnn', num_classes=5, frontend=3)


def test_swapped_frontends_and_shape_errors():
  mel = get_frontend('mel', n_mels=128)
  model = get_model('hcnn', num_classes=5, width=4, frontend=mel)
  assert model.feature_shape(80_000) == (128, 313, 1)
  logits = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x)[0],
                          jnp.zeros((2, 80_000)))
  assert logits.shape == (2, 5)
  # Raw audio is (L, 1, 1): far too few "frames" in time for the 2·2·2·2·2·3·3 pools.
  raw = get_model('hcnn', num_classes=5, width=4, frontend='raw')
  with pytest.raises(ValueError, match='does not fit this model'):
    raw.check_input_length(80_000)


def test_public_api():
  for name in ('get_model', 'list_models', 'default_input_length', 'get_frontend', 'Classifier'):
    assert hasattr(models, name), name


def test_a_config_read_back_from_json_builds_the_same_hashable_model():
  import json  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from hcnn_jax.configs import fake_tiny  # pylint: disable=import-outside-toplevel
  config = fake_tiny.get_config()
  original = registry.model_kwargs(config)
  config.model.kwargs = ml_collections.ConfigDict(json.loads(json.dumps(
      config.model.kwargs.to_dict())))
  loaded = registry.model_kwargs(config)
  assert loaded == original
  assert isinstance(loaded['pools'], tuple) and isinstance(loaded['pools'][0], tuple)
  model = models.build_model(config, 5)
  assert hash(model) == hash(models.build_model(config, 5))


def test_check_config_names_the_key_in_one_line():
  from hcnn_jax.configs import fake_tiny  # pylint: disable=import-outside-toplevel
  config = fake_tiny.get_config()
  registry.check_config(config)
  cases = [('model.name', 'hcnnn', "model.name: unknown model 'hcnnn'"),
           ('model.kwargs.n_harmonic', 0, 'model.kwargs: n_harmonic must be an integer >= 1'),
           ('model.kwargs.width', 'wide', 'model.kwargs: '),
           ('input_length', 100, 'input_length: An input of 100 samples does not fit'),
           ('dtype', 'float16', "dtype: config dtype 'float16' is not supported")]
  for path, value, message in cases:
    changed = fake_tiny.get_config()
    set_key(changed, path, value)
    with pytest.raises(ValueError) as err:
      registry.check_config(changed)
    assert str(err.value).startswith(message), (path, str(err.value))
    assert '\n' not in str(err.value)
