"""How closely generated images follow their guides (encoders/guides.py): palette and sketch adherence.

- palette: of the palette's colours, the share present in the image (at least `min_share` of its
  pixels within ΔE `tolerance`, CIE76 in Lab), and the share of the image's pixels farther than
  `tolerance` from every palette colour.
- sketch: on shapes, the IoU of the image's object mask (pixels whose colour is far from the
  image's border colour) with the scene's; otherwise the mean colour error per cell between the
  image's sketch and the guiding one (RGB in [0, 1]).
"""
from __future__ import annotations

import torch

from data.colour import delta_e, sketch_grid, srgb_to_lab

OBJECT_THRESHOLD = 0.25  # an object pixel differs from the border colour by this much, summed over RGB in [0, 1]


def palette_adherence(images: torch.Tensor, palette: torch.Tensor, weights: torch.Tensor, *, tolerance: float = 15.0,
                      min_share: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """images uint8 [B, 3, H, W], palette RGB [B, K, 3] in [0, 1], weights [B, K] (0 = empty slot)
    -> (coverage [B]: share of the palette's colours present; outside [B]: share of pixels far from all)."""
    lab = srgb_to_lab(images.float().div(255).flatten(2).transpose(1, 2))  # [B, HW, 3]
    dist = delta_e(lab[:, :, None], srgb_to_lab(palette.float())[:, None])  # [B, HW, K]
    real = weights > 0  # [B, K]
    near = (dist <= tolerance).float().mean(dim=1)  # [B, K] share of pixels near each colour
    coverage = ((near >= min_share) & real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
    far = dist.masked_fill(~real[:, None], float("inf")).min(dim=2).values > tolerance  # [B, HW]
    return coverage.float(), far.float().mean(dim=1)


def object_masks(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> bool [B, H, W]: pixels whose colour is far from the mean border colour."""
    from gan.layout import border_colour

    x = images.float() / 255
    return (x - border_colour(x)).abs().sum(dim=1) > OBJECT_THRESHOLD


def mask_iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """bool [B, H, W] x2 -> IoU [B] (1 where both are empty)."""
    inter = (predicted & target).flatten(1).sum(dim=1).float()
    union = (predicted | target).flatten(1).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sketch_cell_error(images: torch.Tensor, sketches: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W], sketches [B, 3, g, g] in [0, 1] -> mean |image's sketch - sketch| per cell [B]."""
    g = sketches.shape[-1]
    drawn = torch.stack([sketch_grid(im.float() / 255, g) for im in images])
    return (drawn - sketches.float()).abs().mean(dim=(1, 2, 3))
