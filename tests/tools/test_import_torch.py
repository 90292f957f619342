"""Importing the reference's PyTorch HarmonicCNN: a tiny torch twin with sota's key names, written
here with torch ops only (STFT, harmonic filterbank, blocks), must give our model's outputs.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip('torch')
nn = torch.nn

from hcnn_jax.tools import import_torch  # noqa: E402  (after the importorskip)

SR, N_FFT, HOP = 16000, 512, 256
WIDTH, N_HARMONIC, NUM_CLASSES = 4, 6, 7
LENGTH = 80_000  # the reference's 5 s: seven time pools 2,2,2,2,2,3,3 → 1 frame


class HarmonicSTFT(nn.Module):
  """The reference front-end (section 1) in torch: power STFT → triangular harmonic filters."""

  def __init__(self, n_harmonic: int):
    super().__init__()
    self.n_harmonic = n_harmonic
    self.bw_Q = nn.Parameter(torch.tensor([1.0]))
    low = 24  # C1
    high = int(round(12 * (np.log2(SR / (2 * n_harmonic)) - np.log2(440.0)) + 69))
    self.level = (high - low) * 2
    midi = torch.linspace(low, high, self.level + 1, dtype=torch.float64)[:-1]
    f0 = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
    self.register_buffer('centres', torch.cat([f0 * (h + 1) for h in range(n_harmonic)]).float(),
                         persistent=False)
    self.register_buffer('bins', torch.linspace(0, SR // 2, N_FFT // 2 + 1), persistent=False)
    self.register_buffer('window', torch.hann_window(N_FFT), persistent=False)

  def forward(self, x):
    spec = torch.stft(x, N_FFT, HOP, window=self.window, center=True, pad_mode='reflect',
                      return_complex=True).abs() ** 2  # (B, 257, T)
    bw = (0.1079 * self.centres + 24.7) / self.bw_Q
    f = self.bins[:, None]
    fb = torch.relu(torch.minimum(1 + 2 * (f - self.centres) / bw, 1 - 2 * (f - self.centres) / bw))
    h = torch.matmul(spec.transpose(1, 2), fb).transpose(1, 2)  # (B, H·level, T)
    h = h.reshape(h.shape[0], self.n_harmonic, self.level, h.shape[-1])
    return 10.0 * torch.log10(torch.clamp(h, min=1e-10))


class Conv_2d(nn.Module):
  def __init__(self, cin, cout, pool):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, 3, padding=1)
    self.bn = nn.BatchNorm2d(cout)
    self.mp = nn.MaxPool2d(pool)

  def forward(self, x):
    return self.mp(torch.relu(self.bn(self.conv(x))))


class Res_2d_mp(nn.Module):
  def __init__(self, c, pool):
    super().__init__()
    self.conv_1 = nn.Conv2d(c, c, 3, padding=1)
    self.bn_1 = nn.BatchNorm2d(c)
    self.conv_2 = nn.Conv2d(c, c, 3, padding=1)
    self.bn_2 = nn.BatchNorm2d(c)
    self.mp = nn.MaxPool2d(pool)

  def forward(self, x):
    y = self.bn_2(self.conv_2(torch.relu(self.bn_1(self.conv_1(x)))))
    return self.mp(torch.relu(x + y))


class HarmonicCNN(nn.Module):
  """sota's HarmonicCNN layout and attribute names, at a tiny width."""

  def __init__(self, n_channels, n_class, n_harmonic):
    super().__init__()
    c = n_channels
    self.hstft = HarmonicSTFT(n_harmonic)
    self.hstft_bn = nn.BatchNorm2d(n_harmonic)
    self.layer1 = Conv_2d(n_harmonic, c, 2)
    self.layer2 = Res_2d_mp(c, 2)
    self.layer3 = Res_2d_mp(c, 2)
    self.layer4 = Res_2d_mp(c, 2)
    self.layer5 = Conv_2d(c, 2 * c, 2)
    self.layer6 = Res_2d_mp(2 * c, (2, 3))
    self.layer7 = Res_2d_mp(2 * c, (2, 3))
    self.dense1 = nn.Linear(2 * c, 2 * c)
    self.bn = nn.BatchNorm1d(2 * c)
    self.dense2 = nn.Linear(2 * c, n_class)
    self.dropout = nn.Dropout(0.5)

  def forward(self, x):
    x = self.hstft_bn(self.hstft(x))
    for i in range(1, 8):
      x = getattr(self, f'layer{i}')(x)
    x = x.squeeze(2)
    if x.size(-1) != 1:
      x = nn.MaxPool1d(x.size(-1))(x)
    x = x.squeeze(2)
    x = self.dropout(torch.relu(self.bn(self.dense1(x))))
    return torch.sigmoid(self.dense2(x))


@pytest.fixture(scope='module')
def twin():
  torch.manual_seed(0)
  model = HarmonicCNN(WIDTH, NUM_CLASSES, N_HARMONIC)
  # Trained-looking weights: non-trivial BN statistics and affines, and a Q away from 1.
  with torch.no_grad():
    for name, module in model.named_modules():
      if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        n = module.num_features
        module.running_mean.uniform_(-1.0, 1.0)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.3, 0.3)
        if name == 'hstft_bn':  # dB inputs: statistics on the scale of the harmonic tensor
          module.running_mean.copy_(torch.linspace(-40.0, -20.0, n))
          module.running_var.copy_(torch.linspace(300.0, 500.0, n))
    model.hstft.bw_Q.fill_(0.8)
  return model.eval()


@pytest.fixture
def audio(make_signal):
  # A faint noise floor, as in any recording: without it most pitch bins of a pure sweep sit at
  # float32 round-off (−95 dB), where the two FFTs legitimately differ by dBs.
  floor = 0.003 * make_signal('noise', LENGTH)
  return np.stack([make_signal('chord', LENGTH) + floor, make_signal('chirp', LENGTH) + floor])


def test_state_dict_keys_are_the_references(twin):
  keys = set(twin.state_dict())
  assert {'hstft.bw_Q', 'hstft_bn.running_var', 'layer1.conv.weight', 'layer1.bn.weight',
          'layer2.conv_1.weight', 'layer2.bn_2.running_mean', 'dense1.weight', 'bn.bias',
          'dense2.weight'} <= keys
  assert import_torch.infer_hcnn_hparams(twin.state_dict()) == {
      'num_classes': NUM_CLASSES, 'n_harmonic': N_HARMONIC, 'width': WIDTH}


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
