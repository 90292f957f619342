"""Peak memory of hcnn-tag on a long file: the block path against decoding the whole file.

  python -m bench.tag_memory --workdir runs/synth_tiny [--minutes 60] [--rate 44100]
      [--channels 2] [--subtype PCM_16] [--audio FILE] [--keep] [--json OUT.json]

Writes a long WAV of tones and noise (block by block, unless --audio names one), then, each in a
fresh process so that one's peak cannot hide another's, reports the peak resident memory
(ru_maxrss) and the wall time of:

- `model_only`: importing JAX and loading the checkpoint, tagging nothing: the floor;
- `tag_cli`: `hcnn-tag FILE --json` (decode, resample and chunk block by block);
- `whole_file`: what the tagger did before: soundfile reads every frame, the channels are
  averaged and soxr resamples the whole track, then the chunks are scored.

`tag_cli` minus `model_only` is what the audio costs; it should not grow with --minutes.
Never part of the test suite (a long file takes minutes to write and tag on a small CPU).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf

_PRELUDE = 'import resource, sys, json\n'
_REPORT = ("\nprint('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
           "file=sys.stderr)\n")
SCRIPTS = {
    'model_only': ('from hcnn_jax.tools import tag\n'
                   'tag.load_tagger(sys.argv[1])\n'),
    'tag_cli': ('from hcnn_jax.tools import tag\n'
                'code = tag.main([sys.argv[2], "--workdir", sys.argv[1], "--json"])\n'
                'assert code == 0, code\n'),
    # The tagger before block decoding: soundfile reads every frame, then mix-down, then soxr.
    'whole_file': ('import numpy as np, soundfile as sf, soxr\n'
                   'from hcnn_jax.tools import tag\n'
                   't, _, _ = tag.load_tagger(sys.argv[1])\n'
                   'x, rate = sf.read(sys.argv[2], dtype="float32", always_2d=True)\n'
                   'x = x.mean(axis=1, keepdims=True)\n'
                   'audio = np.ascontiguousarray(soxr.resample(x, rate, t.sample_rate)[:, 0])\n'
                   't.block_samples = len(audio)  # one block: the whole file at once\n'
                   'starts, probs = t.tag_waveform(audio)\n'
                   'print(json.dumps({"chunks": len(starts)}))\n'),
}


def write_long_wav(path: str, minutes: float, rate: int, channels: int, subtype: str) -> int:
  """Tones plus a little noise, written 10 s at a time; returns the number of frames."""
  frames = int(minutes * 60 * rate)
  block = 10 * rate
  rng = np.random.default_rng(0)
  with sf.SoundFile(path, 'w', rate, channels, subtype=subtype, format='WAV') as f:
    for start in range(0, frames, block):
      n = min(block, frames - start)
      t = (start + np.arange(n)) / rate
      x = 0.2 * np.sin(2 * np.pi * 440.0 * t) + 0.05 * rng.standard_normal(n)
      f.write(np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32))
  return frames


def measure(kind: str, workdir: str, audio: str) -> dict:
  env = dict(os.environ)
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env['PYTHONPATH'] = os.pathsep.join([repo, env.get('PYTHONPATH', '')])
  t0 = time.perf_counter()
  proc = subprocess.run([sys.executable, '-c', _PRELUDE + SCRIPTS[kind] + _REPORT, workdir,
                         audio], capture_output=True, text=True, env=env, check=False)
  seconds = time.perf_counter() - t0
  peak = [line.split()[1] for line in proc.stderr.splitlines()
          if line.startswith('PEAK_RSS_KB ')]
  if proc.returncode != 0 or not peak:
    return {'kind': kind, 'error': proc.stderr.strip()[-2000:]}
  return {'kind': kind, 'peak_rss_mb': round(int(peak[0]) / 1024, 1),
          'seconds': round(seconds, 1)}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='a training workdir or checkpoint')
  parser.add_argument('--minutes', type=float, default=60.0)
  parser.add_argument('--rate', type=int, default=44100)
  parser.add_argument('--channels', type=int, default=2)
  parser.add_argument('--subtype', default='PCM_16')
  parser.add_argument('--audio', help='tag this file instead of writing one')
  parser.add_argument('--kinds', default='model_only,tag_cli,whole_file')
  parser.add_argument('--keep', action='store_true', help='keep the written file')
  parser.add_argument('--json', help='also write the results here')
  args = parser.parse_args(argv)
  tmp = None
  audio = args.audio
  if audio is None:
    tmp = tempfile.mkdtemp(prefix='tag_memory_')
    audio = os.path.join(tmp, f'long_{args.minutes:g}min.wav')
    t0 = time.perf_counter()
    write_long_wav(audio, args.minutes, args.rate, args.channels, args.subtype)
    print(f'wrote {audio}: {os.path.getsize(audio) / 2**20:.0f} MiB in '
          f'{time.perf_counter() - t0:.0f} s', flush=True)
  info = sf.info(audio)
  rows = []
  for kind in args.kinds.split(','):
    rows.append(measure(kind, args.workdir, audio))
    print(json.dumps(rows[-1]), flush=True)
  result = {'audio': {'path': audio, 'seconds': info.duration, 'rate': info.samplerate,
                      'channels': info.channels, 'subtype': info.subtype,
                      'bytes': os.path.getsize(audio)},
            'machine': {'cpus': os.cpu_count(), 'python': platform.python_version()},
            'results': rows}
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(result, f, indent=2)
  if tmp is not None and not args.keep:
    os.remove(audio)
    os.rmdir(tmp)
  return result


if __name__ == '__main__':
  main()
