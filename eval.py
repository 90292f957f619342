"""Track-level evaluation of a trained run (16 chunks per track, mean of the predictions).

    python eval.py --config hcnn_jax/configs/hcnn_mtat.py --workdir runs/mtat --split test
    python eval.py --config hcnn_jax/configs/hcnn_synth_tiny.py --workdir runs/synth_tiny \
        --split validation --checkpoint latest

Writes metrics_<split>.json and the per-tag table per_class_<split>.csv / .md into the workdir.
--checkpoint is 'best' (default), 'latest' or the path of a checkpoint directory.
"""
from __future__ import annotations


from absl import app, flags
from ml_collections import config_flags

from hcnn_jax.training import flag_errors, loop, writers

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'The run\'s config file (as given to train.py).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'The run directory train.py wrote.')
flags.DEFINE_enum('split', 'test', ['train', 'validation', 'test'], 'Split to evaluate.')
flags.DEFINE_string('checkpoint', 'best', "'best', 'latest' or a checkpoint directory.")
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  writers.configure_cli_logging()
  try:
    flag_errors.check_workdir(FLAGS.workdir)
    result = loop.evaluate(FLAGS.config, FLAGS.workdir, split=FLAGS.split,
                           checkpoint=FLAGS.checkpoint)
  except ValueError as err:
    flag_errors.fail('eval.py', str(err))
  scalars = {k: v for k, v in result.items() if isinstance(v, float)}
  print(f'{FLAGS.split} metrics of {result["checkpoint"]}: ' +
        ', '.join(f'{k} {v:.4f}' for k, v in sorted(scalars.items())))


if __name__ == '__main__':
  app.run(main, flags_parser=flag_errors.flags_parser('eval.py'))
