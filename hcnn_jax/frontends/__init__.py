"""Front-ends: pure functions of (waveform, parameters) → spectral features, and their modules.

Pure functions: `stft`, `power_spectrogram`, `amplitude_to_db`, `fft_frequencies`, the mel/MFCC
and CQT transforms, and the harmonic filterbank. Modules (trainable parameters only, NHWC out,
`output_shape(num_samples)`): `HarmonicFrontend`, `MelFrontend`, `LinearFrontend`, `MFCCFrontend`,
`CQTFrontend`, `RawFrontend`.
"""
from hcnn_jax.frontends.stft import amplitude_to_db, fft_frequencies, power_spectrogram, stft
from hcnn_jax.frontends.harmonic import (HarmonicFrontend, harmonic_center_frequencies,
                                         harmonic_filterbank, harmonic_fundamentals,
                                         harmonic_spectrogram)
from hcnn_jax.frontends.mel import (dct_matrix, log_mel_spectrogram, mel_filterbank,
                                    mel_spectrogram, mfcc)
from hcnn_jax.frontends.cqt import cqt
from hcnn_jax.frontends.modules import (CQTFrontend, LinearFrontend, MelFrontend, MFCCFrontend,
                                        RawFrontend)
