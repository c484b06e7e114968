"""Folder and zip datasets: captions, image modes, geometry, the scan report, the root boundary."""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data import report as R
from data.folder import FolderDataset


def png(path: Path, size=(24, 24), colour=(200, 10, 10), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)
    return path


def metadata(root: Path, lines: list) -> None:
    (root / "metadata.jsonl").write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def bomb_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming width x height 1-bit pixels, with one tiny IDAT."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def pixel(ds, index: int, y: int = 0, x: int = 0) -> tuple:
    return tuple(ds[index]["image"][:, y, x].tolist())


# --- captions -----------------------------------------------------------------------

def test_captions_from_metadata_jsonl_in_subfolders(tmp_path):
    png(tmp_path / "a" / "x.png", colour=(255, 0, 0))
    png(tmp_path / "b.jpg", colour=(0, 0, 255))
    metadata(tmp_path, [{"file_name": "a/x.png", "text": "a red square", "other": 1},
                        {"file_name": "b.jpg", "text": "  blue\n  square "}])
    ds = FolderDataset(tmp_path, resolution=16)
    assert [ds[i]["text"] for i in range(2)] == ["a red square", "blue square"]
    assert [e.file for e in ds.entries] == ["a/x.png", "b.jpg"]
    assert pixel(ds, 0) == (255, 0, 0)


def test_captions_from_txt_beside_each_image(tmp_path):
    png(tmp_path / "one.png")
    (tmp_path / "one.txt").write_text("first caption\n")
    png(tmp_path / "sub" / "two.webp")
    (tmp_path / "sub" / "two.txt").write_text("second")
    ds = data.open_dataset(tmp_path, resolution=16)
    assert ds.captions() == ["first caption", "second"] and ds.report.skipped == []


def test_caption_lists_sample_one_per_access_reproducibly(tmp_path):
    png(tmp_path / "a.png")
    texts = [f"caption {i}" for i in range(5)]
    metadata(tmp_path, [{"file_name": "a.png", "text": texts}])
    draws = lambda seed: [d["text"] for d in (lambda ds: [ds[0] for _ in range(40)])(FolderDataset(tmp_path, resolution=16, seed=seed))]
    first = draws(0)
    assert set(first) == set(texts)  # every access samples afresh
    assert draws(0) == first  # ... reproducibly
    assert draws(1) != first
    ds = FolderDataset(tmp_path, resolution=16)
    assert ds.captions() == texts and ds.captions(limit=0) == []
    seq0 = [ds[0]["text"] for _ in range(10)]
    ds2 = FolderDataset(tmp_path, resolution=16)
    ds2.set_epoch(1)
    assert [ds2[0]["text"] for _ in range(10)] != seq0


# --- bad entries --------------------------------------------------------------------

