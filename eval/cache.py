"""A user cache for computed statistics (FID reference stats, trained scorers).

Files live under `$SPIKEGAN_CACHE`, else `~/.cache/spikegan` (never inside site-packages,
where clean-fid would put them), one sub-folder per kind. Keys hash everything the contents
depend on; writes are atomic (`data.files.atomic_write`), so readers see either the old file, the new
one, or none.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from data.files import atomic_write


def default_cache_dir() -> Path:
    """`$SPIKEGAN_CACHE`, else `~/.cache/spikegan`."""
    env = os.environ.get("SPIKEGAN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "spikegan"


def cache_path(kind: str, name: str, *, cache_dir: str | Path | None = None) -> Path:
    """<cache_dir or default_cache_dir()>/<kind>/<name> (the folder is created)."""
    folder = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / kind
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def make_key(**parts: object) -> str:
    """A short stable hash of named parts (order-independent): 20 hex characters."""
    text = "|".join(f"{k}={parts[k]}" for k in sorted(parts))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def dataset_fingerprint(dataset: torch.utils.data.Dataset, num: int, *, resolution: int | None = None) -> str:
    """sha256 over the uint8 bytes and shapes of the first `num` images of `dataset`.

    If the dataset offers `fingerprint()` (or a `fingerprint` string), that is trusted instead
    of reading every image. Raises if an image is not uint8 [3, resolution, resolution]."""
    own = getattr(dataset, "fingerprint", None)
    if own is not None:
        return f"{own() if callable(own) else own}:{num}"
    digest = hashlib.sha256()
    for i in range(num):
        image = dataset[i]["image"]
        image = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"dataset item {i}: expected uint8 image [3,R,R], got {image.dtype} {image.shape}")
        if resolution is not None and image.shape[1:] != (resolution, resolution):
            raise ValueError(f"dataset item {i}: image is {image.shape[1]}x{image.shape[2]}, "
                             f"expected resolution {resolution}")
        digest.update(str(image.shape).encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return digest.hexdigest()


def save_npz_atomic(path: str | Path, **arrays: np.ndarray) -> None:
    """np.savez into `path`, atomically (data.files.atomic_write)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a path
            np.savez(f, **arrays)

    atomic_write(path, write)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
