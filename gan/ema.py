"""Exponential moving average of the generator and its text encoder (StyleGAN2-ADA style).

The exported model is the EMA copy: its weights are a running average over the last
`ema_kimg` thousand images, with the horizon ramped up at the start of training so the
average does not remember the random initialisation (`ema_rampup`: the horizon is at most
this fraction of the images seen so far). Buffers (e.g. the generator's `w_avg`) are copied,
not averaged, exactly as StyleGAN2-ADA does.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(*, batch_size: int, cur_nimg: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """Decay for one update after `batch_size` more images: 0.5 ** (batch / horizon), where
    horizon = ema_kimg * 1000 images, or cur_nimg * ema_rampup if that is smaller."""
    ema_nimg = ema_kimg * 1000.0
    if ema_rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch_size / max(ema_nimg, 1e-8))


class EMA:
    """Holds `model` (a frozen, eval-mode deep copy) and updates it from the live network."""

    def __init__(
        self,
        *,
        source: nn.Module,  # The live network (unwrapped): its copy becomes the EMA model.
        ema_kimg: float,  # Half-life of the average in thousands of images.
        ema_rampup: float | None,  # Horizon <= this fraction of images seen; None = no ramp-up.
    ) -> None:
        self.model = copy.deepcopy(source).eval().requires_grad_(False)
        self.ema_kimg = ema_kimg
        self.ema_rampup = ema_rampup

    @torch.no_grad()
    def update(self, source: nn.Module, *, cur_nimg: int, batch_size: int) -> float:
        """Blend `source` into the average after a step of `batch_size` images; `cur_nimg` counts
        images seen including that step. Returns the decay used."""
        beta = ema_beta(batch_size=batch_size, cur_nimg=cur_nimg, ema_kimg=self.ema_kimg,
                        ema_rampup=self.ema_rampup)
        src_params = dict(source.named_parameters())
        for name, p_ema in self.model.named_parameters():
            p = src_params[name]
            if not p.requires_grad:  # frozen (e.g. a pre-trained sentence model): equal already
                continue
            p_ema.copy_(p.detach().to(p_ema.dtype).lerp(p_ema, beta))
        src_buffers = dict(source.named_buffers())
        for name, b_ema in self.model.named_buffers():
            b_ema.copy_(src_buffers[name])
        return beta

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)
