"""Projected discriminator (Sauer et al. 2021, "Projected GANs Converge Faster"), conditioned by
projection on the pooled spike code.

D(img, pooled) -> one logit per image, the same call as gan.discriminator.Discriminator:
  1. images [B, 3, R, R] in [-1, 1] are resized (bilinear) to `backbone_resolution`;
  2. the frozen, pretrained EfficientNet-Lite0 (gan/efficientnet.py) gives four feature scales
     (strides 4, 8, 16, 32);
  3. random, fixed mixing (`RandomMixing`) projects them: cross-channel mixing (CCM, a 1x1 conv
     per scale) and cross-scale mixing (CSM, a top-down pyramid: each scale adds the upsampled
     mix of the coarser one, then a 1x1 conv);
  4. one small trainable head per scale (`ScaleHead`, Projected GAN's `SingleDisc`: spectral-norm
     convs, batch norm unless `batch_norm` is off, and leaky ReLU, halving the map down to
     `head_size`) ends in a conv
     whose output channels are one unconditional logit and a `cmap_dim` feature per cell;
  5. each head's logit is its cells' mean of unconditional + <feature, cmap> / sqrt(cmap_dim),
     where cmap is the head's own map of the pooled code (gan.generator.MappingNetwork, as in
     gan/discriminator.py); D's logit is the mean over the four heads.

Only the heads and the code mapping train (`parameters()`). The mixing is drawn from
`mixing_seed` and kept in buffers, so it is in the state dict and a resumed run sees the same
projection. The backbone's tensors are in neither: D runs a copy with batch norm folded into its
convolutions (gan.efficientnet.embedded_copy), held in non-persistent buffers, and every run loads
it from the installed weights package.

Unlike Projected GAN, the CSM output of each scale stays at that scale (an FPN); Projected GAN's
fusion blocks upsample every output 2x more, which quadruples the heads' work for no new
information (bilinear upsampling and a 1x1 conv commute).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .config import RESOLUTIONS
from .efficientnet import FEATURE_CHANNELS, EfficientNetLite0, embedded_copy, load_efficientnet_lite0
from .layers import LRELU_SLOPE, MappingNetwork

NUM_SCALES = len(FEATURE_CHANNELS)


@dataclass
class ProjectedDiscriminatorConfig:
    resolution: int = 32  # Input image resolution R.
    c_dim: int = 128  # Width of the conditioning code (== encoder.code_dim).
    # Images are resized (bilinear) to this before the feature network; Projected GAN uses 224.
    backbone_resolution: int = 64
    # Width of the random mixing: CCM gives (c, 2c, 4c, 8c) channels at strides 4..32, CSM (c, c, 2c, 4c)
    # (Projected GAN's cout 64 with expand).
    mix_channels: int = 64
    mixing_seed: int = 0  # Seed of the random, frozen CCM / CSM weights.
    head_channels: int = 64  # Width of every head's convs.
    head_size: int = 8  # Heads halve their map while it is larger than this (Projected GAN's end_sz).
    # Heads' convs depthwise-separable 3x3, halving by 2x2 average pool (Projected GAN's with StyleGAN2's G).
    separable: bool = False
    # Batch norm in the heads, as Projected GAN has them. Off (custom32), a logit depends on its own image
    # alone: with it, custom32's D told fakes from reals by batch statistics and its seeds collapsed more.
    batch_norm: bool = True
    # Add the residual StyleGAN2 D's logit on the pixels (the model's DiscriminatorConfig): the frozen
    # ImageNet features barely see colour (Kumari et al. 2022 keep a pixel D beside pretrained ones).
    pixel: bool = False
    cmap_dim: int = 64  # Width of each head's projection on the code.
    mapping_layers: int = 2  # Layers of the code -> cmap mapping.
    mapping_lr_mult: float = 0.01  # Learning-rate multiplier of that mapping.
    channels_last: bool = True  # Run convolutions in NHWC memory format.

    def __post_init__(self) -> None:
        if self.resolution not in RESOLUTIONS:
            raise ValueError(f"projected_discriminator.resolution must be one of {RESOLUTIONS}, got {self.resolution}")
        if not 32 <= self.backbone_resolution <= 512:
            raise ValueError(f"projected_discriminator.backbone_resolution must lie in [32, 512] (the coarsest "
                             f"feature scale is 1/32 of it), got {self.backbone_resolution}")
        for name in ("c_dim", "mix_channels", "head_channels", "cmap_dim", "mapping_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"projected_discriminator.{name} must be >= 1, got {getattr(self, name)}")
        if self.head_size < 1:
            raise ValueError(f"projected_discriminator.head_size must be >= 1, got {self.head_size}")

    def ccm_channels(self) -> tuple[int, ...]:
        """CCM output widths at strides 4, 8, 16, 32."""
        return tuple(self.mix_channels * 2**k for k in range(NUM_SCALES))

    def csm_channels(self) -> tuple[int, ...]:
        """CSM output widths at strides 4, 8, 16, 32 (the heads' inputs): each coarser scale's CSM
        output is as wide as the next finer scale's CCM output, which it is added to."""
        ccm = self.ccm_channels()
        return (ccm[0],) + ccm[:-1]

    def feature_sizes(self) -> tuple[int, ...]:
        """Side of the feature maps at strides 4, 8, 16, 32: every stride-2 step rounds up ('SAME'),
        and rounding up twice in a row is rounding up once: ceil(ceil(n / 2) / 2) = ceil(n / 4)."""
        return tuple(-(-self.backbone_resolution // stride) for stride in (4, 8, 16, 32))


def _uniform(shape: tuple[int, ...], bound: float, generator: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1).mul(bound).float()


class RandomMixing(nn.Module):
    """Fixed random CCM and CSM over the four feature scales (Projected GAN's `F_RandomProj`).

    Weights and biases are drawn like PyTorch's default conv initialisation, U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), from `seed` alone (not the global RNG), and stored as buffers."""

    def __init__(
        self,
        in_channels: tuple[int, ...],  # Backbone channels at strides 4, 8, 16, 32.
        ccm_channels: tuple[int, ...],  # CCM output channels per scale.
        csm_channels: tuple[int, ...],  # CSM output channels per scale.
        *,
        seed: int,  # Seed of the weights.
    ) -> None:
        super().__init__()
        assert len(in_channels) == len(ccm_channels) == len(csm_channels) == NUM_SCALES
        assert all(csm_channels[k + 1] == ccm_channels[k] for k in range(NUM_SCALES - 1)), (ccm_channels, csm_channels)
        g = torch.Generator().manual_seed(seed)
        for kind, ins, outs in (("ccm", in_channels, ccm_channels), ("csm", ccm_channels, csm_channels)):
            for k, (cin, cout) in enumerate(zip(ins, outs)):
                bound = 1 / math.sqrt(cin)
                self.register_buffer(f"{kind}{k}_weight", _uniform((cout, cin, 1, 1), bound, g))
                self.register_buffer(f"{kind}{k}_bias", _uniform((cout,), bound, g))

    def _conv(self, kind: str, k: int, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, getattr(self, f"{kind}{k}_weight"), getattr(self, f"{kind}{k}_bias"))

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Four maps [B, in_k, S_k, S_k] (fine to coarse) -> four [B, csm_k, S_k, S_k]."""
        ccm = [self._conv("ccm", k, f) for k, f in enumerate(feats)]
        out = [self._conv("csm", NUM_SCALES - 1, ccm[-1])]
        for k in range(NUM_SCALES - 2, -1, -1):  # top-down: add the coarser scale's mix, upsampled
            up = F.interpolate(out[0], size=ccm[k].shape[2:], mode="bilinear", align_corners=False)
            out.insert(0, self._conv("csm", k, ccm[k] + up))
        return out


def _sn_conv(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, groups: int = 1,
             bias: bool = True) -> nn.Module:
    return spectral_norm(nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=bias))


class HeadBlock(nn.Module):
    """Spectral-norm conv, batch norm (when `batch_norm`), leaky ReLU; halves the map when `down`
    (Projected GAN's `DownBlock`: a 4x4 stride-2 conv, or depthwise-separable 3x3 then a 2x2 average
    pool)."""

    def __init__(self, cin: int, cout: int, *, down: bool, separable: bool, batch_norm: bool) -> None:
        super().__init__()
        if separable:
            depthwise = _sn_conv(cin, cin, 3, padding=1, groups=cin, bias=False)
            conv = nn.Sequential(depthwise, _sn_conv(cin, cout, 1, bias=False))
        else:
            conv = _sn_conv(cin, cout, 4, stride=2, padding=1) if down else _sn_conv(cin, cout, 3, padding=1)
        self.conv, self.norm = conv, nn.BatchNorm2d(cout) if batch_norm else nn.Identity()
        self.pool = down and separable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, cin, S, S] -> [B, cout, S', S'], S' = S // 2 when down, else S."""
        x = F.leaky_relu(self.norm(self.conv(x)), LRELU_SLOPE)
        return F.avg_pool2d(x, 2) if self.pool else x


class ScaleHead(nn.Module):
    """One scale's discriminator: halving blocks while the map is larger than `head_size` (at
    least one block, at stride 1 when the map is already that small), then a conv of kernel
    min(4, S) to 1 + cmap_dim channels per cell."""

    def __init__(
        self,
        in_channels: int,  # Channels of the mixed features.
        size: int,  # Side S of the mixed feature map.
        *,
        channels: int,  # Width of the blocks.
        head_size: int,  # Halve while the map is larger than this.
        cmap_dim: int,  # Projection width.
        separable: bool,  # Depthwise-separable blocks?
        batch_norm: bool,  # Batch norm in the blocks?
    ) -> None:
        super().__init__()
        blocks, cin = [], in_channels
        while size > head_size or not blocks:
            down = size > head_size
            blocks.append(HeadBlock(cin, channels, down=down, separable=separable, batch_norm=batch_norm))
            cin, size = channels, size // 2 if down else size
        self.blocks = nn.Sequential(*blocks)
        self.out = _sn_conv(channels, 1 + cmap_dim, min(4, size), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, S, S] -> [B, 1 + cmap_dim] averaged over the output cells: the unconditional
        logit and the projection features (the cell mean commutes with the projection)."""
        return self.out(self.blocks(x)).mean(dim=(2, 3))


class ProjectedDiscriminator(nn.Module):
    """Frozen EfficientNet-Lite0 features, random fixed mixing, four trainable heads, projection
    on the pooled code."""

    def __init__(
        self,
        cfg: ProjectedDiscriminatorConfig,
        *,
        backbone: EfficientNetLite0 | None = None,  # A loaded network to copy (not changed), None = load the package's.
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = embedded_copy(backbone if backbone is not None else load_efficientnet_lite0())
        self.mixing = RandomMixing(FEATURE_CHANNELS, cfg.ccm_channels(), cfg.csm_channels(), seed=cfg.mixing_seed)
        self.heads = nn.ModuleList([
            ScaleHead(cin, size, channels=cfg.head_channels, head_size=cfg.head_size, cmap_dim=cfg.cmap_dim,
                      separable=cfg.separable, batch_norm=cfg.batch_norm)
            for cin, size in zip(cfg.csm_channels(), cfg.feature_sizes())
        ])
        self.cmap = MappingNetwork(
            z_dim=0, c_dim=cfg.c_dim, w_dim=NUM_SCALES * cfg.cmap_dim, num_ws=None, num_layers=cfg.mapping_layers,
            lr_mult=cfg.mapping_lr_mult, w_avg_beta=None,
        )
        if cfg.channels_last:  # conv weights in NHWC too, else every conv call converts them
            self.to(memory_format=torch.channels_last)

    def features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, R, R] in [-1, 1] -> the heads' inputs, four [B, csm_k, S_k, S_k] (fine to coarse)."""
        B, R, S = img.shape[0], self.cfg.resolution, self.cfg.backbone_resolution
        assert img.shape == (B, 3, R, R), (tuple(img.shape), R)
        if S != R:
            img = F.interpolate(img, size=(S, S), mode="bilinear", align_corners=False, antialias=S < R)
        if self.cfg.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        return self.mixing(self.backbone.features(img))

    def forward(
        self, img: torch.Tensor, pooled: torch.Tensor, *, pairs: bool = False, words: bool = False,
    ) -> torch.Tensor:
        """img [B, 3, R, R] in [-1, 1], pooled [B, c_dim] -> logits [B] (pairs=True: pooled may hold
        any N prompts, logits [B, N], entry [i, j] scores image i under prompt j); words=True is
        refused (no word classifier). In training mode the heads' batch norm, if any, needs B >= 2."""
        if words:
            raise ValueError("the projected discriminator has no word classifier (loss.word_weight must be 0)")
        B, N = img.shape[0], pooled.shape[0]
        assert pooled.ndim == 2 and pooled.shape[1] == self.cfg.c_dim and (pairs or N == B), (
            tuple(pooled.shape), B, self.cfg.c_dim)
        d = self.cfg.cmap_dim
        cmaps = self.cmap(None, pooled).view(N, NUM_SCALES, d)  # [N, scales, d]
        logits = []
        for k, (head, x) in enumerate(zip(self.heads, self.features(img))):
            out = head(x)  # [B, 1 + d]
            uncond, feat, cmap = out[:, 0], out[:, 1:], cmaps[:, k].to(out.dtype)
            if pairs:
                logits.append(uncond[:, None] + feat @ cmap.T / math.sqrt(d))  # [B, N]
            else:
                logits.append(uncond + (feat * cmap).sum(dim=1) / math.sqrt(d))  # [B]
        return torch.stack(logits).mean(dim=0)
