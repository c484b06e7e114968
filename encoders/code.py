"""The conditioning code a spiking text encoder hands to the generator and discriminator."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SpikeCode:
    """What a spiking text encoder produces for a batch of prompts.

    pooled: [B, C] readout over all time steps (mapping network, D projection).
    tokens: [B, L, C] readout per token window (generator cross-attention).
    mask:   [B, L] bool, True where a real token stands (padding is False).
    stats:  spike statistics per prompt, e.g. "spikes" [B], "synops" [B], "firing_rate" [],
            "dense_macs" [] (multiply-accumulates a dense network of the same shape does).
    """

    pooled: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        B, L, C = self.tokens.shape
        assert self.pooled.shape == (B, C), (self.pooled.shape, self.tokens.shape)
        assert self.mask.shape == (B, L), (self.mask.shape, self.tokens.shape)

    @property
    def batch_size(self) -> int:
        return self.pooled.shape[0]

    def index(self, idx: torch.Tensor | slice | list[int]) -> SpikeCode:
        """Rows `idx` of the batch (a permutation gives mismatched prompts for D)."""
        stats = {k: v[idx] if v.ndim > 0 else v for k, v in self.stats.items()}
        return SpikeCode(self.pooled[idx], self.tokens[idx], self.mask[idx], stats)

    def lerp(self, other: SpikeCode, t: float) -> SpikeCode:
        """Linear interpolation between two codes; token sequences are padded to one length.

        The ends are exact (t = 0 gives self, t = 1 gives other); in between, a token position
        real in either code is attended to.
        """
        if t == 0:
            return self
        if t == 1:
            return other
        a, b = _pad_tokens(self, other.tokens.shape[1]), _pad_tokens(other, self.tokens.shape[1])
        return SpikeCode(
            torch.lerp(a.pooled, b.pooled, t),
            torch.lerp(a.tokens, b.tokens, t),
            a.mask | b.mask,
        )

    def to(self, *args, **kwargs) -> SpikeCode:
        """Like Tensor.to for the float tensors; the bool mask only follows the device."""
        pooled = self.pooled.to(*args, **kwargs)
        stats = {k: v.to(*args, **kwargs) for k, v in self.stats.items()}
        return SpikeCode(pooled, self.tokens.to(*args, **kwargs), self.mask.to(device=pooled.device), stats)

    def detach(self) -> SpikeCode:
        stats = {k: v.detach() for k, v in self.stats.items()}
        return SpikeCode(self.pooled.detach(), self.tokens.detach(), self.mask, stats)

    @staticmethod
    def cat(codes: list[SpikeCode]) -> SpikeCode:
        """Concatenate codes along the batch, padding token sequences to the longest."""
        L = max(c.tokens.shape[1] for c in codes)
        codes = [_pad_tokens(c, L) for c in codes]
        keys = set.intersection(*(set(c.stats) for c in codes))
        stats = {k: torch.cat([c.stats[k] for c in codes]) for k in keys if codes[0].stats[k].ndim > 0}
        return SpikeCode(
            torch.cat([c.pooled for c in codes]),
            torch.cat([c.tokens for c in codes]),
            torch.cat([c.mask for c in codes]),
            stats,
        )


def _pad_tokens(code: SpikeCode, length: int) -> SpikeCode:
    """Pad the token axis with masked-out zeros up to `length` (no-op when already that long)."""
    B, L, C = code.tokens.shape
    if L >= length:
        return code
    tokens = torch.cat([code.tokens, code.tokens.new_zeros(B, length - L, C)], dim=1)
    mask = torch.cat([code.mask, code.mask.new_zeros(B, length - L)], dim=1)
    return SpikeCode(code.pooled, tokens, mask, code.stats)
