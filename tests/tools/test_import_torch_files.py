"""The published checkpoints, as files: every key the real `best_model.pth` files hold, the two
repositories' layouts, wrappers, and the command line's refusals.

There is no download here: each state_dict comes from a tiny PyTorch twin built from the public
source's behaviour (tests/tools/_torch_twins*.py, bench/torch_hcnn.py): sota's
minzwon/sota-music-tagging-models `training/model.py` / `modules.py` under torch 1.2 and
torchaudio 0.3.0, whose `torch.jit.Attribute` tensors (the STFT window, the mel filterbank) are
saved with the weights, and the ICASSP 2020 minzwon/data-driven-harmonic-filters `training/model.py`
/ `modules.py` names (`conv_2d.res1..7`, `conv_2d.fc_1`, `conv_2d.bn`, `conv_2d.fc_2`).
"""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip('torch')

import jax  # noqa: E402

import _torch_twins as twins  # noqa: E402  (tests/tools/_torch_twins.py; needs torch)
import _torch_twins_ddhf as ddhf  # noqa: E402  (tests/tools/_torch_twins_ddhf.py)
from bench.torch_hcnn import HarmonicCNN  # noqa: E402
from hcnn_jax.tools import import_torch  # noqa: E402
from hcnn_jax.training import checkpoint  # noqa: E402

NUM_CLASSES = 7
BN = ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked')


def _ddhf_keys(n_fft_window=True):
  """The key set of ddhf's `Model` (mtat head) as its source names its modules."""
  keys = {'hstft.bw_Q'} | {f'hstft_bn.{s}' for s in BN}
  if n_fft_window:
    keys.add('hstft.spec.window')
  for i in range(1, 8):
    convs = ('conv', 'bn') if i in (1, 5) else ('conv_1', 'bn_1', 'conv_2', 'bn_2')
    for name in convs:
      suffixes = BN if name.startswith('bn') else ('weight', 'bias')
      keys |= {f'conv_2d.res{i}.{name}.{s}' for s in suffixes}
  keys |= {f'conv_2d.fc_{j}.{s}' for j in (1, 2) for s in ('weight', 'bias')}
  return keys | {f'conv_2d.bn.{s}' for s in BN}


# name → (twin, samples, the keys the published file must carry beyond its weights, our model)
CASES = {
    'hcnn_sota': (lambda: HarmonicCNN(4, NUM_CLASSES, 6), 80_000,
                  {'hstft.spec.window', 'hstft_bn.num_batches_tracked', 'bn.num_batches_tracked'},
                  'hcnn'),
    'hcnn_ddhf': (lambda: ddhf.DDHFModel(4, 50), 80_000,
                  {'hstft.spec.window', 'conv_2d.bn.num_batches_tracked'}, 'hcnn'),
    'short_chunk': (lambda: twins.ShortChunkCNN((4, 4, 6, 6, 6, 6, 8), NUM_CLASSES), 65_280,
                    {'spec.spectrogram.window', 'spec.mel_scale.fb', 'spec_bn.num_batches_tracked'},
                    'short_chunk'),
    'attention': (lambda: twins.CNNSA(8, NUM_CLASSES), 16_128,
                  {'spec.spectrogram.window', 'spec.mel_scale.fb',
                   'layer7.bn_2.num_batches_tracked'}, 'attention'),
}


def _harmonic_chirp(length, make_signal):
  """A sweep 40 Hz → 1 kHz with six harmonics (1/h), over a faint noise floor as in a recording
  (without it most pitch bins sit at float32 round-off, where two FFTs legitimately differ)."""
  t = np.arange(length) / 16000.0
  k = np.log(1000.0 / 40.0) / t[-1]
  phase = 2 * np.pi * 40.0 * (np.exp(k * t) - 1) / k
  y = sum(np.sin(h * phase) / h for h in range(1, 7))
  return (0.8 * y / np.max(np.abs(y)) + 0.003 * make_signal('noise', length)).astype(np.float32)


def test_ddhf_twin_has_the_documented_key_set():
  assert set(ddhf.DDHFModel(4, 50).state_dict()) == _ddhf_keys()


# The zoo models the acceptance test below does not cover: (tiny twin, options the weights lack).
ZOO = {'short_chunk_res': (lambda: twins.ShortChunkCNN((4, 6), 5, residual=True), {}),
       'fcn': (lambda: twins.FCN((4, 6), ((2, 4), (2, 4)), 5), {'pools': ((2, 4), (2, 4))}),
       'musicnn': (lambda: twins.Musicnn(5, timbral=3, temporal=2, backend=4, dense=5), {}),
       'crnn': (lambda: twins.CRNN((4, 4, 4, 4), ((2, 2),) * 4, 5), {'pools': ((2, 2),) * 4}),
       'sample_se': (lambda: twins.SampleCNN((4, 4, 4), 5, se=True), {})}


