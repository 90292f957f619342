"""`hcnn-eval` (`python eval.py` in a checkout): track-level evaluation of a trained run
(`eval_chunks` chunks per track, 16 in the shipped configs, mean of the predictions).

    hcnn-eval --config hcnn_jax/configs/hcnn_mtat.py --workdir runs/mtat --split test
    hcnn-eval --config hcnn_jax/configs/hcnn_synth_tiny.py --workdir runs/synth_tiny \
        --split validation --checkpoint latest

Writes metrics_<split>.json and the per-tag table per_class_<split>.csv / .md into the workdir.
Every metrics file names the checkpoint (inside the workdir) and its step, and the chunks per
track: a run's own metrics.json and a later metrics_test.json differ when those differ.
--checkpoint is 'best' (default), 'latest' or the path of a checkpoint directory.
"""
from __future__ import annotations

import functools
import sys

from absl import app, flags

from hcnn_jax import cli
from hcnn_jax.training import flag_errors, loop, writers

FLAGS = flags.FLAGS


def define_flags() -> None:
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file('config', None, 'The run\'s config file (as given to '
                                  'hcnn-train).', lock_config=True)
  flags.DEFINE_string('workdir', None, 'The run directory hcnn-train wrote.')
  flags.DEFINE_enum('split', 'test', ['train', 'validation', 'test'], 'Split to evaluate.')
  flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a checkpoint directory.")
  flags.mark_flags_as_required(['config', 'workdir'])


def main(argv, prog: str = 'hcnn-eval') -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.configure_cli_logging()
  try:
    flag_errors.check_workdir(FLAGS.workdir)
    result = loop.evaluate(FLAGS.config, FLAGS.workdir, split=FLAGS.split,
                           checkpoint=FLAGS.checkpoint)
  except ValueError as err:
    flag_errors.fail(prog, str(err))
  cli.print_metrics(FLAGS.split, result)


def run(prog: str = 'hcnn-eval') -> None:
  """The console script; `prog` names the command in its error lines."""
  define_flags()
  app.run(functools.partial(main, prog=prog), argv=cli.resolve_config_argv(sys.argv),
          flags_parser=flag_errors.flags_parser(prog))
