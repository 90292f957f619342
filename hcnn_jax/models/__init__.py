"""Models: conv blocks, back-ends, the front-end + back-end Classifier and the registry.

`get_model(name, num_classes, **kwargs)` builds a registered model; `list_models()` names them.
"""
from hcnn_jax.models.compose import Classifier
from hcnn_jax.models.registry import (build_model, default_input_length, get_frontend, get_model,
                                      list_models, register)
