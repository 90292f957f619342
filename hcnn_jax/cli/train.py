"""`hcnn-train` (`python train.py` in a checkout): trains a model from a config and evaluates its
best checkpoint on the test split.

    hcnn-train --config hcnn_jax/configs/hcnn_synth_tiny.py --workdir runs/synth_tiny
    hcnn-train --config hcnn_jax/configs/hcnn_mtat.py --workdir runs/mtat \
        --config.dataset.data_dir=/data/tfds --config.batch_size=32

Everything is in the workdir: checkpoints/ (periodic, for resume), best/ (best by validation),
metrics.csv, tensorboard/, metrics.json and per_class.{csv,md}. Running the same command again
resumes the run exactly where its last checkpoint left it. A config naming the embedded `synth_gm`
dataset builds it first when it is not prepared yet. The shipped configs are found from any
directory (`hcnn_jax.cli`).
"""
from __future__ import annotations

import functools
import os
import sys

from absl import app, flags

from hcnn_jax import cli
from hcnn_jax.configs import base as config_base
from hcnn_jax.training import flag_errors, loop, parallel, writers

FLAGS = flags.FLAGS


def define_flags() -> None:
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file(
      'config', None, 'Run config: hcnn_jax/configs/<name>.py[:arg]; override keys with '
      '--config.<key>=<value>.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Run directory: checkpoints, logs and results. A run '
                      'already there is resumed.')
  flags.mark_flags_as_required(['config', 'workdir'])


def ensure_embedded_dataset(config) -> None:
  """Builds `synth_gm` into dataset.data_dir when a config names it and it is not there yet.

  In a multi-host job process 0 builds while the others wait (build_on_first_process of the
  builders' build module).
  """
  if config.dataset.name != 'synth_gm':
    return
  from hcnn_jax.data import builders  # pylint: disable=import-outside-toplevel
  builders.module('build').build_on_first_process(
      'synth_gm', os.path.expanduser(config.dataset.data_dir), config.dataset.config_name or None)


def main(argv, prog: str = 'hcnn-train') -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.configure_cli_logging()
  config = FLAGS.config
  try:
    parallel.maybe_initialize_distributed()  # before anything touches the devices
    with parallel.fail_together(prog):  # one failed process stops them all
      config_base.validate(config)  # fail in seconds, before a dataset build or a compile
      flag_errors.check_workdir(FLAGS.workdir)
      ensure_embedded_dataset(config)
      result = loop.train_and_evaluate(config, FLAGS.workdir)
  except (ValueError, FloatingPointError) as err:
    # User-fixable problems: one clear message, no traceback; the workdir keeps its checkpoints.
    flag_errors.fail(prog, str(err))
  cli.print_metrics(result["split"], result)


def run(prog: str = 'hcnn-train') -> None:
  """The console script; `prog` names the command in its error lines."""
  define_flags()
  app.run(functools.partial(main, prog=prog), argv=cli.resolve_config_argv(sys.argv),
          flags_parser=flag_errors.flags_parser(prog))
