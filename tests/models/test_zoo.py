"""The model zoo: reference parameter counts and shape traces at full size (abstract, no memory),
reference quirks fixed, the PyTorch GRU, and a few real training steps per model at tiny width."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hcnn_jax.models import default_input_length, get_model, list_models
from hcnn_jax.models.attention import reference_cls, sinusoidal_encoding
from hcnn_jax.models.blocks1d import ResSEBlock1d
from hcnn_jax.models.crnn import TorchGRU
from hcnn_jax.models.short_chunk import ResBlock2d

ZOO = ('fcn4', 'fcn', 'musicnn', 'crnn', 'sample', 'sample_se', 'short_chunk', 'short_chunk_res',
       'attention')


def count_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def key(seed: int):
  # XLA's RngBitGenerator compiles in a fraction of threefry's time on the CPU.
  return jax.random.key(seed, impl='unsafe_rbg')


def abstract_trace(model, num_samples, batch=2):
  """Abstract variables and every module's output shape (per example) at init, no memory."""

  def init():
    return model.init(key(0), jnp.zeros((batch, num_samples)), capture_intermediates=True)

  variables = jax.eval_shape(init)
  inter = variables.pop('intermediates')
  shapes = jax.tree.map(lambda x: x.shape[1:], inter)
  return variables, shapes


def out(shapes, *path):
  for part in path:
    shapes = shapes[part]
  return shapes['__call__'][0]


def test_every_model_is_registered_with_its_reference_input_length():
  assert set(ZOO) <= set(list_models())
  assert {name: default_input_length(name) for name in ZOO} == {
      'fcn4': 349_440, 'fcn': 464_000, 'musicnn': 48_000, 'crnn': 464_000, 'sample': 59_049,
      'sample_se': 59_049, 'short_chunk': 59_049, 'short_chunk_res': 59_049,
      'attention': 240_000}


# name, builder kwargs, trainable parameters (reference sota's, section 3 / 11.9), layer → shape.
REFERENCE = {
    'fcn': ({}, 447_732, {('frontend',): (96, 1813, 1), ('backend', 'layer1'): (48, 453, 64),
                          ('backend', 'layer5'): (1, 1, 64)}),
    # FCN-4 has no reference count: mel BN 2 + convs (1·128 + 128·384 + 384·768 + 768·2048)·9
    # + biases/BN 3·(128 + 384 + 768 + 2048) + Dense 2048·50 + 50.
    'fcn4': ({}, 17_365_940, {('frontend',): (96, 1366, 1), ('backend', 'layer1'): (48, 341, 128),
                              ('backend', 'layer2'): (12, 68, 384),
                              ('backend', 'layer3'): (4, 8, 768),
                              ('backend', 'layer4'): (1, 1, 2048)}),
    'musicnn': ({}, 784_300, {('frontend',): (96, 188, 1), ('backend', 'timbral1'): (188, 204),
                              ('backend', 'timbral2'): (188, 204),
                              ('backend', 'temporal1'): (188, 51),
                              ('backend', 'head', 'dense1'): (200,)}),
    'crnn': ({}, 394_100, {('frontend',): (96, 1813, 1), ('backend', 'layer4'): (1, 18, 128),
                           ('backend', 'gru2'): (18, 32)}),
    'sample': ({}, 1_869_874, {('frontend',): (59_049, 1, 1),
                               ('backend', 'layer1'): (19_683, 128),
                               ('backend', 'layer10'): (1, 512),
                               ('backend', 'layer11'): (1, 512)}),
    'sample_se': ({}, 6_951_858, {('backend', 'layer1'): (19_683, 128),
                                  ('backend', 'layer11'): (1, 512)}),
    'short_chunk': ({}, 3_687_348, {('frontend',): (128, 231, 1),
                                    ('backend', 'layer1'): (64, 115, 128),
                                    ('backend', 'layer7'): (1, 1, 512)}),
    'short_chunk_res': ({}, 12_104_244, {('backend', 'layer1'): (64, 116, 128),
                                         ('backend', 'layer7'): (1, 2, 512)}),
    # The reference's [CLS] is a fixed vector, not a parameter: cls='fixed' for parity.
    'attention': ({'cls': 'fixed'}, 10_521_652, {
        ('frontend',): (128, 938, 1), ('backend', 'layer3'): (16, 118, 256),
        ('backend', 'layer7'): (1, 118, 256), ('backend', 'encoder2'): (119, 256)}),
}


