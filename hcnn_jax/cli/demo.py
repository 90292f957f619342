"""`hcnn-demo` (`make demo`; `python demo.py` in a checkout): the main job. Trains a CPU-sized
Harmonic CNN on the embedded dataset, scores it against a trivial baseline, and tags a clip it has
never heard.

    hcnn-demo --workdir runs/demo [--data_dir data] [--config.num_epochs=4]

1. Builds `synth_gm` (1,500 / 250 / 250 General-MIDI clips of 8 s, 26 tags, rendered offline) into
   --data_dir unless it is there already (about a minute; needs the [render] extra).
2. Trains `hcnn_jax/configs/hcnn_synth_tiny.py` (about 10 minutes on 2 CPU cores); running the
   command again resumes or, when finished, only re-evaluates.
3. Evaluates the best checkpoint on the test split, 16 chunks per clip as in the papers, and prints
   macro ROC-AUC / PR-AUC beside the per-tag-prior baseline on the same clips (a model that always
   answers each tag's training frequency: ROC-AUC 0.5, PR-AUC = the tags' test prevalence).
4. Writes one test clip to WORKDIR/heldout.wav, tags it as `hcnn-tag` would and prints its true
   tags.

It imports nothing of the [tools], [torch] or [test] stacks (tests/test_demo.py runs it with them
blocked), so `make demo` installs only the runtime and the renderer.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from typing import List

import numpy as np
from absl import app, flags

from hcnn_jax import cli

FLAGS = flags.FLAGS
DEFAULT_CONFIG = 'hcnn_jax/configs/hcnn_synth_tiny.py'


def define_flags() -> None:
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  # No default here: ml_collections would load it while defining the flag, where a mistyped
  # --config.<key> is a traceback; `run` passes the default on the command line instead.
  config_flags.DEFINE_config_file(
      'config', None, f'Run config (default: {DEFAULT_CONFIG}); override keys with '
      '--config.<key>=<value>.', lock_config=True)
  flags.DEFINE_string('workdir', 'runs/demo', 'Run directory (resumed when it holds a run).')
  flags.DEFINE_string('data_dir', 'data', 'Where the embedded dataset is built and read.')
  flags.DEFINE_integer('eval_chunks', 16, 'Chunks per test clip in the final evaluation.')


def prior_baseline(train_labels: np.ndarray, test_labels: np.ndarray, class_names):
  """Test metrics of constant per-tag scores equal to the training prevalence."""
  from hcnn_jax import metrics  # pylint: disable=import-outside-toplevel
  scores = np.broadcast_to(train_labels.mean(axis=0), test_labels.shape)
  return metrics.summarize('tagging', test_labels, scores, class_names)


def labels_of(source) -> np.ndarray:
  return np.stack([np.asarray(source[i]['labels']) for i in range(len(source))])


def _tag_command() -> str:
  """`hcnn-tag` as this interpreter's environment has it (`.venv/bin/hcnn-tag` for make demo)."""
  script = os.path.join(os.path.dirname(sys.executable), 'hcnn-tag')
  if not os.path.exists(script):
    return 'hcnn-tag'
  relative = os.path.relpath(script)
  return script if relative.startswith('..') else relative


def main(argv, prog: str = 'hcnn-demo') -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  import jax  # pylint: disable=import-outside-toplevel
  import soundfile as sf  # pylint: disable=import-outside-toplevel

  from hcnn_jax.data import builders, sources  # pylint: disable=import-outside-toplevel
  from hcnn_jax.tools import tag  # pylint: disable=import-outside-toplevel
  from hcnn_jax.configs import base  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import loop, parallel, writers  # pylint: disable=import-outside-toplevel

  writers.configure_cli_logging()
  parallel.maybe_initialize_distributed()  # before anything touches the devices
  config = FLAGS.config
  with config.unlocked():
    config.dataset.data_dir = FLAGS.data_dir
  workdir = FLAGS.workdir
  try:
    with parallel.fail_together(prog):  # one failed process stops them all
      base.validate(config)
      name, ds_config = config.dataset.name, config.dataset.config_name or None
      build = builders.module('build')
      if not build.is_built(name, FLAGS.data_dir, ds_config):
        print(f'[1/4] Building the embedded dataset {name}/{ds_config} in {FLAGS.data_dir} ...')
      else:
        print(f'[1/4] Embedded dataset {name}/{ds_config} found in {FLAGS.data_dir}.')
      build.build_on_first_process(name, FLAGS.data_dir, ds_config)  # process 0 builds

      print(f'[2/4] Training {config.model.name} ({dict(config.model.kwargs)}) in {workdir} ...')
      loop.train_and_evaluate(config, workdir)

      print(f'[3/4] Test evaluation, {FLAGS.eval_chunks} chunks per clip ...')
      with config.unlocked():
        config.eval_chunks = FLAGS.eval_chunks
      result = loop.evaluate(config, workdir, split='test')
  except (ValueError, FloatingPointError) as err:
    print(f'{prog}: error: {err}', file=sys.stderr)
    sys.exit(1)
  if jax.process_index() != 0:  # the baseline and the tagging are one host's job
    return

  train_source, metadata = sources.load(name, 'train', FLAGS.data_dir, ds_config)
  test_source, _ = sources.load(name, 'test', FLAGS.data_dir, ds_config)
  class_names = [str(c) for c in metadata['class_names']]
  test_labels = labels_of(test_source)
  baseline = prior_baseline(labels_of(train_source), test_labels, class_names)
  print(f'\nTest split of {name}/{ds_config}: {len(test_source)} clips, {len(class_names)} tags')
  print(f'  {"model":<28} {"ROC-AUC":>8} {"PR-AUC":>8}')
  print(f'  {"Harmonic CNN (" + config.model.name + ")":<28} {result["roc_auc"]:8.4f} '
        f'{result["pr_auc"]:8.4f}')
  print(f'  {"per-tag prior (baseline)":<28} {baseline["roc_auc"]:8.4f} {baseline["pr_auc"]:8.4f}')
  print(f'  per-tag table: {os.path.join(workdir, "per_class_test.md")}')

  print('\n[4/4] Tagging a held-out test clip ...')
  clip = test_source[0]
  path = os.path.join(workdir, 'heldout.wav')
  sf.write(path, np.asarray(clip['audio'], np.int16), int(metadata['sample_rate']))
  tagger, tag_names, _ = tag.load_tagger(workdir)
  found = tagger.tag_file(path)
  truth = [class_names[i] for i in np.flatnonzero(np.asarray(clip['labels']) > 0.5)]
  print(f'  {path} ({found.duration:.1f} s)')
  print('  predicted: ' + ', '.join(f'{t} {p:.2f}' for t, p in found.top(tag_names, 5)))
  print('  true tags: ' + ', '.join(truth))
  print(f'\nSame from the shell: {_tag_command()} {path} --workdir {workdir} --top_k 5')


def with_default_config(argv: List[str]) -> List[str]:
  """`argv` with `--config DEFAULT_CONFIG` (the shipped copy outside a checkout) when it names
  no config."""
  if any(re.match(r'^--?config(=|$)', arg) for arg in argv[1:]):
    return list(argv)
  return [argv[0], '--config', cli.shipped_config(DEFAULT_CONFIG), *argv[1:]]


def run(prog: str = 'hcnn-demo') -> None:
  """The console script; `prog` names the command in its error lines."""
  from hcnn_jax.training import flag_errors  # pylint: disable=import-outside-toplevel
  define_flags()
  app.run(functools.partial(main, prog=prog),
          argv=with_default_config(cli.resolve_config_argv(sys.argv)),
          flags_parser=flag_errors.flags_parser(prog))
