"""Trains a model from a config and evaluates its best checkpoint on the test split.

    python train.py --config hcnn_jax/configs/hcnn_synth_tiny.py --workdir runs/synth_tiny
    python train.py --config hcnn_jax/configs/hcnn_mtat.py --workdir runs/mtat \
        --config.dataset.data_dir=/data/tfds --config.batch_size=32

Everything is in the workdir: checkpoints/ (periodic, for resume), best/ (best by validation),
metrics.csv, tensorboard/, metrics.json and per_class.{csv,md}. Running the same command again
resumes the run exactly where its last checkpoint left it. A config naming the embedded `synth_gm`
dataset builds it first when it is not prepared yet.
"""
from __future__ import annotations

import os

from absl import app, flags
from ml_collections import config_flags

from hcnn_jax.training import config_check, flag_errors, loop, parallel, writers

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Run config: hcnn_jax/configs/<name>.py[:arg]; override keys with '
    '--config.<key>=<value>.', lock_config=True)
flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, logs and results. A run already '
                    'there is resumed.')
flags.mark_flags_as_required(['config', 'workdir'])


def ensure_embedded_dataset(config) -> None:
  """Builds `synth_gm` into dataset.data_dir when a config names it and it is not there yet.

  In a multi-host job process 0 builds while the others wait (datasets.build_on_first_process).
  """
  if config.dataset.name != 'synth_gm':
    return
  from datasets.build import build_on_first_process  # pylint: disable=import-outside-toplevel
  build_on_first_process('synth_gm', os.path.expanduser(config.dataset.data_dir),
                         config.dataset.config_name or None)


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.configure_cli_logging()
  config = FLAGS.config
  try:
    parallel.maybe_initialize_distributed()  # before anything touches the devices
    with parallel.fail_together('train.py'):  # one failed process stops them all
      config_check.validate(config)  # fail in seconds, before a dataset build or a compile
      flag_errors.check_workdir(FLAGS.workdir)
      ensure_embedded_dataset(config)
      result = loop.train_and_evaluate(config, FLAGS.workdir)
  except (ValueError, FloatingPointError) as err:
    # User-fixable problems: one clear message, no traceback; the workdir keeps its checkpoints.
    flag_errors.fail('train.py', str(err))
  scalars = {k: v for k, v in result.items() if isinstance(v, float)}
  print(f'{result["split"]} metrics of {result["checkpoint"]}: ' +
        ', '.join(f'{k} {v:.4f}' for k, v in sorted(scalars.items())))


if __name__ == '__main__':
  app.run(main, flags_parser=flag_errors.flags_parser('train.py'))