@pytest.mark.parametrize('name', sorted(REFERENCE))
def test_reference_parameter_count_and_shape_trace(name):
  kwargs, expected_count, expected_shapes = REFERENCE[name]
  model = get_model(name, num_classes=50, **kwargs)
  variables, shapes = abstract_trace(model, default_input_length(name))
  assert set(variables) == {'params', 'batch_stats'}
  assert count_params(variables['params']) == expected_count
  traced = {path: out(shapes, *path) for path in expected_shapes}
  assert traced == expected_shapes
  assert shapes['__call__'][0] == (50,)


def test_musicnn_msd_widths():
  model = get_model('musicnn', num_classes=50, variant='msd')
  variables, _ = abstract_trace(model, 48_000)
  head = variables['params']['backend']['head']
  # 561 front channels + 3 · 512 back-end channels, max ∥ mean → Dense 500.
  assert head['dense1']['kernel'].shape == (2 * (561 + 3 * 512), 500)
  assert variables['params']['backend']['conv1']['kernel'].shape == (7, 561, 512)
  # Front 2 + 163,200; back-end 2,012,160 + 2·1,836,544; head 2,097,500 + 1,000 + 25,050.
  assert count_params(variables['params']) == 7_972_000


def test_crnn_honours_num_classes_and_gru_has_pytorch_parameters():
  model = get_model('crnn', num_classes=17)
  variables, shapes = abstract_trace(model, 464_000)
  assert shapes['__call__'][0] == (17,)
  params = variables['params']['backend']
  assert params['dense']['kernel'].shape == (32, 17)
  # PyTorch's GRU: 3·H·(D + H) weights and two bias vectors of 3·H per layer.
  assert {k: v.shape for k, v in params['gru1'].items()} == {
      'kernel_ih': (128, 96), 'kernel_hh': (32, 96), 'bias_ih': (96,), 'bias_hh': (96,)}
  assert count_params(params['gru1']) + count_params(params['gru2']) == 15_552 + 6_336


def test_torch_gru_follows_the_pytorch_equations():
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 5, 4)).astype(np.float32)
  gru = TorchGRU(hidden=3)
  params = gru.init(key(0), x)['params']
  w_ih, w_hh = np.asarray(params['kernel_ih']), np.asarray(params['kernel_hh'])
  b_ih, b_hh = np.asarray(params['bias_ih']), np.asarray(params['bias_hh'])
  assert np.abs(w_ih).max() <= 1 / np.sqrt(3) and np.abs(b_hh).max() <= 1 / np.sqrt(3)

  def sigmoid(v):
    return 1 / (1 + np.exp(-v))

  h = np.zeros((2, 3), np.float32)
  expected = []
  for t in range(5):  # torch.nn.GRU's documented update, gate by gate
    xr, xz, xn = np.split(x[:, t] @ w_ih + b_ih, 3, axis=-1)
    hr, hz, hn = np.split(h @ w_hh + b_hh, 3, axis=-1)
    r, z = sigmoid(xr + hr), sigmoid(xz + hz)
    n = np.tanh(xn + r * hn)
    h = (1 - z) * n + z * h
    expected.append(h)
  np.testing.assert_allclose(gru.apply({'params': params}, x), np.stack(expected, axis=1),
                             rtol=1e-5, atol=1e-6)


