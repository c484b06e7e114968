"""Guides: a colour palette and a rough sketch, spike-coded into tokens that join the caption's.

    palette "#ff0000:1.5,#0000ff"  -> Palette (1..MAX_COLOURS colours, weights > 0)
    sketch  image of any size      -> [3, g, g] in [0, 1] (data.colour.sketch_grid)
    Guides (batched, either may be absent per image)
      --GuideEncoder--> tokens [B, S, C], mask [B, S], pooled addition [B, C],  S = MAX_COLOURS + g*g

Every guide token is a population code of a colour (CIE Lab, each channel read by BINS Gaussian
receptive fields), rate-coded by the encoder's SpikeCoder in a window of its own and read out by
one spiking layer, like a word:
  - a palette colour: its spikes carry the colour, their height its weight (as emphasis for a word);
  - a sketch cell: cells fire in raster order, one window each (timing = scan order), the rate
    carries the cell's colour and intensity; a learned code per slot tells the readout which
    window it is.
The encoder appends these tokens after the caption's (padded to max_length), so G's
cross-attention and layout map read them with the words, and adds a projection of their means to
the pooled code, so D's projection sees them too.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from data.colour import sketch_grid, srgb_to_lab

from .coding import SpikeCoder
from .config import MAX_COLOURS, EncoderConfig
from .spiking import SpikingLayer

BINS = 8  # Gaussian receptive fields per Lab channel
FEATURES = 3 * BINS  # input spike channels of a guide token
MAX_SKETCH_BYTES = 32 << 20  # a sketch file larger than this is refused
MAX_SKETCH_PIXELS = 4096 * 4096
_HEX = re.compile(r"#?([0-9a-fA-F]{6})")


class GuideError(ValueError):
    """A palette or sketch that cannot be used; the one-line message names the value."""


@dataclass(frozen=True)
class Palette:
    """1..MAX_COLOURS colours, RGB in [0, 1], each with a weight > 0 (its spike height)."""

    colours: tuple[tuple[float, float, float], ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.colours) <= MAX_COLOURS:
            raise GuideError(f"palette: {len(self.colours)} colours; give 1 to {MAX_COLOURS}")
        if len(self.weights) != len(self.colours):
            raise GuideError(f"palette: {len(self.colours)} colours but {len(self.weights)} weights")
        for w in self.weights:
            if not (math.isfinite(w) and w > 0):
                raise GuideError(f"palette: weight {w!r} must be a finite number > 0")

    @classmethod
    def of(cls, colours: Sequence[Sequence[float]], weights: Sequence[float] | None = None) -> Palette:
        return cls(tuple(tuple(float(v) for v in c) for c in colours),
                   tuple(float(w) for w in weights) if weights is not None else (1.0,) * len(colours))


def parse_palette(text: str) -> Palette:
    """'#ff0000,#0000ff:1.5' -> Palette; a colour is #rrggbb, optionally ':weight'. Raises GuideError
    naming the bad entry."""
    entries = [e.strip() for e in str(text).split(",") if e.strip()]
    if not entries:
        raise GuideError(f"palette {text!r}: no colours; give 1 to {MAX_COLOURS} like '#ff0000,#0000ff:1.5'")
    if len(entries) > MAX_COLOURS:
        raise GuideError(f"palette {text!r}: {len(entries)} colours, at most {MAX_COLOURS}")
    colours, weights = [], []
    for entry in entries:
        hex_part, _, weight_part = entry.partition(":")
        m = _HEX.fullmatch(hex_part.strip())
        if m is None:
            raise GuideError(f"palette colour {entry!r}: not a colour; expected #rrggbb (e.g. #ff0000), optionally :weight")
        try:
            weight = float(weight_part) if weight_part else 1.0
        except ValueError:
            raise GuideError(f"palette colour {entry!r}: weight {weight_part!r} is not a number") from None
        if not (math.isfinite(weight) and weight > 0):
            raise GuideError(f"palette colour {entry!r}: weight {weight_part!r} must be a finite number > 0")
        v = int(m.group(1), 16)
        colours.append(((v >> 16) / 255, ((v >> 8) & 255) / 255, (v & 255) / 255))
        weights.append(weight)
    return Palette(tuple(colours), tuple(weights))


def load_sketch(source: Any, grid: int) -> torch.Tensor:
    """A sketch -> float [3, grid, grid] in [0, 1] (data.colour.sketch_grid).

    source: an image file path, a PIL image, or an array / tensor [H, W], [1, H, W] or [3, H, W]
    (uint8 0..255, or float in [0, 1]). A mask (one channel) becomes grey. Raises GuideError for an
    unreadable, empty or huge file and for arrays with NaN or values outside the range.
    """
    import PIL.Image

    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise GuideError(f"sketch {str(path)!r}: no such file")
        size = path.stat().st_size
        if size == 0:
            raise GuideError(f"sketch {str(path)!r}: the file is empty")
        if size > MAX_SKETCH_BYTES:
            raise GuideError(f"sketch {str(path)!r}: {size} bytes, more than the {MAX_SKETCH_BYTES} a sketch may have")
        try:
            with PIL.Image.open(path) as img:
                if img.width * img.height > MAX_SKETCH_PIXELS:
                    raise GuideError(f"sketch {str(path)!r}: {img.width}x{img.height} pixels, more than "
                                     f"{MAX_SKETCH_PIXELS}")
                source = img.convert("RGB")
        except GuideError:
            raise
        except (OSError, PIL.Image.DecompressionBombError, ValueError) as e:
            raise GuideError(f"sketch {str(path)!r}: not a readable image ({type(e).__name__}: {e})") from None
    if isinstance(source, PIL.Image.Image):
        source = torch.from_numpy(np.array(source.convert("RGB"))).permute(2, 0, 1)  # [3, H, W] uint8
    x = torch.as_tensor(np.asarray(source) if not isinstance(source, torch.Tensor) else source)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[0] not in (1, 3) or min(x.shape[1:]) < 1:
        raise GuideError(f"sketch of shape {tuple(x.shape)}: expected [H, W], [1, H, W] or [3, H, W]")
    if x.dtype == torch.uint8:
        x = x.float() / 255
    x = x.float()
    if not torch.isfinite(x).all():
        raise GuideError("sketch: has NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise GuideError(f"sketch: values in [{float(x.min()):g}, {float(x.max()):g}]; floats must lie in [0, 1]")
    return sketch_grid(x.expand(3, -1, -1), grid)


@dataclass
class Guides:
    """A batch of guides; either kind may be absent for the whole batch (None) or per image.

    palette:         [B, MAX_COLOURS, 3] RGB in [0, 1], or None.
    palette_weights: [B, MAX_COLOURS] spike heights; 0 = an empty slot (or no palette for that image).
    sketch:          [B, 3, g, g] in [0, 1], or None.
    sketch_mask:     [B] bool, False = no sketch for that image.
    """

    palette: torch.Tensor | None = None
    palette_weights: torch.Tensor | None = None
    sketch: torch.Tensor | None = None
    sketch_mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        assert (self.palette is None) == (self.palette_weights is None)
        assert (self.sketch is None) == (self.sketch_mask is None)
        if self.palette is not None:
            B = self.palette.shape[0]
            assert self.palette.shape == (B, MAX_COLOURS, 3) and self.palette_weights.shape == (B, MAX_COLOURS), (
                self.palette.shape, self.palette_weights.shape)
        if self.sketch is not None:
            B = self.sketch.shape[0]
            assert self.sketch.ndim == 4 and self.sketch.shape[1] == 3 and self.sketch_mask.shape == (B,), (
                self.sketch.shape, self.sketch_mask.shape)

    def __len__(self) -> int:
        return (self.palette if self.palette is not None else self.sketch).shape[0]

    @property
    def grid(self) -> int:
        """Side of the sketch grid (0 without a sketch)."""
        return 0 if self.sketch is None else self.sketch.shape[-1]

    @classmethod
    def build(cls, batch_size: int, *, palette: Palette | Sequence[Palette | None] | None = None,
              sketch: Any = None, grid: int = 0) -> Guides:
        """Guides for `batch_size` images: one palette (or one per image, None = absent) and one
        sketch source for all images (load_sketch at `grid`), or a [B, 3, g, g] tensor of sketches."""
        palettes = [palette] * batch_size if palette is None or isinstance(palette, Palette) else list(palette)
        if len(palettes) != batch_size:
            raise GuideError(f"{len(palettes)} palettes for {batch_size} images")
        colours, weights = None, None
        if any(p is not None for p in palettes):
            colours = torch.zeros(batch_size, MAX_COLOURS, 3)
            weights = torch.zeros(batch_size, MAX_COLOURS)
            for b, p in enumerate(palettes):
                if p is not None:
                    colours[b, : len(p.colours)] = torch.tensor(p.colours)
                    weights[b, : len(p.weights)] = torch.tensor(p.weights)
        sketches, mask = None, None
        if sketch is not None:
            if isinstance(sketch, torch.Tensor) and sketch.ndim == 4:
                sketches = sketch.float()
            else:
                if grid < 1:
                    raise GuideError("sketch: this model takes no sketch (its sketch grid is 0)")
                sketches = load_sketch(sketch, grid)[None].expand(batch_size, -1, -1, -1).contiguous()
            mask = torch.ones(batch_size, dtype=torch.bool)
        return cls(colours, weights, sketches, mask)

    def _map(self, fn) -> Guides:
        return Guides(*(None if t is None else fn(t) for t in
                        (self.palette, self.palette_weights, self.sketch, self.sketch_mask)))

    def to(self, device: torch.device | str) -> Guides:
        return self._map(lambda t: t.to(device))

    def index(self, rows: Sequence[int] | slice) -> Guides:
        rows = list(range(len(self)))[rows] if isinstance(rows, slice) else [int(i) for i in rows]
        return self._map(lambda t: t[rows])

    @staticmethod
    def cat(guides: Sequence[Guides]) -> Guides:
        """The rows of several batches in order; each kind must be present in all or in none."""
        parts = []
        for name in ("palette", "palette_weights", "sketch", "sketch_mask"):
            ts = [getattr(g, name) for g in guides]
            if any(t is None for t in ts) and not all(t is None for t in ts):
                raise GuideError(f"Guides.cat: {name} present in some batches only")
            parts.append(None if ts[0] is None else torch.cat(ts))
        return Guides(*parts)

    def dropped(self, p: float, generator: torch.Generator) -> Guides:
        """Each image loses its palette and, independently, its sketch with probability p (draws
        from `generator`, on the CPU, so a seeded generator repeats the drop exactly)."""
        u = torch.rand(len(self), 2, generator=generator)  # [B, (palette, sketch)]
        keep_palette, keep_sketch = u[:, 0] >= p, u[:, 1] >= p
        out = Guides(self.palette, self.palette_weights, self.sketch, self.sketch_mask)
        if self.palette is not None:
            out.palette_weights = self.palette_weights * keep_palette.to(self.palette_weights)[:, None]
        if self.sketch is not None:
            out.sketch_mask = self.sketch_mask & keep_sketch.to(self.sketch_mask.device)
        return out


def check_guides(cfg: EncoderConfig, guides: Guides | None) -> None:
    """Refuse guides the encoder of `cfg` was not trained with (GuideError naming what and how)."""
    if guides is None:
        return
    if guides.palette is not None and not cfg.palette:
        raise GuideError("this model was trained without a palette input (its encoder config has palette "
                         "false); sample it without --palette, or train one with --palette on")
    if guides.sketch is not None and guides.grid != cfg.sketch_grid:
        if not cfg.sketch_grid:
            raise GuideError("this model was trained without a sketch input (its encoder config has sketch_grid "
                             "0); sample it without --sketch, or train one with --sketch-grid 8")
        raise GuideError(f"sketch of {guides.grid}x{guides.grid} cells; this model takes {cfg.sketch_grid}x"
                         f"{cfg.sketch_grid}")


def colour_features(rgb: torch.Tensor) -> torch.Tensor:
    """Population code of colours: [..., 3] RGB in [0, 1] -> [..., FEATURES] firing probabilities.

    Each Lab channel, scaled to [0, 1], is read by BINS Gaussian receptive fields evenly spaced
    over [0, 1] (width one spacing): a colour fires the few channels tuned near it."""
    lab = srgb_to_lab(rgb.float())
    unit = torch.stack([lab[..., 0] / 100, (lab[..., 1] + 110) / 220, (lab[..., 2] + 110) / 220], dim=-1)
    centres = torch.linspace(0, 1, BINS, device=rgb.device, dtype=unit.dtype)
    p = torch.exp(-(unit.clamp(0, 1)[..., None] - centres).square() * ((BINS - 1) ** 2 / 2))  # [..., 3, BINS]
    return p.flatten(-2)


class GuideEncoder(nn.Module):
    """Guides -> guide tokens [B, S, C], their mask [B, S] and a pooled-code addition [B, C]
    (module docstring). S = MAX_COLOURS (if cfg.palette) + sketch_grid^2."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.palette_slots = MAX_COLOURS if cfg.palette else 0
        self.sketch_slots = cfg.sketch_grid**2
        self.coder = SpikeCoder(coding=cfg.coding, steps_per_token=cfg.steps_per_token, seed=cfg.seed + 1,
                                latency_sigma=cfg.latency_sigma, rate_noise=cfg.rate_noise, spikes=cfg.spikes)
        self.layer = SpikingLayer(in_features=FEATURES, out_features=cfg.hidden, beta=cfg.beta,
                                  threshold=cfg.threshold, learn_beta=cfg.learn_beta, spikes=cfg.spikes)
        self.head = nn.Sequential(nn.LayerNorm(2 * cfg.hidden), nn.Linear(2 * cfg.hidden, cfg.code_dim))
        self.slot_code = nn.Parameter(0.1 * torch.randn(self.slots, cfg.code_dim))
        self.pool = nn.Linear(2 * cfg.code_dim, cfg.code_dim, bias=False)

    @property
    def slots(self) -> int:
        return self.palette_slots + self.sketch_slots

    def forward(self, guides: Guides | None, batch_size: int, device: torch.device,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """guides (None = none for any image) -> (tokens [B, S, C], mask [B, S], pooled addition [B, C])."""
        check_guides(self.cfg, guides)
        B, P, G, K, H = batch_size, self.palette_slots, self.sketch_slots, self.cfg.steps_per_token, self.cfg.hidden
        colours = torch.zeros(B, P + G, 3, device=device)
        heights = torch.zeros(B, P + G, device=device)
        if guides is not None and guides.palette is not None:
            colours[:, :P] = guides.palette.to(device)
            heights[:, :P] = guides.palette_weights.to(device)
        if guides is not None and guides.sketch is not None:
            colours[:, P:] = guides.sketch.to(device).flatten(2).transpose(1, 2)  # [B, g*g, 3], raster order
            heights[:, P:] = guides.sketch_mask.to(device)[:, None].float()
        mask = heights > 0  # [B, S]
        spikes = self.coder(colour_features(colours), heights, mask, generator)  # [S*K, B, FEATURES]
        spk, mem = self.layer(spikes)  # [S*K, B, H] each
        S = P + G
        windows = torch.cat([spk.view(S, K, B, H).mean(dim=1), mem.view(S, K, B, H).mean(dim=1)], dim=-1)  # [S, B, 2H]
        tokens = (self.head(windows.transpose(0, 1)) + self.slot_code) * mask.unsqueeze(-1)  # [B, S, C]
        means = [masked_mean(tokens[:, :P], mask[:, :P]), masked_mean(tokens[:, P:], mask[:, P:])]
        return tokens, mask, self.pool(torch.cat(means, dim=-1))


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, S, C], [B, S] bool -> [B, C] mean over the real tokens (0 where there are none)."""
    m = mask.unsqueeze(-1).to(tokens.dtype)
    return (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)
