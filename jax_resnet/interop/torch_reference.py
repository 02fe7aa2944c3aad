"""PyTorch reference networks for the equivalence tests and the benchmark.

PyTorch is a test extra (requirements-test.txt), not a dependency of the
package; only the tests and ``jax_resnet.bench.benchmark`` import this module.

Written the way PyTorch CIFAR code usually writes them, so that their
``state_dict`` keys and initialisation are the ones real checkpoints and
training scripts have:

- CIFAR ResNet: ``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``linear``;
  option-A shortcuts are a ``LambdaLayer`` that subsamples and pads
  ``planes // 4`` zero channels on each side, option B is ``shortcut.0`` (1x1
  conv) + ``shortcut.1`` (BN), option D ``shortcut.1`` (1x1 conv after
  ``shortcut.0``, an average pool) + ``shortcut.2`` (BN); kaiming_normal_
  (fan_in) convolution and linear weights. The same module with 64..512
  planes is ResNet-18 / PreAct-ResNet-18 (whose projection is a bare 1x1
  ``shortcut.0``).
- Wide ResNet: ``conv1``, ``block{s}.layer.{k}`` with ``convShortcut``, a
  final ``bn1`` and ``fc``; kaiming_normal_ (fan_out) convolutions, zero
  linear bias.
- PyramidNet: ``conv1``, ``bn1``, ``layer{s}.{k}``, ``bn_final``, ``fc``;
  average-pool + zero-channel shortcuts; N(0, 2 / fan_out) convolutions.
- DenseNet-BC: ``conv1``, ``block{s}.layer.{l}``, ``trans{s}``, ``bn1``, ``fc``;
  N(0, 2 / fan_out) convolutions, zero linear bias.
"""

import math

import torch
from torch import nn
import torch.nn.functional as F


class LambdaLayer(nn.Module):
  """Wraps a function as a module (the option-A shortcut)."""

  def __init__(self, fn):
    super().__init__()
    self.fn = fn

  def forward(self, x):
    return self.fn(x)


def make_shortcut(in_planes: int, out_planes: int, stride: int,
                  option: str) -> nn.Module:
  """Identity, option A, B (1x1 conv + BN), 'conv' (1x1 conv alone) or 'D'
  (ResNeSt's avg_down: ``shortcut.0`` average pool, ``shortcut.1`` 1x1 conv at
  stride 1, ``shortcut.2`` BN)."""
  if stride == 1 and in_planes == out_planes:
    return nn.Sequential()
  if option == 'A':
    planes = out_planes
    return LambdaLayer(lambda x: F.pad(
        x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), 'constant',
        0))
  if option == 'D':
    pool = (nn.AvgPool2d(stride, stride, ceil_mode=True,
                         count_include_pad=False) if stride > 1
            else nn.Identity())
    return nn.Sequential(
        pool, nn.Conv2d(in_planes, out_planes, 1, bias=False),
        nn.BatchNorm2d(out_planes))
  projection = [nn.Conv2d(in_planes, out_planes, 1, stride=stride,
                          bias=False)]
  if option == 'B':
    projection.append(nn.BatchNorm2d(out_planes))
  return nn.Sequential(*projection)


def drop_branch(branch: torch.Tensor, survival_probability: float,
                training: bool) -> torch.Tensor:
  """Stochastic depth: keep the branch with probability p; times p in eval."""
  if survival_probability >= 1.0:
    return branch
  if not training:
    return branch * survival_probability
  keep = torch.bernoulli(torch.tensor(survival_probability))
  return branch * keep


