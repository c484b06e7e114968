"""One entry point for every kind of dataset."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from .folder import FolderDataset
from .prepared import PreparedDataset, read_info
from .shapes import ShapesDataset


def open_dataset(path: str | Path, *, resolution: int, flip: bool = False, seed: int = 0, **kw) -> Dataset:
    """A dataset of {"image": uint8 [3, R, R], "text": str, "index": int} items.

    path: "shapes" (the procedural domain; kw: size, image_dtype, two_objects_p, size_p),
    a directory prepared by scripts/prepare_data.py (kw: image_dtype), or a folder / .zip of
    images with captions (kw: fit, background, min_size, max_pixels, caption_column,
    image_dtype, scan_workers). flip adds mirrored copies (not for shapes, whose captions
    name left and right). Every dataset has .captions() and .report.
    """
    if str(path) == "shapes":
        if flip:
            raise ValueError("flip=True is not supported for 'shapes': mirroring would contradict "
                             "the left/right in its captions (the domain is already symmetric)")
        return ShapesDataset(resolution, seed=seed, **kw)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset {str(path)!r} does not exist (expected a folder, a .zip, "
                                "a prepared directory, or 'shapes')")
    if p.is_dir() and read_info(p) is not None:
        return PreparedDataset(p, resolution=resolution, flip=flip, seed=seed, **kw)
    return FolderDataset(p, resolution=resolution, flip=flip, seed=seed, **kw)
