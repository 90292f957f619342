"""Cold-start wall time of `hcnn-tag` on one 30-s file: the old code against the current one.

  python -m bench.tag_cold_start [--workdir runs/demo] [--audio FILE] [--runs 3]
      [--before REF] [--variants before,first,after] [--json OUT.json]

Every run is a fresh `python -m hcnn_jax.tools.tag FILE --workdir W --json` process, timed from
its start to its exit (wall clock), so it pays for everything a user waits for: the interpreter,
the imports, the checkpoint restore, tracing and compiling (or loading) the model, decoding,
resampling and scoring the file. The variants:

- `before`: the code of git ref --before (default: the last commit before the cold-start work),
  unpacked with `git archive` into a temporary folder and run from there;
- `first`: the current code with an empty compilation cache, every time: what the very first
  run on a machine costs (it compiles and writes the cache);
- `after`: the current code with the cache that one untimed run filled: every later run;
- `nocache`: the current code with --no_compile_cache (the lazy imports and the params-only
  restore without the cache), on request.

Rounds alternate the variants (their order rotates each round), after one untimed warm-up run of
each (it fills the OS's file cache, and `after`'s compilation cache). The runs get their own
XDG_CACHE_HOME and none of the caller's JAX_COMPILATION_CACHE_* settings. Reported: each
variant's min and median, the ratios before / after, the machine's load average (os.getloadavg)
around each run, and where a fresh process spends its time (`phases`: imports, restore, trace,
compile or cache load, decode and score). Without --workdir a stand-in for the demo's checkpoint
is written (hcnn_synth_tiny's HCNN, 6 harmonics, 26 tags, initial weights: the timing does not
depend on what the weights are; it had 16 channels when bench/README's figures were measured, 32
since the demo recipe changed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# main just before hcnn-tag's lazy imports, params-only restore and compilation cache.
DEFAULT_BEFORE = '7023be6'
VARIANTS = ('before', 'first', 'after', 'nocache')
DEMO_TAGS = 26

# One fresh process, timed phase by phase (with the compilation cache of the environment).
_PHASES = r'''
import sys, time, json
t0 = time.perf_counter()
import numpy as np, jax
from hcnn_jax.tools import tag, tagger as tagger_lib
from hcnn_jax.models import registry
from hcnn_jax.training import checkpoint
t1 = time.perf_counter()
from hcnn_jax.tools import compile_cache
compile_cache.use_compilation_cache()
t, names, config = tag.load_tagger(sys.argv[1])
t2 = time.perf_counter()
import soundfile as sf
info = sf.info(sys.argv[2])
n = len(tagger_lib.tagging_starts(int(info.duration * t.sample_rate), t.input_length,
                                  t.hop_length))
shape = jax.ShapeDtypeStruct((tagger_lib._bucket(n, t.batch_chunks), t.input_length), np.float32)
lowered = t._predict.lower(t.variables, shape)
t3 = time.perf_counter()
lowered.compile()
t4 = time.perf_counter()
t.tag_file(sys.argv[2], quiet=True)
t5 = time.perf_counter()
print('PHASES', json.dumps({'imports': t1 - t0, 'restore': t2 - t1, 'trace': t3 - t2,
                            'compile': t4 - t3, 'tag_file': t5 - t4}))
'''


def write_demo_checkpoint(workdir: str) -> None:
  """A best checkpoint shaped like `make demo`'s (hcnn_synth_tiny), with initial weights."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from hcnn_jax.configs import hcnn_synth_tiny  # pylint: disable=import-outside-toplevel
  from hcnn_jax.models import registry  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel
  config = hcnn_synth_tiny.get_config()
  model = registry.build_model(config, DEMO_TAGS)
  variables = model.init(jax.random.key(0), jnp.zeros((1, config.input_length)), train=False)
  variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  meta = {'bookkeeping': {}, 'class_names': [f'tag{i}' for i in range(DEMO_TAGS)],
          'task': 'tagging', 'topology': checkpoint.topology()}
  with checkpoint.RunCheckpoints(workdir) as ckpts:
    ckpts.save_best(1, variables, meta=meta, config=config)
    ckpts.wait()


def write_audio(path: str, seconds: float = 30.0, rate: int = 44100) -> None:
  """A stereo 44.1-kHz WAV of tones and a little noise (resampled to 16 kHz by the tagger)."""
  import soundfile as sf  # pylint: disable=import-outside-toplevel
  t = np.arange(int(seconds * rate)) / rate
  x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t)
  x = x + 0.02 * np.random.default_rng(0).standard_normal(len(t))
  sf.write(path, np.stack([x, 0.5 * x], axis=1).astype(np.float32), rate)


def unpack(ref: str, target: str) -> str:
  """The tree of git `ref` under `target` (git archive), for running the old code."""
  os.makedirs(target, exist_ok=True)
  archive = subprocess.run(['git', '-C', REPO, 'archive', ref], check=True,
                           capture_output=True).stdout
  subprocess.run(['tar', '-x', '-C', target], input=archive, check=True)
  return target


def clean_env(code_dir: str, cache_home: str) -> Dict[str, str]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_COMPILATION_CACHE', 'JAX_PERSISTENT_CACHE'))}
  env.update(PYTHONPATH=code_dir, XDG_CACHE_HOME=cache_home)
  return env


