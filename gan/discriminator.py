"""Residual StyleGAN2 discriminator with projection conditioning on the pooled spike code.

D(img, pooled) -> one logit per image. D(img, pooled, pairs=True) -> a [B, N] matrix scoring
every image under every prompt (row i: image i; with N == B the diagonal is D(img, pooled)), at
the cost of one forward: what the matching-aware and contrastive loss terms read.

With `word_classes` > 0, D also holds a word classifier (AC-GAN's auxiliary classifier, for
captions: one logit per vocabulary entry, "does the caption of this image contain this word?"):
one linear layer on the features the projection reads (AC-GAN's shared trunk), so the word loss
teaches D's own features every word and the projection can then check them. D(..., words=True)
returns (logits, word_logits [B, word_classes]).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import DiscriminatorConfig, ModelConfig
from .layers import EqualConv2d, EqualLinear, MappingNetwork

SQRT_HALF = math.sqrt(0.5)


class DiscriminatorBlock(nn.Module):
    """conv 3x3 at R, conv 3x3 down to R/2, plus a 1x1 downsampled skip; sum * sqrt(0.5)."""

    def __init__(
        self,
        in_channels: int,  # Input channels (at R).
        out_channels: int,  # Output channels (at R/2).
        *,
        conv_clamp: float | None,  # Clamp conv outputs, None = off.
        blur: bool = True,  # FIR-blur before the downsampling convs (EqualConv2d)?
    ) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(in_channels, in_channels, 3, conv_clamp=conv_clamp)
        # The residual sqrt(0.5) is folded into both branches' weight gains.
        self.conv1 = EqualConv2d(in_channels, out_channels, 3, down=True, blur=blur, gain=SQRT_HALF,
                                 conv_clamp=conv_clamp)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False, activation=False, down=True, blur=blur,
                                gain=SQRT_HALF)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in, R, R] -> [B, out, R/2, R/2]."""
        y = self.skip(x)
        return self.conv1(self.conv0(x)) + y  # not in place: the lrelu saved its output


class MinibatchStd(nn.Module):
    """Append the std of features across a group of samples as extra channels (StyleGAN).

    Groups are runs of consecutive samples (StyleGAN2-ADA strides them instead), so a batch
    made by concatenating fakes and reals, each a multiple of the group size, never mixes the
    two inside a group: D can score both in one call.
    """

    def __init__(
        self,
        group_size: int,  # Samples per group (the largest divisor of the batch up to this is used).
        num_channels: int = 1,  # Feature channels appended.
    ) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C + num_channels, H, W]."""
        B, C, H, W = x.shape
        G = max(g for g in range(1, min(self.group_size, B) + 1) if B % g == 0)
        F_ = self.num_channels
        y = x.reshape(B // G, G, F_, C // F_, H, W)  # (M groups, G members, F, c, H, W)
        y = (y - y.mean(dim=1, keepdim=True)).square().mean(dim=1)  # variance within each group (M, F, c, H, W)
        y = (y + 1e-8).sqrt().mean(dim=(2, 3, 4))  # (M, F)
        y = y.repeat_interleave(G, dim=0).reshape(B, F_, 1, 1).expand(B, F_, H, W)  # (B, F, H, W)
        return torch.cat([x, y.to(x.dtype)], dim=1)


class Discriminator(nn.Module):
    """Residual D from R down to 4x4, minibatch std, fc, projection on the pooled code."""

    def __init__(self, cfg: DiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        R = cfg.resolution
        resolutions = [2**i for i in range(int(math.log2(R)), 2, -1)]  # [R, ..., 8]
        c4 = cfg.channels(4)
        self.cmap_dim = cfg.cmap_dim or c4
        self.from_rgb = EqualConv2d(3, cfg.channels(R), 1, conv_clamp=cfg.conv_clamp)
        self.blocks = nn.Sequential(
            *[DiscriminatorBlock(cfg.channels(r), cfg.channels(r // 2), conv_clamp=cfg.conv_clamp, blur=cfg.blur_down)
              for r in resolutions]
        )
        self.mbstd = MinibatchStd(cfg.mbstd_group, cfg.mbstd_channels)
        self.conv = EqualConv2d(c4 + cfg.mbstd_channels, c4, 3, conv_clamp=cfg.conv_clamp)
        self.fc = EqualLinear(c4 * 16, c4, activation=True)
        self.out = EqualLinear(c4, self.cmap_dim)
        self.words = EqualLinear(self.cmap_dim, cfg.word_classes) if cfg.word_classes else None
        self.cmap = MappingNetwork(
            z_dim=0, c_dim=cfg.c_dim, w_dim=self.cmap_dim, num_ws=None, num_layers=cfg.mapping_layers,
            lr_mult=cfg.mapping_lr_mult, w_avg_beta=None,
        )
        if cfg.channels_last:  # conv weights in NHWC too, else every conv call converts them
            self.to(memory_format=torch.channels_last)

    def forward(
        self, img: torch.Tensor, pooled: torch.Tensor, *, pairs: bool = False, words: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """img [B, 3, R, R] in [-1, 1], pooled [B, c_dim] -> logits [B] (pairs=True: pooled may
        hold any N prompts, logits [B, N], entry [i, j] scores image i under prompt j); words=True:
        (logits, word_logits [B, V])."""
        if words and self.words is None:
            raise ValueError("this discriminator has no word classifier (discriminator.word_classes = 0)")
        B = img.shape[0]
        R = self.cfg.resolution
        assert img.shape == (B, 3, R, R), (img.shape, R)
        assert pooled.ndim == 2 and pooled.shape[1] == self.cfg.c_dim and (pairs or len(pooled) == B), (
            pooled.shape, B, self.cfg.c_dim)
        if self.cfg.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        x = self.conv(self.mbstd(self.blocks(self.from_rgb(img))))  # [B, c4, 4, 4]
        x = self.out(self.fc(x.flatten(1)))  # [B, cmap_dim]
        cmap = self.cmap(None, pooled).to(x.dtype)  # [B, cmap_dim]
        if pairs:
            logits = x @ cmap.T / math.sqrt(self.cmap_dim)
        else:
            logits = (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
        if not words:
            return logits
        return logits, self.words(x)


def build_discriminator(cfg: ModelConfig) -> nn.Module:
    """The model's D: the projected one on frozen pretrained features when cfg.projected is set,
    else the residual StyleGAN2 D. Both take D(img, pooled, pairs=, words=)."""
    if cfg.projected is not None:
        from .projected import ProjectedDiscriminator

        projected = ProjectedDiscriminator(cfg.projected)
        return ProjectedAndPixel(projected, Discriminator(cfg.discriminator)) if cfg.projected.pixel else projected
    return Discriminator(cfg.discriminator)


class ProjectedAndPixel(nn.Module):
    """The projected D and the residual D on the pixels, one logit: the sum of theirs. The
    projected D's features carry what an image shows, the pixel D its colours (docs/experiments.md)."""

    def __init__(self, projected: nn.Module, pixel: Discriminator) -> None:
        super().__init__()
        self.projected, self.pixel = projected, pixel

    def forward(self, img: torch.Tensor, pooled: torch.Tensor, *, pairs: bool = False, words: bool = False) -> torch.Tensor:
        """The call of gan.discriminator.Discriminator: logits [B] ([B, N] with pairs); words=True is
        refused by the projected D (no word classifier)."""
        return self.projected(img, pooled, pairs=pairs, words=words) + self.pixel(img, pooled, pairs=pairs)
