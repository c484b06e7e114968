"""Image–caption datasets in a folder or a .zip, scanned and validated once.

Captions come from `metadata.jsonl` lines `{"file_name": ..., "text": ...}` (the Hugging
Face imagefolder convention; `text` may be a list, one caption sampled per access) or from
a `<stem>.txt` beside an image that metadata.jsonl does not list. Every entry is checked
once at construction and the outcome kept in `dataset.report`; bad entries are skipped
with a reason and never raise during iteration. `file_name`s that leave the root (`..`,
absolute paths, symlinks pointing out, symlinks inside a zip) are refused: the dataset
root is a security boundary.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import posixpath
import stat
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np

from . import report as R
from .captioned import CaptionedImages, ImageDtype
from .images import IMAGE_EXTENSIONS, Fit, ImageOptions, ImageRejected, decode, open_checked, validate
from .report import ScanReport

METADATA = "metadata.jsonl"


class EntryRejected(Exception):
    """An entry refused by a source check; carries the report reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class EmptyDatasetError(ValueError):
    """No usable entry; `report` says why each was skipped."""

    def __init__(self, message: str, report: ScanReport) -> None:
        super().__init__(message)
        self.report = report


def normalize_name(name: str) -> str:
    """A user-written relative path -> normalized posix key inside the root.

    Raises EntryRejected(OUTSIDE_ROOT) for absolute paths and for paths whose `..` lead
    out of the root; EntryRejected(MALFORMED_METADATA) for empty names or NUL bytes.
    """
    if not name or "\x00" in name:
        raise EntryRejected(R.MALFORMED_METADATA, f"invalid file name {name!r}")
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise EntryRejected(R.OUTSIDE_ROOT, f"absolute path {name!r}")
    parts = name.replace("\\", "/").split("/")
    key = posixpath.normpath("/".join(parts))
    if key == ".." or key.startswith("../") or key in (".", ""):
        raise EntryRejected(R.OUTSIDE_ROOT, f"{name!r} leads outside the dataset root")
    return key


class DirSource:
    """Files under a directory; symlinks are followed only while they stay inside."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.real_root = Path(os.path.realpath(self.root))
        self.label = str(self.root)

    def list_files(self) -> list[str]:
        keys = []
        # followlinks=False: a linked directory is never walked (it may lead anywhere);
        # linked files are listed and then checked by `check`.
        for dirpath, dirnames, filenames in os.walk(self.root, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, self.root)
            for f in filenames:
                if not f.startswith("."):
                    keys.append(f if rel == "." else posixpath.join(Path(rel).as_posix(), f))
        return sorted(keys)

    def check(self, key: str) -> None:
        """Raise EntryRejected unless `key` resolves (through symlinks) inside the root."""
        real = os.path.realpath(self.root / key)
        if os.path.commonpath([real, str(self.real_root)]) != str(self.real_root):
            raise EntryRejected(R.OUTSIDE_ROOT, f"{key!r} is a symlink that leads outside the dataset root")

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def size(self, key: str) -> int:
        return (self.root / key).stat().st_size

    def read(self, key: str) -> bytes:
        self.check(key)
        return (self.root / key).read_bytes()


class ZipSource:
    """Members of a .zip; symlink members are refused (never followed). The archive is
    opened lazily per process, so a dataset can be pickled into DataLoader workers."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.label = str(self.path)
        self._zip: zipfile.ZipFile | None = None
        self._pid = -1
        self._links: set[str] = set()
        self._members: dict[str, str] = {}  # key -> member name
        zf = self._open()
        names = [i for i in zf.infolist() if not i.is_dir()]
        # A zip made from a folder often holds one top-level directory: use it as the root.
        safe = [n.filename for n in names if not _unsafe(n.filename)]
        tops = {n.split("/", 1)[0] for n in safe}
        prefix = ""
        if len(tops) == 1 and all("/" in n for n in safe):
            prefix = tops.pop() + "/"
        for info in names:
            name = info.filename[len(prefix):] if info.filename.startswith(prefix) else info.filename
            if name.startswith("__MACOSX/") or posixpath.basename(name).startswith("."):
                continue
            try:
                key = normalize_name(name)
            except EntryRejected:
                key = name  # kept verbatim so that `check` reports it
            self._members[key] = info.filename
            if stat.S_ISLNK(info.external_attr >> 16):
                self._links.add(key)
        self._unsafe = {k for k in self._members if _unsafe(k)}

    def _open(self) -> zipfile.ZipFile:
        if self._zip is None or self._pid != os.getpid():  # forked workers reopen
            self._zip = zipfile.ZipFile(self.path)
            self._pid = os.getpid()
        return self._zip

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_zip"], state["_pid"] = None, -1
        return state

    def list_files(self) -> list[str]:
        return sorted(self._members)

    def check(self, key: str) -> None:
        if key in self._unsafe:
            raise EntryRejected(R.OUTSIDE_ROOT, f"zip member {key!r} leads outside the archive root")
        if key in self._links:
            raise EntryRejected(R.OUTSIDE_ROOT, f"zip member {key!r} is a symlink (never followed)")

    def exists(self, key: str) -> bool:
        return key in self._members

    def size(self, key: str) -> int:
        return self._open().getinfo(self._members[key]).file_size

    def read(self, key: str) -> bytes:
        self.check(key)
        return self._open().read(self._members[key])


