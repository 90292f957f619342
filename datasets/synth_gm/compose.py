"""Random but musical General MIDI scores (the tags that describe them: `tags.py`).

A clip is a few bars in one key and tempo over a common chord progression, played by one to four
pitched parts (melody, chords, pad, bass) and, often, a drum kit. `compose(rng, seconds)` draws
every choice from `rng` only, so a clip depends on nothing but the seed it was given.

"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pretty_midi

# ---- Musical material ----------------------------------------------------------------------------

SCALES = {'major': (0, 2, 4, 5, 7, 9, 11), 'minor': (0, 2, 3, 5, 7, 8, 10)}
# Progressions as 0-based scale degrees, one chord per bar.
PROGRESSIONS = {
    'major': ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (1, 4, 0, 0), (0, 3, 0, 4), (5, 3, 0, 4),
              (0, 2, 3, 4)),
    'minor': ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 4), (0, 3, 6, 2), (0, 5, 3, 4)),
}
# One-bar melody rhythms in beats (4/4); negative values are rests.
RHYTHMS = (
    (1, 1, 1, 1), (2, 1, 1), (1.5, 0.5, 1, 1), (0.5,) * 8, (1, 0.5, 0.5, 2), (0.5, 0.5, 1, 0.5, 0.5, 1),
    (3, 1), (1, 1, 2), (0.75, 0.25, 1, 1, 1), (0.5, 0.5, 0.5, 0.5, 1, 1), (0.25,) * 4 + (1, 1, 1),
    (1, -0.5, 0.5, 1, 1), (2, 2), (1.5, 1.5, 1), (-1, 1, 1, 1), (0.5, 1, 0.5, 2),
)
TEMPI = {'slow': (56.0, 82.0), 'medium': (92.0, 128.0), 'fast': (140.0, 184.0)}
DYNAMICS = {  # (velocity centre, master gain range in dB)
    'quiet': (42, (-21.0, -15.0)), 'medium': (78, (-10.0, -6.0)), 'loud': (112, (-2.0, 0.0)),
}
REGISTER_SHIFT = {'low': -12, 'mid': 0, 'high': 12}

# Instrument families: GM programs per role. `solo` lists who may play alone (polyphonic ones play
# melody and chords, monophonic ones the melody).
FAMILIES: Dict[str, Dict[str, Tuple[int, ...]]] = {
    'piano': {'melody': (0, 1, 4), 'chords': (0, 1, 2, 4, 5), 'solo_poly': (0, 1, 2, 4)},
    'harpsichord': {'melody': (6,), 'chords': (6,), 'solo_poly': (6,)},
    'organ': {'melody': (16, 17, 18), 'chords': (16, 17, 18, 19), 'pad': (16, 19, 20),
              'solo_poly': (16, 19)},
    'guitar': {'melody': (24, 25, 26, 27, 29, 30), 'chords': (24, 25, 26, 27, 28, 29, 30),
               'solo_poly': (24, 25, 26)},
    'bass': {'bass': (32, 33, 34, 35, 36, 38, 39)},
    'violin': {'melody': (40,), 'solo_mono': (40,)},
    'viola': {'melody': (41,)},
    'cello': {'melody': (42,), 'bass': (42,), 'solo_mono': (42,)},
    'contrabass': {'bass': (43,)},
    'string_section': {'chords': (45, 48), 'pad': (44, 48, 49)},
    'harp': {'chords': (46,), 'solo_poly': (46,)},
    'choir': {'melody': (53,), 'pad': (52, 53)},
    'trumpet': {'melody': (56, 59), 'solo_mono': (56,)},
    'low_brass': {'melody': (57, 60), 'pad': (60, 61), 'bass': (58,)},
    'sax': {'melody': (64, 65, 66, 67), 'solo_mono': (65, 66)},
    'clarinet': {'melody': (71,), 'solo_mono': (71,)},
    'flute': {'melody': (72, 73, 74, 75), 'solo_mono': (73,)},
    'double_reed': {'melody': (68, 69), 'bass': (70,)},
    'synth': {'melody': (80, 81, 82, 83, 84, 87), 'chords': (81, 90), 'pad': (50, 51, 62, 88, 89, 91, 94, 95)},
    'mallets': {'melody': (8, 11, 12, 13), 'chords': (11, 12)},
    'folk': {'melody': (21, 22, 104, 105, 107), 'chords': (21, 105, 108)},
}
# Relative odds of a family when a role is filled (1 if absent): evens out the tag frequencies,
# since some tags have one program and others many roles.
FAMILY_WEIGHTS = {'bass': 5.0, 'violin': 2.0, 'trumpet': 2.0, 'sax': 1.5, 'clarinet': 1.5,
                  'piano': 1.5, 'guitar': 1.5, 'cello': 0.7, 'string_section': 0.7, 'organ': 0.7,
                  'low_brass': 0.7}

# Playable (sounding) ranges; notes outside are folded by octaves into them.
_RANGES = {
    **{p: (21, 108) for p in range(0, 8)}, 8: (60, 108), 11: (53, 89), 12: (45, 96), 13: (65, 108),
    **{p: (36, 96) for p in range(16, 24)}, **{p: (40, 84) for p in range(24, 32)},
    **{p: (28, 60) for p in range(32, 40)}, 40: (55, 100), 41: (48, 88), 42: (36, 76), 43: (28, 60),
    44: (36, 96), 45: (36, 96), 46: (24, 103), 48: (36, 96), 49: (36, 96), 52: (45, 81), 53: (45, 81),
    56: (55, 82), 57: (40, 72), 58: (28, 58), 59: (55, 82), 60: (41, 77), 61: (40, 84), 64: (56, 87),
    65: (49, 81), 66: (44, 76), 67: (36, 69), 68: (58, 91), 69: (52, 81), 70: (34, 72), 71: (50, 91),
    72: (74, 108), 73: (60, 96), 74: (60, 96), 75: (60, 96), 104: (48, 84), 105: (48, 84),
    107: (48, 84), 108: (60, 96),
}
# Per-role level offsets in dB (the melody on top, pads and accompaniment behind it).
_ROLE_DB = {'melody': 0.0, 'chords': -3.0, 'pad': -6.0, 'bass': -2.0, 'drums': -1.0, 'solo': 0.0}

# GM drum notes.
KICK, SNARE, RIM, CLOSED_HAT, PEDAL_HAT, OPEN_HAT, CRASH, RIDE = 36, 38, 37, 42, 44, 46, 49, 51
TOMS = (50, 47, 45, 43)
# 16-step (sixteenth-note) patterns per style: {note: steps}.
DRUM_STYLES = {
    'rock': {KICK: (0, 8, 10), SNARE: (4, 12), CLOSED_HAT: (0, 2, 4, 6, 8, 10, 12, 14)},
    'four_floor': {KICK: (0, 4, 8, 12), SNARE: (4, 12), CLOSED_HAT: (0, 4, 8, 12),
                   OPEN_HAT: (2, 6, 10, 14)},
    'halftime': {KICK: (0, 6, 10), SNARE: (8,), CLOSED_HAT: (0, 2, 4, 6, 8, 10, 12, 14)},
    'breakbeat': {KICK: (0, 3, 10), SNARE: (4, 12), CLOSED_HAT: tuple(range(16))},
    'jazz': {RIDE: (0, 4, 7, 8, 12, 15), PEDAL_HAT: (4, 12), KICK: (0,)},
    'bossa': {KICK: (0, 3, 4, 8, 11, 12), RIM: (0, 6, 12), CLOSED_HAT: (0, 2, 4, 6, 8, 10, 12, 14)},
}
DRUM_KITS = {'standard': 0, 'room': 8, 'power': 16, 'electronic': 24, 'tr808': 25, 'jazz': 32,
             'brush': 40}


@dataclasses.dataclass(frozen=True)
class Part:
  role: str          # 'solo' | 'melody' | 'chords' | 'pad' | 'bass' | 'drums'
  program: int       # GM program (0-based), or the drum kit preset for drums
  is_drum: bool = False


@dataclasses.dataclass
class Score:
  """A composed clip: the MIDI and the choices behind it (kept for tags and documentation)."""
  midi: pretty_midi.PrettyMIDI
  parts: List[Part]
  tempo: float
  key: str
  dynamics: str
  register: str
  gain_db: float     # master gain applied to the rendered mix


# ---- Helpers -------------------------------------------------------------------------------------

def _fold(pitch: int, program: int) -> int:
  lo, hi = _RANGES.get(program, (36, 96))
  while pitch < lo:
    pitch += 12
  while pitch > hi:
    pitch -= 12
  return pitch


def _degree_pitch(tonic: int, scale: Sequence[int], degree: int, base: int) -> int:
  """MIDI pitch of a scale degree (any integer) in the octave whose C is `base`."""
  octave, step = divmod(degree, 7)
  return base + tonic + scale[step] + 12 * octave


def _chord_pitches(tonic, scale, degree, centre, seventh):
  """A close voicing (each tone within the octave from centre - 6) of the chord on `degree`."""
  degrees = [degree, degree + 2, degree + 4] + ([degree + 6] if seventh else [])
  low = centre - 6
  return sorted(low + (_degree_pitch(tonic, scale, d, 0) - low) % 12 for d in degrees)


def _vel(rng, centre, accent=0.0):
  return int(np.clip(round(centre + accent + rng.normal(0.0, 5.0)), 1, 127))


def _jitter(rng, t):
  # Human timing: a few milliseconds either way, never before zero.
  return max(0.0, t + rng.normal(0.0, 0.006))


def _add(inst, rng, pitch, start, end, velocity):
  start = _jitter(rng, start)
  end = max(end, start + 0.05)
  inst.notes.append(pretty_midi.Note(velocity=velocity, pitch=int(pitch), start=start, end=end))


# ---- Parts ---------------------------------------------------------------------------------------

def _melody(inst, rng, ctx, centre, program):
  tonic, scale, prog, beat, n_bars, vel = (ctx[k] for k in ('tonic', 'scale', 'prog', 'beat', 'bars',
                                                           'vel'))
  a, b = rng.choice(len(RHYTHMS), 2)
  form = [(a, b)[i] for i in rng.choice([(0, 0, 1, 0), (0, 1, 0, 1), (0, 0, 0, 1)])]
  legato = rng.uniform(0.6, 0.95)
  base_degree = int(round((centre - 60 - tonic) / 12 * 7))
  degree = base_degree + int(rng.integers(0, 5))
  for bar in range(n_bars):
    chord = prog[bar % len(prog)]
    t = bar * 4 * beat
    for i, dur in enumerate(RHYTHMS[form[bar % 4]]):
      length = abs(dur) * beat
      if dur > 0 and rng.random() > 0.07:
        step = rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3], p=[.1, .2, .15, .05, .2, .15, .07, .04, .04])
        degree += int(step)
        if i == 0:  # land on a chord tone at the bar line
          tones = [chord + k for k in (0, 2, 4)]
          degree = min((tn + 7 * o for tn in tones for o in range(-3, 4)), key=lambda d: abs(d - degree))
        degree = int(np.clip(degree, base_degree - 5, base_degree + 9))
        pitch = _fold(_degree_pitch(tonic, scale, degree, 60), program)
        _add(inst, rng, pitch, t, t + length * legato, _vel(rng, vel, 8.0 if i == 0 else 0.0))
      t += length


def _chords(inst, rng, ctx, centre, program, style=None):
  tonic, scale, prog, beat, n_bars, vel = (ctx[k] for k in ('tonic', 'scale', 'prog', 'beat', 'bars',
                                                           'vel'))
  style = style or rng.choice(['block', 'half', 'arpeggio', 'strum' if 24 <= program < 32 else 'offbeat'])
  seventh = rng.random() < 0.3
  for bar in range(n_bars):
    pitches = [_fold(p, program) for p in
               _chord_pitches(tonic, scale, prog[bar % len(prog)], centre, seventh)]
    t0 = bar * 4 * beat
    if style == 'arpeggio':
      order = pitches + pitches[-2:0:-1]
      for i in range(8):
        _add(inst, rng, order[i % len(order)], t0 + i * beat / 2, t0 + (i + 1) * beat / 2 + 0.05,
             _vel(rng, vel - 6))
      continue
    onsets = {'block': (0, 1, 2, 3), 'half': (0, 2), 'offbeat': (0.5, 1.5, 2.5, 3.5),
              'strum': (0, 1, 1.5, 2.5, 3)}[style]
    for i, on in enumerate(onsets):
      end_beat = onsets[i + 1] if i + 1 < len(onsets) else 4
      for j, p in enumerate(pitches):
        spread = 0.012 * j if style == 'strum' else 0.0
        _add(inst, rng, p, t0 + on * beat + spread, t0 + end_beat * beat * 0.98,
             _vel(rng, vel - 8, 6.0 if on == 0 else 0.0))


def _pad(inst, rng, ctx, centre, program):
  tonic, scale, prog, beat, n_bars, vel = (ctx[k] for k in ('tonic', 'scale', 'prog', 'beat', 'bars',
                                                           'vel'))
  seventh = rng.random() < 0.4
  for bar in range(n_bars):
    pitches = _chord_pitches(tonic, scale, prog[bar % len(prog)], centre, seventh)
    for p in pitches:
      _add(inst, rng, _fold(p, program), bar * 4 * beat, (bar + 1) * 4 * beat + 0.02, _vel(rng, vel - 10))


def _bass(inst, rng, ctx, program, octave_base=36):
  tonic, scale, prog, beat, n_bars, vel = (ctx[k] for k in ('tonic', 'scale', 'prog', 'beat', 'bars',
                                                           'vel'))
  style = rng.choice(['whole', 'half', 'root_fifth', 'octaves', 'walking'])
  for bar in range(n_bars):
    chord = prog[bar % len(prog)]
    root = _fold(_degree_pitch(tonic, scale, chord, octave_base), program)
    fifth = _fold(_degree_pitch(tonic, scale, chord + 4, octave_base), program)
    nxt = _fold(_degree_pitch(tonic, scale, prog[(bar + 1) % len(prog)], octave_base), program)
    t0 = bar * 4 * beat
    if style == 'whole':
      notes = [(root, 0, 4)]
    elif style == 'half':
      notes = [(root, 0, 2), (root if rng.random() < 0.5 else fifth, 2, 2)]
    elif style == 'root_fifth':
      notes = [(root, 0, 1), (fifth, 1, 1), (root, 2, 1), (fifth, 3, 1)]
    elif style == 'octaves':
      notes = [(root + 12 * (i % 2) if root + 12 <= _RANGES.get(program, (0, 127))[1] else root,
                i / 2, 0.5) for i in range(8)]
    else:
      third = _fold(_degree_pitch(tonic, scale, chord + 2, octave_base), program)
      approach = nxt + (1 if rng.random() < 0.5 else -1)
      notes = [(root, 0, 1), (third, 1, 1), (fifth, 2, 1), (_fold(approach, program), 3, 1)]
    for p, on, dur in notes:
      _add(inst, rng, p, t0 + on * beat, t0 + (on + dur) * beat * 0.95, _vel(rng, vel, 6.0 if on == 0 else 0.0))


def _drums(inst, rng, ctx, style):
  beat, n_bars, vel = ctx['beat'], ctx['bars'], ctx['vel']
  pattern = DRUM_STYLES[style]
  swing = style in ('jazz',) or rng.random() < 0.15
  sixteenth = beat / 4
  for bar in range(n_bars):
    t0 = bar * 4 * beat
    fill = bar % 4 == 3 and rng.random() < 0.7
    for note, steps in pattern.items():
      for s in steps:
        if fill and s >= 12:
          continue
        shift = sixteenth / 3 if swing and s % 4 == 2 else 0.0
        accent = 10.0 if s % 8 == 0 else (-12.0 if note in (CLOSED_HAT, PEDAL_HAT) and s % 2 else 0.0)
        t = t0 + s * sixteenth + shift
        _add(inst, rng, note, t, t + sixteenth, _vel(rng, vel - 4, accent))
    if fill:
      for s in range(12, 16):
        _add(inst, rng, rng.choice(TOMS + (SNARE,)), t0 + s * sixteenth, t0 + (s + 1) * sixteenth,
             _vel(rng, vel, 4.0))
    if bar == 0 or (bar % 4 == 0 and rng.random() < 0.5):
      _add(inst, rng, CRASH, t0, t0 + beat, _vel(rng, vel))


# ---- The clip ------------------------------------------------------------------------------------

def _pick(rng, role, used):
  """A (family, program) that may play `role`, with a program not used yet in this clip."""
  families = [f for f, roles in FAMILIES.items() if role in roles]
  odds = np.array([FAMILY_WEIGHTS.get(f, 1.0) for f in families])
  for _ in range(50):
    family = families[rng.choice(len(families), p=odds / odds.sum())]
    program = int(rng.choice(FAMILIES[family][role]))
    if program not in used:
      return program
  return program


def compose(rng: np.random.Generator, seconds: float) -> Score:
  """Draws one clip of `seconds` (the score runs past the end; the renderer cuts it)."""
  tempo_class = rng.choice(list(TEMPI), p=[0.3, 0.4, 0.3])
  tempo = float(round(rng.uniform(*TEMPI[tempo_class]), 1))
  mode = rng.choice(list(SCALES))
  tonic = int(rng.integers(12))
  dynamics = rng.choice(list(DYNAMICS), p=[0.3, 0.4, 0.3])
  vel_centre, gain_range = DYNAMICS[dynamics]
  register = rng.choice(list(REGISTER_SHIFT), p=[0.3, 0.4, 0.3])
  shift = REGISTER_SHIFT[register]
  beat = 60.0 / tempo
  progs = PROGRESSIONS[mode]
  ctx = dict(tonic=tonic, scale=SCALES[mode], prog=progs[rng.integers(len(progs))], beat=beat,
             bars=int(np.ceil(seconds / (4 * beat))) + 1, vel=vel_centre + rng.uniform(-8, 8))

  n_pitched = int(rng.choice([1, 2, 3, 4], p=[0.3, 0.25, 0.25, 0.2]))
  with_drums = rng.random() < (0.25 if n_pitched == 1 else 0.55)
  if n_pitched == 1:
    roles = ['solo']
  else:
    extra = {2: [['chords'], ['bass'], ['pad']], 3: [['chords', 'bass'], ['pad', 'bass'],
                                                     ['chords', 'pad']],
             4: [['chords', 'pad', 'bass']]}[n_pitched]
    roles = ['melody'] + extra[rng.integers(len(extra))]

  midi = pretty_midi.PrettyMIDI(initial_tempo=tempo)
  parts, used = [], set()
  n_instruments = n_pitched + int(with_drums)
  for role in roles:
    if role == 'solo':
      kind = 'solo_mono' if rng.random() < 0.5 else 'solo_poly'
      program = _pick(rng, kind, used)
    else:
      program = _pick(rng, role, used)
    used.add(program)
    inst = pretty_midi.Instrument(program=program, name=role)
    if role == 'solo':
      _melody(inst, rng, ctx, 67 + shift, program)
      if kind == 'solo_poly':
        _chords(inst, rng, ctx, 55 + shift, program, style=rng.choice(['half', 'arpeggio', 'block']))
    elif role == 'melody':
      _melody(inst, rng, ctx, 67 + shift, program)
    elif role == 'chords':
      _chords(inst, rng, ctx, 60 + shift, program)
    elif role == 'pad':
      _pad(inst, rng, ctx, 57 + shift, program)
    else:
      # A bright (high-register) piece keeps its bass line up an octave, where the range allows.
      _bass(inst, rng, ctx, program, 48 if register == 'high' else 36)
    parts.append(Part(role, program))
    midi.instruments.append(inst)
  if with_drums:
    style = rng.choice(list(DRUM_STYLES))
    kit = 'brush' if style == 'jazz' and rng.random() < 0.5 else rng.choice(
        [k for k in DRUM_KITS if k != 'brush'])
    inst = pretty_midi.Instrument(program=DRUM_KITS[kit], is_drum=True, name='drums')
    _drums(inst, rng, ctx, style)
    parts.append(Part('drums', DRUM_KITS[kit], True))
    midi.instruments.append(inst)

  # Balance the parts with MIDI channel volume (CC7) so that the loudness of a clip follows its
  # dynamics more than its number of instruments. TinySoundFont's CC7 curve is 60*log10(v/127) dB
  # (measured), so v = 127 * 10**(dB / 60).
  for inst, part in zip(midi.instruments, parts):
    db = _ROLE_DB[part.role] - 10.0 * np.log10(n_instruments)
    value = int(np.clip(round(127 * 10 ** (db / 60.0)), 1, 127))
    inst.control_changes.append(pretty_midi.ControlChange(7, value, 0.0))

  key = f"{pretty_midi.note_number_to_name(60 + tonic)[:-1]} {mode}"
  gain_db = float(rng.uniform(*gain_range))
  return Score(midi=midi, parts=parts, tempo=tempo, key=key, dynamics=str(dynamics),
               register=str(register), gain_db=gain_db)
