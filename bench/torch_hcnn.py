"""A PyTorch twin of the reference Harmonic CNN (sota's layout and key names, written with torch
ops only) and a same-machine PyTorch baseline for `bench.run`.

  python -m bench.torch_hcnn [--batch 16,128] [--modes fp32,bf16] [--steps 20] [--json OUT]

The twin is what `tests/tools/test_import_torch*.py` convert and compare with our HCNN; here it
also times the reference recipe's training step (Adam, BCE on sigmoid outputs) and inference on
random 80,000-sample clips at full width, so that the JAX figures of `bench.run` can be set
against PyTorch measured on the same card in the same session rather than against the brief's
numbers alone. Modes: fp32 (PyTorch defaults: TF32 convolutions, as the reference ran), bf16
(autocast + channels_last, the reference's best tuning short of torch.compile).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

nn = torch.nn

SR, N_FFT = 16000, 512


class Spectrogram(nn.Module):
  """torchaudio's Spectrogram as the reference builds it (win_length = n_fft, hop = n_fft // 2,
  centred, reflect padding, power 2). Its Hann `window` is in the state_dict, as in the published
  files: torchaudio 0.3.0 kept it as a `torch.jit.Attribute` tensor (saved like a buffer), today's
  torchaudio registers it as a persistent buffer."""

  def __init__(self, n_fft: int = N_FFT):
    super().__init__()
    self.n_fft = n_fft
    self.register_buffer('window', torch.hann_window(n_fft))

  def forward(self, x):
    return torch.stft(x, self.n_fft, self.n_fft // 2, window=self.window, center=True,
                      pad_mode='reflect', return_complex=True).abs() ** 2  # (B, bins, T)


class HarmonicSTFT(nn.Module):
  """The reference front-end (section 1) in torch: power STFT → triangular harmonic filters.

  State_dict keys as the reference's: `bw_Q` (learn_bw='only_Q') and `spec.window`; the centre
  frequencies and FFT bins are plain tensors there, so not saved (non-persistent here).
  """

  def __init__(self, n_harmonic: int, n_fft: int = N_FFT):
    super().__init__()
    self.n_harmonic = n_harmonic
    self.spec = Spectrogram(n_fft)
    self.bw_Q = nn.Parameter(torch.tensor([1.0]))
    low = 24  # C1
    high = int(round(12 * (np.log2(SR / (2 * n_harmonic)) - np.log2(440.0)) + 69))
    self.level = (high - low) * 2
    midi = torch.linspace(low, high, self.level + 1, dtype=torch.float64)[:-1]
    f0 = 440.0 * 2.0 ** ((midi - 69.0) / 12.0)
    self.register_buffer('centres', torch.cat([f0 * (h + 1) for h in range(n_harmonic)]).float(),
                         persistent=False)
    self.register_buffer('bins', torch.linspace(0, SR // 2, n_fft // 2 + 1), persistent=False)

  def forward(self, x):
    spec = self.spec(x)
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
  """sota's HarmonicCNN layout and attribute names (so its state_dict keys), at any width."""

  def __init__(self, n_channels, n_class, n_harmonic, n_fft: int = N_FFT):
    super().__init__()
    c = n_channels
    self.hstft = HarmonicSTFT(n_harmonic, n_fft)
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


def measure(batch: int, mode: str, steps: int, warmup: int = 5, length: int = 80_000,
            width: int = 128, classes: int = 50) -> dict:
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.manual_seed(0)
  model = HarmonicCNN(width, classes, 6).to(device)
  bf16 = mode == 'bf16'
  if bf16:
    model = model.to(memory_format=torch.channels_last)
  opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
  loss_fn = nn.BCELoss()
  x = torch.rand(batch, length, device=device) * 2 - 1
  y = (torch.rand(batch, classes, device=device) < 0.1).float()

  def train_step():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
      out = model(x)
    loss = loss_fn(out.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

  def timed(fn):
    for _ in range(warmup):
      fn()
    if device == 'cuda':
      torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
      fn()
    if device == 'cuda':
      torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps

  model.train()
  train_s = timed(train_step)
  model.eval()

  @torch.no_grad()
  def infer():
    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
      model(x)
  infer_s = timed(infer)
  return {'batch': batch, 'mode': mode, 'train_clips_per_s': batch / train_s,
          'infer_clips_per_s': batch / infer_s, 'device': torch.cuda.get_device_name()
          if device == 'cuda' else 'cpu', 'torch': torch.__version__}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', default='16,128')
  parser.add_argument('--modes', default='fp32,bf16')
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--json', default=None)
  args = parser.parse_args(argv)
  rows = []
  for mode in args.modes.split(','):
    for batch in (int(b) for b in args.batch.split(',')):
      rows.append(measure(batch, mode, args.steps))
      print(json.dumps(rows[-1]), flush=True)
  print('\n| PyTorch twin | batch | train clips/s | infer clips/s |\n|---|---|---|---|')
  for r in rows:
    print(f"| {r['mode']} | {r['batch']} | {r['train_clips_per_s']:,.0f} | "
          f"{r['infer_clips_per_s']:,.0f} |")
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(rows, f, indent=2)
  return rows


if __name__ == '__main__':
  main()
