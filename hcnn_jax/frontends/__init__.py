"""Front-ends: pure functions of (waveform, parameters) → spectral features, and their modules.

Modules being written alongside this one (mel.py, cqt.py, modules.py) are re-exported once they
exist; a missing one does not break `import hcnn_jax.frontends`.
"""
import importlib.util as _importlib_util

from hcnn_jax.frontends.stft import amplitude_to_db, fft_frequencies, power_spectrogram, stft
from hcnn_jax.frontends.harmonic import (HarmonicFrontend, harmonic_center_frequencies,
                                         harmonic_filterbank, harmonic_fundamentals,
                                         harmonic_spectrogram)


def _exists(module: str) -> bool:
  return _importlib_util.find_spec(f'{__name__}.{module}') is not None


if _exists('mel'):
  from hcnn_jax.frontends.mel import (dct_matrix, log_mel_spectrogram, mel_filterbank,
                                      mel_spectrogram, mfcc)
if _exists('cqt'):
  from hcnn_jax.frontends.cqt import cqt
if _exists('modules'):
  from hcnn_jax.frontends.modules import (CQTFrontend, LinearFrontend, MelFrontend, MFCCFrontend,
                                          RawFrontend)
