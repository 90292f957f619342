"""One line for a mistyped command line: the config file, a `--config.<key>` override, the workdir.

absl parses the flags before `main` runs, and ml_collections raises its override errors from
inside that parse (a KeyError chained into an AttributeError: dozens of traceback lines for
`--config.batchsize=8`), or defers a missing config file to the first attribute access
("got _ErrorConfig"). `flags_parser(prog)` is given to `app.run` instead of absl's parser: any
error becomes `<prog>: error: <what>` on stderr and exit status 1, naming the flag, the key or
file, and the nearest valid ones (difflib). Light on purpose (no jax): it runs before anything else.
"""
from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Callable, List, Optional, Sequence

from absl import flags
import ml_collections

CONFIG_FLAG = 'config'


def _one_line(text: str) -> str:
  return ' '.join(str(text).split())


def fail(prog: str, message: str) -> None:
  """Prints `<prog>: error: <message>` to stderr and exits with status 1 (no traceback)."""
  print(f'{prog}: error: {message}', file=sys.stderr)
  sys.exit(1)


def _config_argument(argv: Sequence[str], name: str = CONFIG_FLAG) -> Optional[str]:
  """The value of `--config` in `argv` (either `--config=V` or `--config V`), or None."""
  for i, arg in enumerate(argv):
    match = re.match(rf'^--?{name}(=(.*))?$', arg)
    if match:
      if match.group(1) is not None:
        return match.group(2)
      return argv[i + 1] if i + 1 < len(argv) else None
  return None


def _overrides(argv: Sequence[str], name: str = CONFIG_FLAG) -> List[str]:
  """The key paths of the `--config.<path>[=value]` flags in `argv`, in order."""
  paths = []
  for arg in argv:
    match = re.match(rf'^--?{name}\.([^=]+)', arg)
    if match:
      paths.append(match.group(1))
  return paths


def _paths(node, prefix: str = '') -> List[str]:
  """Every key path of a ConfigDict, nodes and leaves (`optimizer`, `optimizer.adam_lr`, ...)."""
  out = []
  for key in node.keys():
    path = prefix + key
    out.append(path)
    child = node[key]
    if isinstance(child, ml_collections.ConfigDict):
      out += _paths(child, path + '.')
  return out


def nearest(wanted: str, candidates: Sequence[str], n: int = 3) -> List[str]:
  """Up to `n` of the key paths `candidates` whose last part is close to `wanted`'s (difflib):
  a misspelt key and a key put at the wrong level both find the right path."""
  last = wanted.rsplit('.', 1)[-1]
  by_last: dict = {}
  for path in candidates:
    by_last.setdefault(path.rsplit('.', 1)[-1], []).append(path)
  close = difflib.get_close_matches(last, list(by_last), n=n, cutoff=0.7)
  parent = wanted.rpartition('.')[0]
  found = [path for name in close for path in by_last[name]]
  return sorted(found, key=lambda p: p.rpartition('.')[0] != parent)[:n]  # same group first


def _other_recipe(path: str) -> str:
  """A hint when an optimizer key exists, but in another recipe than the config's."""
  parts = path.split('.')
  if len(parts) != 2 or parts[0] != 'optimizer':
    return ''
  from hcnn_jax.training import schedule  # pylint: disable=import-outside-toplevel
  owners = [name for name, keys in schedule.DEFAULTS.items() if parts[1] in keys]
  if not owners:
    return ''
  return (f'{parts[1]} belongs to the {owners[0]!r} optimizer recipe: set config.optimizer = '
          f'schedule.optimizer_config({owners[0]!r}) in the config file')


def describe_override(config, path: str, source: str) -> Optional[str]:
  """What is wrong with overriding `path` of `config` (loaded from `source`), or None."""
  node, done = config, []
  for part in re.sub(r'\[[^\]]*\]', '', path).split('.'):
    if not isinstance(node, ml_collections.ConfigDict):
      return (f'--config.{path}: {".".join(done)} is a value, not a group of keys, in {source}')
    if part not in node.keys():
      other = _other_recipe(path)
      near = [] if other else nearest(path, _paths(config))
      if other:
        hint = other
      elif near:
        hint = 'did you mean ' + ' or '.join(f'--config.{p}' for p in near)
      else:
        where = f'under {".".join(done)}' if done else 'at the top'
        hint = f'the keys {where}: {", ".join(sorted(node.keys()))}'
      return f'--config.{path}: no such key in {source}; {hint}'
    done.append(part)
    node = node[part]
  if node is None and config.get_type(path) is type(None):
    return (f'--config.{path}: the config holds an untyped None there, which the command line '
            f'cannot set; set it in {source}')
  return None


