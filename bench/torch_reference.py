"""The two pose networks in PyTorch, for speed baselines on the same machine.

Built from our config (`config.model`), loading our variables through the official key
layout (`convert.to_official`), so the PyTorch model computes what ours computes; the
architecture follows the HRNet and HigherHRNet papers and their public code (stem, layer1
Bottlenecks, exchange units with nearest upsampling and strided 3x3 downsampling, the
transposed-conv higher-resolution head, the top-down 1x1 head). `check()` runs it on the
official fixtures' tiny input and weights and compares with the official outputs before
anything is timed.

Optional: needs `torch` (the `bench` extra); nothing in the package or the tests imports
this file.

  python bench/torch_reference.py          # the fixture check, prints the max differences
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from higherhrnet_jax import convert  # noqa: E402

BN_EPS = 1e-5


def _bn(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, eps=BN_EPS)


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
  return nn.Conv2d(cin, cout, 3, stride, 1, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin: int, c: int, downsample: nn.Module | None = None):
    super().__init__()
    self.conv1, self.bn1 = _conv3x3(cin, c), _bn(c)
    self.conv2, self.bn2 = _conv3x3(c, c), _bn(c)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    skip = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(y)) + skip)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin: int, c: int, downsample: nn.Module | None = None):
    super().__init__()
    self.conv1, self.bn1 = nn.Conv2d(cin, c, 1, bias=False), _bn(c)
    self.conv2, self.bn2 = _conv3x3(c, c), _bn(c)
    self.conv3, self.bn3 = nn.Conv2d(c, 4 * c, 1, bias=False), _bn(4 * c)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    skip = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    return self.relu(self.bn3(self.conv3(y)) + skip)


BLOCKS = {'BASIC': BasicBlock, 'BOTTLENECK': Bottleneck}


def _blocks(block, cin: int, c: int, n: int) -> nn.Sequential:
  down = None
  if cin != c * block.expansion:
    down = nn.Sequential(nn.Conv2d(cin, c * block.expansion, 1, bias=False),
                         _bn(c * block.expansion))
  layers = [block(cin, c, down)] + [block(c * block.expansion, c) for _ in range(n - 1)]
  return nn.Sequential(*layers)


class ExchangeModule(nn.Module):
  """One HRNet module: parallel branches, then every output sums all resolutions."""

  def __init__(self, block, num_blocks: Sequence[int], cins: Sequence[int],
               channels: Sequence[int], multi_scale_output: bool):
    super().__init__()
    n = len(channels)
    self.branches = nn.ModuleList(
        [_blocks(block, cins[i], channels[i], num_blocks[i]) for i in range(n)])
    outs = [c * block.expansion for c in channels]
    self.out_channels = outs
    fuse = []
    for i in range(n if multi_scale_output else 1):
      row = []
      for j in range(n):
        if j > i:
          row.append(nn.Sequential(nn.Conv2d(outs[j], outs[i], 1, bias=False), _bn(outs[i]),
                                   nn.Upsample(scale_factor=2 ** (j - i), mode='nearest')))
        elif j == i:
          row.append(None)
        else:
          steps = []
          for k in range(i - j):
            last = k == i - j - 1
            cout = outs[i] if last else outs[j]
            step = [_conv3x3(outs[j], cout, 2), _bn(cout)] + ([] if last else [nn.ReLU(True)])
            steps.append(nn.Sequential(*step))
          row.append(nn.Sequential(*steps))
      fuse.append(nn.ModuleList(row))
    self.fuse_layers = nn.ModuleList(fuse)
    self.relu = nn.ReLU(inplace=False)

  def forward(self, xs):
    xs = [b(x) for b, x in zip(self.branches, xs)]
    if len(xs) == 1:
      return xs
    out = []
    for i, row in enumerate(self.fuse_layers):
      y = xs[0] if i == 0 else row[0](xs[0])
      for j in range(1, len(xs)):
        y = y + (xs[j] if i == j else row[j](xs[j]))
      out.append(self.relu(y))
    return out


def _transition(cins: Sequence[int], couts: Sequence[int]) -> nn.ModuleList:
  layers = []
  for i, cout in enumerate(couts):
    if i < len(cins):
      layers.append(None if cins[i] == cout else nn.Sequential(
          _conv3x3(cins[i], cout), _bn(cout), nn.ReLU(True)))
    else:
      steps = []
      for k in range(i + 1 - len(cins)):
        cin = cins[-1]
        c = cout if k == i - len(cins) else cin
        steps.append(nn.Sequential(_conv3x3(cin, c, 2), _bn(c), nn.ReLU(True)))
      layers.append(nn.Sequential(*steps))
  return nn.ModuleList(layers)


class Backbone(nn.Module):
  """Stem, layer1 and stages 2-4; returns the stage-4 branch outputs (only the first one
  from the last module, as both pose heads read only that)."""

  def __init__(self, m: Mapping[str, Any]):
    super().__init__()
    stem = int(m['stem_channels'])
    self.conv1, self.bn1 = _conv3x3(3, stem, 2), _bn(stem)
    self.conv2, self.bn2 = _conv3x3(stem, stem, 2), _bn(stem)
    self.relu = nn.ReLU(inplace=True)
    s1 = m['stage1']
    block1 = BLOCKS[s1['block']]
    self.layer1 = _blocks(block1, stem, int(s1['num_channels'][0]), int(s1['num_blocks'][0]))
    cins = [int(s1['num_channels'][0]) * block1.expansion]
    for s in (2, 3, 4):
      cfg = m[f'stage{s}']
      block = BLOCKS[cfg['block']]
      channels = [int(c) * block.expansion for c in cfg['num_channels']]
      setattr(self, f'transition{s - 1}', _transition(cins, channels))
      modules = []
      cur = channels
      for k in range(int(cfg['num_modules'])):
        last = s == 4 and k == int(cfg['num_modules']) - 1
        mod = ExchangeModule(block, [int(b) for b in cfg['num_blocks']], cur,
                             [int(c) for c in cfg['num_channels']], not last)
        cur = mod.out_channels
        modules.append(mod)
      setattr(self, f'stage{s}', nn.Sequential(*modules))
      cins = cur
    self.out_channels = cins[0]

  def stem(self, x):
    x = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(x)))

  def stage(self, s: int, ys):
    """Stage `s` (2-4) with the transition before it, from the previous branch outputs."""
    trans = getattr(self, f'transition{s - 1}')
    # As the official code: every transition reads the last branch (the only one that
    # changes width in these layouts is a new branch, or stage 2's from layer1).
    xs = [ys[i] if t is None else t(ys[-1]) for i, t in enumerate(trans)]
    return getattr(self, f'stage{s}')(xs)

  def forward(self, x):
    ys = [self.layer1(self.stem(x))]
    for s in (2, 3, 4):
      ys = self.stage(s, ys)
    return ys[0]


class HigherHRNetTorch(Backbone):
  """HigherHRNet: 1/4 heatmaps + tags, then transposed-conv stages at higher resolution."""

  def __init__(self, m: Mapping[str, Any]):
    super().__init__(m)
    k = int(m['num_joints'])
    ae = list(m['with_ae_loss'])
    per_joint = bool(m['tag_per_joint'])
    outs = [k + (k if per_joint else 1) if ae[i] else k for i in range(len(ae))]
    fk = int(m['final_conv_kernel'])
    pad = 1 if fk == 3 else 0
    d = m['deconv']
    c0 = self.out_channels
    finals = [nn.Conv2d(c0, outs[0], fk, 1, pad)]
    deconvs = []
    cin = c0
    for i in range(int(d['num_deconvs'])):
      if d['cat_output'][i]:
        cin += outs[i]
      c = int(d['num_channels'][i])
      assert int(d['kernel_size'][i]) == 4
      layers = [nn.Sequential(nn.ConvTranspose2d(cin, c, 4, 2, 1, 0, bias=False), _bn(c),
                              nn.ReLU(True))]
      layers += [nn.Sequential(BasicBlock(c, c)) for _ in range(int(d['num_basic_blocks']))]
      deconvs.append(nn.Sequential(*layers))
      finals.append(nn.Conv2d(c, outs[i + 1], fk, 1, pad))
      cin = c
    self.final_layers = nn.ModuleList(finals)
    self.deconv_layers = nn.ModuleList(deconvs)
    self.cat_output = [bool(v) for v in d['cat_output']]

  def forward(self, x):
    return self.head(super().forward(x))

  def head(self, x):
    """The 1/4 prediction, then each deconv stage, from the backbone's first branch."""
    y = self.final_layers[0](x)
    outputs = [y]
    for i, deconv in enumerate(self.deconv_layers):
      if self.cat_output[i]:
        x = torch.cat((x, y), 1)
      x = deconv(x)
      y = self.final_layers[i + 1](x)
      outputs.append(y)
    return outputs


