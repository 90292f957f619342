"""hcnn-jax: the Harmonic CNN and the CNN music-tagging zoo in JAX/Flax.

Subpackages: `frontends` (waveform → features), `models` (back-ends, `get_model`), `data`,
`tasks`, `metrics`, `training`, `tools`. They are imported on use, so `import hcnn_jax` stays
light.
"""
__version__ = '0.1.0'

from hcnn_jax import speed as _speed  # noqa: E402  (XLA:CPU flags, before JAX starts a backend)

_speed.apply_xla_flags()
_speed.apply_cpu_malloc()
