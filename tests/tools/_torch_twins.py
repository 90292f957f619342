"""Tiny PyTorch twins of sota's zoo models (`training/model.py`, `modules.py`), for the importer.

Written here from the reference's equations with torch ops only, with its attribute names, so the
state_dict keys are the reference's: `spec.*` / `to_db` / `spec_bn` front-end, `layer{i}` blocks
(Conv_2d `conv`/`bn`; Res_2d `conv_1..3`/`bn_1..3`; Conv_1d; ResSE_1d with `dense1`/`dense2`),
Musicnn's `layers` ModuleList, CRNN's `layer5` GRU, CNNSA's BERT `encoder.layer.{k}`/`pooler`.
Widths, depths and pools are arguments so the tests run on tiny, short inputs; each forward keeps
the reference's shape rules (flatten / squeeze where it squeezes) and ends in its sigmoid.

Every twin's state_dict holds every key the published files hold, buffers included: torchaudio's
`spec.spectrogram.window` and `spec.mel_scale.fb` (torchaudio 0.3.0 saved its `torch.jit.Attribute`
tensors; today's saves persistent buffers), `hstft.spec.window`, and BatchNorm's
`num_batches_tracked`; and nothing they lack (CNNSA's [CLS] and HCNN's centre frequencies are plain
tensors there, so not saved). The HarmonicCNN twins are in bench/torch_hcnn.py (sota) and
_torch_twins_ddhf.py (the ICASSP 2020 repository's layout).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

SR, N_FFT, HOP = 16000, 512, 256


def htk_mel_fb(n_mels: int, n_freqs: int = N_FFT // 2 + 1, f_max: float = SR / 2) -> torch.Tensor:
  """torchaudio 0.3.0's create_fb_matrix: HTK mel triangles, peak 1, (n_freqs, n_mels), float32."""
  freqs = torch.linspace(0, SR // 2, n_freqs)
  to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)
  mels = torch.linspace(to_mel(0.0), to_mel(f_max), n_mels + 2)
  hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
  diff = hz[1:] - hz[:-1]
  slopes = hz.unsqueeze(0) - freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
  down = -slopes[:, :-2] / diff[:-1]
  up = slopes[:, 2:] / diff[1:]
  return torch.clamp(torch.minimum(down, up), min=0.0)


class Spectrogram(nn.Module):
  """Power STFT: periodic Hann, centred, reflect padding; `window` saved as torchaudio 0.3 may."""

  def __init__(self):
    super().__init__()
    self.register_buffer('window', torch.hann_window(N_FFT))

  def forward(self, x):
    spec = torch.stft(x, N_FFT, HOP, window=self.window, center=True, pad_mode='reflect',
                      return_complex=True)
    return spec.abs() ** 2  # (B, 257, T)


class MelScale(nn.Module):
  """Holds `fb` (n_freqs, n_mels) as torchaudio 0.3.0 saves it in every sota checkpoint."""

  def __init__(self, n_mels: int):
    super().__init__()
    self.register_buffer('fb', htk_mel_fb(n_mels))

  def forward(self, spec):
    return torch.matmul(spec.transpose(1, 2), self.fb).transpose(1, 2)


class MelSpectrogram(nn.Module):
  def __init__(self, n_mels: int):
    super().__init__()
    self.spectrogram = Spectrogram()
    self.mel_scale = MelScale(n_mels)

  def forward(self, x):
    return self.mel_scale(self.spectrogram(x))


class AmplitudeToDB(nn.Module):
  def forward(self, x):
    return 10.0 * torch.log10(torch.clamp(x, min=1e-10))


def add_mel_input(model: nn.Module, n_mels: int) -> None:
  """The attributes every sota mel model sets itself: spec, to_db, spec_bn (so its keys)."""
  model.spec = MelSpectrogram(n_mels)
  model.to_db = AmplitudeToDB()
  model.spec_bn = nn.BatchNorm2d(1)


def mel_input(model: nn.Module, x):
  """spec → to_db → unsqueeze(1) → spec_bn."""
  return model.spec_bn(model.to_db(model.spec(x)).unsqueeze(1))