class PoseHRNetTorch(Backbone):
  """Top-down HRNet: one conv from the 1/4 branch to K heatmaps."""

  def __init__(self, m: Mapping[str, Any]):
    super().__init__(m)
    fk = int(m['final_conv_kernel'])
    self.final_layer = nn.Conv2d(self.out_channels, int(m['num_joints']), fk, 1,
                                 1 if fk == 3 else 0)

  def forward(self, x):
    return [self.final_layer(super().forward(x))]


def build(model_config: Mapping[str, Any], variables: Mapping[str, Any] | None = None,
          channels_last: bool = False) -> nn.Module:
  """The PyTorch twin of `models.build(model_config)`, in eval mode, with `variables`."""
  cls = PoseHRNetTorch if model_config['name'] == 'pose_hrnet' else HigherHRNetTorch
  net = cls(model_config).eval()
  if variables is not None:
    state = {k: torch.from_numpy(np.array(v, copy=True))
             for k, v in convert.to_official(variables).items()}
    net.load_state_dict(state, strict=True)
  if channels_last:
    net = net.to(memory_format=torch.channels_last)
  return net


def check(shared: pathlib.Path = REPO.parent / 'shared') -> dict[str, float]:
  """Max |difference| / max |official| of the twins on the official tiny fixtures."""
  from higherhrnet_jax import config as config_lib, weights

  cases = {
      'higher_hrnet': (REPO / 'configs' / 'tiny.py', shared / 'fixtures' / 'official',
                       ('output_0', 'output_1')),
      'pose_hrnet': (REPO / 'configs' / 'coco' / 'hrnet_tiny.py',
                     shared / 'fixtures' / 'official_topdown', ('output',)),
  }
  result = {}
  for name, (config_file, fixtures, keys) in cases.items():
    config = config_lib.load_config(config_file)
    variables = weights.load(fixtures / 'tiny_state_dict.npz', config.model)
    ref = np.load(fixtures / 'tiny_eval.npz')
    for channels_last in (False, True):
      net = build(config.model, variables, channels_last)
      x = torch.from_numpy(ref['input'])
      if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
      with torch.no_grad():
        outs = net(x)
      for key, out in zip(keys, outs):
        want = ref[key]
        err = float(np.abs(out.numpy() - want).max() / np.abs(want).max())
        result[f'{name}/{key}/{"nhwc" if channels_last else "nchw"}'] = err
  return result


if __name__ == '__main__':
  errors = check()
  for k, v in errors.items():
    print(f'{k}: max |diff| / max |official| = {v:.2e}')
  # float32 convolutions summed in another order: a few ulps of the output scale.
  bad = {k: v for k, v in errors.items() if not v < 1e-5}
  if bad:
    raise SystemExit(f'the PyTorch reference does not reproduce the official outputs: {bad}')
  print('ok')
