"""One clip from (seed, split, index): compose, render, apply gain, convert to int16, tag.

The clip depends on nothing else (not on build order, worker count or other clips), so a build can
generate clips in any order or in parallel processes and still write identical bytes.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Dict, FrozenSet, Tuple

import numpy as np

from . import compose, render
from . import tags as synth_tags

SAMPLE_RATE = render.SAMPLE_RATE
# Fixed gain from the soundfont's raw output to the stored mix. Chosen so that the loudest clips
# (loud dynamics, four parts and drums) peak below full scale; measured over 2,000 default clips.
OUTPUT_GAIN_DB = -4.0
# Peak ceiling of the stored int16 audio (-1 dBFS). A clip that would exceed it is attenuated as a
# whole (no per-clip normalisation and no limiter, so loud stays loud and quiet stays quiet).
PEAK_CEILING = 10 ** (-1.0 / 20.0)
SPLIT_CODES = {'train': 0, 'validation': 1, 'test': 2}


@dataclasses.dataclass
class Clip:
  id: str
  audio: np.ndarray             # int16 (num_samples,)
  tags: FrozenSet[str]
  labels: np.ndarray            # float32 (len(synth_tags.TAGS),)
  info: Dict[str, object]       # the choices behind the clip, for statistics and debugging


def clip_rng(seed: int, split: str, index: int) -> np.random.Generator:
  """The clip's own generator; a hash of the split keeps splits apart without a registry of codes."""
  code = SPLIT_CODES.get(split, zlib.crc32(split.encode()))
  return np.random.default_rng([int(seed), code, int(index)])


def make_clip(seed: int, split: str, index: int, seconds: float,
              soundfont: str = render.DEFAULT_SOUNDFONT) -> Clip:
  """Composes and renders clip `index` of `split`; deterministic in its arguments.

  `soundfont` changes only the rendering: the score (and so every tag but loud/quiet) depends on
  (seed, split, index, seconds) alone, and the soundfont's `gain_db` keeps its levels comparable.
  """
  num_samples = int(round(seconds * SAMPLE_RATE))
  score = compose.compose(clip_rng(seed, split, index), seconds)
  bank = render.soundfont(soundfont)
  mix = render.render(score.midi, num_samples, soundfont_name=soundfont)
  mix *= np.float32(10 ** ((score.gain_db + OUTPUT_GAIN_DB + bank.gain_db) / 20.0))
  peak = float(np.max(np.abs(mix))) if num_samples else 0.0
  attenuated = peak > PEAK_CEILING
  if attenuated:
    mix *= np.float32(PEAK_CEILING / peak)
  audio = np.round(mix * 32767.0).astype(np.int16)
  # The level tags are read from what is stored, so they describe what a model hears.
  tags = (synth_tags.score_tags(score, seconds)
          | synth_tags.level_tags(audio.astype(np.float32) / 32768.0))
  info = dict(tempo=score.tempo, key=score.key, dynamics=score.dynamics, register=score.register,
              gain_db=score.gain_db, programs=[p.program for p in score.parts],
              roles=[p.role for p in score.parts], peak=min(peak, PEAK_CEILING),
              attenuated=attenuated, level_dbfs=synth_tags.level_dbfs(audio / 32768.0),
              median_pitch=synth_tags.median_pitch(score.midi, seconds))
  return Clip(id=f'{split}/{index:06d}', audio=audio, tags=tags, labels=synth_tags.multi_hot(tags),
              info=info)


RenderedClip = Tuple[str, np.ndarray, np.ndarray, bool]  # id, int16 audio, labels, attenuated


def render_job(args: Tuple[int, str, int, float, str]) -> RenderedClip:
  """make_clip for a worker pool: top-level (picklable), returns only what the writer stores."""
  clip = make_clip(*args)
  return clip.id, clip.audio, clip.labels, bool(clip.info['attenuated'])