class BasicBlock(nn.Module):
  """conv-BN-ReLU-conv-BN, add, ReLU."""

  expansion = 1
  preactivation = False

  def __init__(self, in_planes, planes, stride=1, option='A',
               survival_probability=1.0):
    super().__init__()
    self.survival_probability = survival_probability
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1,
                           bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = make_shortcut(in_planes, planes, stride, option)

  def branch(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    return self.bn2(self.conv2(out))

  def forward(self, x):
    out = drop_branch(self.branch(x), self.survival_probability,
                      self.training)
    return F.relu(self.shortcut(x) + out)


class GatedBlock(BasicBlock):
  """ReZero: the residual branch times a learnable scalar that starts at 0."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.gate = nn.Parameter(torch.zeros(()))

  def branch(self, x):
    return super().branch(x) * self.gate


class SqueezeExcitation(nn.Module):
  """Channel gates from the pooled map through two biased 1x1 convolutions."""

  def __init__(self, channels, reduction):
    super().__init__()
    hidden = max(1, channels // reduction)
    self.reduce = nn.Conv2d(channels, hidden, 1)
    self.expand = nn.Conv2d(hidden, channels, 1)

  def forward(self, x):
    s = F.adaptive_avg_pool2d(x, 1)
    return x * torch.sigmoid(self.expand(F.relu(self.reduce(s))))


class SEBasicBlock(BasicBlock):
  """Basic block with squeeze-and-excitation on its branch."""

  def __init__(self, in_planes, planes, stride=1, option='A',
               survival_probability=1.0, se_reduction=16):
    super().__init__(in_planes, planes, stride, option, survival_probability)
    self.se = SqueezeExcitation(planes, se_reduction)

  def branch(self, x):
    return self.se(super().branch(x))


class PlainBlock(nn.Module):
  """conv-BN-ReLU-conv-BN-ReLU, no shortcut (He et al.'s plain network)."""

  expansion = 1
  preactivation = False

  def __init__(self, in_planes, planes, stride=1, option='A',
               survival_probability=1.0):
    super().__init__()
    del option, survival_probability
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1,
                           bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    return F.relu(self.bn2(self.conv2(out)))


class PreActBlock(nn.Module):
  """BN-ReLU-conv-BN-ReLU-conv, add; a projection sees the activated input."""

  expansion = 1
  preactivation = True

  def __init__(self, in_planes, planes, stride=1, option='A',
               survival_probability=1.0):
    super().__init__()
    self.survival_probability = survival_probability
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
    self.projects = stride != 1 or in_planes != planes
    if self.projects:
      self.shortcut = make_shortcut(in_planes, planes, stride, option)

  def forward(self, x):
    out = F.relu(self.bn1(x))
    shortcut = self.shortcut(out) if self.projects else x
    out = self.conv1(out)
    out = self.conv2(F.relu(self.bn2(out)))
    return shortcut + drop_branch(out, self.survival_probability,
                                  self.training)


class Bottleneck(nn.Module):
  """1x1-3x3-1x1 with expansion 4, stride on the 3x3, option-B projection.

  ``groups`` > 1 makes it the ResNeXt block (grouped 3x3 of ``width``
  channels); ``se_reduction`` adds squeeze-and-excitation.
  """

  expansion = 4
  preactivation = False

  def __init__(self, in_planes, planes, stride=1, option='B',
               survival_probability=1.0, width=None, groups=1,
               se_reduction=None):
    super().__init__()
    self.survival_probability = survival_probability
    out_planes = planes * self.expansion
    width = width or planes
    self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1,
                           groups=groups, bias=False)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out_planes)
    if se_reduction:
      self.se = SqueezeExcitation(out_planes, se_reduction)
    self.shortcut = make_shortcut(in_planes, out_planes, stride, option)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if hasattr(self, 'se'):
      out = self.se(out)
    out = drop_branch(out, self.survival_probability, self.training)
    return F.relu(self.shortcut(x) + out)


class ResNeXtBottleneck(Bottleneck):
  """Bottleneck with ``cardinality`` groups of ``planes * base_width / 64``."""

  def __init__(self, in_planes, planes, stride=1, option='B',
               survival_probability=1.0, cardinality=8, base_width=64):
    super().__init__(in_planes, planes, stride, option, survival_probability,
                     width=planes * base_width // 64 * cardinality,
                     groups=cardinality)


class SEBottleneck(Bottleneck):
  """Bottleneck with squeeze-and-excitation on its branch."""

  def __init__(self, in_planes, planes, stride=1, option='B',
               survival_probability=1.0, se_reduction=16):
    super().__init__(in_planes, planes, stride, option, survival_probability,
                     se_reduction=se_reduction)


