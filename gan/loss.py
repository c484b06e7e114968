"""The GAN objective, by named phase (StyleGAN2-ADA's `StyleGAN2Loss` layout).

Phases the training loop calls:
  Gmain  non-saturating logistic loss for G (and, through G's use of the code, the text
         encoder): softplus(-D(aug(G(z, c)), c)).
  Dmain  softplus(D(aug(fake), c)) + softplus(-D(aug(real), c))
         + match_weight * softplus(D(aug(real), c_mismatched))   (matching-aware: a real
         image under another image's caption counts as fake, so D must read the caption).
  Dreg   lazy R1 on reals: gamma / 2 * ||grad_x D(aug(x), c)||^2, multiplied by
         r1_interval because it runs only every r1_interval steps.

How the text encoder trains: it sits inside G (one module with G's optimiser) and learns
through its surrogate gradients from the Gmain loss, via the mapping network and the
cross-attention that read the code. D always receives a *detached* pooled code: if the G
loss could also move the code inside D's projection head, the encoder would win the G loss
by shifting codes toward what D calls real instead of by changing images, a shortcut that
chases D and does not improve samples. D's view of a caption is therefore whatever the
encoder currently says, and the matching-aware term keeps D conditioning on it.

Callables the loss runs (the loop hands in DDP-wrapped or plain modules per phase):
  G(z [B, z_dim], batch) -> (img [B, 3, R, R], code SpikeCode)
  D(img [B, 3, R, R], pooled [B, C]) -> logits [B]
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from gan.augment import AugmentPipe

PHASES = ("Gmain", "Dmain", "Dreg")


@dataclass
class LossConfig:
    """Weights of the loss terms."""

    r1_gamma: float = 1.0  # R1 weight gamma; 0 = no R1.
    r1_interval: int = 16  # Lazy regularisation: R1 every this many steps (scaled up to match).
    match_weight: float = 1.0  # Weight of the matching-aware (mismatched caption) term in D.

    def __post_init__(self) -> None:
        if self.r1_gamma < 0:
            raise ValueError(f"loss.r1_gamma must be >= 0, got {self.r1_gamma}")
        if self.r1_interval < 1:
            raise ValueError(f"loss.r1_interval must be >= 1, got {self.r1_interval}")
        if self.match_weight < 0:
            raise ValueError(f"loss.match_weight must be >= 0, got {self.match_weight}")

    def to_dict(self) -> dict:
        return asdict(self)


def mismatch_permutation(pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair each prompt with its neighbour's (a roll by one) and flag the pairs whose codes
    actually differ (two identical captions are no mismatch). pooled: [B, C] ->
    (perm [B] long, differs [B] bool)."""
    B = pooled.shape[0]
    perm = torch.roll(torch.arange(B, device=pooled.device), 1)
    differs = (pooled - pooled[perm]).abs().amax(dim=1) > 1e-6
    return perm, differs


class GANLoss:
    """Computes each phase's loss tensor and its statistics; the caller runs backward."""

    def __init__(
        self,
        *,
        cfg: LossConfig,  # Term weights.
        augment: AugmentPipe | None,  # Applied to every image D sees; None = no augmentation.
    ) -> None:
        self.cfg = cfg
        self.augment = augment

    def run_D(self, D: Callable, img: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        if self.augment is not None:
            img = self.augment(img)
        logits = D(img, pooled)
        assert logits.shape == (img.shape[0],), logits.shape
        return logits

    def __call__(self, phase: str, **inputs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Dispatch by phase name; returns (loss scalar, detached statistics)."""
        if phase == "Gmain":
            return self.g_main(**inputs)
        if phase == "Dmain":
            return self.d_main(**inputs)
        if phase == "Dreg":
            return self.d_reg(**inputs)
        raise ValueError(f"unknown loss phase {phase!r}; expected one of {PHASES}")

    def g_main(self, *, G: Callable, D: Callable, z: torch.Tensor, batch: Any):
        img, code = G(z, batch)
        logits = self.run_D(D, img, code.pooled.detach())
        loss = F.softplus(-logits).mean()
        stats = {"loss/G": loss.detach(), "scores/fake_G": logits.detach().mean()}
        # The encoder's spike statistics (firing rate, spikes and synaptic operations per prompt).
        stats.update({f"spikes/{k}": v.detach().float().mean() for k, v in code.stats.items()})
        return loss, stats

    def d_main(self, *, G: Callable, D: Callable, z: torch.Tensor, batch: Any, real: torch.Tensor):
        with torch.no_grad():
            fake, code = G(z, batch)
        pooled = code.pooled.detach()
        fake_logits = self.run_D(D, fake.detach(), pooled)
        real_logits = self.run_D(D, real, pooled)
        loss_fake = F.softplus(fake_logits).mean()
        loss_real = F.softplus(-real_logits).mean()
        loss = loss_fake + loss_real
        stats = {
            "loss/D_fake": loss_fake.detach(),
            "loss/D_real": loss_real.detach(),
            "scores/fake": fake_logits.detach().mean(),
            "scores/real": real_logits.detach().mean(),
            # ADA's r_t numerator and denominator (summed, so they gather exactly).
            "ada/sign_sum": real_logits.detach().sign().sum(),
            "ada/count": torch.tensor(float(real.shape[0]), device=real.device),
        }
        if self.cfg.match_weight > 0:
            perm, differs = mismatch_permutation(pooled)
            mis_logits = self.run_D(D, real, pooled[perm])
            w = differs.to(mis_logits.dtype)
            loss_mis = (F.softplus(mis_logits) * w).sum() / w.sum().clamp(min=1)
            loss = loss + self.cfg.match_weight * loss_mis
            stats["loss/D_mismatch"] = loss_mis.detach()
            stats["scores/mismatch"] = ((mis_logits * w).sum() / w.sum().clamp(min=1)).detach()
        stats["loss/D"] = loss.detach()
        return loss, stats

    def d_reg(self, *, D: Callable, real: torch.Tensor, pooled: torch.Tensor):
        real = real.detach().requires_grad_(True)
        logits = self.run_D(D, real, pooled.detach())
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grad.float().square().sum(dim=(1, 2, 3))  # [B]
        loss = penalty.mean() * (self.cfg.r1_gamma / 2) * self.cfg.r1_interval
        # `logits * 0` keeps every D parameter in the graph (DDP expects a gradient for each).
        loss = loss + (logits * 0).sum()
        return loss, {"loss/r1": penalty.detach().mean()}
