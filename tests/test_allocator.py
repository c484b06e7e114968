"""eval.allocator: after keep_freed_memory, a large block freed and allocated again costs no new
page faults (glibc would otherwise munmap it and the kernel zero-fill fresh pages)."""
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Allocates and frees a 64 MiB zeroed block, then counts the minor page faults of doing it again.
SCRIPT = """
import resource, sys
from eval.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
block = bytearray(64 << 20); del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block = bytearray(64 << 20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_freed_block_is_reused_without_page_faults():
    pages = (64 << 20) // 4096
    assert _faults("off") == ("False", pytest.approx(pages, rel=0.1))  # a fresh mmap, every page touched
    applied, faults = _faults("on")
    assert applied == "True"
    assert faults < pages // 100  # the freed heap block is handed back as it is
