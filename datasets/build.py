"""Prepares any of our TFDS datasets as array_record files: `build(...)` and its CLI.

    hcnn-build synth_gm --data_dir ~/tensorflow_datasets            # no download
    hcnn-build mtat --data_dir DIR --manual_dir /path/to/mtat_audio

(`python -m datasets.build ...` in a checkout.) Builders are imported lazily from `DATASETS`
(name -> "module:Class", the module relative to this package, whatever name it is installed
under), so a dataset whose module is missing or broken fails only when it is asked for, with its
name in the message.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import time
from typing import Any, Dict, Optional

DATASETS: Dict[str, str] = {
    'synth_gm': '.synth_gm.synth_gm:SynthGm',
    'mtat': '.mtat.mtat:Mtat',
    'mtg_jamendo': '.mtg_jamendo.mtg_jamendo:MtgJamendo',
    'msd': '.msd.msd:Msd',
    'speech_commands35': '.speech_commands.speech_commands:SpeechCommands35',
    'dcase2017_task4': '.dcase2017.dcase2017:Dcase2017Task4',
}


def builder_class(name: str) -> type:
  """The builder class registered under `name` (imports its module now)."""
  if name not in DATASETS:
    raise ValueError(f'Unknown dataset {name!r}; choose one of {sorted(DATASETS)}.')
  module_name, class_name = DATASETS[name].split(':')
  module_name = importlib.util.resolve_name(module_name, __package__ or 'datasets')
  try:
    module = importlib.import_module(module_name)
  except ImportError as e:
    from hcnn_jax.cli import extras  # the optional stacks (synth_gm's renderer)
    hint = extras.INSTALL.get((e.name or '').split('.')[0])
    raise ValueError(f'Dataset {name!r}: cannot import its builder module {module_name} ({e})'
                     + (f': {hint}.' if hint else '.')) from e
  try:
    return getattr(module, class_name)
  except AttributeError as e:
    raise ValueError(f'Dataset {name!r}: module {module_name} has no builder class {class_name}.') from e


def _builder(name: str, data_dir: str, config_name: Optional[str], **builder_kwargs: Any):
  cls = builder_class(name)
  configs = [c.name for c in getattr(cls, 'BUILDER_CONFIGS', [])]
  if config_name is not None and config_name not in configs:
    raise ValueError(f'Dataset {name!r} has no config {config_name!r}; '
                     f'choose one of {configs or "(none: leave the config out)"}.')
  kwargs = dict(data_dir=os.path.expanduser(str(data_dir)), file_format='array_record',
                **builder_kwargs)
  if config_name is not None:
    kwargs['config'] = config_name
  return cls(**kwargs)


def is_built(name: str, data_dir: str, config_name: Optional[str] = None) -> bool:
  """Whether `name` (in `config_name`, else its default config) is prepared under `data_dir`."""
  builder = _builder(name, data_dir, config_name)
  return bool(builder.is_prepared())


def build(name: str, data_dir: str, config_name: Optional[str] = None,
          manual_dir: Optional[str] = None, **builder_kwargs: Any):
  """Prepares dataset `name` under `data_dir` as array_record (once) and returns its builder.

  `manual_dir` holds the audio of datasets that cannot be downloaded; `builder_kwargs` go to the
  builder's constructor (e.g. `num_workers` for synth_gm). An already prepared dataset is left as
  it is.
  """
  import tensorflow_datasets as tfds  # deferred: a cheap `import datasets` for workers and tools

  builder = _builder(name, data_dir, config_name, **builder_kwargs)
  if builder.is_prepared():
    return builder
  if manual_dir is not None and not os.path.isdir(os.path.expanduser(str(manual_dir))):
    raise ValueError(f'Dataset {name!r}: manual_dir {manual_dir} is not a directory; point it at '
                     'the folder that holds the downloaded audio.')
  download_config = tfds.download.DownloadConfig(
      manual_dir=None if manual_dir is None else os.path.expanduser(str(manual_dir)))
  builder.download_and_prepare(download_config=download_config)
  return builder


BUILD_WAIT_ENV = 'HCNN_BUILD_WAIT_TIMEOUT'
DEFAULT_BUILD_WAIT_S = 6 * 3600


def build_on_first_process(name: str, data_dir: str, config_name: Optional[str] = None,
                           timeout_s: Optional[float] = None, **builder_kwargs: Any) -> None:
  """Makes `name` ready for every process of a (multi-host) job: process 0 builds it once.

  The others wait for process 0 at a barrier of JAX's coordination service for up to
  `timeout_s` (default: `HCNN_BUILD_WAIT_TIMEOUT` seconds, else 6 h), not in a device
  collective, whose deadline (30 s with gloo on CPU) a build of minutes would exceed. Then each
  checks that it sees the prepared files: the hosts must share `data_dir`. On one host it is
  `build` when the dataset is missing.
  """
  from hcnn_jax.training import parallel  # pylint: disable=import-outside-toplevel
  parallel.maybe_initialize_distributed()
  import jax  # pylint: disable=import-outside-toplevel
  if timeout_s is None:
    timeout_s = float(os.environ.get(BUILD_WAIT_ENV) or DEFAULT_BUILD_WAIT_S)
  if jax.process_index() == 0 and not is_built(name, data_dir, config_name):
    logging.getLogger('hcnn_jax').info('Building the dataset %s (%s) in %s ...', name,
                                       config_name or 'default', data_dir)
    build(name, data_dir, config_name, **builder_kwargs)
  parallel.wait_for_process0(f'building {name} in {data_dir}', timeout_s)
  if jax.process_index() != 0 and not is_built(name, data_dir, config_name):
    raise ValueError(f'process {jax.process_index()} does not see the dataset {name!r} that '
                     f'process 0 built in {data_dir}: give every host the same shared data_dir')


def _dir_size(path: str) -> int:
  return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def summary(builder) -> str:
  """Splits, size on disk and, for tagging sets with tag counts, the tag frequencies."""
  info = builder.info
  lines = [f'{info.full_name} in {builder.data_dir}',
           'splits: ' + ', '.join(f'{k} {v.num_examples}' for k, v in sorted(info.splits.items())),
           f'size on disk: {_dir_size(builder.data_dir) / 2**20:.1f} MiB']
  meta = info.metadata or {}
  counts = meta.get('tag_counts') or {}
  if counts:
    names = list(meta['class_names'])
    total = {t: sum(c[t] for c in counts.values()) for t in names}
    n = sum(info.splits[s].num_examples for s in counts)
    lines.append(f'tag frequencies over {n} clips (all splits):')
    lines.extend(f'  {t:12s} {total[t]:6d}  {100.0 * total[t] / max(n, 1):5.1f}%' for t in names)
  return '\n'.join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='hcnn-build', description=__doc__.split('\n')[0])
  parser.add_argument('name', choices=sorted(DATASETS))
  parser.add_argument('--data_dir', required=True, help='TFDS data directory to write into.')
  parser.add_argument('--config', default=None, help='Builder config (default: the builder\'s own).')
  parser.add_argument('--manual_dir', default=None, help='Folder of manually downloaded audio.')
  parser.add_argument('--num_workers', type=int, default=None,
                      help='synth_gm only: rendering processes (default: CPU count, at most 8).')
  args = parser.parse_args(argv)
  kwargs = {} if args.num_workers is None else {'num_workers': args.num_workers}
  start = time.time()
  try:
    was_built = is_built(args.name, args.data_dir, args.config)
    builder = build(args.name, args.data_dir, args.config, args.manual_dir, **kwargs)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  took = time.time() - start
  print('already prepared' if was_built else f'built in {took:.1f} s')
  print(summary(builder))
  return 0


if __name__ == '__main__':
  sys.exit(main())