def build_bad_folder(root: Path, outside: Path) -> dict[str, str]:
    """A folder with one good image and every kind of bad entry; returns file -> reason."""
    png(root / "good.png")
    png(outside / "secret.png")
    (root / "corrupt.png").write_bytes(b"this is not an image")
    (root / "truncated.png").write_bytes(png(root / "big.png", (64, 64), (1, 2, 3)).read_bytes()[:60])
    (root / "big.png").unlink()
    (root / "bomb.png").write_bytes(bomb_png(30000, 30000))
    png(root / "tiny.png", size=(8, 8))
    png(root / "nocaption.png")
    png(root / "emptytxt.png")
    (root / "emptytxt.txt").write_text("  \n")
    png(root / "emptylist.png")
    png(root / "notastring.png")
    os.symlink(outside / "secret.png", root / "link_out.png")
    os.symlink(outside / "secret.png", root / "listed_link.png")
    os.symlink(root / "good.png", root / "link_in.png")
    (root / "link_in.txt").write_text("a link that stays inside")
    (root / "good.txt").write_text("ignored: metadata.jsonl lists good.png")
    lines = [
        {"file_name": "good.png", "text": "good"},
        {"file_name": "corrupt.png", "text": "c"},
        {"file_name": "truncated.png", "text": "t"},
        {"file_name": "bomb.png", "text": "b"},
        {"file_name": "tiny.png", "text": "s"},
        {"file_name": "missing.png", "text": "m"},
        "{not json",
        {"text": "no file name"},
        {"file_name": "emptylist.png", "text": ["", "  "]},
        {"file_name": "notastring.png", "text": 5},
        {"file_name": "../outside/secret.png", "text": "escape"},
        {"file_name": str(outside / "secret.png"), "text": "absolute"},
        {"file_name": "sub/../../outside/secret.png", "text": "escape"},
        {"file_name": "listed_link.png", "text": "symlink out"},
        {"file_name": "good.png", "text": "again"},
    ]
    metadata(root, lines)
    (root / "link_out.txt").write_text("a link that leads out")
    return {
        "corrupt.png": R.CORRUPT, "truncated.png": R.CORRUPT, "bomb.png": R.BOMB, "tiny.png": R.TOO_SMALL,
        "missing.png": R.MISSING_FILE, "metadata.jsonl:7": R.MALFORMED_METADATA,
        "metadata.jsonl:8": R.MALFORMED_METADATA, "emptylist.png": R.EMPTY_CAPTION,
        "notastring.png": R.MALFORMED_METADATA, "../outside/secret.png": R.OUTSIDE_ROOT,
        str(outside / "secret.png"): R.OUTSIDE_ROOT, "sub/../../outside/secret.png": R.OUTSIDE_ROOT,
        "listed_link.png": R.OUTSIDE_ROOT, "good.png": R.DUPLICATE, "nocaption.png": R.MISSING_CAPTION,
        "emptytxt.png": R.EMPTY_CAPTION, "link_out.png": R.OUTSIDE_ROOT,
    }


def test_every_bad_entry_is_skipped_with_its_reason(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    expected = build_bad_folder(root, outside)
    ds = FolderDataset(root, resolution=16)
    got = {s.file: s.reason for s in ds.report.skipped}
    assert got == expected
    assert [e.file for e in ds.entries] == ["good.png", "link_in.png"]
    assert ds.report.kept == 2 and len(ds) == 2
    assert next(s for s in ds.report.skipped if s.file == "metadata.jsonl:7").detail.startswith("line 7:")
    # iteration goes on over what is left, also through a DataLoader
    texts = [it["text"] for it in ds]
    assert texts == ["good", "a link that stays inside"]
    assert "secret" not in " ".join(ds.captions())
    summary = ds.report.summary()
    assert summary.startswith("kept 2, skipped 17") and "3 malformed metadata" in summary
    json.dumps(ds.report.to_dict())


def test_caption_bytes_that_are_not_utf8_are_skipped_with_their_line(tmp_path):
    for name in ("a", "b", "c", "d"):
        png(tmp_path / f"{name}.png")
    (tmp_path / "metadata.jsonl").write_bytes(
        b'{"file_name": "a.png", "text": "caf\xc3\xa9 au lait"}\n'  # UTF-8 e-acute: kept
        b'\n'
        b'{"file_name": "b.png", "text": "caf\xe9"}\r\n'  # Latin-1 e-acute
        b'{"file_name": "c.png", "text": "ok \xe2\x80\xa8 too"}\n')  # U+2028 (whitespace) does not end the line
    (tmp_path / "d.txt").write_bytes(b"first line\nsecond \xff line\n")
    ds = FolderDataset(tmp_path, resolution=16)
    assert [(e.file, e.texts) for e in ds.entries] == [("a.png", ("caf\u00e9 au lait",)), ("c.png", ("ok too",))]
    skipped = {s.file: (s.reason, s.detail) for s in ds.report.skipped}
    assert skipped == {
        "metadata.jsonl:3": (R.NOT_UTF8, "line 3, column 36: byte 0xe9 is not UTF-8"),
        "b.png": (R.MISSING_CAPTION, "not in metadata.jsonl and no b.txt"),
        "d.png": (R.NOT_UTF8, "d.txt: line 2, column 8: byte 0xff is not UTF-8"),
    }
    assert R.NOT_UTF8 == "caption line not UTF-8"
    assert ds.report.reasons() == {R.NOT_UTF8: 2, R.MISSING_CAPTION: 1}


def test_with_resolution_reads_the_scanned_entries_at_another_side(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / f"{name}.png")
        (tmp_path / f"{name}.txt").write_text(f"image {name}")
    ds = FolderDataset(tmp_path, resolution=32)
    assert ds.stored_size(0) == (48, 40) == ds.stored_size(1)
    small = ds.with_resolution(16)
    fresh = FolderDataset(tmp_path, resolution=16)
    assert small.entries is ds.entries and small.resolution == 16 and ds.resolution == 32
    assert all(torch.equal(small[i]["image"], fresh[i]["image"]) for i in range(2))
    assert ds[0]["image"].shape == (3, 32, 32)


def test_file_changed_after_scan_does_not_stop_iteration(tmp_path):
    for name in ("a", "b", "c"):
        png(tmp_path / f"{name}.png", colour=(ord(name), 0, 0))
        (tmp_path / f"{name}.txt").write_text(name)
    ds = FolderDataset(tmp_path, resolution=16)
    (tmp_path / "b.png").write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="b.png"):
        items = list(ds)
    assert [it["text"] for it in items] == ["a", "c", "c"]  # the next good entry stands in


