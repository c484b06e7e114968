"""The preprocessed dataset format: validated, converted, resized once; loads in seconds.

A prepared directory holds
  images.npy      uint8 [N, R, R, 3], read memory-mapped (one page-cached file, no decoding)
  captions.jsonl  line i: {"file": ..., "text": [captions...]} (+ "attributes" for shapes, + "palette":
                  its dominant colours ["#rrggbb", ...] for other images, data/guides.py)
  sketches.npy    uint8 [N, g, g, 3], each image's sketch at dataset.json's "sketch_grid" g (not for shapes,
                  whose guides come from the scenes); sets prepared without it compute sketches on load
  report.json     {"kept": N, "skipped": [{"file", "reason", "detail"}, ...], "reasons": {...}}
  dataset.json    {"format": "spikegan-prepared", "version": 1, "resolution": R, "count": N, ...}
dataset.json is written last, so a directory with it is complete.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .captioned import CaptionedImages, ImageDtype
from .files import atomic_write, atomic_write_text
from .folder import FolderDataset
from .guides import hex_colours, image_palette, image_sketch
from .images import ImageRejected, resize
from .report import ScanReport
from .shapes import Scene, ShapesDataset, render_scene, scene_attributes

PREPARED_COLOURS = 5  # dominant colours stored per image (encoders.config.MAX_COLOURS)

FORMAT, VERSION = "spikegan-prepared", 1
FILES = ("images.npy", "captions.jsonl", "report.json", "dataset.json")
SKETCH_GRID = 8  # default grid of the stored sketches


def read_info(path: str | Path) -> dict | None:
    """dataset.json of a prepared directory, or None when `path` is not one."""
    p = Path(path) / "dataset.json"
    if not p.is_file():
        return None
    try:
        info = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        return None
    if info.get("version") != VERSION:
        raise ValueError(f"{p}: prepared format version {info.get('version')!r}, this code reads {VERSION}")
    return info


def write_prepared(
    dataset: FolderDataset | ShapesDataset,  # The source; folder entries are the scanned ones.
    out: str | Path,  # Output directory (created; an existing prepared set there is replaced).
    *,
    source: str,  # Where the data came from, recorded in dataset.json.
    workers: int | None = None,  # Decoding threads; None = up to 4.
    progress: Callable[[int], None] | None = None,  # Called with the number of images done so far.
    sketch_grid: int = SKETCH_GRID,  # Grid of the stored sketches (folder sources).
) -> ScanReport:
    """Write `dataset` in the prepared format; returns the final report (entries that fail
    to decode now, after the scan, are added to it)."""
    if not isinstance(sketch_grid, int) or sketch_grid < 1:
        raise ValueError(f"--sketch-grid must be a positive int, got {sketch_grid!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and read_info(out) is None:
        raise FileExistsError(f"--out {out} is a non-empty directory that holds no prepared dataset; "
                              "choose an empty or new directory")
    out.mkdir(parents=True, exist_ok=True)
    res = dataset.resolution
    n = len(dataset) if isinstance(dataset, ShapesDataset) else len(dataset.entries)
    report = ScanReport(kept=0, skipped=list(dataset.report.skipped))

    def load(i: int) -> tuple[np.ndarray | None, dict]:
        if isinstance(dataset, ShapesDataset):
            ex = dataset.example(i)
            return render_scene(ex.scene, res), {
                "file": f"shapes-{dataset.seed}-{i}", "text": [ex.caption],
                "attributes": scene_attributes(ex.scene, res, ex.mentioned)}
        entry = dataset.entries[i]
        try:
            image = dataset._image(i)
        except ImageRejected as e:
            report.skip(entry.file, e.reason, e.detail)
            return None, {}
        chw = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # [3, R, R]
        sketch = (image_sketch(chw, sketch_grid) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        return image, {"file": entry.file, "text": list(entry.texts),
                       "palette": hex_colours(image_palette(chw, PREPARED_COLOURS)), "sketch": sketch}

    records: list[dict] = []
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)

    def write_images(tmp: Path) -> None:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, res, res, 3))
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for image, record in pool.map(load, range(n), chunksize=64):
                if image is not None:
                    arr[len(records)] = image
                    records.append(record)
                    if progress is not None and len(records) % 256 == 0:
                        progress(len(records))
        arr.flush()
        del arr
        if len(records) < n:  # entries failed after the scan: shrink to the kept rows
            atomic_write(tmp, lambda shrunk: _copy_rows(tmp, len(records), shrunk))
        (out / "dataset.json").unlink(missing_ok=True)  # the set is incomplete until it is rewritten

    atomic_write(out / "images.npy", write_images)
    sketches = [r.pop("sketch") for r in records if "sketch" in r]
    if sketches:
        atomic_write(out / "sketches.npy", lambda tmp: _save_npy(tmp, np.stack(sketches)))  # [N, g, g, 3]
    report.kept = len(records)
    if progress is not None:
        progress(len(records))
    atomic_write_text(out / "captions.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    report.save(out / "report.json")
    info = {"format": FORMAT, "version": VERSION, "resolution": res, "count": len(records),
            "source": source}
    if isinstance(dataset, FolderDataset):
        info.update(fit=dataset.options.fit, background=list(dataset.options.background), sketch_grid=sketch_grid)
    atomic_write_text(out / "dataset.json", json.dumps(info, indent=1) + "\n")
    return report


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
        np.save(f, array)


def _copy_rows(src: Path, count: int, dst: Path) -> None:
    """The first `count` rows of the .npy array `src` into a new .npy file `dst`."""
    full = np.load(src, mmap_mode="r")  # [N, R, R, 3]
    kept = np.lib.format.open_memmap(dst, mode="w+", dtype=full.dtype, shape=(count, *full.shape[1:]))
    kept[:] = full[:count]
    kept.flush()
    del kept, full


def prepare_dataset(
    src: str | Path,  # A folder, a .zip, or "shapes".
    out: str | Path,  # Output directory.
    *,
    resolution: int,  # Output side in pixels.
    count: int | None = None,  # Number of scenes; required for "shapes", unused otherwise.
    seed: int = 0,  # Seed of the shapes scenes.
    workers: int | None = None,  # Decoding threads; None = up to 4.
    progress: Callable[[int], None] | None = None,  # Called with the number of images done.
    sketch_grid: int = SKETCH_GRID,  # Grid of the stored sketches (folder sources, data/guides.py).
    **folder_kwargs,  # fit, background, min_size, max_pixels, caption_column (FolderDataset).
) -> ScanReport:
    """Validate `src` and write it to `out` in the prepared format; returns the report.
    When no entry is usable, report.json is still written and EmptyDatasetError raised."""
    if str(src) == "shapes":
        if count is None or count < 1:
            raise ValueError("--count must be a positive number of scenes for SRC 'shapes'")
        dataset: FolderDataset | ShapesDataset = ShapesDataset(resolution, size=count, seed=seed)
    else:
        from .folder import EmptyDatasetError

        try:
            dataset = FolderDataset(src, resolution=resolution, scan_workers=workers, **folder_kwargs)
        except EmptyDatasetError as e:
            Path(out).mkdir(parents=True, exist_ok=True)
            e.report.save(Path(out) / "report.json")
            raise
    return write_prepared(dataset, out, source=str(src), workers=workers, progress=progress, sketch_grid=sketch_grid)


class PreparedDataset(CaptionedImages):
    """A directory written by prepare_dataset / scripts/prepare_data.py.

    Items as every dataset: {"image": uint8 [3, R, R], "text": str, "index": int}
    (+ "attributes" when prepared from shapes). Asking for another resolution than the
    prepared one resamples each image on load (Lanczos).
    """

    def __init__(
        self,
        path: str | Path,  # The prepared directory.
        *,
        resolution: int | None = None,  # Output side; None = the prepared resolution.
        flip: bool = False,  # Add mirrored copies (2N items).
        seed: int = 0,  # Seeds caption sampling for entries with several captions.
        image_dtype: ImageDtype = "uint8",  # "uint8" or "float32" ([-1, 1]).
    ) -> None:
        self.path = Path(path)
        info = read_info(self.path)
        if info is None:
            raise ValueError(f"{self.path} is not a prepared dataset (no dataset.json of format {FORMAT!r})")
        self.info = info
        self.prepared_resolution = int(info["resolution"])
        super().__init__(resolution=resolution or self.prepared_resolution, flip=flip, seed=seed,
                         image_dtype=image_dtype)
        self._records = []
        with open(self.path / "captions.jsonl") as f:
            for lineno, line in enumerate(f, start=1):
                try:
                    rec = json.loads(line)
                    texts = tuple(rec["text"])
                except (json.JSONDecodeError, KeyError, TypeError) as e:
                    raise ValueError(f"{self.path / 'captions.jsonl'}:{lineno}: {e}") from None
                self._records.append((rec.get("file", str(lineno - 1)), texts, rec.get("attributes"), rec.get("palette")))
        if flip and any(r[2] is not None for r in self._records):
            raise ValueError(f"{self.path}: flip=True would contradict the left/right ground truth "
                             "of a prepared shapes set")
        self._images: np.ndarray | None = None
        self._sketches: np.ndarray | None = None
        shape = self._array().shape
        if shape != (len(self._records), self.prepared_resolution, self.prepared_resolution, 3):
            raise ValueError(f"{self.path / 'images.npy'}: shape {shape} does not match "
                             f"{len(self._records)} captions at {self.prepared_resolution} px")
        report_path = self.path / "report.json"
        self.report = (ScanReport.from_dict(json.loads(report_path.read_text())) if report_path.is_file()
                       else ScanReport(kept=len(self._records)))

    def _array(self) -> np.ndarray:
        if self._images is None:  # opened lazily so that workers map the file themselves
            self._images = np.load(self.path / "images.npy", mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_images"] = None
        state["_sketches"] = None
        return state

    def _num_raw(self) -> int:
        return len(self._records)

    def _image(self, raw: int) -> np.ndarray:
        image = np.asarray(self._array()[raw])  # [R, R, 3] (copies out of the map)
        return image if self.resolution == self.prepared_resolution else resize(image, self.resolution)

    def _texts(self, raw: int) -> tuple[str, ...]:
        return self._records[raw][1]

    def _attributes(self, raw: int) -> dict | None:
        attributes = self._records[raw][2]
        if attributes is not None and self.resolution != self.prepared_resolution:
            # pixel geometry was recorded at the prepared resolution: recompute it
            scene = Scene.from_dict(attributes)
            return scene_attributes(scene, self.resolution, attributes.get("mentioned"))
        return attributes

    def _name(self, raw: int) -> str:
        return self._records[raw][0]

    def stored_guides(self, index: int) -> dict:
        """The palette (["#rrggbb", ...]) and sketch (float [3, g, g] in [0, 1], mirrored for the flipped
        copies) stored for item `index`; each None where the set has none (data/guides.py)."""
        raw = index % self._num_raw()
        sketch = None
        if (self.path / "sketches.npy").is_file():
            if self._sketches is None:
                self._sketches = np.load(self.path / "sketches.npy", mmap_mode="r")
            sketch = torch.from_numpy(np.array(self._sketches[raw])).permute(2, 0, 1).float() / 255  # [3, g, g]
            if index >= self._num_raw():
                sketch = sketch.flip(-1)
        return {"palette": self._records[raw][3], "sketch": sketch}
