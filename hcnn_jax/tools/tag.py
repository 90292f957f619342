"""`hcnn-tag`: tag your own audio files with a trained (or imported) model.

    hcnn-tag FILE... (--workdir DIR | --checkpoint PATH) [--top_k 5] [--json] [--per_chunk]
                     [--plot out.png] [--hop_seconds S] [--batch_chunks N] [--no_compile_cache]

Any format soundfile decodes (wav, flac, ogg, mp3, aiff, au, caf, w64, ...), any sample rate
(resampled with soxr), mono or multi-channel (averaged), any length: files are decoded, resampled
and cut into chunks block by block, so memory stays bounded by one batch of chunks whatever the
length (`hcnn_jax.tools.tagger` says how the chunks cover a file and how their scores are
averaged). The reference's own demo scored a single centre chunk (sota's `predict.py`).

A bad file gets one line on stderr naming it and saying what is wrong, whatever went wrong, and
the other files are still tagged. File names that are not UTF-8 are shown with their undecodable
bytes as \\xNN, in text and JSON. No NaN score is ever printed: a file whose scores are not finite
is reported as an error. The JSON output is strict (RFC 8259: no NaN or Infinity tokens).

The JSON names what produced it: the model, the dataset it was trained on and the checkpoint
(its path as given on the command line plus the step folder chosen in it, and the step), with
the chunk length and hop. `--per_chunk` adds every chunk's start and end (seconds) and scores,
in the JSON and, as the top tags, in the text.

Start-up is kept short: nothing a tagger does not need is imported (no TFDS, grain, optax or
matplotlib unless --plot), only params and batch_stats are read from the checkpoint, and the
compiled model is kept in JAX's persistent compilation cache (`hcnn_jax.tools.compile_cache`;
--no_compile_cache turns it off), so only the first run on a machine compiles it
(`bench/tag_cold_start.py` measures the gain). Called as `main(argv)` from Python, the caller's
JAX configuration is left alone: no cache is turned on.

Exit codes: 0 all files tagged, 1 some file could not be tagged, 2 usage errors (bad flags, a
--plot path that cannot be written, no loadable checkpoint), 130 interrupted (Ctrl-C): the
results finished so far are printed first (in --json mode, as a complete JSON document with
"interrupted": true).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from typing import Any, Dict, List, Optional, Sequence

from hcnn_jax.data.audio import display_path
# TagResult and tagging_starts lived here before tagger.py; callers still import them.
from hcnn_jax.tools.tagger import (  # pylint: disable=unused-import
    DEFAULT_BATCH_CHUNKS, SAMPLE_RATE, Tagger, TagResult, tagging_starts, top_tags)

PROG = 'hcnn-tag'
# What matplotlib's savefig writes; without a known suffix it would append '.png' to the name.
PLOT_FORMATS = ('png', 'pdf', 'svg', 'svgz', 'eps', 'ps', 'jpg', 'jpeg', 'tif', 'tiff', 'webp')
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C'd command


def load_tagger(path: str, hop_seconds: Optional[float] = None,
                batch_chunks: int = DEFAULT_BATCH_CHUNKS):
  """(Tagger, class_names, config) for a workdir or checkpoint directory."""
  from hcnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  model, variables, config, class_names = checkpoint.load_for_inference(path)
  rate = getattr(getattr(model, 'frontend', None), 'sample_rate', SAMPLE_RATE)
  tagger = Tagger(model, variables, int(config.input_length), config.get('task') or 'tagging',
                  hop_seconds=hop_seconds, batch_chunks=batch_chunks, sample_rate=rate)
  return tagger, class_names, config


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=PROG, description='Tag audio files with a trained hcnn-jax model.',
      epilog='A file whose name starts with "-" is read as an option: put the files after "--" '
             '(hcnn-tag --workdir runs/x -- -x.wav) or write ./-x.wav. Exit codes: 0 all files '
             'tagged, 1 some file could not be, 2 usage errors, 130 interrupted (the results '
             'finished so far are printed).')
  parser.add_argument('files', nargs='+', metavar='FILE',
                      help='audio files (wav, flac, ogg, mp3, aiff, ... anything libsndfile reads)')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='training workdir (its best checkpoint is used)')
  source.add_argument('--checkpoint',
                      help='a checkpoint directory (best/, checkpoints/, or a step)')
  parser.add_argument('--top_k', type=int, default=5, help='tags printed per file (default 5)')
  parser.add_argument('--json', action='store_true', help='print JSON instead of text')
  parser.add_argument('--per_chunk', action='store_true',
                      help="also give each chunk's start/end seconds and scores")
  parser.add_argument('--plot', metavar='FILE.png',
                      help='draw a tagogram (tags × time) of every file into this image file '
                           f'(its folder must exist; suffix one of {", ".join(PLOT_FORMATS)})')
  parser.add_argument('--hop_seconds', type=float, default=None,
                      help='distance between chunk starts (default: half a chunk)')
  parser.add_argument('--batch_chunks', type=int, default=DEFAULT_BATCH_CHUNKS,
                      help=f'chunks per model call (default {DEFAULT_BATCH_CHUNKS})')
  parser.add_argument('--no_compile_cache', action='store_true',
                      help="compile the model afresh instead of loading it from JAX's persistent "
                           'compilation cache ($XDG_CACHE_HOME/hcnn-jax/xla, or '
                           '~/.cache/hcnn-jax/xla; JAX_COMPILATION_CACHE_DIR if set)')
  return parser


def plot_path_problem(path: str) -> Optional[str]:
  """Why `path` cannot take the --plot image, or None. Checked before any file is tagged."""
  shown = display_path(path)
  if os.path.isdir(path):
    return (f'--plot {shown} is a folder; give an image file name, e.g. '
            f'{display_path(os.path.join(path, "tagogram.png"))}')
  suffix = os.path.splitext(path)[1].lower().lstrip('.')
  if suffix not in PLOT_FORMATS:
    return f'--plot {shown} needs a file name ending in .{" / .".join(PLOT_FORMATS[:3])} (or ' \
           f'{", ".join("." + f for f in PLOT_FORMATS[3:])})'
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    return f'--plot {shown}: the folder {display_path(parent)} does not exist'
  if not os.access(parent, os.W_OK):
    return f'--plot {shown}: the folder {display_path(parent)} is not writable'
  return None


def checkpoint_source(where: str) -> Dict[str, Any]:
  """The checkpoint a workdir or checkpoint path means: its step directory, shown as `where`
  (as the user gave it, relative or absolute) joined with the folders chosen inside it, and its
  step. ValueError when there is none."""
  from hcnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  directory, step, _ = checkpoint.resolve(where)
  step_dir = os.path.join(directory, str(step))
  shown = os.path.normpath(os.path.join(where, os.path.relpath(step_dir, os.path.abspath(where))))
  return {'path': shown, 'step': int(step), 'directory': step_dir}


def _chunks(result: TagResult):
  """(start, end, probabilities) of each chunk."""
  return zip(result.starts, result.ends, result.chunk_probs)


def _text(result: TagResult, class_names: Sequence[str], k: int, per_chunk: bool = False) -> str:
  lines = [f'{display_path(result.path)}  ({result.duration:.2f} s, {len(result.times)} chunk'
           f'{"s" if len(result.times) != 1 else ""})']
  width = max(len(name) for name, _ in result.top(class_names, k))
  for rank, (name, score) in enumerate(result.top(class_names, k), 1):
    lines.append(f'  {rank:2d}. {name:<{width}}  {score:.3f}')
  if per_chunk:
    for start, end, probs in _chunks(result):
      lines.append(f'  {start:8.2f}-{end:.2f} s: ' + ', '.join(
          f'{name} {score:.3f}' for name, score in top_tags(probs, class_names, k)))
  return '\n'.join(lines)


def _json_entry(result: TagResult, class_names: Sequence[str], k: int,
                per_chunk: bool = False) -> Dict[str, Any]:
  entry = {
      'file': display_path(result.path),
      'duration_seconds': round(result.duration, 4),
      'num_chunks': int(len(result.times)),
      'top': [{'tag': name, 'score': round(score, 6)} for name, score in
              result.top(class_names, k)],
      'scores': {name: round(float(s), 6) for name, s in zip(class_names, result.probs)},
  }
  if per_chunk:
    entry['chunks'] = [
        {'start_seconds': round(float(start), 4), 'end_seconds': round(float(end), 4),
         'scores': {name: round(float(s), 6) for name, s in zip(class_names, probs)}}
        for start, end, probs in _chunks(result)]
  return entry


def _error(message: str) -> None:
  print(f'{PROG}: error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)


def _file_error(path: str, err: Exception) -> str:
  """One line naming the file: AudioError says it already; anything else gets its type."""
  from hcnn_jax.data.audio import AudioError  # pylint: disable=import-outside-toplevel
  if isinstance(err, AudioError):
    return ' '.join(str(err).split())
  what = f'{type(err).__name__}: {err}' if str(err) else type(err).__name__
  return ' '.join(f'{display_path(path)}: cannot be tagged ({what})'.split())


def _dump_json(results, failures, class_names, k: int, interrupted: bool,
               header: Optional[Dict[str, Any]] = None, per_chunk: bool = False) -> str:
  report: Dict[str, Any] = dict(header or {})
  report.update({'results': [_json_entry(r, class_names, k, per_chunk) for r in results],
                 'errors': failures})
  if interrupted:
    report['interrupted'] = True
  # allow_nan=False: a strict parser rejects NaN/Infinity tokens, so none may be written. The
  # tagger refuses non-finite scores; this is the guard should one slip through.
  return json.dumps(report, indent=2, allow_nan=False)


def _run(args, state: Dict[str, Any]) -> int:
  """Tags every file; `state` keeps what is finished, for the caller to print on Ctrl-C."""
  # Orbax reports read-only managers at WARNING through absl; a user tagging files needs none.
  logging.getLogger('absl').setLevel(logging.ERROR)
  if state.get('program') and not args.no_compile_cache:
    from hcnn_jax.tools import compile_cache  # pylint: disable=import-outside-toplevel
    compile_cache.use_compilation_cache()  # before anything compiles; off where it cannot be
  where = args.workdir or args.checkpoint
  try:
    source = checkpoint_source(where)
    # The step directory just named, so that the JSON names the checkpoint that was loaded.
    tagger, class_names, config = load_tagger(source['directory'], args.hop_seconds,
                                              args.batch_chunks)
  except Exception as err:  # pylint: disable=broad-except
    # Whatever is wrong with the checkpoint directory, the user gets one line, not a traceback.
    _error(f'cannot load a model from {display_path(where)}: {err}')
    return 2
  state['class_names'] = class_names
  state['header'] = {
      'model': str(config.model.name),
      'dataset': str(config.dataset.name),
      'checkpoint': {'path': display_path(source['path']), 'step': source['step']},
      'chunk_seconds': round(tagger.input_length / tagger.sample_rate, 4),
      'hop_seconds': round(tagger.hop_length / tagger.sample_rate, 4),
  }
  tagger.check = state['check']
  k = min(args.top_k, len(class_names))
  for path in args.files:
    state['check']()
    try:
      result = tagger.tag_file(path, quiet=True)
    except Exception as err:  # pylint: disable=broad-except
      # One bad file never takes down the others, whatever went wrong with it.
      message = _file_error(path, err)
      _error(message)
      state['failures'].append({'file': display_path(path), 'error': message})
      continue
    state['results'].append(result)
    if not args.json:
      print(_text(result, class_names, k, args.per_chunk), flush=True)
  if args.json:
    report = _dump_json(state['results'], state['failures'], class_names, k, False,
                        state['header'], args.per_chunk)
    state['printed'] = True
    print(report, flush=True)
  if args.plot and state['results']:
    from hcnn_jax.tools import plots  # pylint: disable=import-outside-toplevel
    try:
      plots.save_tagograms(args.plot, [(display_path(os.path.basename(r.path)), r.chunk_probs,
                                        r.times) for r in state['results']], class_names)
    except (OSError, ValueError) as err:
      _error(f'cannot write the plot {display_path(args.plot)}: {err}')
      return 2
  return 1 if state['failures'] else 0


def _interrupted(args, state: Dict[str, Any]) -> int:
  """Prints what was finished before Ctrl-C and one line saying so."""
  results, failures = state['results'], state['failures']
  if args.json and not state.get('printed'):
    names = state.get('class_names') or []
    print(_dump_json(results, failures, names, min(args.top_k, max(len(names), 1)), True,
                     state.get('header'), args.per_chunk), flush=True)
  _error(f'interrupted: {len(results)} of {len(args.files)} files tagged'
         f'{", " + str(len(failures)) + " failed" if failures else ""}')
  return EXIT_INTERRUPTED


class _CtrlC:
  """Ctrl-C that is never lost. Python raises KeyboardInterrupt wherever the signal lands, and
  where it lands in a gc callback or a __del__ (JAX's _xla_gc_callback, seen) Python prints
  "Exception ignored" with a traceback and carries on as if nothing happened. So the handler
  also sets a flag, such unraisable interrupts are dropped silently, and the tagger checks the
  flag between blocks and files."""

  def __init__(self):
    self.hit = False
    self._previous_hook = sys.unraisablehook

  def handler(self, signum, frame):  # pylint: disable=unused-argument
    self.hit = True
    raise KeyboardInterrupt

  def check(self) -> None:
    if self.hit:
      raise KeyboardInterrupt

  def unraisable(self, info) -> None:
    if info.exc_type is not None and issubclass(info.exc_type, KeyboardInterrupt):
      self.hit = True
      return
    self._previous_hook(info)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The console script. Exit codes in the module docstring; 130 after Ctrl-C, with the
  finished results printed. Run as a program (argv None), an interrupted run leaves through
  os._exit: tearing the interpreter down while XLA may still be compiling on other threads
  segfaulted."""
  import signal  # pylint: disable=import-outside-toplevel
  parser = _parser()
  args = parser.parse_args(argv)  # usage errors exit 2 here
  if args.top_k < 1:
    parser.error(f'--top_k must be >= 1, got {args.top_k}')
  if args.hop_seconds is not None and not args.hop_seconds > 0:
    parser.error(f'--hop_seconds must be positive, got {args.hop_seconds}')
  if args.batch_chunks < 1:
    parser.error(f'--batch_chunks must be >= 1, got {args.batch_chunks}')
  if args.plot is not None:
    problem = plot_path_problem(args.plot)
    if problem:
      _error(problem)
      return 2
  ctrl_c = _CtrlC()
  # Run as a program (argv None), JAX's persistent compilation cache is turned on; called from
  # Python, the caller's JAX configuration is left as it is.
  state: Dict[str, Any] = {'results': [], 'failures': [], 'check': ctrl_c.check,
                           'program': argv is None}
  # Only the main thread may set handlers; a SIGINT ignored by whoever started us stays ignored.
  main_thread = threading.current_thread() is threading.main_thread()
  original = signal.getsignal(signal.SIGINT) if main_thread else None
  if original is signal.default_int_handler:
    signal.signal(signal.SIGINT, ctrl_c.handler)
  sys.unraisablehook = ctrl_c.unraisable
  try:
    try:
      code = _run(args, state)
      ctrl_c.check()  # an interrupt swallowed after the last check
      return code
    except KeyboardInterrupt:
      if main_thread:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the report
      code = _interrupted(args, state)
      if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # pylint: disable=protected-access
      return code
  finally:
    sys.unraisablehook = ctrl_c._previous_hook  # pylint: disable=protected-access
    if main_thread:
      signal.signal(signal.SIGINT, original)


if __name__ == '__main__':
  sys.exit(main())
