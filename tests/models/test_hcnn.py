"""Harmonic CNN: reference parameter count and shape trace, variants, jit/grad/vmap, input checks."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hcnn_jax.models import Classifier, get_model
from hcnn_jax.models.hcnn import HCNNBackend


def count_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def abstract_init(model, num_samples, batch=1):
  return jax.eval_shape(lambda: model.init({'params': jax.random.key(0)},
                                           jnp.zeros((batch, num_samples))))


def test_reference_trainable_parameter_count():
  model = get_model('hcnn', num_classes=50, n_harmonic=6)
  variables = abstract_init(model, 80_000)
  assert set(variables) == {'params', 'batch_stats'}
  assert set(variables['params']) == {'frontend', 'backend'}
  assert count_params(variables['params']) == 3_631_551
  # Q and the harmonic BatchNorm's γ, β make up the front-end's 13.
  assert count_params(variables['params']['frontend']) == 13


def layer_shapes(model, num_samples):
  variables = abstract_init(model, num_samples)

  def run(v, x):
    return model.apply(v, x, capture_intermediates=True, mutable=['intermediates'])

  _, state = jax.eval_shape(run, variables, jnp.zeros((1, num_samples)))
  inter = state['intermediates']
  shapes = {'frontend': inter['frontend']['__call__'][0].shape[1:]}
  for i in range(1, 8):
    shapes[f'layer{i}'] = inter['backend'][f'layer{i}']['__call__'][0].shape[1:]
  shapes['logits'] = inter['__call__'][0].shape[1:]
  return shapes


def test_reference_shape_trace_at_80000_samples():
  model = get_model('hcnn', num_classes=50)
  assert layer_shapes(model, 80_000) == {
      'frontend': (128, 313, 6), 'layer1': (64, 156, 128), 'layer2': (32, 78, 128),
      'layer3': (16, 39, 128), 'layer4': (8, 19, 128), 'layer5': (4, 9, 256),
      'layer6': (2, 3, 256), 'layer7': (1, 1, 256), 'logits': (50,)}
  # The backend's own arithmetic agrees with the traced shapes.
  assert model.backend.layer_shapes((128, 313, 6))[-1] == (1, 1, 256)


def test_task_variants():
  events = get_model('hcnn_events', num_classes=17, width=8)  # DCASE: 3 s, 2×2 pools
  shapes = layer_shapes(events, 48_000)
  assert shapes['frontend'] == (128, 188, 6)
  assert [shapes[f'layer{i}'][1] for i in range(1, 8)] == [94, 47, 23, 11, 5, 2, 1]
  keywords = get_model('hcnn_keywords', num_classes=35, width=8)
  # A 1-s clip: the reference runs out of frames at layer 6; the clamped pools keep one frame.
  shapes = layer_shapes(keywords, 16_000)
  assert [shapes[f'layer{i}'][:2] for i in (5, 6, 7)] == [(4, 1), (2, 1), (1, 1)]
  assert shapes['logits'] == (35,)
  # From 16,128 samples (64 frames) on, exactly the reference's pools 2 and (2, 1).
  shapes = layer_shapes(keywords, 16_128)
  assert [shapes[f'layer{i}'][1] for i in range(1, 8)] == [32, 16, 8, 4, 2, 1, 1]
  assert keywords.min_input_length() == 257  # only the STFT's reflect padding limits it


@pytest.mark.parametrize('n_harmonic', [1, 2, 3, 4, 5, 6, 7])
@pytest.mark.parametrize('num_classes', [1, 50])
def test_any_harmonic_count_and_class_count(n_harmonic, num_classes):
  model = get_model('hcnn', num_classes=num_classes, n_harmonic=n_harmonic, width=4)
  logits, variables = jax.eval_shape(model.init_with_output, jax.random.key(0),
                                     jnp.zeros((2, 80_000)))
  assert variables['params']['frontend']['hstft_bn']['scale'].shape == (n_harmonic,)
  assert variables['params']['backend']['dense2']['kernel'].shape == (8, num_classes)
  assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32


def test_jit_grad_vmap_on_a_tiny_model(make_signal):
  model = get_model('hcnn', num_classes=3, width=4, n_harmonic=2)
  length = model.min_input_length()
  assert length == 287 * 256  # 288 frames: 2^5 · 3 · 3 time pooling
  x = jnp.asarray(np.stack([make_signal('chord', length), make_signal('chirp', length)]))
  # rbg keys: compiling threefry's random init takes seconds of CPU here, rbg a fraction.
  variables = jax.jit(model.init)({'params': jax.random.key(0, impl='rbg')}, x)
  labels = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

  @jax.jit
  def train_loss(params, batch_stats, x, rng):
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                  rngs={'dropout': rng}, mutable=['batch_stats'])
    loss = jnp.mean(jnp.logaddexp(0.0, logits) - labels * logits)  # sigmoid BCE
    return loss, updates

  (loss, updates), grads = jax.value_and_grad(train_loss, has_aux=True)(
      variables['params'], variables['batch_stats'], x, jax.random.key(1, impl='rbg'))
  assert np.isfinite(float(loss))
  leaves = jax.tree.leaves(grads)
  assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
  assert float(jnp.abs(grads['frontend']['bw_Q'])) > 0
  assert float(jnp.abs(grads['backend']['layer1']['Conv_0']['kernel']).max()) > 0
  assert not np.allclose(updates['batch_stats']['backend']['bn']['mean'], 0.0)

  # Evaluation is per example: vmapping single examples gives the batched logits.
  apply = jax.jit(lambda v, x: model.apply(v, x))
  batched = apply(variables, x)
  single = jax.vmap(lambda xi: apply(variables, xi[None])[0])(x)
  np.testing.assert_allclose(single, batched, rtol=1e-4, atol=1e-5)
  assert batched.shape == (2, 3)


def test_too_short_input_names_the_minimum_length():
  model = get_model('hcnn', num_classes=50)
  with pytest.raises(ValueError, match=r'16,000 samples.*shortest input that fits is 73,472'):
    abstract_init(model, 16_000)
  with pytest.raises(ValueError, match='288 frames'):
    model.backend.check_input((128, 63, 6), hop_length=256)
  with pytest.raises(ValueError, match='73,472 samples'):
    model.backend.check_input((128, 63, 6), hop_length=256)
  model.backend.check_input((128, 288, 6))  # the minimum itself fits


def test_backend_options_are_checked():
  with pytest.raises(ValueError, match='variant must be one of'):
    get_model('hcnn', num_classes=2, variant='speech')
  with pytest.raises(ValueError, match='7 \\(pitch, time\\) windows'):
    get_model('hcnn', num_classes=2, pools=(2, 2))
  with pytest.raises(ValueError, match='above Nyquist'):
    get_model('hcnn', num_classes=2, n_harmonic=7, semitone_scale=4)
  custom = HCNNBackend(num_classes=2, width=4, pools=((2, 1),) * 7)
  assert custom.min_input_shape() == (1, 1)
  assert isinstance(get_model('hcnn', num_classes=2, pools=((2, 1),) * 7), Classifier)


def test_bfloat16_computation_keeps_float32_params_and_logits():
  model = get_model('hcnn', num_classes=5, width=4, dtype=jnp.bfloat16)
  variables = abstract_init(model, 80_000)
  assert {x.dtype for x in jax.tree.leaves(variables['params'])} == {jnp.dtype('float32')}
  logits = jax.eval_shape(lambda v, x: model.apply(v, x), variables, jnp.zeros((1, 80_000)))
  assert logits.dtype == jnp.float32