def test_metadata_symlinked_out_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    png(root / "a.png")
    (root / "a.txt").write_text("from txt")
    outside.mkdir()
    (outside / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "stolen"}) + "\n")
    os.symlink(outside / "metadata.jsonl", root / "metadata.jsonl")
    os.symlink(outside, root / "linked_dir")  # a linked directory is never walked
    png(outside / "x.png")
    (outside / "x.txt").write_text("x")
    ds = FolderDataset(root, resolution=16)
    assert ds.captions() == ["from txt"]
    assert {s.file: s.reason for s in ds.report.skipped} == {"metadata.jsonl": R.OUTSIDE_ROOT}


# --- image modes and geometry -------------------------------------------------------

def one_image_dataset(tmp_path: Path, img: Image.Image, name="img.png", **kw) -> FolderDataset:
    img.save(tmp_path / name)
    (tmp_path / (Path(name).stem + ".txt")).write_text("x")
    return FolderDataset(tmp_path, resolution=img.size[0], **kw)


def test_alpha_is_composited_on_the_background(tmp_path):
    a = np.zeros((16, 16, 4), np.uint8)
    a[:, :8] = (255, 0, 0, 128)  # half-transparent red on the left, fully transparent right
    ds = one_image_dataset(tmp_path, Image.fromarray(a, "RGBA"))
    assert pixel(ds, 0, 0, 0) == (255, 127, 127) and pixel(ds, 0, 0, 15) == (255, 255, 255)
    ds = FolderDataset(tmp_path, resolution=16, background=(0, 0, 0))
    assert pixel(ds, 0, 0, 0) == (128, 0, 0) and pixel(ds, 0, 0, 15) == (0, 0, 0)


@pytest.mark.parametrize("mode,make,expected", [
    ("L", lambda: Image.new("L", (16, 16), 77), (77, 77, 77)),
    ("LA", lambda: Image.new("LA", (16, 16), (0, 0)), (255, 255, 255)),
    ("1", lambda: Image.new("1", (16, 16), 1), (255, 255, 255)),
    ("I;16", lambda: Image.fromarray(np.full((16, 16), 257 * 100, np.uint16)), (100, 100, 100)),
    ("I", lambda: Image.fromarray(np.full((16, 16), 65535, np.int32)), (255, 255, 255)),
    ("P", lambda: Image.new("RGB", (16, 16), (0, 128, 255)).convert("P", palette=Image.Palette.ADAPTIVE), (0, 128, 255)),
])
def test_modes_become_rgb(tmp_path, mode, make, expected):
    img = make()
    assert img.mode == mode
    ds = one_image_dataset(tmp_path, img, name="img.tif" if mode == "I" else "img.png")
    assert pixel(ds, 0, 5, 5) == expected


