"""The prompt's layout: a coarse spatial map of what the caption puts where, read from its tokens.

G's style (w) modulates every pixel alike, and its cross-attention adds to features that must
already differ from place to place before they can ask different tokens: neither lets G paint
"a red circle left of a blue square" red on the left and blue on the right. Fitted by L1
regression to the real images of 12 000 two-object shapes captions (4000 steps of 32), shapes32's
G came out closer to the true colours than to the two colours exchanged for 0.45 of 400 held-out
captions (0.5 = no binding), painting both objects one mixed colour; so did G with perfect token
ids in place of the spiking codes (0.46). Given the true image at 8x8 as an input it scored 1.00:
the missing piece is a map of the caption, place by place.

PromptLayout draws that map:

    tokens [B, L, C] + learned positions -> one self-attention layer (each token in its caption)
    queries [R*R, C], one per cell, learned -> attend over the tokens -> 1x1 conv -> [B, channels, R, R]

and G adds it to its features at resolution R (GeneratorConfig.layout_resolution). A cell's
query learns which tokens describe what lies there: on the left, the colour of whichever object
the relation puts on the left.

Trained only through G's image, the map does not learn to bind (same regression test: 0.49, and
0.50 with an Adam of its own). Attention like this learns the binding in a sudden step: trained
alone to predict the real image at 8x8 (a small head on top, frozen encoder), it went from 0.54 to
0.98 closer to the true colours between 1000 and 2000 steps of 32 at Adam lr 1e-3 with betas
(0.9, 0.999); after 3000 steps it had not yet at lr 0.002 (0.53), nor with StyleGAN2's betas
(0, 0.99) (0.58 at lr 1e-3, 0.49 at 0.002). So the warm-up (gan/warmup.py) first trains it to
sketch the real image at R x R from the caption through a small head (LayoutSketch), and the GAN
goes on training it with its own Adam group (TrainConfig.layout_lr, betas 0.9, 0.999). In the
regression test, a map warmed up so for 2000 steps of 32 (its sketch closer to the true colours
for 0.92 of the held-out captions after 1500) and then trained with G: G's images 1.00 closer to
the true colours, and the attribute probe read both objects' colours right for 0.99 of the
captions (0.02 without the map).

Its warm-up (51.2 kimg of 64) does not reach the
step: the sketch of a fresh warm-up is closer to the true colours for 0.54 of held-out two-object
captions (0.53 after 128 kimg, 0.55 after 192). Half of the shapes captions name one object, and
the step comes later on that mix: trained alone on the main job's frozen encoder, 0.59 after 3000
steps of 32 on the mix and 0.95 after 4500 (0.98 after 3000 on two-object captions only); on the
warm-up's own frozen encoder, 0.59 after 4000 and 0.96 after 5500. So `warmup.layout_kimg` trains
the map alone on the warmed encoder's frozen tokens after the warm-up. The main job (seed 0,
50 kimg, the main job's eval) with the map:

    warm-up                     background  shape  colour  position  binding  mean   FID    LPIPS div
    none (shapes32)             .765        .587   .634    .973      .349     .752   170.7  .182
    map, 51.2 kimg              .514        .572   .545    .989      .244     .698   194.8  .171
    map, + 256 kimg alone       .873        .611   .580    .927      .214     .750   190.7  .165

Both draw the two two-object grid prompts with each colour on its side in all six seeds, but over 400
random two-object captions the probe reads the colours right about as often as exchanged (0.25 /
0.21 after the long warm-up; shapes32 0.34 / 0.34). The long warm-up takes 355 s instead of 66 (the
main job 21:21 wall instead of 17:21), and G's forward and backward cost 1.15x (batch 32, one thread).

Why it did not bind: the map itself had not. After the 256 kimg alone its sketch was closer to the
true colours for only 0.585 of 400 held-out two-object captions. Plain L1 against the pooled image
is a poor teacher on this domain: most cells are background, and L1's median answer for an object
cell is the background too, so the map can lower its loss without reading the colours. Trained
alone on 100 000 pre-encoded pairs of the mix (the warmed encoder frozen, batch 64, Adam 1e-3),
closer to the true colours after 500 / 1000 / 1500 / 2000 / 2500 steps:

    plain L1                                   .55  .54  .53  .54  .54   (.58 at 3000, .88 at 3500)
    L1, object cells weighted 5                .66  .72  .96  .99  1.00
    squared error                              .56  .67  .86  .96  .99
    squared error, object cells weighted 5     .63  .82  .99  1.00 1.00  (sketch_error)

(an object cell: its pooled colour differs from the image's border colour by more than 0.1.) So the
warm-up fits the sketch by `sketch_error`: with `--warmup-layout-kimg 128` it takes 172 s (66 s
without the map) and the sketch is closer to the true colours for 0.998 of the held-out captions.

The GAN can also be held to that sketch (`--sketch-weight`, gan/loss.py): the run keeps a frozen
copy of the warmed map and its head (LayoutTeacher) and G's image, average-pooled to R x R, is
pulled toward the copy's sketch by L1 over the cells where the sketch draws an object (the
background, which a caption may leave unnamed, is D's). With the unbound teacher of the plain-L1
warm-up it did not bind (50 kimg, seed 0, L1 over every cell: binding 0.345 at weight 1, 0.332 at
weight 4). With the bound one (50 kimg, seed 0, the main job's eval):

    map (+128 kimg alone)     background  shape  colour  relation  binding  mean   FID    LPIPS div
    no sketch term            .830        .636   .584    .513      .277     .761   195.3  .191
    every cell, weight 4      .929        .626   .629    .483      .370     .778   191.9  .128
    object cells, weight 4    .616        .638   .636    .588      .328     .745   189.5  .119
    object cells, weight 8    .858        .602   .614    .508      .311     .760   195.3  .092
    object cells, weight 16   .697        .673   .963    1.000     .887     .878   210.8  .114
    weight 16, map 64 kimg    .687        .622   .898    .887      .798     .849   198.5  .046

(the last row warms the map alone for 64 kimg instead of 128: it binds less, and G's images vary
little per prompt). At weight 16 G draws what the caption says where it says it: over 400 random two-object captions
the probe reads both colours in their right places for 0.92 and exchanged for none (0.41 / 0.44
at weight 4 on every cell). Its images pooled to 8x8 had followed the sketch's placement at 30
kimg already (right 0.49, exchanged 0.03 of 200). shapes32 runs so (TRAIN_PRESETS); the cost is
FID and a little diversity and background. The main job (README command one, 21:34 wall on 2
cores with its install) repeats the 50-kimg run's scores exactly.

A limit of regressing to a sketch: the sketch is the average real image for its caption. The
shapes captions always say where a lone object is; given "a large red circle", outside the
domain, the sketch spreads red over every place the object could be, and G held to it draws a
plus-shaped blob or two objects (the main job's prompts name a place).
"""
from __future__ import annotations

import copy

import torch
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
        q = self.queries.to(t.dtype).unsqueeze(0).expand(B, -1, -1)
        cells, _ = self.attend(q, t, t, key_padding_mask=ignore, need_weights=False)  # [B, R*R, code_dim]
        R = self.resolution
        drawn = self.proj(cells.transpose(1, 2).reshape(B, -1, R, R))
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
                 threshold: float = 0.1) -> torch.Tensor:
    """How far a sketch [B, 3, R, R] is from the images [B, 3, H, W] average-pooled to R x R: the
    squared error, with the cells that show an object (their colour differs from the image's
    background, the mean of its border pixels, by more than `threshold` summed over RGB in [-1, 1])
    weighted 1 + object_weight, and the weights normalised to mean 1 over the batch."""
    target = F.adaptive_avg_pool2d(images, drawn.shape[-1])
    background = border_colour(images)
    weight = 1 + object_weight * ((target - background).abs().sum(dim=1, keepdim=True) > threshold).to(target.dtype)
    return ((drawn - target) ** 2 * weight).mean() / weight.mean()


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
