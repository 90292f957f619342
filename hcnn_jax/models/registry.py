"""Models and front-ends by name.

A model module registers builder functions `fn(num_classes, **kwargs) -> nn.Module` with
`@register(name, input_length=...)`; the modules listed in `_MODEL_MODULES` are imported on the
first lookup (only those that exist, so the registry works while the zoo is being written).
`get_model(name, num_classes, frontend=...)` swaps a Classifier's front-end.

`build_model(config, num_classes)` is what the trainer and the tools call: the model of a run
config (`model.name`, `model.kwargs`, `dtype`); `check_config(config)` builds it and traces its
init as a `jax.eval_shape` at the config's input length (shapes only: nothing is compiled).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp

from flax import linen as nn

from hcnn_jax.models.compose import Classifier

Builder = Callable[..., nn.Module]

# Modules whose import registers models. Append yours here.
_MODEL_MODULES = [
    'hcnn_jax.models.hcnn',
    'hcnn_jax.models.fcn',
    'hcnn_jax.models.musicnn',
    'hcnn_jax.models.crnn',
    'hcnn_jax.models.sample',
    'hcnn_jax.models.short_chunk',
    'hcnn_jax.models.attention',
]

# name → (module, class). Imported lazily: the modules import this package's blocks.
_FRONTENDS = {
    'harmonic': ('hcnn_jax.frontends.harmonic', 'HarmonicFrontend'),
    'mel': ('hcnn_jax.frontends.modules', 'MelFrontend'),
    'linear': ('hcnn_jax.frontends.modules', 'LinearFrontend'),
    'mfcc': ('hcnn_jax.frontends.modules', 'MFCCFrontend'),
    'cqt': ('hcnn_jax.frontends.modules', 'CQTFrontend'),
    'raw': ('hcnn_jax.frontends.modules', 'RawFrontend'),
}


class _Entry(NamedTuple):
  builder: Builder
  input_length: int
  origin: Optional[str]


_REGISTRY: Dict[str, _Entry] = {}


def _origin(fn) -> Optional[str]:
  target = getattr(fn, 'func', fn)  # functools.partial
  return f"{getattr(target, '__module__', None)}.{getattr(target, '__qualname__', None)}"


def register(name: str, input_length: int) -> Callable[[Builder], Builder]:
  """Decorator: registers `fn(num_classes, **kwargs) -> nn.Module` as model `name`.

  input_length is the model's default number of input samples (its training crop).
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f'A model name must be a non-empty string, got {name!r}.')
  if int(input_length) != input_length or input_length < 1:
    raise ValueError(f'input_length of model {name!r} must be a positive integer, '
                     f'got {input_length!r}.')

  def decorate(fn: Builder) -> Builder:
    origin = _origin(fn)
    known = _REGISTRY.get(name)
    # Re-importing the same module (a reload) re-registers; another builder under the name is a bug.
    if known is not None and known.origin != origin:
      raise ValueError(f'Model name {name!r} is already registered by {known.origin}.')
    _REGISTRY[name] = _Entry(fn, int(input_length), origin)
    return fn

  return decorate


def _load_models() -> None:
  for module in _MODEL_MODULES:
    try:
      spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
      spec = None
    if spec is not None:
      importlib.import_module(module)


def list_models() -> List[str]:
  """Registered model names, sorted."""
  _load_models()
  return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
  _load_models()
  if name not in _REGISTRY:
    raise ValueError(f'Unknown model {name!r}; known models: {", ".join(sorted(_REGISTRY))}.')
  return _REGISTRY[name]


def default_input_length(name: str) -> int:
  """The number of samples model `name` is trained on by default."""
  return _entry(name).input_length


def _module_fields(cls) -> List[str]:
  return [f.name for f in dataclasses.fields(cls) if f.name not in ('parent', 'name')]


def _frontend_class(name: str):
  if name not in _FRONTENDS:
    raise ValueError(f'Unknown front-end {name!r}; known front-ends: {", ".join(_FRONTENDS)}.')
  module, cls_name = _FRONTENDS[name]
  try:
    spec = importlib.util.find_spec(module)
  except ModuleNotFoundError:
    spec = None
  cls = getattr(importlib.import_module(module), cls_name, None) if spec is not None else None
  if cls is None:
    raise ValueError(f'Front-end {name!r} ({module}.{cls_name}) is not available in this '
                     'installation.')
  return cls


def get_frontend(name: str, **kwargs) -> nn.Module:
  """A front-end module by name: 'harmonic', 'mel', 'linear', 'mfcc', 'cqt' or 'raw'."""
  cls = _frontend_class(name)
  fields = _module_fields(cls)
  unknown = sorted(set(kwargs) - set(fields))
  if unknown:
    raise ValueError(f'Front-end {name!r} has no option(s) {unknown}; its options are {fields}.')
  return cls(**kwargs)


