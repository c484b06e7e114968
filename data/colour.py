"""Colour maths for palettes and sketches: sRGB -> CIE Lab, colour distance, an image's dominant
colours (k-means in Lab) and its sketch (the image blurred and cut to a coarse grid).

Colours are float RGB in [0, 1] (sRGB, D65 white); Lab has L in [0, 100], a and b about +-110.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_RGB_TO_XYZ = torch.tensor([[0.4124564, 0.3575761, 0.1804375],
                            [0.2126729, 0.7151522, 0.0721750],
                            [0.0193339, 0.1191920, 0.9503041]], dtype=torch.float64)
_WHITE_D65 = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)
SKETCH_BLUR_SIGMA = 1.5  # cells of the 4x finer grid the sketch is blurred at (about a third of a cell)


def srgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3] sRGB in [0, 1] -> [..., 3] CIE Lab (D65), computed in float64, returned in rgb's dtype."""
    x = rgb.double().clamp(0, 1)
    linear = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T.to(x.device) / _WHITE_D65.to(x.device)
    f = torch.where(xyz > (6 / 29) ** 3, xyz.clamp(min=1e-12) ** (1 / 3), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], dim=-1)
    return lab.to(rgb.dtype if rgb.is_floating_point() else torch.float32)


def delta_e(lab1: torch.Tensor, lab2: torch.Tensor) -> torch.Tensor:
    """CIE76 colour difference: the Euclidean distance in Lab, [..., 3] x [..., 3] -> [...] (broadcast)."""
    return (lab1 - lab2).square().sum(dim=-1).sqrt()


def dominant_colours(image: torch.Tensor, k: int, *, iterations: int = 10, side: int = 32,
                     min_share: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """The image's dominant colours by k-means in Lab; deterministic (no random initialisation).

    image: uint8 [3, H, W]. It is area-resized to at most side x side; the k centres start at the
    pixels of rank (i + 1/2) n / k in lightness (equal ones counted once) and move `iterations` Lloyd
    steps, with exact distances so that ties break alike on every CPU. Clusters holding
    less than `min_share` of the pixels are dropped. Returns (colours float RGB [K, 3] in [0, 1],
    the mean RGB of each cluster's pixels; shares [K] summing to about 1), K <= k, largest first.
    """
    assert image.ndim == 3 and image.shape[0] == 3, image.shape
    x = image.float()[None] / 255  # [1, 3, H, W]
    if max(x.shape[-2:]) > side:
        x = F.interpolate(x, size=(min(side, x.shape[-2]), min(side, x.shape[-1])), mode="area")
    rgb = x[0].flatten(1).T  # [n, 3]
    lab = srgb_to_lab(rgb)
    n = lab.shape[0]
    order = lab[:, 0].argsort(stable=True)
    seeds = lab[order[((torch.arange(k) + 0.5) * n / k).long().clamp(max=n - 1)]]
    centres = seeds.unique(dim=0)  # equal seeds would split one colour by rounding noise alone
    k = len(centres)
    for _ in range(iterations):
        assign = _nearest(lab, centres)  # [n]
        for j in range(k):
            members = lab[assign == j]
            if len(members):
                centres[j] = members.mean(dim=0)
    assign = _nearest(lab, centres)
    counts = torch.bincount(assign, minlength=k).float()
    keep = [j for j in counts.argsort(descending=True, stable=True).tolist() if counts[j] >= min_share * n]
    colours = torch.stack([rgb[assign == j].mean(dim=0) for j in keep])
    return colours, counts[keep] / n


def _nearest(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    # Exact distances (no matrix-product shortcut), so ties break the same way on every CPU.
    return torch.cdist(points, centres, compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """[B, C, H, W] blurred by a separable Gaussian of `sigma` pixels (radius 3 sigma, edges replicated)."""
    radius = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-t.square() / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    C = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1).expand(C, 1, 1, -1), groups=C)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1).expand(C, 1, -1, 1), groups=C)


def sketch_grid(image: torch.Tensor, grid: int) -> torch.Tensor:
    """An image's sketch: float [C, H, W] in [0, 1] (any size) -> [C, grid, grid].

    The image is resized to 4 grid x 4 grid (area averaging when shrinking, bilinear when growing),
    blurred (SKETCH_BLUR_SIGMA) and average-pooled 4 x 4, so each cell is a soft mean of its
    neighbourhood: a rough drawing and the scene it stands for give close sketches.
    """
    assert image.ndim == 3 and grid >= 1, (image.shape, grid)
    x = image.float()[None]
    fine = 4 * grid
    if x.shape[-1] >= fine and x.shape[-2] >= fine:
        x = F.interpolate(x, size=(fine, fine), mode="area")
    else:
        x = F.interpolate(x, size=(fine, fine), mode="bilinear", align_corners=False)
    return F.avg_pool2d(gaussian_blur(x, SKETCH_BLUR_SIGMA), 4)[0].clamp(0, 1)  # [C, grid, grid]
