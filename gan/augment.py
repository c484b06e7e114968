"""Differentiable augmentation for the discriminator, with ADA's adaptive strength.

Every image D sees (real or fake, in every loss phase) passes through the same random
augmentation, so D cannot tell the two apart by the augmentation and G never learns to
produce augmented-looking images (Karras et al. 2020, "Training GANs with limited data";
Zhao et al. 2020, "Differentiable augmentation"). Each operation is applied to each image
independently with probability `p`; ADA moves `p` so that the fraction of real images that
D calls real, r_t = E[sign(D(real))], stays near a target.

Images are float NCHW in [-1, 1]. All operations are batched (no Python loop over images)
and differentiable with respect to the images. Randomness comes from the torch RNG of the
images' device, or from an explicit `torch.Generator` when given (tests, reproducibility).

DiffAugment (Zhao et al. 2020: colour, translation by up to 1/8 of the side with zero padding,
cutout of half the side, every operation on every image) is the pipe with `DIFFAUGMENT`'s
settings: `AugmentConfig(**DIFFAUGMENT)`. Its draws follow Zhao et al.'s ranges: brightness
shift in [-0.5, 0.5), saturation factor in [0, 2), contrast factor in [0.5, 1.5), integer
shifts in [-side / 8, side / 8], cutout centres on [0, side] for an even cutout side.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn


@dataclass
class AugmentConfig:
    """Which augmentations run, how strong each is, and how ADA adapts their probability."""

    mode: Literal["ada", "fixed", "off"] = "ada"  # ada: adapt p; fixed: keep p_init; off: none.
    p_init: float = 0.0  # Starting probability of each operation per image.
    brightness: float = 0.5  # Largest brightness shift added to [-1, 1] images; 0 = off.
    saturation: float = 1.0  # Saturation factor drawn from [1 - s, 1 + s]; 0 = off.
    contrast: float = 0.5  # Contrast factor drawn from [1 - c, 1 + c]; 0 = off.
    translation: float = 0.125  # Largest integer shift, as a fraction of the image side; 0 = off.
    cutout: float = 0.5  # Side of the cut-out square, as a fraction of the image side; 0 = off.
    pad_mode: Literal["reflect", "zeros"] = "reflect"  # What translation shifts in at the border.
    target: float = 0.6  # ADA target for r_t = E[sign(D(real))].
    speed_kimg: float = 100.0  # ADA: thousands of images for p to move from 0 to 1.
    interval: int = 4  # ADA: steps between adjustments of p.

    def __post_init__(self) -> None:
        if self.mode not in ("ada", "fixed", "off"):
            raise ValueError(f"augment.mode must be 'ada', 'fixed' or 'off', got {self.mode!r}")
        if self.pad_mode not in ("reflect", "zeros"):
            raise ValueError(f"augment.pad_mode must be 'reflect' or 'zeros', got {self.pad_mode!r}")
        if not 0.0 <= self.p_init <= 1.0:
            raise ValueError(f"augment.p_init must lie in [0, 1], got {self.p_init}")
        if self.speed_kimg <= 0 or self.interval < 1:
            raise ValueError(f"augment.speed_kimg must be > 0 and augment.interval >= 1, got "
                             f"{self.speed_kimg}, {self.interval}")

    def to_dict(self) -> dict:
        return asdict(self)


# DiffAugment (Zhao et al. 2020) as AugmentConfig settings: every operation on every image, always.
DIFFAUGMENT = dict(mode="fixed", p_init=1.0, brightness=0.5, saturation=1.0, contrast=0.5, translation=0.125,
                   cutout=0.5, pad_mode="zeros")


def adjust_p(p: float, *, rt: float, target: float, num_images: int, speed_kimg: float) -> float:
    """One ADA step: move p by num_images / (speed_kimg * 1000) toward more augmentation when
    D is over-confident on reals (rt > target), toward less otherwise; clamp to [0, 1]."""
    step = num_images / (speed_kimg * 1000.0)
    sign = (rt > target) - (rt < target)  # sign(rt - target) in {-1, 0, 1}
    return float(min(max(p + sign * step, 0.0), 1.0))


def _rand(n: int, device: torch.device, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, device=device, generator=generator)


def reflect_index(i: torch.Tensor, size: int) -> torch.Tensor:
    """Map integer positions onto [0, size) by mirroring at the borders without repeating the
    edge pixel (torch.nn.functional.pad's 'reflect'): -1 -> 1, size -> size - 2."""
    if size == 1:
        return torch.zeros_like(i)
    period = 2 * (size - 1)
    i = torch.remainder(i, period)
    return (size - 1) - (size - 1 - i).abs()


def translate(x: torch.Tensor, shift: torch.Tensor, *, pad_mode: str = "reflect") -> torch.Tensor:
    """Shift each image by whole pixels: out[b, :, y, x] = x[b, :, y - dy_b, x - dx_b].

    x:     [B, C, H, W] float.
    shift: [B, 2] long, (dy, dx) per image; positive moves content down / right.
    Pixels shifted in from outside are mirrored (pad_mode 'reflect') or zero ('zeros').
    """
    B, C, H, W = x.shape
    assert shift.shape == (B, 2), shift.shape
    ys = torch.arange(H, device=x.device)[None, :] - shift[:, 0:1]  # [B, H]
    xs = torch.arange(W, device=x.device)[None, :] - shift[:, 1:2]  # [B, W]
    if pad_mode == "reflect":
        ys, xs = reflect_index(ys, H), reflect_index(xs, W)
        valid = None
    else:
        valid = ((ys >= 0) & (ys < H))[:, :, None] & ((xs >= 0) & (xs < W))[:, None, :]  # [B, H, W]
        ys, xs = ys.clamp(0, H - 1), xs.clamp(0, W - 1)
    flat = (ys[:, :, None] * W + xs[:, None, :]).reshape(B, 1, H * W)  # [B, 1, H*W]
    out = x.reshape(B, C, H * W).gather(2, flat.expand(B, C, H * W)).reshape(B, C, H, W)
    if valid is not None:
        out = out * valid[:, None].to(out.dtype)
    return out


def _per_image(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).view(-1, 1, 1, 1)


def shift_brightness(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] + delta [B] per image."""
    return x + _per_image(delta, x)


def scale_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each pixel's deviation from its mean over channels (its grey) by factor [B]."""
    grey = x.mean(dim=1, keepdim=True)  # [B, 1, H, W]
    return grey + (x - grey) * _per_image(factor, x)


def scale_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale each image's deviation from its mean over channels and pixels by factor [B]."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
    return mean + (x - mean) * _per_image(factor, x)


def cutout_mask(centre: torch.Tensor, size: int, H: int, W: int) -> torch.Tensor:
    """[B, 1, H, W] mask that is 0 inside a size x size square around each centre (cy, cx)
    (clipped at the border) and 1 elsewhere. centre: [B, 2] long."""
    lo = centre - size // 2  # [B, 2] top-left corner, may lie outside the image
    ys = torch.arange(H, device=centre.device)[None, :]
    xs = torch.arange(W, device=centre.device)[None, :]
    inside_y = (ys >= lo[:, 0:1]) & (ys < lo[:, 0:1] + size)  # [B, H]
    inside_x = (xs >= lo[:, 1:2]) & (xs < lo[:, 1:2] + size)  # [B, W]
    return (~(inside_y[:, :, None] & inside_x[:, None, :]))[:, None]  # [B, 1, H, W]


class AugmentPipe(nn.Module):
    """Colour (brightness, saturation, contrast), translation and cutout, each applied to
    each image with probability `self.p`. `p` is a plain float the training loop sets (ADA)
    and saves with the resumable state."""

    def __init__(
        self,
        *,
        cfg: AugmentConfig,  # Strengths and mode; cfg.p_init is the starting probability.
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.p = cfg.p_init if cfg.mode != "off" else 0.0

    def forward(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """x: [B, C, H, W] float in [-1, 1] -> augmented [B, C, H, W]; identity when p == 0."""
        if self.p <= 0.0:
            return x
        cfg, (B, _C, H, W), dev = self.cfg, x.shape, x.device

        def chosen() -> torch.Tensor:  # [B] bool, True where this op applies (no draw when p >= 1)
            if self.p >= 1.0:
                return torch.ones(B, dtype=torch.bool, device=dev)
            return _rand(B, dev, generator) < self.p

        def uniform(strength: float) -> torch.Tensor:  # [B] in [-strength, strength)
            return (_rand(B, dev, generator) * 2 - 1) * strength

        if cfg.brightness > 0:
            x = shift_brightness(x, uniform(cfg.brightness) * chosen())
        if cfg.saturation > 0:
            x = scale_saturation(x, 1 + uniform(cfg.saturation) * chosen())
        if cfg.contrast > 0:
            x = scale_contrast(x, 1 + uniform(cfg.contrast) * chosen())
        if cfg.translation > 0:
            reach = torch.tensor([H, W], device=dev) * cfg.translation
            max_shift = (reach + 0.5).long()  # [2]
            u = torch.rand(B, 2, device=dev, generator=generator)
            shift = (u * (2 * max_shift + 1)).long() - max_shift  # uniform in [-max, max]
            x = translate(x, shift * chosen()[:, None], pad_mode=cfg.pad_mode)
        if cfg.cutout > 0:
            size = int(min(H, W) * cfg.cutout + 0.5)
            u = torch.rand(B, 2, device=dev, generator=generator)
            # Centres on [0, side] for an even cutout side (DiffAugment's range): the squares
            # then reach past the top / left border as often as past the bottom / right one.
            centre = (u * torch.tensor([H + 1 - size % 2, W + 1 - size % 2], device=dev)).long()
            keep = cutout_mask(centre, size, H, W) | ~chosen()[:, None, None, None]
            x = x * keep.to(x.dtype)
        return x