def test_palette_transparency_and_cmyk(tmp_path):
    p = Image.new("P", (16, 16), 0)
    p.putpalette([10, 20, 30] + [200, 100, 0] * 255)
    p.paste(1, (8, 0, 16, 16))
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    (tmp_path / "p.txt").write_text("p")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    (tmp_path / "c.txt").write_text("c")
    ds = FolderDataset(tmp_path, resolution=16)
    assert [e.file for e in ds.entries] == ["c.jpg", "p.png"]
    assert pixel(ds, 1, 0, 0) == (255, 255, 255) and pixel(ds, 1, 0, 15) == (200, 100, 0)
    r, g, b = pixel(ds, 0, 8, 8)
    assert r > 230 and g < 25 and b < 25  # CMYK (0, 255, 255, 0) is red


def test_crop_or_pad_to_square(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :10] = (255, 0, 0)
    a[:, 10:30] = (0, 255, 0)
    a[:, 30:] = (0, 0, 255)
    Image.fromarray(a).save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text("w")
    crop = FolderDataset(tmp_path, resolution=20)[0]["image"]
    assert (crop == torch.tensor([0, 255, 0], dtype=torch.uint8)[:, None, None]).all()
    pad = FolderDataset(tmp_path, resolution=40, fit="pad", background=(9, 9, 9))[0]["image"]
    assert (pad[:, :10] == 9).all() and (pad[:, 30:] == 9).all()
    assert torch.equal(pad[:, 10:30].permute(1, 2, 0), torch.from_numpy(a))
    with pytest.raises(ValueError, match="fit"):
        FolderDataset(tmp_path, resolution=20, fit="stretch")


def test_downscaling_is_antialiased(tmp_path):
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    Image.fromarray(np.stack([checker] * 3, -1)).save(tmp_path / "c.png")
    (tmp_path / "c.txt").write_text("c")
    img = FolderDataset(tmp_path, resolution=16)[0]["image"].float()
    # point sampling would give pure 0 or 255; an area-like filter gives mid grey
    assert abs(img.mean().item() - 127.5) < 2 and img.std().item() < 3


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((16, 32, 3), np.uint8)
    a[:, :16] = (255, 0, 0)
    a[:, 16:] = (0, 0, 255)
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the left (red) half ends up on top
    img.save(tmp_path / "r.jpg", exif=exif, quality=100)
    (tmp_path / "r.txt").write_text("r")
    out = FolderDataset(tmp_path, resolution=32, fit="pad")[0]["image"]  # [3, 32, 32]
    top, bottom = out[:, 4, 16].tolist(), out[:, 28, 16].tolist()
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60
    assert out[:, 16, 2].tolist() == [255, 255, 255]  # padded at the sides: the image is tall now


def test_max_pixels_and_min_size_options(tmp_path):
    png(tmp_path / "a.png", size=(40, 40))
    (tmp_path / "a.txt").write_text("a")
    with pytest.raises(data.EmptyDatasetError, match="decompression bomb"):
        FolderDataset(tmp_path, resolution=16, max_pixels=1599)
    assert len(FolderDataset(tmp_path, resolution=16, max_pixels=1600)) == 1
    with pytest.raises(data.EmptyDatasetError, match="too small"):
        FolderDataset(tmp_path, resolution=16, min_size=41)


def test_flip_adds_mirrored_copies(tmp_path):
    a = np.zeros((16, 16, 3), np.uint8)
    a[:, :4] = 255
    ds = one_image_dataset(tmp_path, Image.fromarray(a), flip=True)
    assert len(ds) == 2 and ds[1]["index"] == 1 and ds[1]["text"] == "x"
    assert torch.equal(ds[1]["image"], ds[0]["image"].flip(-1))


