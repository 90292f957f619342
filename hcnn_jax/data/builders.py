"""Where the dataset builders are: `datasets/` of a checkout, or `hcnn_datasets` of the wheel.

The repository keeps its TFDS builders in the top-level folder `datasets/`; the wheel installs
the same folder as the package `hcnn_datasets`, because an installed `datasets` is Hugging Face's.
Code that builds datasets asks `package()` for whichever is there, so it runs the same from a
checkout (`python train.py`) and from an installed console script (`hcnn-train`).

One process must import the builders under one name only: TFDS registers every builder class by
its dataset name and refuses a second class of the same name. So a checkout's `datasets`, once
imported (the tests import it directly), stays the one used.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import Optional

INSTALLED_NAME = 'hcnn_datasets'
CHECKOUT_NAME = 'datasets'
# The console script that builds a dataset (datasets/build.py's main), in every setup.
BUILD_COMMAND = 'hcnn-build'


def _is_ours(directory: Optional[str]) -> bool:
  return bool(directory) and os.path.isfile(os.path.join(directory, 'build.py')) and \
      os.path.isfile(os.path.join(directory, 'synth_gm', 'synth_gm.py'))


def _checkout_spec_is_ours() -> bool:
  """Whether `import datasets` would find our builders (not Hugging Face's), without importing."""
  try:
    spec = importlib.util.find_spec(CHECKOUT_NAME)
  except (ImportError, ValueError):
    return False
  locations = list(spec.submodule_search_locations or []) if spec else []
  return any(_is_ours(d) for d in locations)


def package() -> ModuleType:
  """The builders package (`build`, `is_built`, `DATASETS`), imported now if it was not yet."""
  loaded = sys.modules.get(CHECKOUT_NAME)
  if loaded is not None and _is_ours(os.path.dirname(getattr(loaded, '__file__', None) or '')):
    return loaded
  if INSTALLED_NAME in sys.modules:
    return sys.modules[INSTALLED_NAME]
  if loaded is None and _checkout_spec_is_ours():
    return importlib.import_module(CHECKOUT_NAME)
  try:
    return importlib.import_module(INSTALLED_NAME)
  except ModuleNotFoundError as err:
    if err.name != INSTALLED_NAME:
      raise  # a dependency of the builders is missing: that message says which
  raise ValueError(f'the dataset builders are not installed: install the hcnn-jax wheel '
                   f'(`pip install .` in the repository, which ships them as {INSTALLED_NAME}) '
                   'or run from the root of a checkout')


def module(relative: str) -> ModuleType:
  """A module of the builders package by its name inside it, e.g. 'mtat.mtat'."""
  return importlib.import_module(f'{package().__name__}.{relative}')


def build_command(name: str, data_dir: str, config_name: Optional[str] = None) -> str:
  """The shell command that prepares dataset `name` under `data_dir`."""
  cmd = f'{BUILD_COMMAND} {name} --data_dir {data_dir}'
  return cmd + (f' --config {config_name}' if config_name else '')
