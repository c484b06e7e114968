"""Shared, generic test fixtures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# OpenMP's default busy-wait makes every parallel op wait for descheduled threads on a shared
# machine (measured 5-50x slower under load); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Tests import the packages from this checkout, whatever else is installed.
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))
EMOJI_DIR = REPO.parent / "shared" / "datasets" / "noto-emoji-64"


@pytest.fixture
def emoji_dir() -> Path:
    """The real noto-emoji-64 dataset (3,786 RGBA PNGs + metadata.jsonl); skips when absent."""
    if not (EMOJI_DIR / "metadata.jsonl").is_file():
        pytest.skip(f"real dataset not found at {EMOJI_DIR} (needs the shared/ checkout beside the repo)")
    return EMOJI_DIR


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors run faster on one thread (no OpenMP hand-offs); restores the count after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved tiny-preset model directory (tests.test_pipeline.make_model_dir), made once per session."""
    from tests.test_pipeline import make_model_dir

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return make_model_dir(tmp_path_factory.mktemp("tiny-model"))
    finally:
        torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_pipe(tiny_model_dir):
    """gan.pipeline.Pipeline of `tiny_model_dir`."""
    from gan.pipeline import Pipeline

    return Pipeline.from_pretrained(tiny_model_dir)
