"""The training data stream: a seeded, endless, position-indexed sequence of micro-batches.

Exact resume restarts the stream at a position: the sampler deals shuffled epochs round robin to
the processes, seeded by (seed, epoch), so the images a resumed run sees are those the original
would have.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gan.signals import leave_stop_signals_to_parent


class StreamSampler(torch.utils.data.Sampler):
    """Shuffled epochs of range(size) from torch.randperm seeded with (seed, epoch), dealt round
    robin: process `rank` of `world` takes stream positions rank, rank + world, ... Starts after
    `start` of this process's items, so a resumed run sees exactly what the original would have."""

    def __init__(self, *, size: int, rank: int, world: int, seed: int, start: int = 0) -> None:
        self.size, self.rank, self.world, self.seed, self.start = size, rank, world, seed, start

    def __iter__(self):
        g = self.start * self.world + self.rank  # global stream position
        epoch, perm = -1, None
        while True:
            e, i = divmod(g, self.size)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + e))
            yield int(perm[i])
            g += self.world


@dataclass
class MicroBatch:
    real: torch.Tensor  # [b, 3, R, R] float in [-1, 1]
    tokens: Any  # encoders.TokenBatch with b rows
    index: torch.Tensor  # [b] dataset indices


def make_loader(dataset, *, batch_gpu: int, rank: int, world: int, seed: int, start: int, workers: int):
    from data import collate

    sampler = StreamSampler(size=len(dataset), rank=rank, world=world, seed=seed, start=start)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_gpu, sampler=sampler, collate_fn=collate, num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),  # keeps global RNG untouched
        prefetch_factor=4 if workers > 0 else None, worker_init_fn=leave_stop_signals_to_parent)
