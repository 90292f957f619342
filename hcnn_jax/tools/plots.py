"""Matplotlib figures of the research tools, drawn off-screen (Agg) and saved as PNG.

Figures are built with `matplotlib.figure.Figure` and an Agg canvas rather than pyplot, so that
drawing never opens a window, needs no display and leaves pyplot's global state alone.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110


def new_figure(width: float, height: float, layout: Optional[str] = None) -> Figure:
  fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
  FigureCanvasAgg(fig)
  return fig


def save(fig: Figure, path: str) -> str:
  """Writes `fig` to `path` (directories created) and returns the path."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fig.savefig(path, dpi=DPI, bbox_inches='tight')
  return path


def tagogram_axes(ax, probs: np.ndarray, times: np.ndarray, class_names: Sequence[str],
                  title: str = '', max_tags: int = 50, vmin: Optional[float] = 0.0,
                  vmax: Optional[float] = 1.0):
  """Draws tags × time into `ax`: rows are the tags with the highest mean score, top first.

  probs: (num_chunks, C) per-chunk scores; times: (num_chunks,) chunk centres in seconds.
  """
  probs = np.asarray(probs, dtype=np.float64)
  order = np.argsort(-probs.mean(axis=0), kind='stable')[:max_tags]
  image = probs[:, order].T
  if len(times) > 1:
    step = float(np.median(np.diff(times)))
    extent = (times[0] - step / 2, times[-1] + step / 2, len(order) - 0.5, -0.5)
  else:
    extent = (0.0, max(2.0 * float(times[0]), 1e-3), len(order) - 0.5, -0.5)
  im = ax.imshow(image, aspect='auto', interpolation='nearest', cmap='magma', vmin=vmin,
                 vmax=vmax, extent=extent)
  ax.set_yticks(range(len(order)))
  ax.set_yticklabels([class_names[i] for i in order], fontsize=7 if len(order) > 20 else 9)
  ax.set_xlabel('time (s)')
  ax.set_title(title, fontsize=10)
  return im


def save_tagograms(path: str, items: Sequence[Tuple[str, np.ndarray, np.ndarray]],
                   class_names: Sequence[str], max_tags: int = 50) -> str:
  """One tagogram row per (title, probs (n, C), times (n,)) item, in one PNG."""
  if not items:
    raise ValueError('no tagged file to plot')
  rows = len(items)
  tags = min(max_tags, len(class_names))
  row_height = 1.2 + 0.18 * tags
  fig = new_figure(10.0, row_height * rows, layout='constrained')
  axes = fig.subplots(rows, 1, squeeze=False)[:, 0]
  for ax, (title, probs, times) in zip(axes, items):
    im = tagogram_axes(ax, probs, times, class_names, title=title, max_tags=max_tags)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label='score')
  return save(fig, path)


def save_grouped_bars(path: str, groups: Sequence[str], series: Dict[str, Sequence[float]],
                      ylabel: str = 'score', title: str = '',
                      ylim: Optional[Tuple[float, float]] = None) -> str:
  """Grouped bars: one group per entry of `groups`, one bar per series (e.g. ROC-AUC, PR-AUC)."""
  fig = new_figure(max(6.0, 0.9 * len(groups) + 2.0), 4.0)
  ax = fig.subplots()
  names = list(series)
  width = 0.8 / max(len(names), 1)
  x = np.arange(len(groups))
  for i, name in enumerate(names):
    values = np.asarray([np.nan if v is None else v for v in series[name]], dtype=np.float64)
    bars = ax.bar(x + (i - (len(names) - 1) / 2) * width, np.nan_to_num(values), width,
                  label=name)
    for bar, value in zip(bars, values):
      label = 'n/a' if not np.isfinite(value) else f'{value:.3f}'
      ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                  ha='center', va='bottom', fontsize=7, rotation=90, xytext=(0, 2),
                  textcoords='offset points')
  ax.set_xticks(x)
  ax.set_xticklabels(groups, rotation=30, ha='right')
  ax.set_ylabel(ylabel)
  if ylim is not None:
    ax.set_ylim(*ylim)
  ax.set_title(title)
  ax.legend(loc='upper left', bbox_to_anchor=(1.0, 1.0), fontsize=8)
  ax.grid(axis='y', alpha=0.3)
  return save(fig, path)
