"""A tiny PyTorch twin of the ICASSP 2020 repository's Harmonic CNN, for the importer.

Built from the public source's documented names (minzwon/data-driven-harmonic-filters,
training/model.py `Model`, training/modules.py `ResNet_mtat/_dcase/_keyword`, `Conv3_2d`,
`Conv3_2d_resmp`): the same network as sota's HarmonicCNN (bench/torch_hcnn.py) under other names,
so its state_dict keys are `hstft.bw_Q`, `hstft.spec.window`, `hstft_bn.*`, `conv_2d.res1..7.*`,
`conv_2d.fc_1`, `conv_2d.bn`, `conv_2d.fc_2`.
"""
from __future__ import annotations

import torch
from torch import nn

from _torch_twins import N_FFT  # tests/tools/_torch_twins.py
from bench import torch_hcnn  # the HarmonicSTFT and blocks of sota's HarmonicCNN twin

# ddhf's time pools of res6 / res7 per dataset head (the pitch pool is 2 everywhere).
DDHF_POOLS = {'mtat': ((2, 3), (2, 3)), 'dcase': (2, 2), 'keyword': (2, (2, 1))}


class DDHFResNet(nn.Module):
  """ResNet_<dataset>: res1 Conv3_2d, res2-4 Conv3_2d_resmp, res5 Conv3_2d (2·width), res6-7
  Conv3_2d_resmp; fc_1 → bn → relu → dropout → fc_2 (→ sigmoid, except the keyword head)."""

  def __init__(self, n_harmonic, width, n_class, dataset='mtat'):
    super().__init__()
    c, (pool6, pool7) = width, DDHF_POOLS[dataset]
    self.res1 = torch_hcnn.Conv_2d(n_harmonic, c, 2)
    self.res2 = torch_hcnn.Res_2d_mp(c, 2)
    self.res3 = torch_hcnn.Res_2d_mp(c, 2)
    self.res4 = torch_hcnn.Res_2d_mp(c, 2)
    self.res5 = torch_hcnn.Conv_2d(c, 2 * c, 2)
    self.res6 = torch_hcnn.Res_2d_mp(2 * c, pool6)
    self.res7 = torch_hcnn.Res_2d_mp(2 * c, pool7)
    self.fc_1 = nn.Linear(2 * c, 2 * c)
    self.bn = nn.BatchNorm1d(2 * c)
    self.fc_2 = nn.Linear(2 * c, n_class)
    self.dropout = nn.Dropout(0.5)
    self.sigmoid = dataset != 'keyword'

  def forward(self, x):
    for i in range(1, 8):
      x = getattr(self, f'res{i}')(x)
    x = x.squeeze(2)
    if x.size(-1) != 1:
      x = nn.MaxPool1d(x.size(-1))(x)
    x = self.fc_2(self.dropout(torch.relu(self.bn(self.fc_1(x.squeeze(2))))))
    return torch.sigmoid(x) if self.sigmoid else x


class DDHFModel(nn.Module):
  """ddhf's `Model`: hstft (its Spectrogram window saved as `hstft.spec.window`), hstft_bn,
  conv_2d = ResNet_<dataset>."""

  def __init__(self, width, n_class, n_harmonic=6, dataset='mtat', n_fft=N_FFT):
    super().__init__()
    self.hstft = torch_hcnn.HarmonicSTFT(n_harmonic, n_fft)
    self.hstft_bn = nn.BatchNorm2d(n_harmonic)
    self.conv_2d = DDHFResNet(n_harmonic, width, n_class, dataset)

  def forward(self, x):
    return self.conv_2d(self.hstft_bn(self.hstft(x)))