def test_float_images(tmp_path):
    ds = one_image_dataset(tmp_path, Image.new("RGB", (16, 16), (0, 255, 0)), image_dtype="float32")
    assert torch.equal(ds[0]["image"][:, 0, 0], torch.tensor([-1.0, 1.0, -1.0]))


# --- zip archives -------------------------------------------------------------------

def test_zip_equals_folder_and_refuses_escapes(tmp_path):
    root = tmp_path / "ds"
    png(root / "a.png", colour=(1, 2, 3))
    png(root / "sub" / "b.png", colour=(4, 5, 6))
    metadata(root, [{"file_name": "a.png", "text": "a"}, {"file_name": "sub/b.png", "text": ["b1", "b2"]},
                    {"file_name": "../evil.png", "text": "escape"}, {"file_name": "link.png", "text": "link"}])
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in ("a.png", "sub/b.png", "metadata.jsonl"):
            zf.write(root / f, f"ds/{f}")  # one top-level folder: used as the root
        zf.writestr("../evil.png", (root / "a.png").read_bytes())
        link = zipfile.ZipInfo("ds/link.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    folder = FolderDataset(root, resolution=16)
    zipped = data.open_dataset(zpath, resolution=16)
    assert [e.file for e in zipped.entries] == ["a.png", "sub/b.png"]
    for i in range(2):
        assert torch.equal(folder[i]["image"], zipped[i]["image"]) and folder[i]["text"] == zipped[i]["text"]
    got = {s.file: s.reason for s in zipped.report.skipped}
    assert got["../evil.png"] == R.OUTSIDE_ROOT and got["link.png"] == R.OUTSIDE_ROOT


def test_dataloader_with_two_workers(tmp_path):
    root = tmp_path / "ds"
    for i in range(6):
        png(root / f"{i}.png", colour=(i, 0, 0))
        (root / f"{i}.txt").write_text(f"image {i}")
    shutil.make_archive(str(tmp_path / "ds"), "zip", root)
    for path in (root, tmp_path / "ds.zip"):
        ds = data.open_dataset(path, resolution=16)
        loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=data.collate)
        batches = list(loader)
        assert [t for b in batches for t in b["text"]] == [f"image {i}" for i in range(6)]
        assert torch.cat([b["image"][:, 0, 0, 0] for b in batches]).tolist() == list(range(6))


# --- the real emoji set -------------------------------------------------------------

def test_real_emoji_files_load(emoji_dir, tmp_path):
    lines = (emoji_dir / "metadata.jsonl").read_text().splitlines()[100:108]
    root = tmp_path / "emoji"
    for line in lines:
        rec = json.loads(line)
        (root / rec["file_name"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(emoji_dir / rec["file_name"], root / rec["file_name"])
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    ds = data.open_dataset(root, resolution=32)
    assert len(ds) == 8 and ds.report.skipped == []
    assert ds.captions() == [json.loads(line)["text"] for line in sorted(lines, key=lambda l: json.loads(l)["file_name"])]
    for item in ds:
        assert item["image"].shape == (3, 32, 32) and item["text"]
        assert tuple(item["image"][:, 0, 0].tolist()) == (255, 255, 255)  # transparent corner on white
        assert item["image"].float().std() > 10  # an actual picture


def test_threaded_scan_equals_serial_scan(tmp_path):
    for i in range(70):
        png(tmp_path / f"{i:02d}.png", size=(16, 16), colour=(i, i, i))
        (tmp_path / f"{i:02d}.txt").write_text(f"gray {i}")
    (tmp_path / "33.png").write_bytes(b"broken")
    serial = FolderDataset(tmp_path, resolution=16, scan_workers=1)
    threaded = FolderDataset(tmp_path, resolution=16, scan_workers=2)
    assert serial.entries == threaded.entries and len(serial.entries) == 69
    assert serial.report.to_dict() == threaded.report.to_dict()
    assert [(s.file, s.reason) for s in threaded.report.skipped] == [("33.png", R.CORRUPT)]
