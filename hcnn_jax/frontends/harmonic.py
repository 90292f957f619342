"""The harmonic filterbank front-end of the Harmonic CNN (Won et al., ICASSP 2020).

Each filter is a triangle on the linear-frequency axis centred on a harmonic n·f0 of a fundamental
f0, with an ERB-like bandwidth that grows with the centre:

  Λ_n(f) = [1 − 2|f − n·f0| / ((α·n·f0 + β) / Q)]_+ ,   α = 0.1079, β = 24.7 (Glasberg–Moore ERB).

The fundamentals are equally spaced in MIDI pitch from a low note up to the note nearest
sr / (2·H), `semitone_scale` per semitone; the H harmonics of every fundamental become the channels
of an image (pitch × time × harmonic), so a 3×3 convolution sees a pitch's overtones together.

Pure functions here; `HarmonicFrontend` only holds the trainable filter parameters. What is fixed
(the fundamental grid, the FFT bin frequencies) is numpy; what can be trained (f0, Q, α, β) enters
as jnp so gradients reach it.
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Optional, Tuple, Union

import chex
import numpy as np
import jax
import jax.numpy as jnp
from flax import linen as nn

from hcnn_jax.frontends.stft import amplitude_to_db, fft_frequencies, num_frames, power_spectrogram
from hcnn_jax.models import blocks

Dtype = Any
Note = Union[str, int]

ERB_ALPHA = 0.1079
ERB_BETA = 24.7
LEARN_BW_MODES = ('only_Q', 'fix', 'full')

_PITCH = {'C': 0, 'D': 2, 'E': 4, 'F': 5, 'G': 7, 'A': 9, 'B': 11}
_ACCIDENTAL = {'#': 1, '♯': 1, 'b': -1, '!': -1, '♭': -1, '': 0}
_NOTE_RE = re.compile(r'^\s*([A-Ga-g])([#♯b!♭]*)(-?\d+)?\s*$')


def note_to_midi(note: Note) -> int:
  """'C1' → 24, 'A4' → 69, 'C#3' → 49 (librosa's spelling; a missing octave means octave 0).

  An int is taken as a MIDI number already.
  """
  if isinstance(note, (int, np.integer)):
    return int(note)
  match = _NOTE_RE.match(str(note))
  if not match:
    raise ValueError(f"low_note {note!r} is not a note name: use e.g. 'C1', 'F#2', 'Bb0', "
                     'or a MIDI number.')
  pitch, accidentals, octave = match.groups()
  offset = sum(_ACCIDENTAL[a] for a in accidentals)
  return 12 * (int(octave or 0) + 1) + _PITCH[pitch.upper()] + offset


def hz_to_midi(hz):
  return 12.0 * (np.log2(np.asarray(hz, dtype=np.float64)) - np.log2(440.0)) + 69.0


def midi_to_hz(midi):
  return 440.0 * 2.0 ** ((np.asarray(midi, dtype=np.float64) - 69.0) / 12.0)


def harmonic_fundamentals(sample_rate: int = 16000, n_harmonic: int = 6,
                          semitone_scale: int = 2,
                          low_note: Note = 'C1') -> Tuple[np.ndarray, int]:
  """The fundamental grid f0 (level,) in Hz and `level`, the number of fundamentals.

  The top note is sr/(2·H) rounded to the nearest semitone (librosa's hz→note rounding, as the
  reference does), so the grid covers [low_note, top) with `semitone_scale` points per semitone.
  Raises ValueError when the settings leave no fundamental or put a harmonic above Nyquist.
  """
  if int(n_harmonic) != n_harmonic or n_harmonic < 1:
    raise ValueError(f'n_harmonic must be an integer >= 1, got {n_harmonic}.')
  if int(semitone_scale) != semitone_scale or semitone_scale < 1:
    raise ValueError(f'semitone_scale (fundamentals per semitone) must be an integer >= 1, '
                     f'got {semitone_scale}.')
  if sample_rate <= 0:
    raise ValueError(f'sample_rate must be positive, got {sample_rate}.')
  n_harmonic, semitone_scale = int(n_harmonic), int(semitone_scale)
  nyquist = sample_rate / 2.0
  low_midi = note_to_midi(low_note)
  high_midi = int(np.round(hz_to_midi(nyquist / n_harmonic)))
  level = (high_midi - low_midi) * semitone_scale
  if level < 1:
    raise ValueError(
        f'No fundamental fits: the top note for n_harmonic={n_harmonic} at {sample_rate} Hz is MIDI '
        f'{high_midi} ({nyquist / n_harmonic:.1f} Hz = Nyquist / n_harmonic), not above '
        f'low_note={low_note!r} (MIDI {low_midi}). Use fewer harmonics, a lower low_note or a '
        'higher sample_rate.')
  midi = np.linspace(low_midi, high_midi, level + 1)[:-1]
  f0 = midi_to_hz(midi)
  top = n_harmonic * f0[-1]
  if top > nyquist:
    raise ValueError(
        f'Harmonic {n_harmonic} of the top fundamental ({f0[-1]:.1f} Hz) is {top:.1f} Hz, above '
        f'Nyquist ({nyquist:.0f} Hz at sample_rate={sample_rate}). Use fewer harmonics '
        f'(n_harmonic < {n_harmonic}), a smaller semitone_scale than {semitone_scale}, or a higher '
        'sample_rate.')
  return f0, level


def harmonic_center_frequencies(sample_rate: int = 16000, n_harmonic: int = 6,
                                semitone_scale: int = 2, low_note: Note = 'C1') -> np.ndarray:
  """All filter centres n·f0, (n_harmonic·level,), harmonic-major: index (n − 1)·level + m."""
  f0, _ = harmonic_fundamentals(sample_rate, n_harmonic, semitone_scale, low_note)
  return (np.arange(1, n_harmonic + 1)[:, None] * f0[None, :]).reshape(-1)


def harmonic_filter_response(frequencies, f0, q, alpha=ERB_ALPHA, beta=ERB_BETA, *,
                             n_harmonic: int = 6) -> jnp.ndarray:
  """Λ_n evaluated at `frequencies` (K,) for fundamentals f0 (level,): (K, n_harmonic·level).

  Columns are harmonic-major like `harmonic_center_frequencies`. Differentiable in f0, q, alpha
  and beta.
  """
  f0 = jnp.asarray(f0, jnp.float32)
  harmonics = jnp.arange(1, n_harmonic + 1, dtype=jnp.float32)
  centres = (harmonics[:, None] * f0[None, :]).reshape(-1)
  # 2|f − c| / (BW/Q) written as a product by Q: no division by a learned Q that may approach 0.
  erb = alpha * centres + beta
  freqs = jnp.asarray(frequencies, jnp.float32)[:, None]
  return jax.nn.relu(1.0 - 2.0 * q * jnp.abs(freqs - centres[None, :]) / erb[None, :])


def harmonic_filterbank(f0, q, alpha=ERB_ALPHA, beta=ERB_BETA, *, sample_rate: int = 16000,
                        n_fft: int = 512, n_harmonic: int = 6) -> jnp.ndarray:
  """The filterbank over the one-sided FFT bins linspace(0, sr/2, n_fft//2 + 1): (n_bins, H·level).

  Peak 1 at each centre, support centre ± BW/2 with BW = (α·c + β)/Q, no area normalisation
  (the reference's). Narrow low filters may fall between bins and be all zero (at 16 kHz, n_fft 512
  and Q = 1 the one at h = 1, m = 12); that is harmless: its output is the dB floor.
  """
  return harmonic_filter_response(fft_frequencies(sample_rate, n_fft), f0, q, alpha, beta,
                                  n_harmonic=n_harmonic)


FILTERBANK_PRECISIONS = {'highest': jax.lax.Precision.HIGHEST, 'high': jax.lax.Precision.HIGH,
                         'default': jax.lax.Precision.DEFAULT}


def harmonic_spectrogram(x, f0, q, alpha=ERB_ALPHA, beta=ERB_BETA, *, sample_rate: int,
                         n_fft: int = 512, hop_length: int = 256, n_harmonic: int = 6,
                         precision: str = 'default') -> jnp.ndarray:
  """Waveforms (B, L) → harmonic power tensor (B, level, T, n_harmonic), NHWC.

  Power STFT (periodic Hann, centre/reflect) × filterbank, then the filter axis is split
  harmonic-major into (harmonic, pitch) and the harmonics become the channels.

  precision: of the filterbank matmul on accelerators ('highest' is full float32; on CPU all three
  are float32). Every term of the sum is non-negative (power × triangle), so no cancellation
  amplifies operand rounding: 'default' (tf32 or bf16 operands, float32 sums) stayed within
  0.0039 dB of 'highest' (mean 0.0006 dB) on an H200, where 'highest' runs as a float32 SIMT GEMM
  at ~4 % of the training step (bench/README.md). It changes the values on accelerators (by that
  much), so it is a model option (`filterbank_precision`), not a `hcnn_jax.speed` choice.
  """
  if precision not in FILTERBANK_PRECISIONS:
    raise ValueError(f'filterbank precision must be one of {sorted(FILTERBANK_PRECISIONS)}, '
                     f'got {precision!r}.')
  x = jnp.asarray(x, jnp.float32)
  chex.assert_rank(x, 2)
  spec = power_spectrogram(x, n_fft=n_fft, hop_length=hop_length)  # (B, n_bins, T)
  fb = harmonic_filterbank(f0, q, alpha, beta, sample_rate=sample_rate, n_fft=n_fft,
                           n_harmonic=n_harmonic)
  out = jnp.einsum('bkt,kj->btj', spec, fb, precision=FILTERBANK_PRECISIONS[precision])
  batch, frames = out.shape[0], out.shape[1]
  level = out.shape[-1] // n_harmonic
  out = out.reshape(batch, frames, n_harmonic, level)
  return jnp.transpose(out, (0, 3, 1, 2))


class HarmonicFrontend(nn.Module):
  """Waveform (B, L) → dB harmonic tensor (B, level, T, n_harmonic), BatchNorm over harmonics.

  learn_bw: 'only_Q' trains one scalar Q shared by all filters (the released reference);
  'fix' trains nothing in the filterbank; 'full' trains scalar Q, α and β (the reference's older
  option). learn_f0 trains the fundamentals with the harmonic tie n·f0 kept (unlike the old
  reference, which freed all H·level centres): a (level,) parameter `f0_shift` in semitones, f0 =
  f0_grid · 2^(shift/12). Semitones because pitch is logarithmic (one step moves a low and a high
  fundamental by the same musical interval, and f0 stays positive), and an offset from the grid
  because weight decay then pulls f0 back to the musical grid rather than towards 0 Hz.

  input_norm: apply the reference's BatchNorm over the harmonic channels (hstft_bn) after the dB.
  The spectral part runs in float32 whatever `dtype` is (the dB of a power spectrum in bfloat16
  would lose most of its resolution); `dtype` applies from the BatchNorm on.
  """
  sample_rate: int = 16000
  n_fft: int = 512
  hop_length: int = 256
  n_harmonic: int = 6
  semitone_scale: int = 2
  low_note: Note = 'C1'
  learn_bw: str = 'only_Q'
  learn_f0: bool = False
  q_init: float = 1.0
  input_norm: bool = True
  filterbank_precision: str = 'default'
  dtype: Dtype = jnp.float32
  bn_axis_name: Optional[str] = None

  def _validate(self):
    if self.learn_bw not in LEARN_BW_MODES:
      raise ValueError(f'learn_bw must be one of {LEARN_BW_MODES}, got {self.learn_bw!r}.')
    if self.n_fft < 2 or self.hop_length < 1:
      raise ValueError(f'n_fft must be >= 2 and hop_length >= 1, got n_fft={self.n_fft}, '
                       f'hop_length={self.hop_length}.')
    if self.filterbank_precision not in FILTERBANK_PRECISIONS:
      raise ValueError(f'filterbank_precision must be one of {sorted(FILTERBANK_PRECISIONS)}, '
                       f'got {self.filterbank_precision!r}.')

  def fundamentals(self) -> Tuple[np.ndarray, int]:
    """The initial fundamental grid (level,) in Hz and level."""
    return harmonic_fundamentals(self.sample_rate, self.n_harmonic, self.semitone_scale,
                                 self.low_note)

  def output_shape(self, num_samples: int) -> Tuple[int, int, int]:
    """(level, T, n_harmonic) for a waveform of num_samples, without running anything."""
    self._validate()
    if num_samples <= self.n_fft // 2:
      raise ValueError(f'The harmonic front-end needs more than n_fft // 2 = {self.n_fft // 2} '
                       f'samples (reflect padding), got {num_samples}.')
    _, level = self.fundamentals()
    return level, num_frames(num_samples, self.n_fft, self.hop_length), self.n_harmonic

  def filters(self, params: Mapping[str, Any]):
    """(f0 (level,), Q, α, β) from this module's params (e.g. variables['params']['frontend']).

    What is not trained comes from the fields and the fixed grid, so this also reads a trained
    filterbank for plots and analysis, outside apply.
    """
    f0_grid, _ = self.fundamentals()
    f0 = jnp.asarray(f0_grid, jnp.float32)
    if self.learn_f0:
      f0 = f0 * jnp.exp2(params['f0_shift'] / 12.0)
    q = params['bw_Q'] if self.learn_bw in ('only_Q', 'full') else self.q_init
    if self.learn_bw == 'full':
      return f0, q, params['bw_alpha'], params['bw_beta']
    return f0, q, ERB_ALPHA, ERB_BETA

  def _make_params(self, level: int):
    params = {}
    if self.learn_f0:
      params['f0_shift'] = self.param('f0_shift', nn.initializers.zeros, (level,), jnp.float32)
    if self.learn_bw in ('only_Q', 'full'):
      params['bw_Q'] = self.param('bw_Q', nn.initializers.constant(self.q_init), (), jnp.float32)
    if self.learn_bw == 'full':
      params['bw_alpha'] = self.param('bw_alpha', nn.initializers.constant(ERB_ALPHA), (),
                                      jnp.float32)
      params['bw_beta'] = self.param('bw_beta', nn.initializers.constant(ERB_BETA), (),
                                     jnp.float32)
    return params

  @nn.compact
  def __call__(self, waveform, train: bool = False):
    self._validate()
    chex.assert_rank(waveform, 2)
    level, frames, channels = self.output_shape(waveform.shape[-1])
    f0, q, alpha, beta = self.filters(self._make_params(level))
    x = harmonic_spectrogram(waveform, f0, q, alpha, beta, sample_rate=self.sample_rate,
                             n_fft=self.n_fft, hop_length=self.hop_length,
                             n_harmonic=self.n_harmonic, precision=self.filterbank_precision)
    x = amplitude_to_db(x)
    chex.assert_shape(x, (waveform.shape[0], level, frames, channels))
    if self.input_norm:
      x = blocks.batch_norm(train, self.bn_axis_name, self.dtype, name='hstft_bn')(x)
    return x.astype(self.dtype)