def _is_config_file(path: str) -> bool:
  try:
    with open(path) as f:
      return 'def get_config(' in f.read()
  except OSError:
    return False


def _root_cause(error: BaseException) -> BaseException:
  """The first exception of a chain (ml_collections re-raises a config's own error with the
  traceback pasted into the message)."""
  seen = set()
  while id(error) not in seen:
    seen.add(id(error))
    inner = error.__cause__ or error.__context__
    if inner is None:
      break
    error = inner
  return error


def describe_config_file(argument: str, error: BaseException) -> str:
  """`--config <file>` could not be loaded: name the file and, if it is missing, the nearest."""
  path = argument.split(':', 1)[0]
  if not os.path.exists(path):
    directory = os.path.dirname(path) or '.'
    files = sorted(n for n in os.listdir(directory)
                   if n.endswith('.py') and _is_config_file(os.path.join(directory, n))) \
        if os.path.isdir(directory) else []
    near = difflib.get_close_matches(os.path.basename(path), files, n=3, cutoff=0.7)
    if near:
      hint = 'did you mean ' + ' or '.join(os.path.join(directory, n) for n in near)
    elif files:
      hint = 'the config files there: ' + ', '.join(files)
    else:
      hint = f'{directory} holds no config file (a .py file with get_config())'
    return f'--config {argument}: no such file; {hint}'
  cause = _root_cause(error)
  return f'--config {argument}: {type(cause).__name__}: {cause}'


def _loaded_config(argument: str):
  """The config `--config <argument>` names, loaded as ml_collections does; raises its error."""
  config = flags.FLAGS[CONFIG_FLAG].parser.parse(argument)
  if type(config).__name__ == '_ErrorConfig':  # ml_collections defers a load failure
    raise object.__getattribute__(config, '_error')
  return config


def _diagnose(argv: Sequence[str], error: BaseException) -> str:
  argument = _config_argument(argv)
  if argument is not None and CONFIG_FLAG in flags.FLAGS:
    try:
      config = _loaded_config(argument)
    except Exception as err:  # pylint: disable=broad-except
      return describe_config_file(argument, err)
    for path in _overrides(argv):
      problem = describe_override(config, path, argument.split(':', 1)[0])
      if problem:
        return problem
  if isinstance(error, flags.Error):
    return str(error)
  return f'{type(error).__name__}: {error}'


def flags_parser(prog: str) -> Callable[[List[str]], List[str]]:
  """A `flags_parser` for `absl.app.run`: absl's parse, with every error on one line."""

  def parse(argv: List[str]) -> List[str]:
    try:
      rest = flags.FLAGS(argv)
    except Exception as err:  # pylint: disable=broad-except
      fail(prog, _one_line(_diagnose(argv[1:], err)))
    if CONFIG_FLAG in flags.FLAGS:
      config = flags.FLAGS[CONFIG_FLAG].value
      if type(config).__name__ == '_ErrorConfig':
        fail(prog, _one_line(describe_config_file(_config_argument(argv[1:]) or '',
                                                  object.__getattribute__(config, '_error'))))
    return rest

  return parse


def check_workdir(path: str, flag: str = '--workdir') -> None:
  """ValueError unless `path` is a directory or can be made one (no part of it is a file)."""
  full = os.path.abspath(os.path.expanduser(path))
  existing = full
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    where = 'is a file' if existing == full else f'is inside {existing}, which is a file'
    raise ValueError(f'{flag} {path}: {where}, not a directory; pass a directory')
  if not os.access(existing, os.W_OK | os.X_OK):
    raise ValueError(f'{flag} {path}: {existing} is not writable')