def _unsafe(key: str) -> bool:
    try:
        return normalize_name(key) != key
    except EntryRejected:
        return True


def decode_utf8(raw: bytes, *, prefix: str = "", first_line: int = 1) -> str:
    """Caption bytes -> str. Raises EntryRejected(NOT_UTF8) naming the line (counted from
    `first_line`) and column of the first byte that is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + raw.count(b"\n", 0, e.start)
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise EntryRejected(R.NOT_UTF8, f"{prefix}line {line}, column {column}: "
                                        f"byte 0x{raw[e.start]:02x} is not UTF-8") from None


def _caption_list(value: object, where: str) -> tuple[str, ...]:
    """Metadata/txt caption value -> non-empty tuple of stripped captions."""
    if value is None:
        raise EntryRejected(R.MISSING_CAPTION, f"{where}: no caption")
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) for v in values):
        raise EntryRejected(R.MALFORMED_METADATA, f"{where}: caption must be a string or a list of strings, got {value!r}")
    texts = tuple(" ".join(v.split()) for v in values)
    texts = tuple(t for t in texts if t)
    if not texts:
        raise EntryRejected(R.EMPTY_CAPTION, f"{where}: caption is empty")
    return texts


@dataclass(frozen=True)
class Entry:
    """One usable image of a scanned dataset."""

    file: str  # Normalized path inside the root.
    texts: tuple[str, ...]  # One or more captions.


LARGE_FILE = 256 * 1024  # bytes; above this median size, decoding outweighs Python overhead


def default_scan_workers(source: DirSource | ZipSource, keys: list[str]) -> int:
    """Threads help only when decoding dominates (large files: PIL releases the GIL while
    decoding); for small images (icons, emoji) one thread is faster per CPU-second."""
    sample = keys[:: max(1, len(keys) // 64)][:64]
    sizes = sorted(source.size(k) for k in sample)
    if not sizes or sizes[len(sizes) // 2] < LARGE_FILE:
        return 1
    return min(4, os.cpu_count() or 1)


def scan(source: DirSource | ZipSource, opts: ImageOptions, *, caption_column: str = "text",
         workers: int | None = None) -> tuple[list[Entry], ScanReport]:
    """Validate every entry of `source` once. Returns the usable entries (sorted by file)
    and the report with a reason for each skipped one."""
    report = ScanReport()
    files = source.list_files()
    file_set = set(files)
    pending: dict[str, tuple[str, ...]] = {}
    listed: dict[str, int] = {}  # key -> metadata line that named it

    def reject(file: str, e: EntryRejected) -> None:
        report.skip(file, e.reason, e.detail)

    if METADATA in file_set:
        try:
            source.check(METADATA)
            lines = source.read(METADATA).splitlines()  # bytes: each line is decoded on its own
        except EntryRejected as e:
            reject(METADATA, e)
            lines = []
        for lineno, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            where = f"{METADATA}:{lineno}"
            try:
                line = decode_utf8(raw, first_line=lineno)
            except EntryRejected as e:
                report.skip(where, e.reason, e.detail)
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                report.skip(where, R.MALFORMED_METADATA, f"line {lineno}: {e.msg} (column {e.colno})")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
                report.skip(where, R.MALFORMED_METADATA, f"line {lineno}: needs a string 'file_name'")
                continue
            name = rec["file_name"]
            try:
                key = normalize_name(name)
                if key in listed:
                    raise EntryRejected(R.DUPLICATE, f"line {lineno} repeats line {listed[key]}")
                listed[key] = lineno
                source.check(key)
                if not source.exists(key):
                    raise EntryRejected(R.MISSING_FILE, f"line {lineno}: no such file")
                pending[key] = _caption_list(rec.get(caption_column), f"line {lineno}")
            except EntryRejected as e:
                reject(name, e)

    for key in files:
        if key in listed or not key.lower().endswith(IMAGE_EXTENSIONS):
            continue
        txt = posixpath.splitext(key)[0] + ".txt"
        try:
            source.check(key)
            if txt not in file_set:
                raise EntryRejected(R.MISSING_CAPTION, f"not in {METADATA} and no {txt}")
            source.check(txt)
            pending[key] = _caption_list(decode_utf8(source.read(txt), prefix=f"{txt}: "), txt)
        except EntryRejected as e:
            reject(key, e)

    def check_image(key: str) -> EntryRejected | None:
        try:
            validate(source.read(key), opts)
        except ImageRejected as e:
            return EntryRejected(e.reason, e.detail)
        except OSError as e:
            return EntryRejected(R.MISSING_FILE, f"{type(e).__name__}: {e}")
        return None

    keys = sorted(pending)
    if workers is None:
        workers = default_scan_workers(source, keys)
    if workers > 1 and len(keys) > 64:  # PIL decodes with the GIL released
        with ThreadPoolExecutor(workers) as pool:
            outcomes = list(pool.map(check_image, keys, chunksize=32))
    else:
        outcomes = [check_image(k) for k in keys]
    entries = []
    for key, err in zip(keys, outcomes):
        if err is None:
            entries.append(Entry(key, pending[key]))
        else:
            reject(key, err)
    report.kept = len(entries)
    return entries, report


class FolderDataset(CaptionedImages):
    """Images with captions from a folder or a .zip (see the module docstring).

    Items: {"image": uint8 [3, R, R], "text": str, "index": int}.
    """

    def __init__(
        self,
        path: str | Path,  # A directory or a .zip file.
        *,
        resolution: int,  # Output side in pixels.
        flip: bool = False,  # Add mirrored copies (2N items).
        seed: int = 0,  # Seeds caption sampling for entries with several captions.
        fit: Fit = "crop",  # "crop" (centre) or "pad" (with the background colour) to square.
        background: tuple[int, int, int] = (255, 255, 255),  # RGB under transparent pixels.
        min_size: int = 16,  # Shorter side in pixels below which an image is "too small".
        max_pixels: int = 89_478_485,  # Pixel count above which an image is a "decompression bomb".
        caption_column: str = "text",  # metadata.jsonl key holding the caption(s).
        image_dtype: ImageDtype = "uint8",  # "uint8" or "float32" ([-1, 1]) images.
        scan_workers: int | None = None,  # Threads that validate images; None = by file size (1 for small files, else up to 4).
    ) -> None:
        super().__init__(resolution=resolution, flip=flip, seed=seed, image_dtype=image_dtype)
        path = Path(path)
        if path.is_dir():
            self.source: DirSource | ZipSource = DirSource(path)
        elif path.is_file() and zipfile.is_zipfile(path):
            self.source = ZipSource(path)
        elif path.exists():
            raise ValueError(f"dataset path {path} is neither a directory nor a .zip archive")
        else:
            raise FileNotFoundError(f"dataset path {path} does not exist")
        self.options = ImageOptions(resolution=resolution, fit=fit, background=tuple(background),
                                    min_size=min_size, max_pixels=max_pixels)
        self.entries, self.report = scan(self.source, self.options,
                                         caption_column=caption_column, workers=scan_workers)
        if not self.entries:
            raise EmptyDatasetError(
                f"no usable image in {path}: {self.report.summary()}"
                + "".join(f"\n  {s.file}: {s.reason} ({s.detail})" for s in self.report.skipped[:5]),
                self.report,
            )

    def with_resolution(self, resolution: int) -> FolderDataset:
        """The same scanned entries, read at another side (no second scan)."""
        other = copy.copy(self)
        other.resolution = resolution
        other.options = dataclasses.replace(self.options, resolution=resolution)
        other._draws = {}
        return other

    def stored_size(self, index: int = 0) -> tuple[int, int]:
        """(width, height) of entry `index`'s file as stored (read from its header)."""
        return open_checked(self.source.read(self.entries[index].file), self.options).size

    def _num_raw(self) -> int:
        return len(self.entries)

    def _image(self, raw: int) -> np.ndarray:
        try:
            return decode(self.source.read(self.entries[raw].file), self.options)
        except EntryRejected as e:
            raise ImageRejected(e.reason, e.detail) from None

    def _texts(self, raw: int) -> tuple[str, ...]:
        return self.entries[raw].texts

    def _name(self, raw: int) -> str:
        return self.entries[raw].file
