"""Any front-end with any back-end: swaps that fit build and trace, mismatches fail in words before
anything is compiled (all abstract, via jax.eval_shape)."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

from hcnn_jax.models import Classifier, get_frontend, get_model
from hcnn_jax.models.sample import SampleCNNBackend


def count_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


def abstract_trace(model, num_samples, batch=2):
  """Abstract variables and every module's output shape (per example), no memory, no compile."""

  def init():
    return model.init(jax.random.key(0), jnp.zeros((batch, num_samples)),
                      capture_intermediates=True)

  variables = jax.eval_shape(init)
  shapes = jax.tree.map(lambda x: x.shape[1:], variables.pop('intermediates'))
  return variables, shapes


def out(shapes, *path):
  for part in path:
    shapes = shapes[part]
  return shapes['__call__'][0]


def test_self_attention_back_end_on_the_harmonic_tensor():
  model = get_model('attention', 50, frontend='harmonic')
  variables, shapes = abstract_trace(model, 240_000)
  assert out(shapes, 'frontend') == (128, 938, 6)
  assert variables['params']['backend']['layer1']['conv_1']['kernel'].shape == (3, 3, 6, 128)
  assert out(shapes, 'backend', 'encoder2') == (119, 256)
  assert out(shapes) == (50,)
  # The reference CNNSA (10,521,652, + 256 for the trainable [CLS]) less the mel BN (2), plus the
  # harmonic front-end (Q and BN over 6: 13) and 5 more input channels in layer1's two strided
  # convs (2 · 9 · 5 · 128).
  assert count_params(variables['params']) == 10_521_908 - 2 + 13 + 2 * 9 * 5 * 128


def test_harmonic_cnn_back_end_on_a_mel_spectrogram():
  model = get_model('hcnn', 50, frontend='mel')
  variables, shapes = abstract_trace(model, 80_000)
  assert out(shapes, 'frontend') == (128, 313, 1)
  assert out(shapes, 'backend', 'layer7') == (1, 1, 256)
  # HCNN's 3,631,551 less the harmonic front-end (13) and 5 of layer1's 6 input channels
  # (5 · 9 · 128), plus the mel BN (2).
  assert count_params(variables['params']) == 3_631_551 - 13 - 5 * 9 * 128 + 2


def test_raw_front_end_with_sample_level_back_ends():
  model = get_model('sample_se', 50, frontend='raw')
  variables, shapes = abstract_trace(model, 59_049)
  assert 'frontend' not in variables['params']
  assert out(shapes, 'backend', 'layer11') == (1, 512)
  # Composed by hand: the same parts, the same parameters.
  by_hand = Classifier(frontend=get_frontend('raw'), backend=SampleCNNBackend(num_classes=50,
                                                                              se=True))
  assert count_params(abstract_trace(by_hand, 59_049)[0]['params']) == 6_951_858
  assert by_hand.min_input_length() == 59_047


@pytest.mark.parametrize('name, frontend, options, num_samples, expected', [
    # MFCC's 20 coefficients: the frequency pools shrink to the bins left (20 → 10 → 5 → 2 → 1).
    ('fcn', 'mfcc', {}, 464_000, {('backend', 'layer4'): (1, 5, 3),
                                  ('backend', 'layer5'): (1, 1, 2)}),
    ('crnn', 'cqt', {}, 464_000, {('frontend',): (84, 1813, 1),
                                  ('backend', 'layer4'): (1, 18, 4)}),
    # Harmonic channels into the timbral and temporal banks of Musicnn.
    ('musicnn', 'harmonic', {}, 48_000, {('backend', 'timbral1'): (188, 2),
                                         ('backend', 'temporal3'): (188, 2)}),
    ('short_chunk', 'linear', {}, 59_049, {('frontend',): (257, 231, 1),
                                           ('backend', 'layer7'): (2, 1, 4)}),
    # H = 3 gives 152 fundamentals: two bins are left after seven strides, the head max-reduces.
    ('short_chunk_res', 'harmonic', {'n_harmonic': 3}, 59_049,
     {('frontend',): (152, 231, 3), ('backend', 'layer7'): (2, 2, 4)}),
    ('attention', 'cqt', {}, 240_000, {('backend', 'encoder1'): (119, 8)}),
])
def test_spectrogram_front_ends_fit_the_2d_back_ends(name, frontend, options, num_samples,
                                                     expected):
  tiny = {'fcn': {'channels': (2, 3, 3, 3, 2)},
          'crnn': {'channels': (2, 3, 3, 4), 'gru_hidden': 3},
          'musicnn': {'timbral_channels': 2, 'temporal_channels': 2, 'backend_channels': 3,
                      'dense': 4},
          'short_chunk': {'channels': (2,) * 6 + (4,)},
          'short_chunk_res': {'channels': (2,) * 6 + (4,)}, 'attention': {'width': 4}}[name]
  model = get_model(name, 7, frontend=frontend, frontend_kwargs=options, **tiny)
  variables, shapes = abstract_trace(model, num_samples)
  assert {path: out(shapes, *path) for path in expected} == expected
  assert out(shapes) == (7,)
  assert {x.dtype for x in jax.tree.leaves(variables['params'])} == {jnp.dtype('float32')}