# ---- blocks (sota modules.py names) ----

class Conv_2d(nn.Module):  # noqa: N801  (the reference's class names)
  def __init__(self, cin, cout, pooling=2):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, 3, padding=1)
    self.bn = nn.BatchNorm2d(cout)
    self.mp = nn.MaxPool2d(pooling)

  def forward(self, x):
    return self.mp(torch.relu(self.bn(self.conv(x))))


class Res_2d(nn.Module):  # noqa: N801
  def __init__(self, cin, cout, stride=2):
    super().__init__()
    self.conv_1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
    self.bn_1 = nn.BatchNorm2d(cout)
    self.conv_2 = nn.Conv2d(cout, cout, 3, padding=1)
    self.bn_2 = nn.BatchNorm2d(cout)
    self.diff = stride != 1 or cin != cout
    if self.diff:
      self.conv_3 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1)
      self.bn_3 = nn.BatchNorm2d(cout)

  def forward(self, x):
    out = self.bn_2(self.conv_2(torch.relu(self.bn_1(self.conv_1(x)))))
    if self.diff:
      x = self.bn_3(self.conv_3(x))
    return torch.relu(x + out)


class Conv_1d(nn.Module):  # noqa: N801
  def __init__(self, cin, cout, shape=3, stride=1, pooling=2):
    super().__init__()
    self.conv = nn.Conv1d(cin, cout, shape, stride=stride, padding=shape // 2)
    self.bn = nn.BatchNorm1d(cout)
    self.mp = nn.MaxPool1d(pooling)

  def forward(self, x):
    return self.mp(torch.relu(self.bn(self.conv(x))))


class ResSE_1d(nn.Module):  # noqa: N801
  def __init__(self, cin, cout, shape=3, stride=1, pooling=3):
    super().__init__()
    self.conv_1 = nn.Conv1d(cin, cout, shape, stride=stride, padding=shape // 2)
    self.bn_1 = nn.BatchNorm1d(cout)
    self.conv_2 = nn.Conv1d(cout, cout, shape, padding=shape // 2)
    self.bn_2 = nn.BatchNorm1d(cout)
    self.dense1 = nn.Linear(cout, cout)
    self.dense2 = nn.Linear(cout, cout)
    self.diff = stride != 1 or cin != cout
    if self.diff:
      self.conv_3 = nn.Conv1d(cin, cout, shape, stride=stride, padding=shape // 2)
      self.bn_3 = nn.BatchNorm1d(cout)
    self.mp = nn.MaxPool1d(pooling)

  def forward(self, x):
    out = self.bn_2(self.conv_2(torch.relu(self.bn_1(self.conv_1(x)))))
    se = torch.sigmoid(self.dense2(torch.relu(self.dense1(out.mean(-1)))))
    out = out * se.unsqueeze(-1)
    if self.diff:
      x = self.bn_3(self.conv_3(x))
    return self.mp(torch.relu(x + out))


class Conv_V(nn.Module):  # noqa: N801
  """(h × w) conv, frequency unpadded → BN → ReLU → max over what is left of frequency."""

  def __init__(self, cin, cout, shape):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, shape, padding=(0, shape[1] // 2))
    self.bn = nn.BatchNorm2d(cout)

  def forward(self, x):
    return torch.relu(self.bn(self.conv(x))).amax(dim=2)


class Conv_H(nn.Module):  # noqa: N801
  """Mean over frequency → Conv1d(k) → BN → ReLU."""

  def __init__(self, cin, cout, length):
    super().__init__()
    self.conv = nn.Conv1d(cin, cout, length, padding=length // 2)
    self.bn = nn.BatchNorm1d(cout)

  def forward(self, x):
    return torch.relu(self.bn(self.conv(x.mean(dim=2))))


def _head(model, x):
  """The inline head of ShortChunkCNN(_Res), Musicnn and SampleCNNSE."""
  x = model.dropout(torch.relu(model.bn(model.dense1(x))))
  return torch.sigmoid(model.dense2(x))


def _global_max(x):
  """(B, C, 1, T) → (B, C): squeeze(2), MaxPool1d over T when T > 1, squeeze."""
  x = x.squeeze(2)
  if x.size(-1) != 1:
    x = nn.MaxPool1d(x.size(-1))(x)
  return x.squeeze(2)


# ---- models ----

class ShortChunkCNN(nn.Module):
  """ShortChunkCNN (residual=False: Conv_2d pool 2) or ShortChunkCNN_Res (Res_2d stride 2)."""

  def __init__(self, channels, n_class, n_mels=128, residual=False):
    super().__init__()
    add_mel_input(self, n_mels)
    cin = 1
    for i, c in enumerate(channels):
      block = Res_2d(cin, c, stride=2) if residual else Conv_2d(cin, c, pooling=2)
      setattr(self, f'layer{i + 1}', block)
      cin = c
    self.depth = len(channels)
    self.dense1 = nn.Linear(cin, cin)
    self.bn = nn.BatchNorm1d(cin)
    self.dense2 = nn.Linear(cin, n_class)
    self.dropout = nn.Dropout(0.5)

  def forward(self, x):
    x = mel_input(self, x)
    for i in range(self.depth):
      x = getattr(self, f'layer{i + 1}')(x)
    return _head(self, _global_max(x))


class FCN(nn.Module):
  def __init__(self, channels, pools, n_class, n_mels=96):
    super().__init__()
    add_mel_input(self, n_mels)
    cin = 1
    for i, (c, p) in enumerate(zip(channels, pools)):
      setattr(self, f'layer{i + 1}', Conv_2d(cin, c, pooling=p))
      cin = c
    self.depth = len(channels)
    self.dense = nn.Linear(cin, n_class)
    self.dropout = nn.Dropout(0.5)

  def forward(self, x):
    x = mel_input(self, x)
    for i in range(self.depth):
      x = getattr(self, f'layer{i + 1}')(x)
    x = x.view(x.size(0), -1)  # the reference flattens: the pools must leave 1 × 1
    return torch.sigmoid(self.dense(self.dropout(x)))


class Musicnn(nn.Module):
  def __init__(self, n_class, timbral=204, temporal=51, backend=64, dense=200, n_mels=96):
    super().__init__()
    add_mel_input(self, n_mels)
    self.layers = nn.ModuleList([
        Conv_V(1, timbral, (int(0.7 * 96), 7)), Conv_V(1, timbral, (int(0.4 * 96), 7)),
        Conv_H(1, temporal, 129), Conv_H(1, temporal, 65), Conv_H(1, temporal, 33)])
    front = 2 * timbral + 3 * temporal
    self.layer1 = Conv_1d(front, backend, 7, 1, 1)
    self.layer2 = Conv_1d(backend, backend, 7, 1, 1)
    self.layer3 = Conv_1d(backend, backend, 7, 1, 1)
    self.dense1 = nn.Linear((front + 3 * backend) * 2, dense)
    self.bn = nn.BatchNorm1d(dense)
    self.dropout = nn.Dropout(0.5)
    self.dense2 = nn.Linear(dense, n_class)

  def forward(self, x):
    x = mel_input(self, x)
    out = torch.cat([layer(x) for layer in self.layers], dim=1)  # (B, 2·timbral + 3·temporal, T)
    res1 = self.layer1(out)
    res2 = self.layer2(res1) + res1
    res3 = self.layer3(res2) + res2
    out = torch.cat([out, res1, res2, res3], 1)
    out = torch.cat([out.amax(dim=-1), out.mean(dim=-1)], dim=1)
    return _head(self, out)


class CRNN(nn.Module):
  def __init__(self, channels, pools, n_class, hidden=32, n_mels=96):
    super().__init__()
    add_mel_input(self, n_mels)
    cin = 1
    for i, (c, p) in enumerate(zip(channels, pools)):
      setattr(self, f'layer{i + 1}', Conv_2d(cin, c, pooling=p))
      cin = c
    self.layer5 = nn.GRU(cin, hidden, 2, batch_first=True)
    self.dropout = nn.Dropout(0.5)
    self.dense = nn.Linear(hidden, n_class)

  def forward(self, x):
    x = mel_input(self, x)
    for i in range(4):
      x = getattr(self, f'layer{i + 1}')(x)
    x = x.squeeze(2).permute(0, 2, 1)  # frequency must be 1, as in the reference
    x, _ = self.layer5(x)
    return torch.sigmoid(self.dense(self.dropout(x[:, -1, :])))


class SampleCNN(nn.Module):
  """SampleCNN (se=False) or SampleCNNSE: stride-3 first layer, pools of 3, conv(1) last."""

  def __init__(self, channels, n_class, se=False):
    super().__init__()
    block = ResSE_1d if se else Conv_1d
    cin, last = 1, len(channels) - 1
    for i, c in enumerate(channels):
      shape, stride, pooling = (3, 3, 1) if i == 0 else (1, 1, 1) if i == last else (3, 1, 3)
      setattr(self, f'layer{i + 1}', block(cin, c, shape=shape, stride=stride, pooling=pooling))
      cin = c
    self.depth, self.se = len(channels), se
    self.dropout = nn.Dropout(0.5)
    if se:
      self.dense1 = nn.Linear(cin, cin)
      self.bn = nn.BatchNorm1d(cin)
      self.dense2 = nn.Linear(cin, n_class)
    else:
      self.dense = nn.Linear(cin, n_class)

  def forward(self, x):
    x = x.unsqueeze(1)
    for i in range(self.depth):
      x = getattr(self, f'layer{i + 1}')(x)
    x = x.squeeze(-1)  # length 1 after the stack, as the reference requires
    if self.se:
      return _head(self, x)
    return torch.sigmoid(self.dense(self.dropout(x)))


class BertLayerNorm(nn.Module):
  def __init__(self, hidden, eps=1e-12):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(hidden))
    self.bias = nn.Parameter(torch.zeros(hidden))
    self.eps = eps

  def forward(self, x):
    u = x.mean(-1, keepdim=True)
    s = (x - u).pow(2).mean(-1, keepdim=True)
    return self.weight * (x - u) / torch.sqrt(s + self.eps) + self.bias


class _Dense(nn.Module):
  """A holder of `dense` (+ `LayerNorm`), the shape of BERT's SelfOutput/Intermediate/Output."""

  def __init__(self, cin, cout, norm=False):
    super().__init__()
    self.dense = nn.Linear(cin, cout)
    if norm:
      self.LayerNorm = BertLayerNorm(cout)  # noqa: N815  (BERT's name)


class BertSelfAttention(nn.Module):
  def __init__(self, hidden, heads):
    super().__init__()
    self.heads = heads
    self.query = nn.Linear(hidden, hidden)
    self.key = nn.Linear(hidden, hidden)
    self.value = nn.Linear(hidden, hidden)

  def forward(self, x):
    b, t, h = x.shape
    split = lambda y: y.view(b, t, self.heads, h // self.heads).permute(0, 2, 1, 3)
    q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(h // self.heads)
    context = torch.matmul(torch.softmax(scores, dim=-1), v)
    return context.permute(0, 2, 1, 3).reshape(b, t, h)


class BertAttention(nn.Module):
  def __init__(self, hidden, heads):
    super().__init__()
    self.self = BertSelfAttention(hidden, heads)
    self.output = _Dense(hidden, hidden, norm=True)

  def forward(self, x):
    return self.output.LayerNorm(self.output.dense(self.self(x)) + x)


def _gelu(x):
  return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class BertLayer(nn.Module):
  def __init__(self, hidden, heads, intermediate):
    super().__init__()
    self.attention = BertAttention(hidden, heads)
    self.intermediate = _Dense(hidden, intermediate)
    self.output = _Dense(intermediate, hidden, norm=True)

  def forward(self, x):
    a = self.attention(x)
    return self.output.LayerNorm(self.output.dense(_gelu(self.intermediate.dense(a))) + a)


class BertEncoder(nn.Module):
  def __init__(self, hidden, heads, intermediate, layers):
    super().__init__()
    self.layer = nn.ModuleList([BertLayer(hidden, heads, intermediate) for _ in range(layers)])

  def forward(self, x):
    for layer in self.layer:
      x = layer(x)
    return x


class CNNSA(nn.Module):
  """Res_2d strides 2, 2, 2, (2, 1) × 4 → [CLS] + steps → BERT encoder → pooler → dense."""

  def __init__(self, width, n_class, heads=8, layers=2, n_mels=128):
    super().__init__()
    add_mel_input(self, n_mels)
    spec = [(1, width, 2), (width, width, 2), (width, 2 * width, 2)] + \
        [(2 * width, 2 * width, (2, 1))] * 4
    for i, (cin, cout, stride) in enumerate(spec):
      setattr(self, f'layer{i + 1}', Res_2d(cin, cout, stride=stride))
    hidden = 2 * width
    self.encoder = BertEncoder(hidden, heads, 4 * hidden, layers)
    self.pooler = _Dense(hidden, hidden)
    self.dropout = nn.Dropout(0.5)
    self.dense = nn.Linear(hidden, n_class)
    # numpy's uniform [0, 1) after seed 0 (the reference seeds the global RNG); not saved.
    cls = np.random.RandomState(0).random_sample((1, hidden)).astype(np.float32)
    self.register_buffer('vec_cls', torch.from_numpy(cls), persistent=False)

  def forward(self, x):
    x = mel_input(self, x)
    for i in range(7):
      x = getattr(self, f'layer{i + 1}')(x)
    x = x.squeeze(2).permute(0, 2, 1)
    x = torch.cat([self.vec_cls.expand(x.shape[0], 1, -1), x], dim=1)
    x = self.encoder(x)
    x = torch.tanh(self.pooler.dense(x[:, 0]))
    return torch.sigmoid(self.dense(self.dropout(x)))


def trained_looking(model: nn.Module, seed: int = 0) -> nn.Module:
  """Non-trivial BN statistics/affines (spec_bn on the dB scale) and LayerNorm affines; eval()."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, module in model.named_modules():
      if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        module.running_mean.uniform_(-1.0, 1.0)
        module.running_var.uniform_(0.5, 2.0)
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.3, 0.3)
        module.num_batches_tracked.fill_(12_345)  # saved by every real file; unused in eval
        if name.endswith('spec_bn'):  # dB inputs
          module.running_mean.fill_(-30.0)
          module.running_var.fill_(400.0)
      elif isinstance(module, BertLayerNorm):
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.3, 0.3)
  return model.eval()



def calibrated(model: nn.Module, audio: np.ndarray, seed: int = 0) -> nn.Module:
  """BatchNorm statistics measured on `audio` (as training leaves them), random affines; eval().

  Random running statistics (`trained_looking`) rarely match the scale of the activations, so
  every BN maps its input to almost a constant and the outputs barely depend on the audio; with
  measured statistics they do, and a converter that got the input path wrong cannot hide.
  """
  bns = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
  for m in bns:
    m.reset_running_stats()
    m.momentum = None  # a cumulative average: one pass gives the batch's statistics
  model.train()
  with torch.no_grad():
    model(torch.as_tensor(audio))
    torch.manual_seed(seed)
    for m in bns:
      m.momentum = 0.1
      m.weight.uniform_(0.5, 1.5)
      m.bias.uniform_(-0.3, 0.3)
      m.num_batches_tracked.fill_(12_345)
    for m in model.modules():
      if isinstance(m, BertLayerNorm):
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.3, 0.3)
    if hasattr(model, 'hstft'):
      model.hstft.bw_Q.fill_(0.8)
  return model.eval()


def trained_looking_hcnn(model: nn.Module, seed: int = 0) -> nn.Module:
  """`trained_looking`, with hstft_bn's statistics on the scale of the dB harmonic tensor and a
  Q away from its initial 1."""
  trained_looking(model, seed)
  with torch.no_grad():
    n = model.hstft_bn.num_features
    model.hstft_bn.running_mean.copy_(torch.linspace(-40.0, -20.0, n))
    model.hstft_bn.running_var.copy_(torch.linspace(300.0, 500.0, n))
    model.hstft.bw_Q.fill_(0.8)
  return model.eval()