@pytest.mark.parametrize('name', sorted(ZOO))
def test_zoo_twins_carry_the_buffers_of_the_published_files_and_convert(name):
  make, kwargs = ZOO[name]
  twin = make()
  keys = set(twin.state_dict())
  bns = [n for n, m in twin.named_modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)]
  assert bns and {f'{n}.num_batches_tracked' for n in bns} <= keys
  mel = {'spec.spectrogram.window', 'spec.mel_scale.fb'}
  assert mel <= keys if name != 'sample_se' else not mel & keys  # SampleCNN reads the waveform
  assert import_torch.convert_state_dict(twin.state_dict(), **kwargs).name == name


@pytest.mark.parametrize('case', sorted(CASES))
def test_published_key_set_imports_and_matches_the_torch_outputs(case, make_signal, tmp_path,
                                                                 capsys):
  make, length, buffers, name = CASES[case]
  audio = np.stack([make_signal('noise', length), _harmonic_chirp(length, make_signal)])
  torch.manual_seed(0)
  twin = twins.calibrated(make(), np.concatenate([audio, make_signal('chord', length)[None]]))
  sd = twin.state_dict()
  assert buffers <= set(sd)  # the buffers every real file carries are in this one
  pth = tmp_path / 'best_model.pth'
  torch.save(sd, pth)
  out = tmp_path / 'imported'
  assert import_torch.main([str(pth), '--out', str(out)]) == 0
  printed = capsys.readouterr().out
  layout = 'ddhf' if case.endswith('ddhf') else 'sota'
  assert f'({name} from' in printed and f', {layout} layout,' in printed
  model, variables, config, names = checkpoint.load_for_inference(str(out))
  with torch.no_grad():
    expected = twin(torch.from_numpy(audio)).numpy()
  assert config.model.name == name and len(names) == expected.shape[-1]
  probs = np.asarray(jax.nn.sigmoid(model.apply(variables, audio, train=False)))
  deltas = np.max(np.abs(probs - expected), axis=1)
  print(f'{case}: max |d sigmoid| noise {deltas[0]:.2e}, harmonic chirp {deltas[1]:.2e}')
  assert np.all(deltas <= 1e-4), deltas
  assert np.ptp(expected) > 0.05  # the outputs spread out: a constant model would pass trivially
  # ... and they depend on the input, in the same way (a model that ignored it would fail here).
  torch_change, our_change = expected[0] - expected[1], probs[0] - probs[1]
  assert np.max(np.abs(torch_change)) > 0.02
  assert np.max(np.abs(our_change - torch_change)) <= 0.05 * np.max(np.abs(torch_change))


@pytest.mark.parametrize('dataset,n_class,length,n_fft,ours', [
    ('dcase', 17, 48_000, 512, 'hcnn_events'),  # ResNet_dcase: time pools 2 everywhere
    ('mtat', 50, 80_000, 513, 'hcnn'),  # ddhf eval.py's default n_fft 513: a 513-sample window
])
def test_ddhf_heads_and_fft_size_are_read_off_the_file(dataset, n_class, length, n_fft, ours,
                                                       make_signal):
  from hcnn_jax.models import get_model  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  audio = np.stack([make_signal('noise', length), _harmonic_chirp(length, make_signal)])
  twin = twins.calibrated(ddhf.DDHFModel(4, n_class, dataset=dataset, n_fft=n_fft), audio)
  converted = import_torch.convert_state_dict(twin.state_dict())
  assert converted.name == ours and converted.kwargs.get('n_fft', 512) == n_fft
  with torch.no_grad():
    expected = twin(torch.from_numpy(audio)).numpy()
  model = get_model(converted.name, converted.num_classes, **converted.kwargs)
  probs = jax.nn.sigmoid(model.apply(converted.variables, audio, train=False))
  np.testing.assert_allclose(np.asarray(probs), expected, atol=1e-4, rtol=0)


def test_ddhf_problems_are_named_as_the_file_names_them():
  sd = dict(ddhf.DDHFModel(4, 50).state_dict())
  sd['conv_2d.res2.extra.weight'] = torch.zeros(3)
  del sd['conv_2d.fc_1.bias']
  sd['hstft.spec.window'] = torch.ones(512)
  with pytest.raises(ValueError) as err:
    import_torch.convert_state_dict(sd)
  message = str(err.value)
  assert r"hstft.spec.window (shape (512,)) is not the periodic Hann window" in message
  assert "unexpected key(s) ['conv_2d.res2.extra.weight']" in message
  assert "missing key(s) ['conv_2d.fc_1.bias']" in message


def _sample_twin(seed):
  torch.manual_seed(seed)
  return twins.trained_looking(twins.SampleCNN((4, 4, 6, 6, 6, 8, 8, 8), NUM_CLASSES), seed)


@pytest.mark.parametrize('wrap', ['model', 'state_dict', 'state_dict+module'])
def test_wrapped_files_are_unwrapped(wrap, tmp_path):
  sd = _sample_twin(0).state_dict()
  if wrap.endswith('+module'):  # DataParallel's prefix inside a solver's wrapper
    sd = {'module.' + k: v for k, v in sd.items()}
  pth = tmp_path / 'best_model.pth'
  torch.save({wrap.split('+')[0]: sd, 'epoch': 3}, pth)
  converted = import_torch.convert_state_dict(import_torch.load_torch_state_dict(str(pth)))
  assert (converted.name, converted.num_classes) == ('sample', NUM_CLASSES)


