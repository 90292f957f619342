"""Importing the reference's PyTorch weights: tiny torch twins with sota's key names, written with
torch ops only (STFT, harmonic or mel filterbank, blocks), must give our models' outputs.

The HarmonicCNN twin is here; the zoo's twins (mel models, sample-level, CNNSA) are in
`_torch_twins.py`.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip('torch')

from bench.torch_hcnn import HarmonicCNN  # noqa: E402  (the reference's twin; needs torch)
from hcnn_jax.tools import import_torch  # noqa: E402  (after the importorskip)
import _torch_twins as twins  # noqa: E402  (tests/tools/_torch_twins.py; needs torch)

WIDTH, N_HARMONIC, NUM_CLASSES = 4, 6, 7
LENGTH = 80_000  # the reference's 5 s: seven time pools 2,2,2,2,2,3,3 → 1 frame


@pytest.fixture(scope='module')
def twin():
  torch.manual_seed(0)
  # Trained-looking weights: non-trivial BN statistics and affines, and a Q away from 1.
  return twins.trained_looking_hcnn(HarmonicCNN(WIDTH, NUM_CLASSES, N_HARMONIC))


@pytest.fixture
def audio(make_signal):
  # A faint noise floor, as in any recording: without it most pitch bins of a pure sweep sit at
  # float32 round-off (−95 dB), where the two FFTs legitimately differ by dBs.
  floor = 0.003 * make_signal('noise', LENGTH)
  return np.stack([make_signal('chord', LENGTH) + floor, make_signal('chirp', LENGTH) + floor])


def test_state_dict_keys_are_the_references(twin):
  keys = set(twin.state_dict())
  assert {'hstft.bw_Q', 'hstft.spec.window', 'hstft_bn.running_var',
          'hstft_bn.num_batches_tracked', 'layer1.conv.weight', 'layer1.bn.weight',
          'layer2.conv_1.weight', 'layer2.bn_2.running_mean', 'dense1.weight', 'bn.bias',
          'dense2.weight'} <= keys
  assert import_torch.infer_hcnn_hparams(twin.state_dict()) == {
      'num_classes': NUM_CLASSES, 'n_harmonic': N_HARMONIC, 'width': WIDTH}
  assert import_torch.infer_model_name(twin.state_dict()) == 'hcnn'


def test_converted_weights_match_the_torch_twin(twin, audio, tmp_path):
  import jax  # pylint: disable=import-outside-toplevel
  from hcnn_jax.models import get_model  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel

  with torch.no_grad():
    expected = twin(torch.from_numpy(audio)).numpy()
  variables = import_torch.convert_hcnn_state_dict(
      twin.state_dict(), num_classes=NUM_CLASSES, n_harmonic=N_HARMONIC, width=WIDTH)
  assert float(variables['params']['frontend']['bw_Q']) == pytest.approx(0.8)
  model = get_model('hcnn', num_classes=NUM_CLASSES, n_harmonic=N_HARMONIC, width=WIDTH)
  logits = model.apply(variables, audio, train=False)
  probs = np.asarray(jax.nn.sigmoid(logits))
  np.testing.assert_allclose(probs, expected, atol=1e-4, rtol=0)
  # The outputs spread out (a constant model would pass trivially).
  assert np.ptp(expected) > 0.05

  # Through the CLI's file path: .pth → orbax checkpoint → load_for_inference → same outputs.
  pth = tmp_path / 'best_model.pth'
  torch.save(twin.state_dict(), pth)
  tags = tmp_path / 'tags.txt'
  tags.write_text('\n'.join(f'tag{i}' for i in range(NUM_CLASSES)) + '\n')
  out = tmp_path / 'imported'
  assert import_torch.main([str(pth), '--out', str(out), '--tags', str(tags)]) == 0
  model2, variables2, config, names = checkpoint.load_for_inference(str(out))
  assert names == [f'tag{i}' for i in range(NUM_CLASSES)]
  assert config.input_length == LENGTH
  probs2 = np.asarray(jax.nn.sigmoid(model2.apply(variables2, audio, train=False)))
  np.testing.assert_allclose(probs2, expected, atol=1e-4, rtol=0)


def test_wrong_shapes_and_keys_fail_with_one_clear_error(twin):
  sd = dict(twin.state_dict())
  with pytest.raises(ValueError, match=r'dense2\.weight.*num_classes=50'):
    import_torch.convert_hcnn_state_dict(sd, num_classes=50, n_harmonic=N_HARMONIC, width=WIDTH)
  sd['extra.weight'] = torch.zeros(3)
  del sd['layer3.bn_1.running_var']
  with pytest.raises(ValueError, match=r"unexpected key\(s\) \['extra.weight'\].*missing key\(s\) "
                                       r"\['layer3.bn_1.running_var'\]"):
    import_torch.convert_hcnn_state_dict(sd, num_classes=NUM_CLASSES, n_harmonic=N_HARMONIC,
                                         width=WIDTH)


def test_cli_refuses_pickled_code_and_bad_files(tmp_path, capsys):
  import pickle  # pylint: disable=import-outside-toplevel

  class Evil:
    def __reduce__(self):
      return (print, ('executed!',))

  evil = tmp_path / 'evil.pth'
  with open(evil, 'wb') as f:
    pickle.dump({'layer1.conv.weight': Evil()}, f, protocol=2)
  text = tmp_path / 'notes.pth'
  text.write_text('hello')
  for path in (evil, text, tmp_path / 'missing.pth'):
    assert import_torch.main([str(path), '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr()
    assert 'executed!' not in err.out
    assert err.err.count('\n') == 1 and 'import_torch: error:' in err.err


# ---- the zoo: mel models, sample-level models, CNNSA ----

FCN_POOLS_TINY = ((2, 2), (2, 2), (2, 2), (3, 2), (4, 2))  # 96 bins → 1; 48 frames → 1
CRNN_POOLS_TINY = ((2, 2), (3, 2), (4, 1), (4, 1))  # 96 bins → 1; 64 frames → 16 GRU steps
SAMPLE_TINY = (4, 4, 6, 6, 6, 8, 8, 8)  # 8 layers: 3^7 = 2187 samples → length 1

# name → (tiny twin, input samples, model_kwargs the state_dict cannot tell). Lengths follow the
# reference's shape rules: FCN and SampleCNN flatten/squeeze a 1 × 1 output, CRNN and CNNSA squeeze
# one frequency bin; 255 hops leave the short-chunk models 2 frames for their global max.
ZOO_TWINS = {
    'short_chunk': (lambda: twins.ShortChunkCNN((4, 4, 6, 6, 6, 6, 8), NUM_CLASSES), 65_280, {}),
    'short_chunk_res': (lambda: twins.ShortChunkCNN((4, 4, 6, 6, 6, 6, 8), NUM_CLASSES,
                                                    residual=True), 65_280, {}),
    'fcn': (lambda: twins.FCN((4, 6, 6, 6, 4), FCN_POOLS_TINY, NUM_CLASSES), 12_032,
            {'pools': FCN_POOLS_TINY}),
    'musicnn': (lambda: twins.Musicnn(NUM_CLASSES, timbral=6, temporal=3, backend=4, dense=5),
                16_128, {}),
    'crnn': (lambda: twins.CRNN((4, 6, 6, 8), CRNN_POOLS_TINY, NUM_CLASSES, hidden=5), 16_128,
             {'pools': CRNN_POOLS_TINY}),
    'sample': (lambda: twins.SampleCNN(SAMPLE_TINY, NUM_CLASSES), 2187, {}),
    'sample_se': (lambda: twins.SampleCNN(SAMPLE_TINY, NUM_CLASSES, se=True), 2187, {}),
    'attention': (lambda: twins.CNNSA(8, NUM_CLASSES), 16_128, {}),
}


def _tiny_twin(name):
  make, length, kwargs = ZOO_TWINS[name]
  torch.manual_seed(0)
  return twins.trained_looking(make()), length, kwargs


def _audio(make_signal, length):
  floor = 0.003 * make_signal('noise', length)
  return np.stack([make_signal('chord', length) + floor, make_signal('chirp', length) + floor])


@pytest.mark.parametrize('name', sorted(ZOO_TWINS))
def test_zoo_twin_converts_to_the_same_outputs(name, make_signal):
  from hcnn_jax.models import get_model  # pylint: disable=import-outside-toplevel
  twin, length, kwargs = _tiny_twin(name)
  audio = _audio(make_signal, length)
  with torch.no_grad():
    expected = twin(torch.from_numpy(audio)).numpy()
  sd = twin.state_dict()
  assert import_torch.infer_model_name(sd) == name
  converted = import_torch.convert_state_dict(sd, **kwargs)
  assert (converted.name, converted.num_classes) == (name, NUM_CLASSES)
  model = get_model(converted.name, converted.num_classes, **converted.kwargs)
  logits = model.apply(converted.variables, audio, train=False)
  np.testing.assert_allclose(np.asarray(jax_sigmoid(logits)), expected, atol=1e-4, rtol=0)
  assert np.ptp(expected) > 0.05  # the outputs spread out: a constant model would pass trivially


def jax_sigmoid(x):
  import jax  # pylint: disable=import-outside-toplevel
  return jax.nn.sigmoid(x)


# Full-size twins (sota's default widths; no forward pass): the inferred options must rebuild the
# reference architecture, whose trainable parameter count docs/zoo.md lists.
FULL_SIZE = {
    'short_chunk': (lambda: twins.ShortChunkCNN((128, 128, 256, 256, 256, 256, 512), 50),
                    3_687_348),
    'short_chunk_res': (lambda: twins.ShortChunkCNN((128, 128, 256, 256, 256, 256, 512), 50,
                                                    residual=True), 12_104_244),
    'fcn': (lambda: twins.FCN((64, 128, 128, 128, 64), ((2, 4), (2, 4), (2, 4), (3, 5), (4, 4)),
                              50), 447_732),
    'musicnn': (lambda: twins.Musicnn(50), 784_300),
    'crnn': (lambda: twins.CRNN((64, 128, 128, 128), ((2, 2), (3, 3), (4, 4), (4, 4)), 50),
             394_100),
    'sample': (lambda: twins.SampleCNN((128, 128, 128, 256, 256, 256, 256, 256, 256, 512, 512),
                                       50), 1_869_874),
    'sample_se': (lambda: twins.SampleCNN((128, 128, 128, 256, 256, 256, 256, 256, 256, 512,
                                           512), 50, se=True), 6_951_858),
    'attention': (lambda: twins.CNNSA(128, 50), 10_521_652),
}


@pytest.mark.parametrize('name', sorted(FULL_SIZE))
def test_reference_size_state_dicts_convert_with_inferred_options(name):
  make, count = FULL_SIZE[name]
  twin = make()
  assert sum(p.numel() for p in twin.parameters()) == count  # the twin is the reference's size
  converted = import_torch.convert_state_dict(twin.state_dict())  # nothing passed: all inferred
  assert converted.name == name and converted.num_classes == 50
  assert sum(v.size for v in _leaves(converted.variables['params'])) == count
  if name in ('short_chunk', 'short_chunk_res', 'attention'):
    assert converted.kwargs['n_mels'] == 128  # read off spec.mel_scale.fb
  elif name != 'sample' and name != 'sample_se':
    assert converted.kwargs['n_mels'] == 96
  if name == 'attention':  # a trainable [CLS] starts at the reference's fixed vector
    from hcnn_jax.models.attention import reference_cls  # pylint: disable=import-outside-toplevel
    trainable = import_torch.convert_state_dict(twin.state_dict(), cls='trainable')
    np.testing.assert_array_equal(trainable.variables['params']['backend']['cls'],
                                  reference_cls(256))
    assert sum(v.size for v in _leaves(trainable.variables['params'])) == count + 256


def _leaves(tree):
  if isinstance(tree, dict):
    return [leaf for v in tree.values() for leaf in _leaves(v)]
  return [tree]


def test_torchaudio_buffers_are_checked_or_ignored():
  twin, _, kwargs = _tiny_twin('fcn')
  sd = dict(twin.state_dict())
  assert {'spec.mel_scale.fb', 'spec.spectrogram.window'} <= set(sd)
  # torchaudio 0.3.0 fills fb lazily (sota issue #1): an empty one carries no information.
  converted = import_torch.convert_state_dict({**sd, 'spec.mel_scale.fb': torch.empty(0)},
                                              **kwargs)
  assert converted.kwargs['n_mels'] == 96  # FCN's default
  other_range = twins.htk_mel_fb(96, f_max=6000.0)
  with pytest.raises(ValueError, match=r'spec\.mel_scale\.fb differs from the HTK mel'):
    import_torch.convert_state_dict({**sd, 'spec.mel_scale.fb': other_range}, **kwargs)
  with pytest.raises(ValueError, match=r'spec\.spectrogram\.window .* not the periodic Hann'):
    import_torch.convert_state_dict({**sd, 'spec.spectrogram.window': torch.ones(512)}, **kwargs)


def test_zoo_errors_name_the_keys_and_what_to_pass():
  twin, _, _ = _tiny_twin('short_chunk_res')
  sd = dict(twin.state_dict())
  sd['layer2.extra.weight'] = torch.zeros(3)
  del sd['layer4.bn_3.running_var']
  with pytest.raises(ValueError, match=r"ShortChunkCNN_Res state_dict: unexpected key\(s\) "
                                       r"\['layer2.extra.weight'\].*missing key\(s\) "
                                       r"\['layer4.bn_3.running_var'\]"):
    import_torch.convert_state_dict(sd)
  fcn, _, _ = _tiny_twin('fcn')  # five layers with other pools than the reference's
  with pytest.raises(ValueError, match=r'spec\.mel_scale\.fb has shape \(257, 96\); .* 64 mels'):
    import_torch.convert_state_dict(fcn.state_dict(), n_mels=64)
  shallow = {k: v for k, v in fcn.state_dict().items() if not k.startswith('layer5.')}
  with pytest.raises(ValueError, match=r"4 conv layers, but the reference has 5.*'pools'"):
    import_torch.convert_state_dict(shallow)
  with pytest.raises(ValueError, match=r"unknown model 'vgg'"):
    import_torch.convert_state_dict(fcn.state_dict(), 'vgg')
  with pytest.raises(ValueError, match=r'no known layout matched.*tried: '
                                       r'sota-music-tagging-models.*data-driven-harmonic-filters'):
    import_torch.convert_state_dict({'foo.weight': torch.zeros(2)})


def test_cli_infers_a_zoo_model_and_round_trips(make_signal, tmp_path, capsys):
  import jax  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  from hcnn_jax.training import checkpoint  # pylint: disable=import-outside-toplevel

  twin, length, _ = _tiny_twin('crnn')
  pth = tmp_path / 'best_model.pth'
  torch.save({'module.' + k: v for k, v in twin.state_dict().items()}, pth)  # DataParallel keys
  out = tmp_path / 'imported'
  pools = json.dumps({'pools': [list(p) for p in CRNN_POOLS_TINY]})
  assert import_torch.main([str(pth), '--out', str(out), '--model_kwargs', pools]) == 0
  assert 'crnn from CRNN, sota layout, 7 classes' in capsys.readouterr().out
  model, variables, config, names = checkpoint.load_for_inference(str(out))
  assert config.model.name == 'crnn' and len(names) == NUM_CLASSES
  audio = _audio(make_signal, length)
  with torch.no_grad():
    expected = twin(torch.from_numpy(audio)).numpy()
  probs = np.asarray(jax.nn.sigmoid(model.apply(variables, audio, train=False)))
  np.testing.assert_allclose(probs, expected, atol=1e-4, rtol=0)
  # Options that cannot be JSON, or a model the keys contradict, fail in one line.
  for extra in (['--model_kwargs', '{pools'], ['--model', 'fcn']):
    assert import_torch.main([str(pth), '--out', str(tmp_path / 'o2'), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'import_torch: error:' in err


def test_musicnn_on_128_mels_keeps_the_reference_96_bin_heights(make_signal):
  """sota's "Musicnn (128 mel)" keeps kernel heights int(0.7·96), int(0.4·96) on 128 bins."""
  from hcnn_jax.models import get_model  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  twin = twins.trained_looking(twins.Musicnn(NUM_CLASSES, timbral=6, temporal=3, backend=4,
                                             dense=5, n_mels=128))
  audio = _audio(make_signal, 16_128)
  with torch.no_grad():
    expected = twin(torch.from_numpy(audio)).numpy()
  converted = import_torch.convert_state_dict(twin.state_dict())
  assert converted.kwargs['heights'] == (67, 38) and converted.kwargs['n_mels'] == 128
  model = get_model(converted.name, converted.num_classes, **converted.kwargs)
  logits = model.apply(converted.variables, audio, train=False)
  np.testing.assert_allclose(np.asarray(jax_sigmoid(logits)), expected, atol=1e-4, rtol=0)