class Bottle2neck(nn.Module):
  """Res2Net bottleneck: the 3x3 stage as ``scale`` chained splits.

  ``convs.{i}`` / ``bns.{i}`` convolve split i (plus the previous output,
  except in a stage's first block, whose last split is average-pooled).
  """

  expansion = 4
  preactivation = False

  def __init__(self, in_planes, planes, stride=1, option='B',
               survival_probability=1.0, base_width=26, scale=4):
    super().__init__()
    del survival_probability
    out_planes = planes * self.expansion
    self.width = planes * base_width // 64
    self.scale = scale
    self.first_of_stage = stride != 1 or in_planes != out_planes
    self.conv1 = nn.Conv2d(in_planes, self.width * scale, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(self.width * scale)
    self.nums = max(scale - 1, 1)
    self.convs = nn.ModuleList([
        nn.Conv2d(self.width, self.width, 3, stride=stride, padding=1,
                  bias=False) for _ in range(self.nums)])
    self.bns = nn.ModuleList([nn.BatchNorm2d(self.width)
                              for _ in range(self.nums)])
    if self.first_of_stage:
      self.pool = nn.AvgPool2d(3, stride=stride, padding=1)
    self.conv3 = nn.Conv2d(self.width * scale, out_planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out_planes)
    self.shortcut = make_shortcut(in_planes, out_planes, stride, option)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    splits = torch.split(out, self.width, 1)
    outputs = []
    for i in range(self.nums):
      sp = splits[i] if i == 0 or self.first_of_stage else sp + splits[i]
      sp = F.relu(self.bns[i](self.convs[i](sp)))
      outputs.append(sp)
    if self.scale > 1:
      last = splits[self.nums]
      outputs.append(self.pool(last) if self.first_of_stage else last)
    out = self.bn3(self.conv3(torch.cat(outputs, 1)))
    return F.relu(self.shortcut(x) + out)


class SplitAttentionConv(nn.Module):
  """ResNeSt split attention: ``radix`` grouped 3x3 maps fused by attention."""

  def __init__(self, channels, stride, radix, cardinality, reduction=4):
    super().__init__()
    self.radix, self.cardinality, self.channels = radix, cardinality, channels
    inter = max(channels * radix // reduction, 32)
    self.conv = nn.Conv2d(channels, channels * radix, 3, stride=stride,
                          padding=1, groups=cardinality * radix, bias=False)
    self.bn0 = nn.BatchNorm2d(channels * radix)
    self.fc1 = nn.Conv2d(channels, inter, 1, groups=cardinality)
    self.bn1 = nn.BatchNorm2d(inter)
    self.fc2 = nn.Conv2d(inter, channels * radix, 1, groups=cardinality)

  def forward(self, x):
    x = F.relu(self.bn0(self.conv(x)))
    batch = x.shape[0]
    splits = torch.split(x, self.channels, 1)
    gap = F.adaptive_avg_pool2d(sum(splits), 1)
    attention = self.fc2(F.relu(self.bn1(self.fc1(gap))))
    if self.radix > 1:
      # (batch, cardinality, radix, c) -> softmax over radix, radix-major.
      attention = attention.view(batch, self.cardinality, self.radix, -1)
      attention = F.softmax(attention.transpose(1, 2), dim=1)
      attention = attention.reshape(batch, -1, 1, 1)
    else:
      attention = torch.sigmoid(attention)
    weights = torch.split(attention, self.channels, 1)
    return sum(w * s for w, s in zip(weights, splits))


class SplitAttentionBottleneck(nn.Module):
  """ResNeSt bottleneck: 1x1, split-attention 3x3 (``conv2``), 1x1."""

  expansion = 4
  preactivation = False

  def __init__(self, in_planes, planes, stride=1, option='B',
               survival_probability=1.0, radix=2, cardinality=1,
               base_width=64, avd=True, avd_first=False):
    super().__init__()
    del survival_probability
    out_planes = planes * self.expansion
    width = planes * base_width // 64 * cardinality
    self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    # ResNeSt's avd: a strided block pools instead of striding conv2.
    self.avd = avd and stride > 1
    self.avd_first = avd_first
    if self.avd:
      self.avd_layer = nn.AvgPool2d(3, stride, padding=1)
    self.conv2 = SplitAttentionConv(width, 1 if self.avd else stride, radix,
                                    cardinality)
    self.conv3 = nn.Conv2d(width, out_planes, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out_planes)
    self.shortcut = make_shortcut(in_planes, out_planes, stride, option)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    if self.avd and self.avd_first:
      out = self.avd_layer(out)
    out = self.conv2(out)
    if self.avd and not self.avd_first:
      out = self.avd_layer(out)
    out = self.bn3(self.conv3(out))
    return F.relu(self.shortcut(x) + out)


def weights_init(module: nn.Module):
  """kaiming_normal_ (fan_in, ReLU gain) on conv and linear weights."""
  if isinstance(module, (nn.Linear, nn.Conv2d)):
    nn.init.kaiming_normal_(module.weight)


class ResNet(nn.Module):
  """3x3 stem, stages of blocks (the first of stages 2.. strides), pool, linear.

  Pre-activation blocks drop the stem BN and end with ``bn`` + ReLU.
  """

  def __init__(self, block, num_blocks, num_classes=10, option='A',
               final_survival_probability=1.0, stage_planes=(16, 32, 64),
               stem_planes=None, kaiming_init=True, **block_kwargs):
    super().__init__()
    self.preactivation = block.preactivation
    self.in_planes = stem_planes or stage_planes[0]
    self.conv1 = nn.Conv2d(3, self.in_planes, 3, stride=1, padding=1,
                           bias=False)
    if not self.preactivation:
      self.bn1 = nn.BatchNorm2d(self.in_planes)
    total = sum(num_blocks)
    survival = [1.0 - (l / total) * (1.0 - final_survival_probability)
                for l in range(1, total + 1)]
    start = 0
    for stage, (size, planes) in enumerate(zip(num_blocks, stage_planes)):
      layers = []
      for b in range(size):
        layers.append(block(self.in_planes, planes,
                            2 if stage > 0 and b == 0 else 1, option=option,
                            survival_probability=survival[start + b],
                            **block_kwargs))
        self.in_planes = planes * block.expansion
      setattr(self, f'layer{stage + 1}', nn.Sequential(*layers))
      start += size
    self.num_stages = len(num_blocks)
    if self.preactivation:
      self.bn = nn.BatchNorm2d(self.in_planes)
    self.linear = nn.Linear(self.in_planes, num_classes)
    if kaiming_init:  # Otherwise PyTorch's default init, as kuangliu's code.
      self.apply(weights_init)

  def forward(self, x):
    out = self.conv1(x)
    if not self.preactivation:
      out = F.relu(self.bn1(out))
    for stage in range(1, self.num_stages + 1):
      out = getattr(self, f'layer{stage}')(out)
    if self.preactivation:
      out = F.relu(self.bn(out))
    out = F.adaptive_avg_pool2d(out, 1).flatten(1)
    return self.linear(out)


BLOCKS = {
    'basic': BasicBlock,
    'preact': PreActBlock,
    'gated': GatedBlock,
    'stochastic_depth': BasicBlock,
    'bottleneck': Bottleneck,
    'plain': PlainBlock,
    'se': SEBasicBlock,
    'se_bottleneck': SEBottleneck,
    'resnext': ResNeXtBottleneck,
    'res2net': Bottle2neck,
    'split_attention': SplitAttentionBottleneck,
}


def cifar_resnet(block: str, depth: int, num_classes: int = 10,
                 option: str = 'A', final_survival_probability: float = 1.0,
                 **block_kwargs) -> ResNet:
  """The CIFAR ResNet matching ``config.model.block`` / ``depth``."""
  n = (depth - 2) // 6
  return ResNet(BLOCKS[block], (n, n, n), num_classes, option,
                final_survival_probability, **block_kwargs)


def resnet18(block: str = 'basic', num_classes: int = 10) -> ResNet:
  """ResNet-18 (option B) or PreAct-ResNet-18 (bare 1x1 projections)."""
  option = 'conv' if block == 'preact' else 'B'
  return ResNet(BLOCKS[block], (2, 2, 2, 2), num_classes, option,
                stage_planes=(64, 128, 256, 512), kaiming_init=False)


def resnext(depth: int, cardinality: int, base_width: int,
            num_classes: int = 10) -> ResNet:
  """ResNeXt-(9n+2): 64-channel stem, stages of 64/128/256 planes."""
  n = (depth - 2) // 9
  return ResNet(ResNeXtBottleneck, (n, n, n), num_classes, 'B',
                stage_planes=(64, 128, 256), stem_planes=64,
                cardinality=cardinality, base_width=base_width)


class WideBasic(nn.Module):
  """BN-ReLU-conv-BN-ReLU-dropout-conv; the projection sees the activation."""

  def __init__(self, in_planes, out_planes, stride, drop_rate=0.0):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(out_planes)
    self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1,
                           bias=False)
    self.drop_rate = drop_rate
    self.equal_in_out = in_planes == out_planes
    # The name real WRN checkpoints use.
    # pylint: disable-next=invalid-name
    self.convShortcut = None if self.equal_in_out else nn.Conv2d(
        in_planes, out_planes, 1, stride=stride, bias=False)

  def forward(self, x):
    activated = F.relu(self.bn1(x))
    out = F.relu(self.bn2(self.conv1(activated)))
    out = F.dropout(out, p=self.drop_rate, training=self.training)
    out = self.conv2(out)
    shortcut = x if self.equal_in_out else self.convShortcut(activated)
    return shortcut + out


class NetworkBlock(nn.Module):
  """A stage of wide blocks under ``layer``."""

  def __init__(self, num_layers, in_planes, out_planes, stride, drop_rate):
    super().__init__()
    self.layer = nn.Sequential(*[
        WideBasic(in_planes if i == 0 else out_planes, out_planes,
                  stride if i == 0 else 1, drop_rate)
        for i in range(num_layers)])

  def forward(self, x):
    return self.layer(x)


class WideResNet(nn.Module):
  """WRN-depth-k: 16-channel stem, three stages of 16k/32k/64k, BN-ReLU, fc."""

  def __init__(self, depth, widen_factor, num_classes=10, drop_rate=0.0):
    super().__init__()
    n = (depth - 4) // 6
    widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
    self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
    self.block1 = NetworkBlock(n, widths[0], widths[1], 1, drop_rate)
    self.block2 = NetworkBlock(n, widths[1], widths[2], 2, drop_rate)
    self.block3 = NetworkBlock(n, widths[2], widths[3], 2, drop_rate)
    self.bn1 = nn.BatchNorm2d(widths[3])
    self.fc = nn.Linear(widths[3], num_classes)
    for m in self.modules():
      if isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
      elif isinstance(m, nn.Linear):
        m.bias.data.zero_()

  def forward(self, x):
    out = self.block3(self.block2(self.block1(self.conv1(x))))
    out = F.relu(self.bn1(out))
    return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def _normal_fan_out(model: nn.Module):
  """N(0, 2 / (k * k * out_channels)) convolutions, BN 1 / 0."""
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
      m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
    elif isinstance(m, nn.BatchNorm2d):
      m.weight.data.fill_(1)
      m.bias.data.zero_()


class PyramidBlock(nn.Module):
  """A branch (subclasses) plus the pooled, zero-padded identity."""

  expansion = 1

  def __init__(self, stride):
    super().__init__()
    self.stride = stride

  def branch(self, x):
    raise NotImplementedError

  def forward(self, x):
    out = self.branch(x)
    shortcut = x
    if self.stride != 1:
      shortcut = F.avg_pool2d(x, 2, 2, ceil_mode=True)
    extra = out.shape[1] - shortcut.shape[1]
    if extra:
      zeros = shortcut.new_zeros(shortcut.shape[0], extra,
                                 *shortcut.shape[2:])
      shortcut = torch.cat([shortcut, zeros], 1)
    return out + shortcut


class PyramidBasic(PyramidBlock):
  """BN-conv-BN-ReLU-conv-BN."""

  def __init__(self, in_planes, planes, stride):
    super().__init__(stride)
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1,
                           bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes)

  def branch(self, x):
    out = self.conv1(self.bn1(x))
    return self.bn3(self.conv2(F.relu(self.bn2(out))))


