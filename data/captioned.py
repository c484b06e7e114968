"""The base of every image–caption dataset: mirroring, caption sampling, item layout."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from .batch import to_float
from .images import ImageRejected
from .report import ScanReport

ImageDtype = Literal["uint8", "float32"]


def pick_caption(texts: tuple[str, ...], *, seed: int, epoch: int, index: int, draw: int,
                 stream: int = 0) -> str:
    """One caption out of `texts`, a pure function of its arguments (reproducible).

    `draw` counts accesses to this index in this process, `stream` separates DataLoader
    workers (their torch seed changes every epoch and follows torch.manual_seed), so each
    access samples afresh while a rerun with the same seeds sees the same captions.
    """
    if len(texts) == 1:
        return texts[0]
    rng = np.random.default_rng([seed, epoch, index, draw, stream])
    return texts[int(rng.integers(len(texts)))]


class CaptionedImages(Dataset):
    """Raw entries 0..N-1, each an image with one or more captions.

    Items: {"image": uint8 [3, R, R] (float [-1, 1] with image_dtype="float32"),
    "text": str, "index": int} (+ "attributes" where the source has ground truth).
    With flip=True the dataset has 2N items and items N..2N-1 are the mirrored images
    (StyleGAN2-ADA's --mirror).
    """

    def __init__(
        self,
        *,
        resolution: int,  # Output side in pixels.
        flip: bool,  # Add horizontally mirrored copies (doubles the length).
        seed: int,  # Seeds caption sampling for entries with several captions.
        image_dtype: ImageDtype,  # "uint8" (0..255) or "float32" ([-1, 1]).
    ) -> None:
        if image_dtype not in ("uint8", "float32"):
            raise ValueError(f"image_dtype must be 'uint8' or 'float32', got {image_dtype!r}")
        self.resolution = resolution
        self.flip = bool(flip)
        self.seed = int(seed)
        self.image_dtype = image_dtype
        self.epoch = 0
        self.report = ScanReport()
        self._draws: dict[int, int] = {}

    # --- what a source provides -------------------------------------------------------
    def _num_raw(self) -> int:
        raise NotImplementedError

    def _image(self, raw: int) -> np.ndarray:
        """uint8 [R, R, 3] of raw entry `raw`; may raise ImageRejected."""
        raise NotImplementedError

    def _texts(self, raw: int) -> tuple[str, ...]:
        raise NotImplementedError

    def _attributes(self, raw: int) -> dict | None:
        return None

    def _name(self, raw: int) -> str:
        return str(raw)

    # --- the Dataset ------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Mix the epoch into caption sampling (like DistributedSampler.set_epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._num_raw() * (2 if self.flip else 1)

    def captions(self, limit: int | None = None) -> list[str]:
        """Every caption of every entry (all of a list), for building a tokenizer;
        with `limit`, those of the first `limit` entries."""
        n = self._num_raw() if limit is None else min(limit, self._num_raw())
        return [t for raw in range(n) for t in self._texts(raw)]

    def __getitem__(self, index: int) -> dict:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n}")
        index = int(index) % n
        raw = index % self._num_raw()
        # A file that changed after the scan must not stop a run: warn and use the next entry.
        for attempt in range(self._num_raw()):
            r = (raw + attempt) % self._num_raw()
            try:
                image = self._image(r)
            except (ImageRejected, OSError) as e:
                warnings.warn(f"skipping {self._name(r)} at load time: {e}", RuntimeWarning)
                continue
            raw = r
            break
        else:
            raise RuntimeError("no entry of the dataset could be loaded")
        if index >= self._num_raw():
            image = image[:, ::-1]
        draw = self._draws.get(index, 0)
        self._draws[index] = draw + 1
        info = torch.utils.data.get_worker_info()
        text = pick_caption(self._texts(raw), seed=self.seed, epoch=self.epoch, index=index,
                            draw=draw, stream=0 if info is None else info.seed)
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # [3, R, R]
        item = {"image": to_float(chw) if self.image_dtype == "float32" else chw,
                "text": text, "index": index}
        attributes = self._attributes(raw)
        if attributes is not None:
            item["attributes"] = attributes
        return item
