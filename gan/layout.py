"""The prompt's layout: a coarse spatial map of what the caption puts where, read from its tokens.

G's style (w) modulates every pixel alike, and its cross-attention adds to features that must
already differ from place to place before they can ask different tokens: neither lets G paint
"a red circle left of a blue square" red on the left and blue on the right. PromptLayout draws a
map of the caption, place by place:

    tokens [B, L, C] + learned positions -> one self-attention layer (each token in its caption)
    queries [R*R, C], one per cell, learned -> attend over the tokens -> 1x1 conv -> [B, channels, R, R]

and G adds it to its features at resolution R (GeneratorConfig.layout_resolution). A cell's
query learns which tokens describe what lies there: on the left, the colour of whichever object
the relation puts on the left.

Trained only through G's image, the map does not learn to bind; attention like this learns the
binding in a sudden step when trained alone to predict the real image at R x R. So the warm-up
(gan/warmup.py) first trains it to sketch the real image from the caption through a small head
(LayoutSketch, fitted by `sketch_error`: squared error with object cells weighted up, since most
cells are background), then alone on the warmed encoder's frozen tokens; the GAN goes on training
it with its own Adam group (TrainConfig.layout_lr, betas 0.9, 0.999). The sketch term
(gan/loss.py) holds G's image to a frozen copy of the warmed map and head (LayoutTeacher).

A limit of regressing to a sketch: the sketch is the average real image for its caption; for a
caption outside the domain ("a large red circle" with no place, where shapes captions always
name one) it spreads the colour over every place the object could be.

What it measured is in docs/experiments.md.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .layers import tokens_in_context


class PromptLayout(nn.Module):
    """Token codes -> a [B, channels, R, R] map of the prompt (module docstring). A caption
    without tokens gets a zero map (no NaN)."""

    def __init__(
        self,
        code_dim: int,  # Width of the token codes.
        channels: int,  # Channels of the map (G's features at `resolution`).
        *,
        resolution: int,  # Side R of the map.
        max_tokens: int,  # Longest caption (learned positions).
        heads: int = 4,  # Heads of the self-attention and of the cells' attention; must divide code_dim.
    ) -> None:
        super().__init__()
        if code_dim % heads:
            raise ValueError(f"layout heads ({heads}) must divide the code width ({code_dim})")
        self.resolution, self.channels = resolution, channels
        self.pos = nn.Parameter(torch.zeros(max_tokens, code_dim))
        self.context = nn.TransformerEncoderLayer(code_dim, heads, 2 * code_dim, dropout=0.0, batch_first=True)
        self.queries = nn.Parameter(torch.randn(resolution * resolution, code_dim) * 0.5)
        self.attend = nn.MultiheadAttention(code_dim, heads, batch_first=True)
        self.proj = nn.Conv2d(code_dim, channels, 1)
        nn.init.zeros_(self.proj.weight)  # starts as no change to G (ControlNet's zero convolution)
        nn.init.zeros_(self.proj.bias)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """tokens [B, L, code_dim], mask [B, L] bool -> [B, channels, R, R]."""
        B, L, _ = tokens.shape
        if L > len(self.pos):
            raise ValueError(f"captions of {L} tokens: the layout takes {len(self.pos)} (generator.max_tokens)")
        mask = mask.to(torch.bool)
        t, ignore = tokens_in_context(self.context, self.pos, tokens, mask)
        # self.attend's attention then self.proj, computed in the cheaper order (the same function):
        # the cells' queries are the batch's, projected once; attend's output projection and the 1x1
        # conv are linear, so they fold into each head's values, [B, heads, L, channels] for L tokens
        # rather than [B, R*R, code_dim] cells.
        H, R = self.attend.num_heads, self.resolution
        d = t.shape[-1] // H
        w_q, w_k, w_v = self.attend.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.attend.in_proj_bias.chunk(3)
        q = F.linear(self.queries.to(t.dtype), w_q, b_q).view(R * R, H, d).transpose(0, 1)  # [H, R*R, d]
        k = F.linear(t, w_k, b_k).view(B, L, H, d).transpose(1, 2)  # [B, H, L, d]
        proj = self.proj.weight.flatten(1)  # [channels, code_dim]
        w_out = (proj @ self.attend.out_proj.weight).view(-1, H, d)  # [channels, H, d]
        v = torch.einsum("blhd,chd->bhlc", F.linear(t, w_v, b_v).view(B, L, H, d), w_out)  # [B, H, L, channels]
        attn = F.scaled_dot_product_attention(q.unsqueeze(0).expand(B, -1, -1, -1), k, v,
                                              attn_mask=~ignore[:, None, None, :])  # [B, H, R*R, channels]
        drawn = attn.sum(dim=1) + (proj @ self.attend.out_proj.bias + self.proj.bias)  # [B, R*R, channels]
        drawn = drawn.transpose(1, 2).reshape(B, -1, R, R)
        return drawn * mask.any(dim=1).to(drawn.dtype)[:, None, None, None]


class LayoutSketch(nn.Module):
    """The warm-up's head on a PromptLayout map: [B, channels, R, R] -> an RGB sketch [B, 3, R, R],
    trained by L1 against the real image average-pooled to R x R, then dropped."""

    def __init__(self, channels: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, 3, 1))

    def forward(self, layout_map: torch.Tensor) -> torch.Tensor:
        return self.net(layout_map)


def border_colour(images: torch.Tensor) -> torch.Tensor:
    """The mean colour of each image's border pixels (or cells), [B, 3, H, W] -> [B, 3, 1, 1]: the
    background of a shapes scene."""
    border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, 1:-1, 0], images[:, :, 1:-1, -1]], dim=2)
    return border.mean(dim=2)[:, :, None, None]


def sketch_error(drawn: torch.Tensor, images: torch.Tensor, *, object_weight: float = 4.0,
                 threshold: float = 0.1, over_processes: bool = False) -> torch.Tensor:
    """How far a sketch [B, 3, R, R] is from the images [B, 3, H, W] average-pooled to R x R: the
    squared error, with the cells that show an object (their colour differs from the image's
    background, the mean of its border pixels, by more than `threshold` summed over RGB in [-1, 1])
    weighted 1 + object_weight, and the weights normalised to mean 1 over the batch.
    over_processes: this batch is one process's share of a batch split over the processes; the
    weights are normalised over the whole batch, so the shares' errors (and gradients) sum to its."""
    target = F.adaptive_avg_pool2d(images, drawn.shape[-1])
    background = border_colour(images)
    weight = 1 + object_weight * ((target - background).abs().sum(dim=1, keepdim=True) > threshold).to(target.dtype)
    total = weight.sum()
    if over_processes:
        dist.all_reduce(total)
    return ((drawn - target) ** 2 * weight).sum() / (total * drawn.shape[1])


class LayoutTeacher(nn.Module):
    """The sketch term's target (gan/loss.py): a frozen copy of a warmed PromptLayout and its
    LayoutSketch head, tokens -> the RGB sketch [B, 3, R, R] of what the caption puts where. G's
    own map goes on training in the GAN; this copy stays as the warm-up left it."""

    def __init__(self, layout: PromptLayout, sketch: LayoutSketch) -> None:
        super().__init__()
        self.layout, self.sketch = layout, sketch
        self.requires_grad_(False).eval()

    @classmethod
    def like(cls, layout: PromptLayout) -> LayoutTeacher:
        """An untrained teacher shaped as `layout` (to load a saved one into)."""
        return cls(copy.deepcopy(layout), LayoutSketch(layout.channels))

    @property
    def resolution(self) -> int:
        return self.layout.resolution

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.sketch(self.layout(tokens, mask))