def run_once(argv: Sequence[str], env: Dict[str, str], cwd: str) -> Dict[str, float]:
  """Wall seconds of one fresh tagging process, with the load average around it."""
  load_before = os.getloadavg()[0]
  start = time.perf_counter()
  proc = subprocess.run(list(argv), env=env, cwd=cwd, capture_output=True, text=True)
  seconds = time.perf_counter() - start
  if proc.returncode != 0:
    raise RuntimeError(f'{" ".join(argv)} exited {proc.returncode}: {proc.stderr[-2000:]}')
  report = json.loads(proc.stdout)
  if len(report['results']) != 1:
    raise RuntimeError(f'expected one tagged file, got {proc.stdout[:500]}')
  return {'seconds': seconds, 'load': max(load_before, os.getloadavg()[0])}


def summarize(runs: List[Dict[str, float]]) -> Dict[str, float]:
  times = [r['seconds'] for r in runs]
  loads = [r['load'] for r in runs]
  return {'min_s': min(times), 'median_s': statistics.median(times), 'runs_s': times,
          'load_min': min(loads), 'load_max': max(loads)}


def phases(workdir: str, audio: str, env: Dict[str, str]) -> Dict[str, float]:
  proc = subprocess.run([sys.executable, '-c', _PHASES, workdir, audio], env=env, cwd=REPO,
                        capture_output=True, text=True)
  line = [x for x in proc.stdout.splitlines() if x.startswith('PHASES ')]
  if proc.returncode != 0 or not line:
    raise RuntimeError(f'phases exited {proc.returncode}: {proc.stderr[-2000:]}')
  return {k: round(v, 3) for k, v in json.loads(line[0].split(' ', 1)[1]).items()}


def main(argv: Optional[Sequence[str]] = None) -> dict:
  parser = argparse.ArgumentParser(prog='python -m bench.tag_cold_start',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', help='a trained workdir or checkpoint (default: a stand-in '
                                        "shaped like make demo's, written to a temporary folder)")
  parser.add_argument('--audio', help='the file to tag (default: a 30-s 44.1-kHz stereo WAV)')
  parser.add_argument('--runs', type=int, default=3, help='timed runs of each variant')
  parser.add_argument('--before', default=DEFAULT_BEFORE, help='git ref of the old code')
  parser.add_argument('--variants', default='before,first,after',
                      help=f'comma-separated, of {", ".join(VARIANTS)}')
  parser.add_argument('--no_phases', action='store_true', help='skip the per-phase breakdown')
  parser.add_argument('--json', help='also write the results here')
  args = parser.parse_args(argv)
  variants = [v for v in args.variants.split(',') if v]
  unknown = sorted(set(variants) - set(VARIANTS))
  if unknown or not variants:
    parser.error(f'--variants: unknown {unknown}; use some of {", ".join(VARIANTS)}')
  if args.runs < 1:
    parser.error(f'--runs must be >= 1, got {args.runs}')

  scratch = tempfile.mkdtemp(prefix='tag_cold_start_')
  try:
    workdir = args.workdir or os.path.join(scratch, 'demo')
    if not args.workdir:
      write_demo_checkpoint(workdir)
    audio = args.audio or os.path.join(scratch, 'clip30.wav')
    if not args.audio:
      write_audio(audio)
    tag_argv = ['-m', 'hcnn_jax.tools.tag', audio, '--workdir', workdir, '--json']
    code = {v: REPO for v in variants}
    if 'before' in variants:
      code['before'] = unpack(args.before, os.path.join(scratch, 'before'))
    caches = {v: os.path.join(scratch, 'cache', v) for v in variants}
    extra = {'nocache': ['--no_compile_cache']}

    def one(variant: str) -> Dict[str, float]:
      if variant == 'first':
        shutil.rmtree(caches[variant], ignore_errors=True)
      return run_once([sys.executable] + tag_argv + extra.get(variant, []),
                      clean_env(code[variant], caches[variant]), code[variant])

    for variant in variants:  # untimed: OS file cache, and the compilation cache of `after`
      one(variant)
    runs: Dict[str, List[Dict[str, float]]] = {v: [] for v in variants}
    for i in range(args.runs):
      order = variants[i % len(variants):] + variants[:i % len(variants)]
      for variant in order:
        runs[variant].append(one(variant))
    result = {v: summarize(runs[v]) for v in variants}
    import soundfile as sf  # pylint: disable=import-outside-toplevel
    report = {'variants': result,
              'meta': {'before': args.before, 'runs': args.runs,
                       'audio_seconds': round(sf.info(audio).duration, 3),
                       'checkpoint': args.workdir or 'stand-in shaped like hcnn_synth_tiny',
                       'cpus': os.cpu_count(), 'machine': platform.platform(),
                       'python': platform.python_version()}}
    if 'before' in result and 'after' in result:
      report['ratio_before_after'] = {
          'min': result['before']['min_s'] / result['after']['min_s'],
          'median': result['before']['median_s'] / result['after']['median_s']}
    if not args.no_phases:
      cache_home = caches.get('after') or os.path.join(scratch, 'cache', 'phases')
      report['phases'] = phases(workdir, audio, clean_env(REPO, cache_home))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  for variant, row in result.items():
    print(f'{variant:8s} min {row["min_s"]:6.2f} s  median {row["median_s"]:6.2f} s  '
          f'load {row["load_min"]:.1f}-{row["load_max"]:.1f}  '
          f'({", ".join(f"{s:.2f}" for s in row["runs_s"])})')
  if 'ratio_before_after' in report:
    ratio = report['ratio_before_after']
    print(f'before / after: min {ratio["min"]:.2f}x  median {ratio["median"]:.2f}x')
  if 'phases' in report:
    print('phases (s): ' + ', '.join(f'{k} {v:.2f}' for k, v in report['phases'].items()))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == '__main__':
  main()
