"""Files written whole or not at all, and their content hashes.

Every file the project writes for a later reader (models, configs, caches, prepared data,
reports) goes through `atomic_write`: a reader, or a run that crashed mid-write, sees the
old file or the new one, never a part.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` writes a temporary sibling of `path` (hidden, unique to this process and
    thread), which then replaces `path` with os.replace. If `write` fails, `path` is untouched
    and the temporary file is removed. Returns `path` as a Path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write` of a UTF-8 text file."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, payload) -> Path:
    """`atomic_write_text` of `payload` as indented JSON, its folder made first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes as 64 hex digits, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
