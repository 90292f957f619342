"""config_check turns a config read back from JSON into the same model as the original."""
import json

import ml_collections

from hcnn_jax.configs import fake_tiny
from hcnn_jax.training import config_check


def test_json_round_trip_gives_nested_tuples_and_a_hashable_model():
  config = fake_tiny.get_config()
  original = config_check.model_kwargs(config)
  config.model.kwargs = ml_collections.ConfigDict(json.loads(json.dumps(
      config.model.kwargs.to_dict())))
  loaded = config_check.model_kwargs(config)
  assert loaded == original
  assert isinstance(loaded['pools'], tuple) and isinstance(loaded['pools'][0], tuple)
  model = config_check.build_model(config, 5)
  assert hash(model) == hash(config_check.build_model(config, 5))
