"""Renders a pretty_midi score to 16 kHz mono float32 with TinySoundFont and a GM soundfont.

TinySoundFont renders at any output rate (it resamples each instrument sample itself), so the clips
are rendered at 16 kHz directly, with no resampling pass. The dataset's soundfont is TimGM6mb.sf2,
the General MIDI bank that ships inside the pretty_midi package (all 128 GM programs and 8 drum
kits). `SOUNDFONTS` also names two other GM banks from Debian packages, used only to re-render the
same test scores (the `*_fluidr3` / `*_musescore` configs): a model that learned timbre rather
than one bank's samples should score the same on them.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import List, Tuple

import numpy as np
import pretty_midi
from tinysoundfont import _tinysoundfont as tsf

SAMPLE_RATE = 16000
DRUM_CHANNEL = 9
# GM drum kits (presets of bank 128) that TimGM6mb provides.
DRUM_KITS = {0: 'standard', 8: 'room', 16: 'power', 24: 'electronic', 25: 'tr808', 32: 'jazz',
             40: 'brush', 48: 'orchestra'}

# Event kinds, ordered so that at equal times note-offs come before note-ons (a repeated key
# restarts instead of being cut) and controllers before both.
_CONTROL, _NOTE_OFF, _NOTE_ON = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Soundfont:
  """A General MIDI soundfont: where it is, what installs it, its output gain to the dataset's."""
  name: str
  path: str          # absolute, or relative to the pretty_midi package
  install: str       # the one command that puts the file there
  # Added to the mix gain so that the median level matches TimGM6mb's: minus the median over 200
  # train scores of the default config (seed 2020, 8 s; not test) of this bank's RMS level minus
  # TimGM6mb's on the same score (datasets/synth_gm/README.md, "Other soundfonts").
  gain_db: float = 0.0


DEFAULT_SOUNDFONT = 'TimGM6mb'
# The Debian files are named by the package's own file, not by the alternatives link
# (/usr/share/sounds/sf2/default-GM.sf2), which another installed bank could redirect.
SOUNDFONTS = {s.name: s for s in (
    Soundfont('TimGM6mb', 'TimGM6mb.sf2',
              'pip install --force-reinstall pretty_midi==0.2.11.post0'),
    # Frank Wen's FluidR3 GM bank (141 MiB, 16-bit samples), Debian package 3.1-5.3.
    Soundfont('FluidR3_GM', '/usr/share/sounds/sf2/FluidR3_GM.sf2',
              'apt-get install fluid-soundfont-gm (or: make soundfonts)', gain_db=-3.3),
    # MuseScore General Lite 0.2.1 (SF3: Ogg Vorbis samples, which TinySoundFont decodes).
    Soundfont('MuseScore_General', '/usr/share/sounds/sf3/MuseScore_General_Lite.sf3',
              'apt-get install musescore-general-soundfont-small (or: make soundfonts)',
              gain_db=3.0),
    # Csound's GM bank (sf_GMbank.sf2, 4.2 MB), Debian csound-soundfont: a training bank only
    # (`<config>_multibank`); 24 of its 128 programs play TimGM6mb's very samples.
    Soundfont('Csound_GM', '/usr/share/sounds/sf2/sf_GMbank.sf2',
              'apt-get install csound-soundfont (or: make soundfonts)', gain_db=0.2),
)}


def soundfont(name: str = DEFAULT_SOUNDFONT) -> Soundfont:
  if name not in SOUNDFONTS:
    raise ValueError(f'Unknown soundfont {name!r}; use one of {sorted(SOUNDFONTS)}.')
  return SOUNDFONTS[name]


def soundfont_path(name: str = DEFAULT_SOUNDFONT) -> str:
  """Path of the named General MIDI soundfont (default: the one shipped with pretty_midi)."""
  sf = soundfont(name)
  path = os.path.join(os.path.dirname(pretty_midi.__file__), sf.path)
  if not os.path.exists(path):
    raise ValueError(f'The GM soundfont {name} ({path}) is missing: install it with '
                     f'`{sf.install}`.')
  return path


