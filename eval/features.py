"""Inception pool features of uint8 images, with clean-fid's "clean" preprocessing.

clean-fid's "clean" mode (`cleanfid.resize.make_resizer("PIL", False, "bicubic", (299, 299))`)
resizes each channel separately as a 32-bit float PIL image with bicubic filtering, clips to
[0, 255] without quantising, and the network then sees `(x - 128) / 128`. `clean_resize`
reproduces that bit for bit (a test compares it with clean-fid's own function).
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from data.files import sha256_file
from eval.inception import INPUT_SIZE, load_inception


def clean_resize(image: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """clean-fid's "clean" resize of one image: uint8 [3, H, W] -> float32 [3, size, size] in [0, 255]."""
    assert image.ndim == 3 and image.shape[0] == 3, f"expected [3,H,W], got {image.shape}"
    channels = []
    for channel in image:  # [H, W] each; PIL mode "F" (float32) per channel, as clean-fid does
        resized = Image.fromarray(channel.astype(np.float32)).resize((size, size), resample=Image.BICUBIC)
        channels.append(np.asarray(resized).clip(0, 255))
    return np.stack(channels).astype(np.float32)  # [3, size, size]


def _as_uint8_numpy(images: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if images.dtype != np.uint8:
        raise TypeError(f"InceptionFeatures expects uint8 images [B,3,H,W] in 0..255, got dtype {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"InceptionFeatures expects images [B,3,H,W], got shape {tuple(images.shape)}")
    return images


class InceptionFeatures:
    """The FID feature extractor: uint8 images [B,3,H,W] -> float32 pool features [B,2048] (CPU tensor).

    `weights_file` / `weights_sha256` name the TorchScript the weights came from (for reports)."""

    dim = 2048

    def __init__(
        self,
        device: str | torch.device = "cpu",  # Where the network runs.
        *,
        weights: str | Path | None = None,  # Inception TorchScript file; None = search the usual places.
        batch: int = 32,  # Largest chunk sent through the network at once (bounds activation memory).
    ):
        self.device = torch.device(device)
        self.batch = batch
        model, path = load_inception(weights)
        self.model = model.to(self.device)
        self.weights_file = str(path)
        self.weights_sha256 = sha256_file(path)

    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 [B,3,H,W] -> float32 [B,3,299,299] in [-1,1), channels-last, on the device."""
        images = _as_uint8_numpy(images)
        if images.shape[2:] == (INPUT_SIZE, INPUT_SIZE):
            resized = images.astype(np.float32)  # PIL's same-size resize is an exact copy
        else:
            resized = np.stack([clean_resize(img) for img in images])
        x = torch.from_numpy(resized).to(self.device)
        x = (x - 128) / 128
        return x.contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        images = _as_uint8_numpy(images)
        out = [self.model(self.preprocess(images[i:i + self.batch])).float().cpu()
               for i in range(0, len(images), self.batch)]
        return torch.cat(out) if out else torch.zeros(0, self.dim)  # [B, 2048]


def _images_of(item: Any) -> torch.Tensor:
    """A batch of uint8 images [B,3,H,W] from a collated dict, a single item dict, or a tensor."""
    if isinstance(item, dict):
        item = item["image"]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item)
    if item.ndim == 3:
        item = item[None]  # one image [3,H,W] -> [1,3,H,W]
    return item


def iterate_batches(source: Iterable[Any], batch: int, limit: int | None = None) -> Iterable[torch.Tensor]:
    """Regroup a stream of images into uint8 batches [<=batch,3,H,W], stopping after `limit` images.

    `source` may yield single images [3,H,W], batches [B,3,H,W], dataset items or collated
    dicts (`{"image": ...}`); a map-style Dataset is iterated item by item. Only one batch is
    held at a time."""
    if isinstance(source, torch.utils.data.Dataset) and not isinstance(source, torch.utils.data.IterableDataset):
        # Map-style: index 0..len-1 (a procedural dataset may answer any index, never IndexError).
        stop = len(source) if limit is None else min(len(source), limit)
        dataset = source
        source = (dataset[i] for i in range(stop))
    pending: list[torch.Tensor] = []
    count = 0
    seen = 0
    for item in source:
        images = _images_of(item)
        if limit is not None:
            images = images[:limit - seen]
        seen += len(images)
        pending.append(images)
        count += len(images)
        while count >= batch:
            joined = torch.cat(pending)
            yield joined[:batch]
            rest = joined[batch:]
            pending, count = ([rest] if len(rest) else []), len(rest)
        if limit is not None and seen >= limit:
            break
    if count:
        yield torch.cat(pending)


def extract_features(source: Iterable[Any], extractor, batch: int = 32, limit: int | None = None) -> np.ndarray:
    """Stream `source` through `extractor` in batches of `batch`: -> float32 features [N, D].

    Only one batch of images is in memory at a time; the features (8 KiB per image for
    Inception) are gathered."""
    feats = [np.asarray(extractor(images), dtype=np.float32) for images in iterate_batches(source, batch, limit)]
    dim = getattr(extractor, "dim", 0)
    return np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)