class PyramidBottleneck(PyramidBlock):
  """BN-1x1-BN-ReLU-3x3-BN-ReLU-1x1(4x)-BN."""

  expansion = 4

  def __init__(self, in_planes, planes, stride):
    super().__init__(stride)
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1,
                           bias=False)
    self.bn3 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn4 = nn.BatchNorm2d(planes * 4)

  def branch(self, x):
    out = self.conv1(self.bn1(x))
    out = self.conv2(F.relu(self.bn2(out)))
    return self.bn4(self.conv3(F.relu(self.bn3(out))))


class PyramidNet(nn.Module):
  """Width grows by alpha / N per block; conv-BN stem, BN-ReLU before fc."""

  def __init__(self, depth, alpha, num_classes=10, bottleneck=False):
    super().__init__()
    block = PyramidBottleneck if bottleneck else PyramidBasic
    n = (depth - 2) // (9 if bottleneck else 6)
    add_rate = alpha / (3 * n)
    self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    width, in_planes = 16.0, 16
    for stage in range(3):
      layers = []
      for b in range(n):
        width += add_rate
        planes = int(round(width))
        layers.append(block(in_planes, planes, 2 if stage and b == 0 else 1))
        in_planes = planes * block.expansion
      setattr(self, f'layer{stage + 1}', nn.Sequential(*layers))
    self.bn_final = nn.BatchNorm2d(in_planes)
    self.fc = nn.Linear(in_planes, num_classes)
    _normal_fan_out(self)

  def forward(self, x):
    out = self.bn1(self.conv1(x))
    out = self.layer3(self.layer2(self.layer1(out)))
    out = F.relu(self.bn_final(out))
    return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