def torch_conv1d(x, kernel, bias, stride):
  """PyTorch's Conv1d(padding=k//2) on (B, L, C) with an HWIO-style (k, C_in, C_out) kernel."""
  k = kernel.shape[0]
  padded = np.pad(x, ((0, 0), (k // 2, k // 2), (0, 0)))
  n = (x.shape[1] + 2 * (k // 2) - k) // stride + 1
  return np.stack([np.einsum('bkc,kcd->bd', padded[:, i * stride:i * stride + k], kernel)
                   for i in range(n)], axis=1) + bias


@pytest.mark.parametrize('in_channels, stride, pool', [(2, 3, 1), (4, 1, 3)])
def test_res_se_block_follows_the_reference_equations(in_channels, stride, pool):
  x = np.random.default_rng(1).standard_normal((2, 9, in_channels)).astype(np.float32)
  block = ResSEBlock1d(features=4, kernel=3, stride=stride, pool=pool)
  variables = block.init(key(0), x)
  p = jax.tree.map(np.asarray, variables['params'])
  bn = lambda v: v / np.sqrt(1 + 1e-5)  # fresh running statistics: mean 0, var 1, γ 1, β 0
  relu = lambda v: np.maximum(v, 0)
  out = relu(bn(torch_conv1d(x, p['conv_1']['kernel'], p['conv_1']['bias'], stride)))
  out = bn(torch_conv1d(out, p['conv_2']['kernel'], p['conv_2']['bias'], 1))
  se = relu(out.mean(axis=1) @ p['se_dense1']['kernel'] + p['se_dense1']['bias'])
  se = 1 / (1 + np.exp(-(se @ p['se_dense2']['kernel'] + p['se_dense2']['bias'])))
  shortcut = x
  if 'conv_3' in p:  # the projection exists exactly when the stride or the width changes
    shortcut = bn(torch_conv1d(x, p['conv_3']['kernel'], p['conv_3']['bias'], stride))
  assert ('conv_3' in p) == (stride != 1 or in_channels != 4)
  expected = relu(out * se[:, None, :] + shortcut)
  expected = expected[:, :expected.shape[1] // pool * pool].reshape(2, -1, pool, 4).max(axis=2)
  np.testing.assert_allclose(block.apply(variables, x), expected, rtol=1e-4, atol=1e-5)


def test_strided_residual_conv_pads_one_on_every_side_like_pytorch():
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  block = ResBlock2d(features=1, strides=(2, 2))
  variables = block.init(key(0), x)
  params = jax.tree.map(np.asarray, variables['params'])
  params['conv_1']['kernel'] = np.ones((3, 3, 1, 1), np.float32)
  _, state = block.apply({**variables, 'params': params}, x, capture_intermediates=True,
                         mutable=['intermediates'])
  conv = np.asarray(state['intermediates']['conv_1']['__call__'][0])[0, :, :, 0]
  padded = np.pad(x[0, :, :, 0], 1)
  # PyTorch: window (i, j) starts at padded row/column 2i, 2j; 'SAME' would start at 2i + 1.
  expected = [[padded[2 * i:2 * i + 3, 2 * j:2 * j + 3].sum() for j in range(2)] for i in range(2)]
  np.testing.assert_allclose(conv, expected)


def tiny_attention(**kwargs):
  kwargs = {'width': 4, 'num_layers': 1, 'cnn_layers': ((1, (2, 2)), (2, (2, 1))), **kwargs}
  return get_model('attention', num_classes=3, **kwargs)


def test_attention_cls_is_the_reference_vector_without_touching_numpy_global_rng():
  state = np.random.get_state()
  try:
    np.random.seed(0)  # what the reference's CNNSA.__init__ does
    expected = np.random.random((1, 256)).astype(np.float32)[0]
  finally:
    np.random.set_state(state)
  before = np.random.get_state()[1].copy()
  np.testing.assert_array_equal(reference_cls(256), expected)
  x = jnp.zeros((2, 4096))
  trainable = tiny_attention()
  variables = jax.jit(trainable.init)(key(0), x)
  np.testing.assert_array_equal(np.random.get_state()[1], before)
  # Trainable by default, starting from the reference's vector; 'fixed' is not a parameter.
  np.testing.assert_array_equal(variables['params']['backend']['cls'], reference_cls(8))
  fixed_params = jax.eval_shape(tiny_attention(cls='fixed').init, key(0), x)['params']
  assert count_params(variables['params']) - count_params(fixed_params) == 8
  assert 'cls' not in fixed_params['backend']
  # No batch limit (the reference tiles its vector for 64 rows only).
  logits = jax.eval_shape(lambda v, a: trainable.apply(v, a), variables, jnp.zeros((65, 4096)))
  assert logits.shape == (65, 3)


def test_attention_sinusoidal_positions_and_attention_weights():
  enc = sinusoidal_encoding(5, 8)
  pos, dim = np.meshgrid(np.arange(5), np.arange(4), indexing='ij')
  angle = pos / 10000.0 ** (2 * dim / 8)
  np.testing.assert_allclose(enc[:, 0::2], np.sin(angle), atol=1e-6)
  np.testing.assert_allclose(enc[:, 1::2], np.cos(angle), atol=1e-6)
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 4096)), jnp.float32)
  plain = tiny_attention(sow_attention=True)
  variables = jax.jit(plain.init)(key(0), x)
  logits, state = jax.jit(lambda v: plain.apply(v, x, mutable=['intermediates']))(variables)
  weights = state['intermediates']['backend']['encoder1']['attention']['attention_weights'][0]
  frames = 1 + 4096 // 256
  tokens = 1 + (frames - 1) // 2 + 1  # [CLS] + the frames left by one time stride of 2
  assert weights.shape == (2, 8, tokens, tokens)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  with_pe = tiny_attention(pos_encoding='sinusoidal')  # adds no parameters
  assert not np.allclose(jax.jit(with_pe.apply)(variables, x), logits)
  with pytest.raises(ValueError, match='pos_encoding must be one of'):
    tiny_attention(pos_encoding='learned')
  with pytest.raises(ValueError, match='cls must be one of'):
    tiny_attention(cls='random')


@pytest.mark.parametrize('name, kwargs, match', [
    ('fcn', {'pools': ((2, 4),) * 4}, 'one entry per layer'),
    ('fcn', {'pools': ((0, 4),) * 5}, 'positive int or'),
    ('musicnn', {'variant': 'jamendo'}, 'variant must be one of'),
    ('crnn', {'gru_layers': 0}, 'gru_layers'),
    ('sample', {'channels': (8, 8)}, 'at least 3 positive widths'),
    ('short_chunk_res', {'channels': ()}, 'non-empty list'),
    ('attention', {'num_heads': 7}, 'divisible by num_heads'),
    ('attention', {'cnn_layers': ((1, (2, 2)),)}, 'ending with multiple 2'),
    ('fcn', {'widths': (8,)}, 'Bad options for model'),
])
def test_bad_options_are_refused_at_construction(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    get_model(name, num_classes=5, **kwargs)


# Tiny widths and (where a model's pooling allows it) short inputs for the real training steps.
TINY = {
    # FCN-4's first two blocks: its four pools need 1280 frames (327,424 samples).
    'fcn4': ({'channels': (2, 3), 'pools': ((2, 4), (4, 5))}, 5_120),
    'fcn': ({'channels': (2, 2), 'pools': ((2, 4), (4, 4))}, 4_096),
    'musicnn': ({'timbral_channels': 2, 'temporal_channels': 2, 'backend_channels': 3,
                 'dense': 16}, 2_048),
    'crnn': ({'channels': (2, 3), 'pools': ((2, 2), (3, 3)), 'gru_hidden': 3}, 4_096),
    'sample': ({'channels': (2, 3, 4)}, 81),
    'sample_se': ({'channels': (2, 3, 8)}, 81),
    'short_chunk': ({'channels': (2, 8)}, 2_048),
    'short_chunk_res': ({'channels': (2, 8)}, 2_048),
    'attention': ({'width': 4, 'num_layers': 1, 'cnn_layers': ((1, (2, 2)), (2, (2, 1)))}, 2_048),
}
STEPS = 3


@pytest.mark.parametrize('name', ZOO)
def test_tiny_model_trains_with_grad_and_optax(name):
  kwargs, length = TINY[name]
  model = get_model(name, num_classes=3, **kwargs)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(-0.5, 0.5, (2, length)), jnp.float32)
  labels = jnp.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
  tx = optax.adam(1e-3)

  def loss_fn(params, batch_stats):
    logits, updates = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                                  rngs={'dropout': key(1)}, mutable=['batch_stats'])
    return optax.sigmoid_binary_cross_entropy(logits, labels).mean(), (logits, updates)

  def step(carry, _):
    params, batch_stats, opt_state = carry
    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params,
                                                                                batch_stats)
    delta, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, delta)
    return (params, updates['batch_stats'], opt_state), (loss, logits)

  @jax.jit
  def train():  # one compilation: init and the steps
    variables = model.init(key(0), x)
    carry = (variables['params'], variables['batch_stats'], tx.init(variables['params']))
    (params, batch_stats, _), (losses, logits) = jax.lax.scan(step, carry, None, length=STEPS)
    return variables, params, batch_stats, losses, logits

  initial, params, batch_stats, losses, logits = train()
  losses = np.asarray(losses)
  assert logits.shape == (STEPS, 2, 3) and np.isfinite(losses).all()
  # The same dropout key every step makes the objective a fixed function of the parameters.
  assert losses[-1] < losses[0]
  changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                         initial['params'], params)
  for layer, flags in changed['backend'].items():
    assert any(jax.tree.leaves(flags)), f'{name}: backend/{layer} did not train'
  assert all(jax.tree.leaves(changed.get('frontend', {})))  # spec_bn (the raw one has none)
  stats_moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                             initial['batch_stats'], batch_stats)
  assert all(jax.tree.leaves(stats_moved))


def test_bfloat16_computation_keeps_float32_params_and_logits():
  for name in ('musicnn', 'crnn', 'sample_se', 'attention'):
    kwargs, length = TINY[name]
    model = get_model(name, num_classes=3, dtype=jnp.bfloat16, **kwargs)
    variables = jax.eval_shape(model.init, key(0), jnp.zeros((2, length)))
    assert {x.dtype for x in jax.tree.leaves(variables['params'])} == {jnp.dtype('float32')}
    logits = jax.eval_shape(lambda v, a: model.apply(v, a), variables, jnp.zeros((2, length)))
    assert logits.dtype == jnp.float32 and logits.shape == (2, 3)
