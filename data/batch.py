"""Batching dataset items and converting images to the network range."""

from __future__ import annotations

import torch

GUIDE_KEYS = ("palette", "palette_weights", "sketch")


def collate(items: list[dict]) -> dict:
    """Batch dataset items.

    items: dicts with "image" uint8 [3, R, R] (or float), "text" str, "index" int and,
    for the shapes domain, "attributes" (JSON-able dict).
    Returns {"image": [B, 3, R, R], "text": list[str], "index": [B] long} plus
    "attributes": list[dict] when every item has them, and the guide keys ("palette" [B, K, 3],
    "palette_weights" [B, K], "sketch" [B, 3, g, g]) when every item has them.
    """
    if not items:
        raise ValueError("collate: empty list of items")
    batch = {
        "image": torch.stack([it["image"] for it in items]),  # [B, 3, R, R]
        "text": [it["text"] for it in items],
        "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
    }
    if all("attributes" in it for it in items):
        batch["attributes"] = [it["attributes"] for it in items]
    for key in GUIDE_KEYS:  # data.guides.GuidedDataset's items
        if all(key in it for it in items):
            batch[key] = torch.stack([it[key] for it in items])
    return batch


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [..., 3, H, W] in 0..255 -> float32 in [-1, 1] (0 -> -1, 255 -> 1)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images.dtype}")
    return images.to(torch.float32) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float in [-1, 1] -> uint8 0..255 (clamped, rounded); the inverse of to_float."""
    return ((images.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
