"""The scan report: which entries a dataset kept and which it skipped, with a reason each."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_write_text

# Stable reason phrases (tests and report.json readers match on these).
CORRUPT = "corrupt image"
MISSING_FILE = "missing file"
MISSING_CAPTION = "missing caption"
EMPTY_CAPTION = "empty caption"
MALFORMED_METADATA = "malformed metadata"
NOT_UTF8 = "caption line not UTF-8"
OUTSIDE_ROOT = "outside dataset root"
BOMB = "decompression bomb"
TOO_SMALL = "too small"
DUPLICATE = "duplicate entry"


@dataclass(frozen=True)
class Skip:
    """One skipped entry."""

    file: str  # Path relative to the dataset root as written by the user ("metadata.jsonl:7" for a bad line).
    reason: str  # One of the phrases above.
    detail: str = ""  # The concrete cause (exception text, line content, sizes).

    def to_dict(self) -> dict:
        return {"file": self.file, "reason": self.reason, "detail": self.detail}


@dataclass
class ScanReport:
    """Kept count and skipped entries of one dataset scan."""

    kept: int = 0  # Number of usable entries.
    skipped: list[Skip] = field(default_factory=list)  # In scan order.

    def skip(self, file: str, reason: str, detail: str = "") -> None:
        self.skipped.append(Skip(file, reason, detail))

    def reasons(self) -> dict[str, int]:
        """Count of skipped entries per reason."""
        return dict(Counter(s.reason for s in self.skipped))

    def to_dict(self) -> dict:
        return {
            "kept": self.kept,
            "skipped": [s.to_dict() for s in self.skipped],
            "reasons": self.reasons(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ScanReport":
        skipped = [Skip(s["file"], s["reason"], s.get("detail", "")) for s in d.get("skipped", [])]
        return cls(kept=int(d["kept"]), skipped=skipped)

    def save(self, path: str | Path) -> None:
        """report.json at `path`, written atomically."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    def summary(self) -> str:
        """One line: 'kept 10, skipped 3 (2 corrupt image, 1 missing caption)'."""
        if not self.skipped:
            return f"kept {self.kept}, skipped 0"
        parts = ", ".join(f"{n} {r}" for r, n in sorted(self.reasons().items()))
        return f"kept {self.kept}, skipped {len(self.skipped)} ({parts})"
