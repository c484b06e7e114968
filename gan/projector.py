"""Optimising latents of a trained generator: projection of real images and refinement.

Both move an offset added to the intermediate latents ws (and, optionally, the generator's
constant noise maps) by Adam under a loss, with StyleGAN2's projector schedule: learning
rate ramped up over the first 5 % of steps and down with a cosine over the last 25 %,
Gaussian noise on w that fades out over the first 75 %, the noise maps regularised towards
white noise (their autocorrelation at every scale pushed to zero) and renormalised after
each step.

- project(): find w that reproduces a target image (a distance such as LPIPS plus a pixel
  loss), as StyleGAN2's projector, starting from the prompt's mean w.
- refine(): raise a differentiable score of the image (e.g. prompt alignment) while a
  distance term keeps the image near where it started.

gan/ never imports eval/: the distance and the score are callables handed in by the caller
(scripts/sample.py and scripts/project.py pass eval.lpips.LPIPS and eval's alignment scorer).
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from encoders import SpikeCode

# distance(images [B,3,R,R], reference [B,3,R,R]) -> [B]; both in [-1, 1]; lower = closer.
Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# score(images [B,3,R,R]) -> [B]; images in [-1, 1]; higher = better.
Score = Callable[[torch.Tensor], torch.Tensor]


def upsampled(distance: Distance, *, min_size: int = 64) -> Distance:
    """`distance` on images bilinearly upsampled to at least min_size x min_size (LPIPS's
    AlexNet cannot read 16 px images: its feature maps shrink to nothing)."""

    def d(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < min_size or x.shape[-2] < min_size:
            size = (max(min_size, x.shape[-2]), max(min_size, x.shape[-1]))
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return distance(x, y)

    return d


@dataclass
class OptimConfig:
    """How the latent optimisation runs (defaults: StyleGAN2's projector)."""

    steps: int = 1000                 # Adam steps.
    lr: float = 0.1                   # Peak learning rate.
    lr_rampup: float = 0.05           # Fraction of steps for the linear warm-up.
    lr_rampdown: float = 0.25         # Fraction of steps for the cosine ramp-down at the end.
    w_noise: float = 0.05             # Std of the noise added to w at step 0, in units of w_std.
    w_noise_ramp: float = 0.75        # Fraction of steps over which that noise fades to 0.
    optimize_noise: bool = True       # Also optimise the generator's constant noise maps.
    noise_reg_weight: float = 1e5     # Weight of the noise-map autocorrelation penalty.
    w_plus: bool = False              # One offset per synthesis layer (W+) instead of one per image (W).

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class OptimResult:
    """Outcome of an optimisation.

    ws:      [B, num_ws, w_dim] the optimised latents.
    noise:   name -> constant noise map after optimisation (empty when not optimised).
    images:  [B, 3, R, R] the generator's output for ws and noise, in [-1, 1].
    history: per-step dict of floats (loss and its terms).
    """

    ws: torch.Tensor
    noise: dict[str, torch.Tensor]
    images: torch.Tensor
    history: list[dict[str, float]] = field(default_factory=list)


def lr_at(step: int, cfg: OptimConfig) -> float:
    """StyleGAN2 projector's learning rate at `step` (0-based): linear warm-up, cosine ramp-down."""
    t = step / cfg.steps
    ramp = min(1.0, (1.0 - t) / cfg.lr_rampdown)
    ramp = 0.5 - 0.5 * math.cos(ramp * math.pi)
    ramp = ramp * min(1.0, t / cfg.lr_rampup) if cfg.lr_rampup > 0 else ramp
    return cfg.lr * ramp


def noise_buffers(G: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The generator's constant noise maps (buffers named `*noise_const*`, used by noise_mode="const")."""
    return {name: buf for name, buf in G.named_buffers() if "noise_const" in name}


@contextlib.contextmanager
def noise_maps(G: torch.nn.Module, noise: dict[str, torch.Tensor]) -> Iterator[torch.nn.Module]:
    """Within the block, G's constant noise maps named in `noise` hold those values (e.g. an
    OptimResult's); afterwards they are restored. Unknown names or shapes raise KeyError/ValueError."""
    bufs = noise_buffers(G)
    unknown = sorted(set(noise) - set(bufs))
    if unknown:
        raise KeyError(f"noise maps {unknown} are not buffers of this generator")
    saved = {k: bufs[k].detach().clone() for k in noise}
    try:
        with torch.no_grad():
            for k, v in noise.items():
                if v.shape != bufs[k].shape:
                    raise ValueError(f"noise map {k}: shape {tuple(v.shape)} != the generator's {tuple(bufs[k].shape)}")
                bufs[k].copy_(v)
        yield G
    finally:
        with torch.no_grad():
            for k, v in saved.items():
                bufs[k].copy_(v)


def noise_regularization(noises: list[torch.Tensor]) -> torch.Tensor:
    """StyleGAN2's penalty: squared autocorrelation at shift 1 (x and y) of each map, at every
    scale down to 8x8 by 2x2 average pooling. Zero for ideal white noise. Maps are [H, W] or
    [..., H, W]."""
    reg = torch.zeros(())
    for v in noises:
        n = v.reshape(-1, 1, *v.shape[-2:])  # [N, 1, H, W] for avg_pool2d
        reg = reg.to(n.device)
        while True:
            reg = reg + (n * torch.roll(n, shifts=1, dims=3)).mean() ** 2
            reg = reg + (n * torch.roll(n, shifts=1, dims=2)).mean() ** 2
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, kernel_size=2)
    return reg


def optimize_latents(
    G: torch.nn.Module,
    ws_start: torch.Tensor,
    code: SpikeCode,
    loss_fn: Callable[[torch.Tensor], tuple[torch.Tensor, dict[str, float]]],
    *,
    cfg: OptimConfig,
    w_std: float = 1.0,
    seed: int = 0,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> OptimResult:
    """Minimise loss_fn(G.synthesis(ws_start + offset, code)) over the offset (and noise maps).

    G:        a generator; deep-copied, so the caller's noise maps stay as they were.
    ws_start: [B, num_ws, w_dim] where the search starts.
    loss_fn:  images [B, 3, R, R] -> (scalar loss, dict of floats to log).
    w_std:    scale of w (the noise on w is cfg.w_noise * w_std at step 0).
    seed:     seeds the noise added to w.
    """
    B, num_ws, w_dim = ws_start.shape
    G = copy.deepcopy(G).eval().requires_grad_(False)
    ws_start = ws_start.detach()
    offset = torch.zeros(B, num_ws if cfg.w_plus else 1, w_dim, device=ws_start.device, requires_grad=True)
    noise = noise_buffers(G) if cfg.optimize_noise else {}
    for buf in noise.values():
        buf.requires_grad_(True)
    opt = torch.optim.Adam([offset, *noise.values()], lr=cfg.lr, betas=(0.9, 0.999))
    gen = torch.Generator(device=ws_start.device).manual_seed(seed)
    history: list[dict[str, float]] = []
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        jitter_scale = w_std * cfg.w_noise * max(0.0, 1.0 - step / (cfg.steps * cfg.w_noise_ramp)) ** 2
        jitter = torch.randn(offset.shape, generator=gen, device=offset.device) * jitter_scale
        ws = ws_start + offset + jitter  # [B, num_ws, w_dim]; a W offset broadcasts over layers
        images = G.synthesis(ws, code, noise_mode="const")
        loss, stats = loss_fn(images)
        if noise:
            reg = noise_regularization(list(noise.values()))
            loss = loss + cfg.noise_reg_weight * reg
            stats = {**stats, "noise_reg": float(reg.detach())}
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():  # keep the noise maps zero-mean, unit-variance
            for buf in noise.values():
                buf -= buf.mean()
                buf *= buf.square().mean().rsqrt()
        stats = {"step": step, "loss": float(loss.detach()), **stats}
        history.append(stats)
        if log is not None:
            log(step, stats)
    with torch.no_grad():
        ws = ws_start + offset.detach()
        images = G.synthesis(ws, code, noise_mode="const")
    return OptimResult(ws=ws, noise={k: v.detach().clone() for k, v in noise.items()},
                       images=images, history=history)


def project(
    G: torch.nn.Module,
    target: torch.Tensor,
    code: SpikeCode,
    *,
    distance: Distance,
    w_start: torch.Tensor,
    w_std: float,
    pixel_weight: float = 1.0,
    cfg: OptimConfig | None = None,
    seed: int = 0,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> OptimResult:
    """Find ws whose image matches `target` (StyleGAN2's projector in W, plus a pixel term).

    target:  [1, 3, R, R] in [-1, 1] at the generator's resolution.
    code:    SpikeCode with batch 1 (the prompt the image should be read under).
    w_start: [1, num_ws, w_dim] start, usually the prompt's mean w.
    w_std:   spread of w for this prompt (scales the exploration noise on w).
    Loss: distance(image, target) + pixel_weight * mean squared error.
    """
    cfg = cfg or OptimConfig()
    assert target.ndim == 4 and target.shape[0] == 1 and target.shape[1] == 3, target.shape
    assert w_start.shape[0] == 1 and code.batch_size == 1, (w_start.shape, code.batch_size)
    target = target.detach()

    def loss_fn(images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        dist = distance(images, target).sum()
        pixel = (images - target).square().mean()
        return dist + pixel_weight * pixel, {"distance": float(dist.detach()), "pixel": float(pixel.detach())}

    return optimize_latents(G, w_start, code, loss_fn, cfg=cfg, w_std=w_std, seed=seed, log=log)


def refine(
    G: torch.nn.Module,
    ws: torch.Tensor,
    code: SpikeCode,
    *,
    score: Score,
    distance: Distance,
    distance_weight: float = 1.0,
    cfg: OptimConfig | None = None,
    seed: int = 0,
    log: Callable[[int, dict[str, float]], None] | None = None,
) -> OptimResult:
    """Raise score(image) while distance(image, start image) keeps it near where it started.

    ws:   [B, num_ws, w_dim] the latents of the images to refine; code has batch B.
    Loss: -mean score + distance_weight * mean distance to the starting images. The noise
    maps are shared by the batch, so refine one image at a time when optimising them.
    Default cfg: 100 steps at lr 0.02 with no exploration noise on w.
    """
    cfg = cfg or OptimConfig(steps=100, lr=0.02, w_noise=0.0)
    with torch.no_grad():
        start = G.synthesis(ws, code, noise_mode="const").detach()

    def loss_fn(images: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        s = score(images).mean()
        d = distance(images, start).mean()
        return -s + distance_weight * d, {"score": float(s.detach()), "distance": float(d.detach())}

    return optimize_latents(G, ws, code, loss_fn, cfg=cfg, seed=seed, log=log)
