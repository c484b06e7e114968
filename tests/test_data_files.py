"""data.files: atomic writes leave the old file or the new one, never a part; sha256 of files."""
import hashlib

import pytest

from data.files import atomic_write, atomic_write_text, sha256_file


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    assert atomic_write_text(path, "old") == path and path.read_text() == "old"

    def half_then_fail(tmp):
        tmp.write_text("ne")  # a part of the new content
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    atomic_write(path, lambda tmp: tmp.write_bytes(b"new"))
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = bytes(range(256)) * 9000  # 2.3 MB: three 1 MiB chunks
    (tmp_path / "w.bin").write_bytes(data)
    assert sha256_file(tmp_path / "w.bin") == hashlib.sha256(data).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()