class DenseBottleneck(nn.Module):
  """BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), concatenated to the input."""

  def __init__(self, in_planes, growth_rate, drop_rate=0.0):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(4 * growth_rate)
    self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1,
                           bias=False)
    self.drop_rate = drop_rate

  def forward(self, x):
    out = self.conv1(F.relu(self.bn1(x)))
    out = F.dropout(out, p=self.drop_rate, training=self.training)
    out = self.conv2(F.relu(self.bn2(out)))
    out = F.dropout(out, p=self.drop_rate, training=self.training)
    return torch.cat([x, out], 1)


class Transition(nn.Module):
  """BN-ReLU-conv1x1, 2x2 average pool."""

  def __init__(self, in_planes, out_planes, drop_rate=0.0):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(in_planes)
    self.conv1 = nn.Conv2d(in_planes, out_planes, 1, bias=False)
    self.drop_rate = drop_rate

  def forward(self, x):
    out = self.conv1(F.relu(self.bn1(x)))
    out = F.dropout(out, p=self.drop_rate, training=self.training)
    return F.avg_pool2d(out, 2)


class DenseBlock(nn.Module):
  """``num_layers`` dense layers under ``layer``."""

  def __init__(self, num_layers, in_planes, growth_rate, drop_rate):
    super().__init__()
    self.layer = nn.Sequential(*[
        DenseBottleneck(in_planes + i * growth_rate, growth_rate, drop_rate)
        for i in range(num_layers)])

  def forward(self, x):
    return self.layer(x)


class DenseNetBC(nn.Module):
  """DenseNet-BC-depth: 2k stem, three dense blocks, compressing transitions."""

  def __init__(self, depth, growth_rate=12, reduction=0.5, num_classes=10,
               drop_rate=0.0):
    super().__init__()
    n = (depth - 4) // 6
    planes = 2 * growth_rate
    self.conv1 = nn.Conv2d(3, planes, 3, padding=1, bias=False)
    for stage in (1, 2, 3):
      setattr(self, f'block{stage}',
              DenseBlock(n, planes, growth_rate, drop_rate))
      planes += n * growth_rate
      if stage < 3:
        out_planes = int(math.floor(planes * reduction))
        setattr(self, f'trans{stage}',
                Transition(planes, out_planes, drop_rate))
        planes = out_planes
    self.bn1 = nn.BatchNorm2d(planes)
    self.fc = nn.Linear(planes, num_classes)
    _normal_fan_out(self)
    self.fc.bias.data.zero_()

  def forward(self, x):
    out = self.conv1(x)
    out = self.trans1(self.block1(out))
    out = self.trans2(self.block2(out))
    out = F.relu(self.bn1(self.block3(out)))
    return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
