"""The synth_gm tags: their definitions, and how they are read off a score and a rendered clip.

Tags are derived from the score (which GM programs play, drum track, tempo, pitch register, number
of instruments), except `loud`/`quiet`, which are read from the rendered level (see `level_tags`):
the level follows the drawn dynamics (velocities and master gain) but is what a listener hears.
"""
from __future__ import annotations

from typing import Dict, FrozenSet, Tuple

import numpy as np
import pretty_midi

# ---- Tags --------------------------------------------------------------------------------------

# Instrument tags: the GM programs (0-based) whose presence gives the tag. Some nest on purpose, as
# in MTAT (a violin is also `strings`, a trumpet also `brass`); none coincides with another.
INSTRUMENT_TAGS: Dict[str, FrozenSet[int]] = {
    'piano': frozenset(range(0, 6)),          # acoustic, bright, electric grand, honky-tonk, e-pianos
    'harpsichord': frozenset({6}),
    'organ': frozenset(range(16, 21)),        # drawbar, percussive, rock, church, reed
    'guitar': frozenset(range(24, 32)),       # nylon, steel, jazz, clean, muted, overdrive, distortion
    'bass': frozenset(range(32, 40)),         # acoustic, finger, pick, fretless, slap, synth basses
    'strings': frozenset({40, 41, 42, 43, 44, 45, 48, 49}),  # bowed/orchestral strings, solo or section
    'violin': frozenset({40}),
    'cello': frozenset({42}),
    'harp': frozenset({46}),
    'brass': frozenset(range(56, 62)),        # trumpet, trombone, tuba, muted trumpet, horn, section
    'trumpet': frozenset({56, 59}),
    'sax': frozenset(range(64, 68)),
    'clarinet': frozenset({71}),
    'flute': frozenset(range(72, 76)),        # piccolo, flute, recorder, pan flute
    'choir': frozenset({52, 53}),             # choir aahs, voice oohs
    'synth': frozenset({38, 39, 50, 51, 62, 63} | set(range(80, 96))),  # synth bass/strings/brass, leads, pads
}
OTHER_TAGS = ('drums', 'no_drums', 'fast', 'slow', 'loud', 'quiet', 'high', 'low', 'solo',
              'ensemble')
TAGS: Tuple[str, ...] = tuple(INSTRUMENT_TAGS) + OTHER_TAGS

# Thresholds of the non-instrument tags; clips between two thresholds get neither tag.
FAST_BPM = 135.0          # fast: tempo >= this
SLOW_BPM = 85.0           # slow: tempo <= this
HIGH_PITCH = 71.0         # high: median MIDI pitch of the pitched notes >= this (B4)
LOW_PITCH = 55.0          # low: median pitch <= this (G3)
LOUD_DBFS = -28.0         # loud: RMS level of the stored clip >= this
QUIET_DBFS = -42.0        # quiet: RMS level <= this
ENSEMBLE_SIZE = 4         # ensemble: at least this many instruments (the drum kit counts as one)


# ---- Tags from the score -------------------------------------------------------------------------

def median_pitch(midi: pretty_midi.PrettyMIDI, until: float | None = None) -> float:
  """Median MIDI pitch of the pitched (non-drum) notes starting before `until`."""
  pitches = [n.pitch for inst in midi.instruments if not inst.is_drum for n in inst.notes
             if until is None or n.start < until]
  return float(np.median(pitches)) if pitches else float('nan')


def score_tags(score, seconds: float) -> FrozenSet[str]:
  """Every tag except loud/quiet, read off the notes that sound within the first `seconds`."""
  tags = set()
  sounding = [inst for inst in score.midi.instruments
              if any(n.start < seconds for n in inst.notes)]
  programs = {inst.program for inst in sounding if not inst.is_drum}
  for tag, members in INSTRUMENT_TAGS.items():
    if programs & members:
      tags.add(tag)
  has_drums = any(inst.is_drum for inst in sounding)
  tags.add('drums' if has_drums else 'no_drums')
  if score.tempo >= FAST_BPM:
    tags.add('fast')
  elif score.tempo <= SLOW_BPM:
    tags.add('slow')
  pitch = median_pitch(score.midi, seconds)
  if pitch >= HIGH_PITCH:
    tags.add('high')
  elif pitch <= LOW_PITCH:
    tags.add('low')
  if len(programs) == 1 and not has_drums:
    tags.add('solo')
  if len(sounding) >= ENSEMBLE_SIZE:
    tags.add('ensemble')
  return frozenset(tags)


def level_dbfs(audio: np.ndarray) -> float:
  """RMS level of a float waveform in dB relative to full scale (a full-scale sine is -3 dB)."""
  rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
  return 20.0 * np.log10(max(rms, 1e-10))


def level_tags(audio: np.ndarray) -> FrozenSet[str]:
  """`loud` / `quiet` from the RMS level of the final (gained, int16-bound) float waveform."""
  level = level_dbfs(audio)
  if level >= LOUD_DBFS:
    return frozenset({'loud'})
  if level <= QUIET_DBFS:
    return frozenset({'quiet'})
  return frozenset()


def multi_hot(tags: FrozenSet[str]) -> np.ndarray:
  """float32 (len(TAGS),) in TAGS order."""
  unknown = set(tags) - set(TAGS)
  if unknown:
    raise ValueError(f'Unknown tags {sorted(unknown)}; known: {TAGS}.')
  return np.array([t in tags for t in TAGS], np.float32)