def _one_line_error(capsys):
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and err.startswith('import_torch: error: '), err
  return err


def test_an_out_that_holds_a_checkpoint_is_refused_unless_force(tmp_path, capsys):
  first, second = tmp_path / 'first.pth', tmp_path / 'second.pth'
  torch.save(_sample_twin(0).state_dict(), first)
  torch.save(_sample_twin(1).state_dict(), second)
  out = tmp_path / 'imported'
  assert import_torch.main([str(first), '--out', str(out)]) == 0
  stale = out / checkpoint.CHECKPOINT_DIR / '7'  # a training run's periodic checkpoint
  stale.mkdir(parents=True)
  (stale / 'meta').write_text('{}')

  def kernel():
    _, variables, _, _ = checkpoint.load_for_inference(str(out))
    return np.asarray(variables['params']['backend']['dense']['kernel'])

  before = kernel()
  capsys.readouterr()
  assert import_torch.main([str(second), '--out', str(out)]) == 2
  err = _one_line_error(capsys)
  assert 'already holds a checkpoint' in err and '--force' in err
  np.testing.assert_array_equal(kernel(), before)  # untouched
  assert import_torch.main([str(second), '--out', str(out), '--force']) == 0
  expected = import_torch.convert_state_dict(_sample_twin(1).state_dict()).variables
  np.testing.assert_array_equal(kernel(), expected['params']['backend']['dense']['kernel'])
  assert not np.array_equal(kernel(), before)
  periodic = out / checkpoint.CHECKPOINT_DIR  # no old weights left anywhere
  assert not periodic.exists() or not os.listdir(periodic)
  assert sorted(os.listdir(out / checkpoint.BEST_DIR)) == ['0']


class _Shell:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f'touch {self.marker}',))


def test_a_weights_only_refusal_keeps_its_reason(tmp_path, capsys):
  marker = tmp_path / 'ran'
  evil = tmp_path / 'evil.pth'
  with open(evil, 'wb') as f:
    pickle.dump({'layer1.conv.weight': _Shell(marker)}, f, protocol=2)
  assert import_torch.main([str(evil), '--out', str(tmp_path / 'o')]) == 2
  err = _one_line_error(capsys)
  assert not marker.exists()
  assert f'GLOBAL {os.system.__module__}.system' in err  # the reason, not only torch's advice
  assert 'trusted source' not in err


# torch's wording of the same refusal across versions (2.4-2.5, 2.6-2.8, later).
@pytest.mark.parametrize('message', [
    'Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will '
    'likely succeed, but it can result in arbitrary code execution. Do it only if you got the file '
    'from a trusted source.\n Please file an issue with the following so that we can make '
    '`weights_only=True` compatible with your use case: WeightsUnpickler error: Unsupported '
    'global: GLOBAL posix.system was not an allowed global by default. Please use '
    '`torch.serialization.add_safe_globals([system])` to allowlist this global if you trust it.',
    'Weights only load failed. This file can still be loaded, to do so you have two options, do '
    'those steps only if you trust the source of the checkpoint.\n\t(1) In PyTorch 2.6, we changed '
    'the default value of the `weights_only` argument in `torch.load` from `False` to `True`. '
    'Re-running `torch.load` with `weights_only` set to `False` will likely succeed.\n\t(2) '
    'Alternatively, to load with `weights_only=True` please check the recommended steps in the '
    'following error message.\n\tWeightsUnpickler error: Unsupported global: GLOBAL posix.system '
    'was not an allowed global by default. Please use `torch.serialization.safe_globals([system])` '
    'or the `torch.serialization.add_safe_globals([system])` context manager.',
    'Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` '
    'argument in `torch.load` from `False` to `True`. Do it only if you got the file from a '
    'trusted source.\n\n\nTrying to load unsupported GLOBAL posix.system whose module posix is '
    'blocked.\n\nCheck the documentation of torch.load to learn more about types accepted by '
    'default with weights_only https://pytorch.org/docs/stable/generated/torch.load.html.',
])
def test_the_refusal_reason_survives_each_torch_wording(message):
  reason = import_torch._refusal(RuntimeError(message))  # pylint: disable=protected-access
  assert 'GLOBAL posix.system' in reason and '\n' not in reason
  assert 'weights_only' not in reason and 'trusted' not in reason


def test_no_layout_matched_lists_the_layouts_tried(tmp_path, capsys):
  pth = tmp_path / 'other.pth'
  torch.save({'backbone.stem.weight': torch.zeros(2, 3)}, pth)
  assert import_torch.main([str(pth), '--out', str(tmp_path / 'o')]) == 2
  err = _one_line_error(capsys)
  assert 'no known layout matched' in err and str(pth) in err
  assert 'sota-music-tagging-models' in err and 'data-driven-harmonic-filters' in err
