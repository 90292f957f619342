"""The full-size Harmonic CNN (reference widths, 6 harmonics) on the embedded synth_gm dataset.

    python train.py --config hcnn_jax/configs/hcnn_synth.py --workdir runs/synth
    python train.py --config hcnn_jax/configs/hcnn_synth.py:large --workdir runs/synth_large

The optional argument picks the synth_gm build config ('default': 2,000 clips of 8 s; 'large': MTAT
scale). Reference recipe (Adam 80 epochs, then SGD with reloads of the best weights) and 16-chunk
evaluation, as for MTAT; meant for an accelerator.
"""
from __future__ import annotations

import ml_collections

from hcnn_jax.configs import base


def get_config(arg=None) -> ml_collections.ConfigDict:
  return base.get_hcnn_tagging_config('synth_gm', arg or 'default')