def _swap_frontend(model: nn.Module, name: str, frontend: Union[str, nn.Module, None],
                   frontend_kwargs: Optional[Dict[str, Any]], model_kwargs: Dict[str, Any]):
  if not isinstance(model, Classifier):
    raise ValueError(f'Model {name!r} is not a front-end + back-end Classifier, so its front-end '
                     'cannot be swapped.')
  frontend_kwargs = dict(frontend_kwargs or {})
  if frontend is None:  # only options: rebuild the model's own front-end with them
    frontend = model.frontend
  if isinstance(frontend, str):
    cls_fields = set(_module_fields(_frontend_class(frontend)))
    # The model's computation dtype and BatchNorm axis apply to a new front-end too.
    for key in ('dtype', 'bn_axis_name'):
      if key in model_kwargs and key in cls_fields:
        frontend_kwargs.setdefault(key, model_kwargs[key])
    frontend = get_frontend(frontend, **frontend_kwargs)
  elif isinstance(frontend, nn.Module):
    if frontend_kwargs:
      unknown = sorted(set(frontend_kwargs) - set(_module_fields(type(frontend))))
      if unknown:
        raise ValueError(f'Front-end {type(frontend).__name__} has no option(s) {unknown}.')
      frontend = frontend.clone(**frontend_kwargs)
  else:
    raise ValueError(f'frontend must be a front-end name ({", ".join(_FRONTENDS)}) or a linen '
                     f'module, got {type(frontend).__name__}.')
  for method in ('output_shape',):
    if not callable(getattr(frontend, method, None)):
      raise ValueError(f'Front-end {type(frontend).__name__} lacks {method}(num_samples).')
  return model.clone(frontend=frontend)


def get_model(name: str, num_classes: int, frontend: Union[str, nn.Module, None] = None,
              frontend_kwargs: Optional[Dict[str, Any]] = None, **kwargs) -> nn.Module:
  """Builds model `name` for num_classes outputs; `frontend` (a name or a module) replaces its
  front-end, `frontend_kwargs` configure it. Other kwargs go to the model's builder."""
  entry = _entry(name)
  if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
    raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}.')
  try:
    inspect.signature(entry.builder).bind(int(num_classes), **kwargs)
  except TypeError as err:
    params = [p for p in inspect.signature(entry.builder).parameters if p != 'num_classes']
    raise ValueError(f'Bad options for model {name!r} ({err}); it accepts {params}.') from None
  model = entry.builder(int(num_classes), **kwargs)
  if frontend is not None or frontend_kwargs:
    model = _swap_frontend(model, name, frontend, frontend_kwargs, kwargs)
  return model


def _tuples(value):
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  return value


def model_kwargs(config) -> Dict[str, Any]:
  """The keyword arguments `get_model` gets from `config.model.kwargs` and `config.dtype`."""
  from hcnn_jax.training import precision  # pylint: disable=import-outside-toplevel
  kwargs = config.model.get('kwargs') or {}
  kwargs = kwargs.to_dict() if hasattr(kwargs, 'to_dict') else dict(kwargs)
  # Lists come back from JSON (a saved config) where the builder expects tuples, at every depth
  # (pools are lists of pairs): linen modules must stay hashable for jit's static arguments.
  kwargs = {k: _tuples(v) for k, v in kwargs.items()}
  return {**kwargs, 'dtype': precision.compute_dtype(config.get('dtype', 'float32'))}


def build_model(config, num_classes: int, bn_axis_name: Optional[str] = None) -> nn.Module:
  """The model of run config `config` for `num_classes` outputs.

  The trainer passes `bn_axis_name='data'` (BatchNorm statistics synced over the mesh); inference
  leaves it None.
  """
  return get_model(config.model.name, int(num_classes), bn_axis_name=bn_axis_name,
                   **model_kwargs(config))


def check_config(config) -> None:
  """ValueError naming the key when the config's model cannot be built or does not take an
  input of `config.input_length` samples. Traces the init's shapes; compiles nothing."""
  name = config.model.name
  if name not in list_models():
    raise ValueError(f'model.name: unknown model {name!r}; use one of {list_models()}')
  try:
    model = build_model(config, num_classes=2)
  except ValueError as err:
    raise ValueError(f'dtype: {err}' if 'config dtype' in str(err) else
                     f'model.kwargs: {err}') from None
  except TypeError as err:
    raise ValueError(f'model.kwargs: {err}') from None
  length = int(config.input_length)
  hint = (f' Set input_length (default for {name!r}: {default_input_length(name):,}).')
  if hasattr(model, 'check_input_length'):
    try:
      model.check_input_length(length)
    except ValueError as err:
      raise ValueError(f'input_length: {err}{hint}') from None
  audio = jax.ShapeDtypeStruct((1, length), jnp.float32)
  try:
    jax.eval_shape(lambda a: model.init(jax.random.key(0), a, train=False), audio)
  except (ValueError, TypeError, IndexError) as err:  # options only the trace reaches
    what = 'input_length' if not hasattr(model, 'check_input_length') else 'model.kwargs'
    raise ValueError(f'{what}: an input of {length:,} samples does not go through '
                     f'{name!r}: {err}' + (hint if what == 'input_length' else '')) from None
