"""Linen front-ends: NHWC shapes that equal output_shape, parameter counts, numerics of the
reference mel front-end, jit, BatchNorm statistics in training, bf16 and clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcnn_jax.frontends.cqt import cqt
from hcnn_jax.frontends.mel import mel_spectrogram, mfcc
from hcnn_jax.frontends.modules import (CQTFrontend, LinearFrontend, MelFrontend, MFCCFrontend,
                                        RawFrontend)
from hcnn_jax.frontends.stft import amplitude_to_db, power_spectrogram

LENGTH = 4001  # odd, not a multiple of any hop used here
FRONTENDS = [
    (MelFrontend(n_mels=32, hop_length=160), (32, 1 + LENGTH // 160, 1), 2),
    (LinearFrontend(n_fft=256, hop_length=100), (129, 1 + LENGTH // 100, 1), 2),
    (MFCCFrontend(n_mfcc=13, n_mels=40), (13, 1 + LENGTH // 256, 1), 2),
    (CQTFrontend(n_bins=24, fmin=220.0, hop_length=333), (24, 1 + LENGTH // 333, 1), 2),
    (MelFrontend(n_mels=16, input_norm=False), (16, 1 + LENGTH // 256, 1), 0),
    (RawFrontend(), (LENGTH, 1, 1), 0),
]


def _count(tree):
  return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize('module,shape,n_params', FRONTENDS,
                         ids=[f'{type(m).__name__}-{n}' for m, _, n in FRONTENDS])
def test_shape_params_jit_and_batch_stats(make_signal, module, shape, n_params):
  x = jnp.asarray(np.stack([make_signal('chirp', LENGTH), make_signal('noise', LENGTH)]))
  assert module.output_shape(LENGTH) == shape
  variables = module.init(jax.random.PRNGKey(0), x)
  assert _count(variables.get('params', {})) == n_params
  out = jax.jit(lambda v, y: module.apply(v, y))(variables, x)
  assert out.shape == (2, *shape) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  if n_params:
    out, updates = module.apply(variables, x, train=True, mutable=['batch_stats'])
    old, new = variables['batch_stats']['spec_bn'], updates['batch_stats']['spec_bn']
    assert not np.allclose(old['mean'], new['mean']) and not np.allclose(old['var'], new['var'])
    # In training the output is normalised with the batch's own statistics.
    assert abs(float(out.mean())) < 1e-3 and abs(float(out.std()) - 1.0) < 1e-2


def test_mel_frontend_is_the_reference_spectrogram(chord):
  """sota front-end: torchaudio mel (HTK, no norm, f_max 8 kHz) → dB → BatchNorm2d(1)."""
  x = jnp.asarray(chord[None, :8000])
  module = MelFrontend(n_mels=96)
  variables = module.init(jax.random.PRNGKey(0), x)
  assert jax.tree_util.tree_map(jnp.shape, variables['params']) == {
      'spec_bn': {'bias': (1,), 'scale': (1,)}}
  out = module.apply(variables, x)
  expected = amplitude_to_db(mel_spectrogram(x, 16000, 512, 256, 96, f_max=8000.0))
  # At init the running statistics are mean 0, var 1: BN divides by √(1 + 1e-5).
  np.testing.assert_allclose(out[..., 0], expected / np.sqrt(1 + 1e-5), rtol=1e-5, atol=1e-4)


def test_other_frontends_wrap_their_pure_functions(noise):
  x = jnp.asarray(noise[None, :6000])
  cases = [
      (LinearFrontend(input_norm=False), amplitude_to_db(power_spectrogram(x, 512, 256))),
      (MFCCFrontend(input_norm=False), mfcc(x)),
      (CQTFrontend(input_norm=False, n_bins=36, fmin=110.0),
       amplitude_to_db(cqt(x, fmin=110.0, n_bins=36, power=2.0))),
  ]
  for module, expected in cases:
    out = module.apply({}, x)
    np.testing.assert_allclose(out[..., 0], expected, rtol=1e-5, atol=1e-4)


def test_bfloat16_runs_with_float32_params_and_stats(chirp):
  x = jnp.asarray(chirp[None, :LENGTH])
  module = MelFrontend(n_mels=32, dtype=jnp.bfloat16)
  variables = module.init(jax.random.PRNGKey(0), x)
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables))
  out, updates = module.apply(variables, x, train=True, mutable=['batch_stats'])
  assert out.dtype == jnp.bfloat16
  assert updates['batch_stats']['spec_bn']['mean'].dtype == jnp.float32
  ref = MelFrontend(n_mels=32).apply(variables, x, train=True, mutable=['batch_stats'])[0]
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.05)


def test_output_shape_rejects_what_cannot_run():
  with pytest.raises(ValueError, match='n_fft // 2'):
    MelFrontend().output_shape(256)
  with pytest.raises(ValueError, match='f_max'):
    MelFrontend(f_max=12000.0).output_shape(16000)
  with pytest.raises(ValueError, match='n_mfcc'):
    MFCCFrontend(n_mfcc=50, n_mels=40).output_shape(16000)
  with pytest.raises(ValueError, match='hop_length'):
    LinearFrontend(hop_length=0).output_shape(16000)
  with pytest.raises(ValueError, match='at least one sample'):
    RawFrontend().output_shape(0)
  assert CQTFrontend().output_shape(1) == (84, 1, 1)  # zero padding: any length works


def test_full_size_reference_shapes_without_running():
  """sota shapes: mel 96 over 29 s → T 1813; mel 128 over 59,049 samples → T 231."""
  assert MelFrontend(n_mels=96).output_shape(464000) == (96, 1813, 1)
  assert MelFrontend(n_mels=128).output_shape(59049) == (128, 231, 1)
  module = MelFrontend(n_mels=128)
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((4, 59049), jnp.float32))
  assert _count(shapes['params']) == 2
  out = jax.eval_shape(module.apply, shapes, jax.ShapeDtypeStruct((4, 59049), jnp.float32))
  assert out.shape == (4, 128, 231, 1)
