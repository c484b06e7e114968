"""The training data stream: a seeded, endless, position-indexed sequence of micro-batches.

Exact resume restarts the stream at a position: the sampler deals shuffled epochs round robin to
the processes, seeded by (seed, epoch), so the images a resumed run sees are those the original
would have.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
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
    content: Any = None  # TokenBatch of the captions the real images show, where a palette overrides; None = tokens


def make_loader(dataset, *, batch_gpu: int, rank: int, world: int, seed: int, start: int, workers: int):
    from data import collate

    sampler = StreamSampler(size=len(dataset), rank=rank, world=world, seed=seed, start=start)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_gpu, sampler=sampler, collate_fn=collate, num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),  # keeps global RNG untouched
        prefetch_factor=4 if workers > 0 else None, worker_init_fn=leave_stop_signals_to_parent)


def batch_guides(batch: dict, *, drop: float, key: Sequence[int]):
    """The palettes and sketches of a collated batch of data.guides.GuidedDataset items as
    encoders.guides.Guides, each dropped with probability `drop` (per image and kind). The drop is
    drawn from a generator seeded with `key` (seed, rank, step, micro-batch), so a resumed run drops
    exactly what the original did; None when the batch carries no guides."""
    from encoders.guides import Guides

    if "palette" not in batch and "sketch" not in batch:
        return None
    sketch = batch.get("sketch")
    guides = Guides(batch.get("palette"), batch.get("palette_weights"), sketch,
                    None if sketch is None else torch.ones(sketch.shape[0], dtype=torch.bool))
    seed = int(np.random.SeedSequence([int(k) for k in key]).generate_state(1)[0])
    return guides.dropped(drop, torch.Generator().manual_seed(seed))


def override_captions(texts: Sequence[str], guides, *, p: float, key: Sequence[int], sketch_p: float = 0.0) -> list[str]:
    """The captions that condition a batch where guides override words: each image that keeps its
    palette has, with probability `p`, every colour word of its caption swapped for another
    (data.guides.override_colour_words), so the palette, not the caption, says what colour the real
    image shows; each image that keeps its sketch has, with probability `sketch_p`, its lone
    object's place swapped (data.guides.override_place). Seeded with `key` like batch_guides (a
    resumed run swaps the same words); the two draws have generators of their own."""
    from data.guides import override_colour_words, override_place

    texts = list(texts)
    if guides is None:
        return texts
    if p > 0 and guides.palette is not None:
        generator = _generator(key, 1)
        swap = (torch.rand(len(texts), generator=generator) < p) & (guides.palette_weights.sum(dim=1).cpu() > 0)
        texts = [override_colour_words(t, generator) if s else t for t, s in zip(texts, swap.tolist())]
    if sketch_p > 0 and guides.sketch is not None:
        generator = _generator(key, 2)
        swap = (torch.rand(len(texts), generator=generator) < sketch_p) & guides.sketch_mask.cpu()
        texts = [override_place(t, generator) if s else t for t, s in zip(texts, swap.tolist())]
    return texts


def _generator(key: Sequence[int], stream: int) -> torch.Generator:
    seed = int(np.random.SeedSequence([*(int(k) for k in key), stream]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)
