"""Residual StyleGAN2 discriminator with projection conditioning on the pooled spike code.

D(img, pooled) -> one logit per image. D(img, pooled, pairs=True) -> a [B, B] matrix scoring
every image under every prompt of the batch (row i: image i; the diagonal is D(img, pooled)),
at the cost of one forward: what the matching-aware and contrastive loss terms read.

With `word_region`, the logit also has XMC-GAN's word-region term on the prompts' token codes
(`WordRegion`; D(img, pooled, tokens=..., mask=...)).

With `word_classes` > 0, D also holds a word classifier (AC-GAN's auxiliary classifier, for
captions: one logit per vocabulary entry, "does the caption of this image contain this word?");
D(..., words=True) returns (logits, word_logits [B, word_classes]). `word_head` says what it reads:
- "trunk": one linear layer on the features the projection reads (AC-GAN's shared trunk), so
  the word loss teaches D's own features every word, and the projection can then check them.
  Trained on real shapes images alone (the matching-aware and contrastive terms, no G, 1000 steps
  of 32), D picked a real one-object image's shape among its caption's five shape variants 42 %
  of the time without the head, 76 % with it (colour: 95 %, 99 %).
- "net": a small CNN of its own (`WordNet`), for a D whose trunk cannot see shapes: trained as
  a plain classifier on real shapes images for 10 kimg, a trunk with the FIR blur before its
  strided convs (`DiscriminatorConfig.blur_down`) told the 5 shapes apart 30 % of the time, a
  CNN with instance norm and no blur 86 %.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import WORD_REGION_HEADS, DiscriminatorConfig
from .generator import MappingNetwork
from .layers import EqualConv2d, EqualLinear, tokens_in_context

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


class WordNet(nn.Module):
    """Image -> one logit per vocabulary word: 3x3 conv, instance norm, ReLU stages, halving the
    resolution (strided conv, no blur) down to 8x8, then an MLP. Instance norm (no batch
    statistics) lets it read an object's outline whatever its colour against the background."""

    def __init__(
        self,
        resolution: int,  # Input resolution R.
        num_words: int,  # Outputs (vocabulary size).
        *,
        channels: int = 16,  # Width at R (doubles per halving, up to 128).
        hidden: int = 128,  # Width of the MLP's hidden layer.
    ) -> None:
        super().__init__()

        def stage(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(cout, cout), nn.ReLU()]

        r, c = resolution, channels
        layers = stage(3, c, 1) + stage(c, c, 1)
        while r > 8:
            cout = min(2 * c, 128)
            layers += stage(c, cout, 2) + stage(cout, cout, 1)
            c, r = cout, r // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * r * r, hidden), nn.ReLU(), nn.Linear(hidden, num_words))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """[B, 3, R, R] -> [B, num_words] logits."""
        return self.head(self.features(img))