@functools.lru_cache(maxsize=None)
def _soundfont(sample_rate: int, name: str = DEFAULT_SOUNDFONT) -> tsf.SoundFont:
  # One parsed soundfont per process, rate and bank; `reset()` clears voices and channels between
  # clips.
  sf = tsf.SoundFont(soundfont_path(name))
  sf.set_output(tsf.OutputMode.Mono, sample_rate, 0.0)
  # Chords with long releases plus a drum kit stay well under this; a cut voice would be audible.
  sf.set_max_voices(256)
  return sf


def preset_name(program: int, is_drum: bool = False, soundfont_name: str = DEFAULT_SOUNDFONT
                ) -> str | None:
  """The soundfont's name for a GM program (or a drum kit), None if it has no such preset."""
  name = _soundfont(SAMPLE_RATE, soundfont_name).get_preset_name(128 if is_drum else 0, program)
  return None if name == '<None>' else name


def _events(midi: pretty_midi.PrettyMIDI, sample_rate: int
            ) -> Tuple[List[Tuple[int, int, int, int, int, float]], List[Tuple[int, int, bool]]]:
  """Flattens the score into sorted (sample, kind, order, channel, a, b) events and channel setup."""
  setup, events = [], []
  melodic = iter(c for c in range(16) if c != DRUM_CHANNEL)
  order = 0
  for inst in midi.instruments:
    if inst.is_drum:
      channel = DRUM_CHANNEL
    else:
      channel = next(melodic, None)
      if channel is None:
        raise ValueError('A score can hold at most 15 melodic instruments (MIDI has 16 channels, '
                         'one is for drums).')
    setup.append((channel, inst.program, inst.is_drum))
    for cc in inst.control_changes:
      events.append((int(round(cc.time * sample_rate)), _CONTROL, order, channel, cc.number,
                     cc.value))
      order += 1
    for note in inst.notes:
      events.append((int(round(note.start * sample_rate)), _NOTE_ON, order, channel, note.pitch,
                     note.velocity / 127.0))
      events.append((int(round(note.end * sample_rate)), _NOTE_OFF, order, channel, note.pitch, 0.0))
      order += 1
  events.sort()
  return events, setup


def render(midi: pretty_midi.PrettyMIDI, num_samples: int, sample_rate: int = SAMPLE_RATE,
           soundfont_name: str = DEFAULT_SOUNDFONT) -> np.ndarray:
  """Renders the first `num_samples` of the score; returns float32 (num_samples,), unscaled.

  Each pretty_midi instrument gets its own channel (drums on channel 10); control changes
  (e.g. CC7 volume) are applied at their times. Notes still sounding at the end are cut.
  """
  sf = _soundfont(sample_rate, soundfont_name)
  _silence(sf, sample_rate)
  events, setup = _events(midi, sample_rate)
  for channel, program, is_drum in setup:
    sf.channel_set_bank(channel, 128 if is_drum else 0)
    sf.channel_set_preset_number(channel, program, is_drum)
  out = np.zeros(num_samples, np.float32)
  pos = 0
  for when, kind, _, channel, a, b in events:
    when = min(when, num_samples)
    if when > pos:
      # TinySoundFont writes raw float bytes; a contiguous slice of `out` is its buffer.
      sf.render(memoryview(out[pos:when]).cast('B'), False)
      pos = when
    if pos >= num_samples:
      break
    if kind == _NOTE_ON:
      sf.channel_note_on(channel, a, b)
    elif kind == _NOTE_OFF:
      sf.channel_note_off(channel, a)
    else:
      sf.channel_midi_control(channel, a, int(b))
  if pos < num_samples:
    sf.render(memoryview(out[pos:]).cast('B'), False)
  _silence(sf, sample_rate)
  return out


def _silence(sf: tsf.SoundFont, sample_rate: int) -> None:
  """Resets the cached soundfont so that the next clip starts from exactly the same state.

  `reset()` ends voices with a quick release rather than at once; rendering past it (into a
  scratch buffer) lets those tails finish, so no clip carries sound or voice state from the last.
  """
  sf.reset()
  scratch = np.zeros(sample_rate // 4, np.float32)
  sf.render(memoryview(scratch).cast('B'), False)
