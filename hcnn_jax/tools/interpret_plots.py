"""The figures of `hcnn_jax.tools.interpret`: filterbank, saliency, attention and contribution.

Every figure names what it was drawn from (the audio file, or the checkpoint for the filterbank),
labels its colour bars, and puts frequency axes in Hz with note names, so that a PNG read on its
own says what it shows. The figures return the path written; `*_figure` builders return the
matplotlib Figure too, for tests.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from hcnn_jax.tools import plots

NOTE_NAMES = ('C', 'C#', 'D', 'D#', 'E', 'F', 'F#', 'G', 'G#', 'A', 'A#', 'B')


def note_name(hz: float) -> str:
  """Nearest equal-tempered note of `hz` (A4 = 440 Hz), with the cents off when ≥ 5: 'A4',
  'C2+50¢'."""
  midi = 69.0 + 12.0 * np.log2(float(hz) / 440.0)
  nearest = int(np.floor(midi + 0.5 - 1e-6))  # a quarter tone: the lower note +50¢
  cents = int(np.round(100.0 * (midi - nearest)))
  name = f'{NOTE_NAMES[nearest % 12]}{nearest // 12 - 1}'
  return name if abs(cents) < 5 else f'{name}{cents:+d}¢'


def hz_label(hz: float) -> str:
  return f'{hz:.0f} Hz {note_name(hz)}' if hz >= 20 else f'{hz:.1f} Hz'


def pitch_ticks(rows_hz: np.ndarray, max_ticks: int = 8) -> Tuple[List[int], List[str]]:
  """Row indices and labels for an axis whose rows have frequencies `rows_hz` (increasing).

  Rows on a semitone grid or finer (the harmonic tensor's fundamentals, a CQT) are ticked on each
  C, labelled 'Hz + note'; other rows (mel bands, FFT bins) at evenly spaced rows, in Hz.
  """
  rows_hz = np.asarray(rows_hz, np.float64)
  if rows_hz.size > 1 and np.all(rows_hz > 0):
    midi = 69.0 + 12.0 * np.log2(rows_hz / 440.0)
    if np.max(np.diff(midi)) <= 1.01:
      rows = [int(np.argmin(np.abs(midi - c)))
              for c in range(int(np.ceil(midi[0] / 12.0)) * 12, int(midi[-1]) + 1, 12)]
      rows = rows[::max(1, -(-len(rows) // max_ticks))]
      if len(rows) >= 2:
        return rows, [hz_label(rows_hz[r]) for r in rows]
  rows = sorted(set(np.linspace(0, rows_hz.shape[0] - 1, min(max_ticks, rows_hz.shape[0]))
                    .round().astype(int).tolist()))
  return rows, [f'{rows_hz[r]:.0f} Hz' for r in rows]


def _colors(n: int) -> List[Any]:
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel
  cmap = colormaps['tab10']
  return [cmap(i % 10) for i in range(n)]


# ---------------------------------------------------------------------------------- filterbank

def filterbank_figure(state: Dict[str, Any], source: str = ''):
  """The filterbank before/after training (see `interpret.filterbank_state`); `source` names the
  checkpoint in the title."""
  freqs, level, n_h = state['frequencies'], state['level'], state['n_harmonic']
  init, learned = state['initial'], state['learned']
  fig = plots.new_figure(13.0, 8.5, layout='constrained')
  axes = fig.subplots(2, 2)
  for ax, (name, s) in zip(axes[0], (('initial', init), ('learned', learned))):
    im = ax.imshow(s['filterbank'], aspect='auto', origin='lower', interpolation='nearest',
                   cmap='viridis', vmin=0, vmax=1,
                   extent=(-0.5, n_h * level - 0.5, freqs[0], freqs[-1]))
    for h in range(1, n_h):
      ax.axvline(h * level - 0.5, color='w', lw=0.5, alpha=0.6)
    ax.set_xticks([h * level + (level - 1) / 2 for h in range(n_h)])
    ax.set_xticklabels([f'harmonic {h + 1}' for h in range(n_h)], fontsize=8)
    ax.set_title(f'{name} filterbank: Q={s["q"]:.4f}, α={s["alpha"]:.4f}, β={s["beta"]:.2f}',
                 fontsize=10)
    ax.set_xlabel(f'filter: {level} fundamentals ({hz_label(s["f0"][0])} to '
                  f'{hz_label(s["f0"][-1])}) per harmonic', fontsize=9)
    ax.set_ylabel('frequency (Hz)')
    fig.colorbar(im, ax=ax, fraction=0.04, label='filter weight')
  ax = axes[1, 0]
  picks = sorted({0, level // 2, level - 1})  # low, middle, top: more curves would tangle
  for color, m in zip(_colors(len(picks)), picks):
    for h in range(n_h):
      j = h * level + m
      # Learned solid and wide underneath, initial dashed and narrow on top: where training
      # moved a filter little, the dashes still show over the solid line.
      ax.plot(freqs, learned['filterbank'][:, j], '-', color=color, lw=2.0, alpha=0.55,
              zorder=2, label=f'f0 {hz_label(init["f0"][m])}' if h == 0 else None)
      ax.plot(freqs, init['filterbank'][:, j], '--', color='k', lw=0.9, zorder=3,
              label='initial (dashed)' if h == 0 and m == picks[0] else None)
  ax.set_xscale('log')
  ax.set_xlim(max(freqs[1], 20.0), freqs[-1])
  ax.set_title(f'responses: harmonics 1–{n_h} of {len(picks)} fundamentals '
               '(solid learned, dashed initial)', fontsize=10)
  ax.set_xlabel('frequency (Hz)')
  ax.set_ylabel('filter weight')
  ax.legend(fontsize=7, loc='upper center', bbox_to_anchor=(0.5, -0.13), ncol=len(picks) + 1)
  ax = axes[1, 1]
  shift = 12.0 * np.log2(learned['f0'] / init['f0'])
  ax.plot(init['f0'], shift, '.-', lw=0.8)
  ax.set_xscale('log')
  ax.set_xlabel('initial f0 (Hz)')
  ax.set_ylabel('learned f0 − initial (semitones)')
  ax.set_title('fundamentals: Q {:.4f} → {:.4f}, α {:.4f} → {:.4f}, β {:.2f} → {:.2f}'.format(
      init['q'], learned['q'], init['alpha'], learned['alpha'], init['beta'], learned['beta']),
      fontsize=9)
  if not np.any(shift):
    ax.text(0.5, 0.65, 'fundamentals not trained (learn_f0=False)', transform=ax.transAxes,
            ha='center', va='bottom', fontsize=9)
  ax.grid(alpha=0.3)
  fig.suptitle(f'harmonic filterbank of {source}' if source else 'harmonic filterbank')
  return fig


def plot_filterbank(state: Dict[str, Any], path: str, source: str = '') -> str:
  return plots.save(filterbank_figure(state, source), path)


# ------------------------------------------------------------------------------------ saliency

def saliency_figure(result: Dict[str, Any], class_names: Sequence[str], span: Sequence[float],
                    audio_name: str, rows_hz: Optional[np.ndarray] = None,
                    rows_label: str = 'frequency'):
  """Features and saliency per harmonic (`interpret.saliency`'s result) of the chunk `span`
  = (start, end) s of `audio_name`. rows_hz: the frequency of each feature row (for the harmonic
  tensor, the fundamental f0: harmonic k holds the energy at k·f0), None when rows have none."""
  feats, sal = result['features'], result['saliency']
  channels = feats.shape[-1]
  harmonic = result['kind'].startswith('harmonic')
  extent = (float(span[0]), float(span[1]), -0.5, feats.shape[0] - 0.5)
  limit = float(np.max(np.abs(sal))) or 1.0
  ticks = pitch_ticks(rows_hz) if rows_hz is not None else None
  # One row per harmonic: its tensor slice on the left, its saliency on the right.
  fig = plots.new_figure(10.0, 0.6 + 2.4 * channels, layout='constrained')
  axes = fig.subplots(channels, 2, squeeze=False)
  for c in range(channels):
    part = f'harmonic {c + 1}' if harmonic else f'channel {c + 1}'
    if harmonic and c > 0:
      part += f' (energy at {c + 1}·f0)'
    for column, (image, name, cmap, lims, label) in enumerate((
        (feats[:, :, c], result['kind'], 'magma', (None, None), 'level (dB)'),
        (sal[:, :, c], 'saliency', 'RdBu_r', (-limit, limit), 'd logit / d input (per dB)'))):
      ax = axes[c, column]
      im = ax.imshow(image, aspect='auto', interpolation='nearest', origin='lower', cmap=cmap,
                     vmin=lims[0], vmax=lims[1], extent=extent)
      ax.set_title(f'{name}: {part}', fontsize=9)
      ax.set_xlabel('time in the file (s)', fontsize=8)
      ax.tick_params(labelsize=7)
      if ticks is not None:
        ax.set_yticks(ticks[0])
        ax.set_yticklabels(ticks[1], fontsize=7)
      ax.set_ylabel(rows_label, fontsize=8)
      bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
      bar.set_label(label, fontsize=7)
      bar.ax.tick_params(labelsize=7)
  index = result['class_index']
  fig.suptitle(f'{audio_name} ({span[0]:.2f}–{span[1]:.2f} s): saliency of "{class_names[index]}" '
               f'(logit {result["logits"][index]:.3f})', fontsize=11)
  return fig


def plot_saliency(result: Dict[str, Any], class_names: Sequence[str], span: Sequence[float],
                  path: str, audio_name: str, rows_hz: Optional[np.ndarray] = None,
                  rows_label: str = 'frequency') -> str:
  return plots.save(saliency_figure(result, class_names, span, audio_name, rows_hz, rows_label),
                    path)


# ----------------------------------------------------------------------------------- attention

def _time_extent(times: np.ndarray, rows: int) -> Tuple[float, float, float, float]:
  step = float(times[1] - times[0]) if len(times) > 1 else 2 * float(times[0])
  return times[0] - step / 2, times[-1] + step / 2, rows - 0.5, -0.5


def attention_figure(items: Sequence[Dict[str, Any]], class_names: Sequence[str]):
  """One row per file (item 'name'): layers × time heatmap of [CLS] attention, with its top
  tags."""
  fig = plots.new_figure(10.0, 0.8 + 2.2 * len(items), layout='constrained')
  axes = fig.subplots(len(items), 1, squeeze=False)[:, 0]
  for ax, item in zip(axes, items):
    scores = item['scores']
    top = np.argsort(-item['probs'])[:3]
    tags = ', '.join(f'{class_names[i]} {item["probs"][i]:.2f}' for i in top)
    im = ax.imshow(scores, aspect='auto', interpolation='nearest', cmap='viridis',
                   extent=_time_extent(item['times'], scores.shape[0]))
    ax.set_yticks(range(scores.shape[0]))
    ax.set_yticklabels([f'layer {i + 1}' for i in range(scores.shape[0])], fontsize=8)
    ax.set_title(f'{item["name"]}: top tags {tags}', fontsize=9)
    ax.set_xlabel('time in the file (s)', fontsize=8)
    bar = fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01)
    bar.set_label('[CLS] attention\n(heads averaged)', fontsize=7)
    bar.ax.tick_params(labelsize=7)
  fig.suptitle('attention from [CLS] to each time step')
  return fig


def plot_attention(items: Sequence[Dict[str, Any]], class_names: Sequence[str],
                   path: str) -> str:
  return plots.save(attention_figure(items, class_names), path)


def contribution_figure(items: Sequence[Dict[str, Any]], class_names: Sequence[str],
                        max_tags: int = 50):
  """One tagogram per file (item 'name'): each tag's probability with [CLS]'s attention forced
  onto one time step."""
  tags = min(max_tags, len(class_names))
  fig = plots.new_figure(10.0, (1.4 + 0.2 * tags) * len(items), layout='constrained')
  axes = fig.subplots(len(items), 1, squeeze=False)[:, 0]
  for ax, item in zip(axes, items):
    contribution = item['contribution']
    im = plots.tagogram_axes(
        ax, contribution.T, item['times'], class_names,
        title=f'{item["name"]}: tag-wise contribution (layer {item["layer"] + 1}: [CLS] '
              'attention forced onto one time step)', max_tags=max_tags,
        vmin=float(contribution.min()), vmax=float(contribution.max()))
    ax.set_xlabel('time in the file (s)')
    fig.colorbar(im, ax=ax, fraction=0.03, label='tag probability')
  return fig


def plot_contribution(items: Sequence[Dict[str, Any]], class_names: Sequence[str], path: str,
                      max_tags: int = 50) -> str:
  return plots.save(contribution_figure(items, class_names, max_tags), path)
