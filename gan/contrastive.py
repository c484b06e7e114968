"""Image-caption contrastive scores: which captions are negatives, InfoNCE over a batch, CLIP's loss.

Shared by the GAN loss (D's projection scores, gan/loss.py) and the encoder warm-up
(gan/warmup.py). Two rows whose captions code identically are neither each other's negative nor
a mismatch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def distinct_pairs(pooled: torch.Tensor) -> torch.Tensor:
    """[B, C] codes -> [B, B] bool, True where prompts i and j code differently (the diagonal,
    and two identical captions, are no mismatch)."""
    return (pooled[:, None, :] - pooled[None, :, :]).abs().amax(dim=2) > 1e-6


def mask_identical_captions(pair_logits: torch.Tensor, distinct: torch.Tensor) -> torch.Tensor:
    """[B, B] logits with -inf where two different rows' captions code identically (neither is
    the other's negative); the diagonal is kept."""
    keep = distinct | torch.eye(len(distinct), dtype=torch.bool, device=distinct.device)
    return pair_logits.float().masked_fill(~keep, float("-inf"))


def contrastive_loss(pair_logits: torch.Tensor, distinct: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -log softmax(row)[i] over the row's own caption and its distinct
    captions (an identical caption elsewhere in the batch is left out, not a negative)."""
    logits = mask_identical_captions(pair_logits, distinct)
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def clip_loss(img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor,
              distinct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's symmetric InfoNCE over cosine similarities of img_emb [B, C] and txt_emb [B, C] at
    temperature exp(logit_scale) (at most 100). Returns (loss, [B, B] logits)."""
    scale = logit_scale.exp().clamp(max=100)
    logits = mask_identical_captions(scale * (F.normalize(img_emb, dim=1) @ F.normalize(txt_emb, dim=1).T), distinct)
    return (contrastive_loss(logits, distinct) + contrastive_loss(logits.T, distinct)) / 2, logits