class WordRegion(nn.Module):
    """XMC-GAN's word-region agreement (Zhang et al. 2021) as a term of D's logit.

    The caption's token codes, with learned positions, pass one self-attention layer, so each
    token carries its caption around it ("blue" in "a red circle left of a blue square" knows it
    is the object on the right). Each token then attends over D's 4x4 cells, and the score is the
    mean over real tokens of <token value, attended cells>. The projection on the pooled code
    scores a caption as a whole and cannot tell it from the same words bound the other way; this
    term can. Trained on real shapes32 images alone (matching-aware and exchange negatives, the
    main job's frozen encoder, 1800 steps of 32), D preferred a two-object image's own caption to
    its exchanged copy 0.52 of the time without it, 0.57 with the term but no self-attention,
    0.76 with both (0.83 at 3000 steps).
    Inside the GAN it did not learn that within the main job's 50 kimg (shapes32, seed 0, exchange
    negatives): 0.51 / 0.53 / 0.52 / 0.51 at 20 / 30 / 40 / 50 kimg (the main job's D 0.49), and
    the samples got worse: mean attribute accuracy 0.752 -> 0.725, attr_binding 0.35 -> 0.30,
    FID 170.7 -> 191.7 (without the exchange negatives 0.709, 0.24, 208.5). The probe learnt far
    slower at D's GAN rate (0.005: 0.53 at 1800 steps) or beside shapes32's word term (0.56), but
    giving the term its own rate of 0.002 in the GAN did not help either: 0.47 / 0.50 / 0.51 at
    30 / 40 / 50 kimg, mean 0.703, attr_binding 0.30, FID 181.6. So shapes32 leaves it off.
    """

    def __init__(
        self,
        channels: int,  # Channels of D's 4x4 features.
        code_dim: int,  # Width of the token codes.
        *,
        max_tokens: int,  # Learned positions.
        heads: int = WORD_REGION_HEADS,  # Heads of the self-attention over tokens.
        dim: int = 64,  # Width of the word-region queries, keys and values.
    ) -> None:
        super().__init__()
        self.dim = dim
        self.pos = nn.Parameter(torch.zeros(max_tokens, code_dim))
        self.context = nn.TransformerEncoderLayer(code_dim, heads, 2 * code_dim, dropout=0.0, batch_first=True)
        self.query, self.value = EqualLinear(code_dim, dim), EqualLinear(code_dim, dim)
        self.key, self.cell = EqualLinear(channels, dim), EqualLinear(channels, dim)

    def forward(self, feats: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, *, pairs: bool) -> torch.Tensor:
        """feats [B, C, H, W]; tokens [N, L, code_dim], mask [N, L] -> scores [B, N] (pairs) or [B]
        (N == B, image i under caption i)."""
        N, L, _ = tokens.shape
        if L > len(self.pos):
            raise ValueError(f"captions of {L} tokens: the word-region term takes {len(self.pos)} "
                             f"(discriminator.max_tokens)")
        mask = mask.to(torch.bool)
        t, _ = tokens_in_context(self.context, self.pos, tokens, mask)
        q, u = self.query(t), self.value(t)  # [N, L, d]
        cells = feats.flatten(2).transpose(1, 2)  # [B, HW, C]
        k, v = self.key(cells), self.cell(cells)  # [B, HW, d]
        scale = self.dim**-0.5
        if pairs:
            attn = (torch.einsum("nld,brd->bnlr", q, k) * scale).softmax(dim=-1)
            agree = (torch.einsum("bnlr,brd->bnld", attn, v) * u).sum(dim=-1) * scale  # [B, N, L]
        else:
            attn = (torch.einsum("bld,brd->blr", q, k) * scale).softmax(dim=-1)
            agree = (torch.einsum("blr,brd->bld", attn, v) * u).sum(dim=-1) * scale  # [B, L]
        m = mask.to(agree.dtype)
        return (agree * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1)


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
        if not cfg.word_classes:
            self.words = None
        elif cfg.word_head == "net":
            self.words = WordNet(R, cfg.word_classes)
        else:
            self.words = EqualLinear(self.cmap_dim, cfg.word_classes)
        self.word_region = WordRegion(c4, cfg.c_dim, max_tokens=cfg.max_tokens) if cfg.word_region else None
        self.cmap = MappingNetwork(
            z_dim=0, c_dim=cfg.c_dim, w_dim=self.cmap_dim, num_ws=None, num_layers=cfg.mapping_layers,
            lr_mult=cfg.mapping_lr_mult, w_avg_beta=None,
        )
        if cfg.channels_last:  # conv weights in NHWC too, else every conv call converts them
            self.to(memory_format=torch.channels_last)

    def forward(
        self, img: torch.Tensor, pooled: torch.Tensor, *, tokens: torch.Tensor | None = None,
        mask: torch.Tensor | None = None, pairs: bool = False, words: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """img [B, 3, R, R] in [-1, 1], pooled [B, c_dim] -> logits [B] (pairs=True: pooled may
        hold any N prompts, logits [B, N], entry [i, j] scores image i under prompt j); words=True:
        (logits, word_logits [B, V]). tokens [N, L, c_dim] and mask [N, L], the prompts' token
        codes (SpikeCode.tokens / .mask), are read by the word-region term and needed with it."""
        if words and self.words is None:
            raise ValueError("this discriminator has no word classifier (discriminator.word_classes = 0)")
        if self.word_region is not None and (tokens is None or mask is None):
            raise ValueError("this discriminator's word-region term (discriminator.word_region) needs the "
                             "prompts' token codes: D(img, pooled, tokens=..., mask=...)")
        B = img.shape[0]
        R = self.cfg.resolution
        assert img.shape == (B, 3, R, R), (img.shape, R)
        assert pooled.ndim == 2 and pooled.shape[1] == self.cfg.c_dim and (pairs or len(pooled) == B), (
            pooled.shape, B, self.cfg.c_dim)
        if self.cfg.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        x4 = self.blocks(self.from_rgb(img))  # [B, c4, 4, 4]
        x = self.conv(self.mbstd(x4))
        x = self.out(self.fc(x.flatten(1)))  # [B, cmap_dim]
        cmap = self.cmap(None, pooled).to(x.dtype)  # [B, cmap_dim]
        if pairs:
            logits = x @ cmap.T / math.sqrt(self.cmap_dim)
        else:
            logits = (x * cmap).sum(dim=1) / math.sqrt(self.cmap_dim)
        if self.word_region is not None:
            logits = logits + self.word_region(x4, tokens.to(x.dtype), mask, pairs=pairs)
        if not words:
            return logits
        return logits, self.words(img if self.cfg.word_head == "net" else x)