def test_front_end_options_alone_rebuild_the_models_own_front_end():
  # Musicnn's timbral heights follow the bins: int(0.7 · 128), int(0.4 · 128).
  model = get_model('musicnn', 50, frontend_kwargs={'n_mels': 128})
  variables, _ = abstract_trace(model, 48_000)
  backend = variables['params']['backend']
  assert backend['timbral1']['Conv_0']['kernel'].shape == (89, 7, 1, 204)
  assert backend['timbral2']['Conv_0']['kernel'].shape == (51, 7, 1, 204)
  # A 96-bin Short-chunk CNN: its seventh pool meets a single bin and keeps it.
  model = get_model('short_chunk', 5, frontend_kwargs={'n_mels': 96}, channels=(2,) * 7)
  _, shapes = abstract_trace(model, 59_049)
  assert [out(shapes, 'backend', f'layer{i}')[0] for i in range(1, 8)] == [48, 24, 12, 6, 3, 1, 1]


@pytest.mark.parametrize('name, frontend, says', [
    ('sample', 'mel', '1-D back-end for the raw-waveform front-end'),
    ('sample_se', 'harmonic', '1-D back-end for the raw-waveform front-end'),
    ('fcn', 'raw', 'needs a spectrogram front-end'),
    ('fcn4', 'raw', 'needs a spectrogram front-end'),
    ('crnn', 'raw', 'needs a spectrogram front-end'),
    ('short_chunk', 'raw', 'needs a spectrogram front-end'),
    ('short_chunk_res', 'raw', 'needs a spectrogram front-end'),
    ('musicnn', 'raw', 'needs a spectrogram front-end'),
    ('attention', 'raw', 'needs a spectrogram front-end'),
])
def test_mismatched_front_and_back_ends_fail_in_words_before_compiling(name, frontend, says):
  model = get_model(name, 10, frontend=frontend)
  with pytest.raises(ValueError, match=f'no input length fits.*{says}'):
    model.check_input_length(59_049)
  with pytest.raises(ValueError, match=says):  # at trace time: nothing was compiled
    abstract_trace(model, 59_049)


@pytest.mark.parametrize('name, num_samples, shortest, says', [
    ('fcn', 48_000, 327_424, '1280 frames'),  # time pools 4·4·4·5·4
    ('fcn4', 48_000, 327_424, '1280 frames'),  # 4·5·8·8
    ('crnn', 16_000, 24_320, '96 frames'),  # 2·3·4·4
    ('short_chunk', 16_000, 32_512, '128 frames'),  # 2^7
    ('sample', 16_000, 59_047, 'at least 59,047 samples'),
    ('sample_se', 59_000, 59_047, 'at least 59,047 samples'),
])
def test_too_short_inputs_name_the_shortest_that_fits(name, num_samples, shortest, says):
  model = get_model(name, 50)
  assert model.min_input_length() == shortest
  with pytest.raises(ValueError, match=f'{num_samples:,} samples.*shortest input that fits is '
                                       f'{shortest:,} samples.*{says}'):
    abstract_trace(model, num_samples)
  model.check_input_length(shortest)


def test_musicnn_and_attention_take_short_inputs():
  # No time pooling in Musicnn, padded strides in CNNSA: two frames are enough for both.
  for name in ('musicnn', 'attention', 'short_chunk_res'):
    assert get_model(name, 50).min_input_length() == 257
