"""Shared, generic test fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The editable install's finder may map the packages as namespace packages (when it was
# installed before their __init__.py existed), which hides their __init__ exports; putting
# the repository first makes `import data` etc. find the regular packages.
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))
EMOJI_DIR = REPO.parent / "shared" / "datasets" / "noto-emoji-64"


@pytest.fixture
def emoji_dir() -> Path:
    """The real noto-emoji-64 dataset (3,786 RGBA PNGs + metadata.jsonl); skips when absent."""
    if not (EMOJI_DIR / "metadata.jsonl").is_file():
        pytest.skip(f"real dataset not found at {EMOJI_DIR} (needs the shared/ checkout beside the repo)")
    return EMOJI_DIR
