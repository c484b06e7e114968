"""The prepared format and scripts/prepare_data.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import data
from data.prepared import PreparedDataset, prepare_dataset
from scripts import prepare_data


def make_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    lines = []
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (30, 40, 4), dtype=np.uint8), "RGBA").save(root / f"{i}.png")
        lines.append({"file_name": f"{i}.png", "text": [f"image {i}", f"picture {i}"] if i == 2 else f"image {i}"})
    (root / "bad.png").write_bytes(b"nope")
    lines.append({"file_name": "bad.png", "text": "bad"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_prepared_folder_equals_the_folder(tmp_path):
    src = make_folder(tmp_path / "src")
    report = prepare_dataset(src, tmp_path / "out", resolution=16, workers=2)
    assert report.kept == 5 and [(s.file, s.reason) for s in report.skipped] == [("bad.png", "corrupt image")]
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["kept"] == 5 and on_disk["skipped"][0]["file"] == "bad.png"
    assert on_disk["skipped"][0]["reason"] == "corrupt image"
    images = np.load(tmp_path / "out" / "images.npy")
    assert images.shape == (5, 16, 16, 3) and images.dtype == np.uint8

    folder = data.open_dataset(src, resolution=16, seed=3)
    prepared = data.open_dataset(tmp_path / "out", resolution=16, seed=3)
    assert isinstance(prepared, PreparedDataset) and len(prepared) == len(folder) == 5
    assert prepared.captions() == folder.captions()
    assert prepared.report.kept == 5 and prepared.report.skipped[0].reason == "corrupt image"
    for i in range(5):
        for _ in range(3):  # caption lists sample the same way
            a, b = folder[i], prepared[i]
            assert torch.equal(a["image"], b["image"]) and a["text"] == b["text"] and a["index"] == b["index"]
    flipped = data.open_dataset(tmp_path / "out", resolution=16, flip=True)
    assert len(flipped) == 10 and torch.equal(flipped[7]["image"], prepared[2]["image"].flip(-1))
    smaller = data.open_dataset(tmp_path / "out", resolution=8)
    assert smaller[0]["image"].shape == (3, 8, 8)


def test_prepared_shapes_keep_their_ground_truth(tmp_path):
    prepare_dataset("shapes", tmp_path / "shapes", resolution=32, count=6, seed=9)
    prepared = data.open_dataset(tmp_path / "shapes", resolution=32)
    live = data.shapes.ShapesDataset(32, size=6, seed=9)
    for i in range(6):
        a, b = live[i], prepared[i]
        assert torch.equal(a["image"], b["image"]) and a["text"] == b["text"]
        assert a["attributes"] == b["attributes"]
    at16 = data.open_dataset(tmp_path / "shapes", resolution=16)[0]["attributes"]
    assert at16["resolution"] == 16 and at16 == data.shapes.ShapesDataset(16, size=6, seed=9)[0]["attributes"]
    with pytest.raises(ValueError, match="flip"):
        data.open_dataset(tmp_path / "shapes", resolution=32, flip=True)
    with pytest.raises(ValueError, match="count"):
        prepare_dataset("shapes", tmp_path / "x", resolution=32)


def test_prepared_dataloader_with_two_workers(tmp_path):
    prepare_dataset(make_folder(tmp_path / "src"), tmp_path / "out", resolution=16)
    ds = data.open_dataset(tmp_path / "out", resolution=16)
    ds[0]  # maps the file in this process; workers must map their own
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=data.collate)
    images = torch.cat([b["image"] for b in loader])
    assert images.shape == (5, 3, 16, 16)
    assert torch.equal(images[4], ds[4]["image"])


def test_script_prepares_and_prints_a_summary(tmp_path, capsys):
    src = make_folder(tmp_path / "src")
    assert prepare_data.main([str(src), "--resolution", "16", "--out", str(tmp_path / "out"), "--fit", "pad"]) == 0
    out = capsys.readouterr().out
    assert "kept 5, skipped 1 (1 corrupt image)" in out and "bad.png" in out
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["fit"] == "pad"
    # a rerun replaces the prepared set in place
    assert prepare_data.main([str(src), "--resolution", "8", "--out", str(tmp_path / "out")]) == 0
    assert data.open_dataset(tmp_path / "out", resolution=8)[0]["image"].shape == (3, 8, 8)


@pytest.mark.parametrize("args,message", [
    (["{tmp}/missing", "--resolution", "16"], "SRC '{tmp}/missing' does not exist"),
    (["{tmp}/file.txt", "--resolution", "16"], "neither a folder nor a .zip"),
    (["{src}", "--resolution", "0"], "--resolution must be a positive"),
    (["{src}", "--resolution", "16", "--background", "1,2"], "--background needs R,G,B"),
    (["{src}", "--resolution", "16", "--count", "3"], "--count applies only to SRC 'shapes'"),
    (["shapes", "--resolution", "16"], "needs --count"),
    (["shapes", "--resolution", "300", "--count", "2"], "16..256"),
])
def test_script_errors_name_the_option(tmp_path, capsys, args, message):
    src = make_folder(tmp_path / "src")
    (tmp_path / "file.txt").write_text("x")
    fill = lambda s: s.format(tmp=tmp_path, src=src)
    with pytest.raises(SystemExit) as e:
        prepare_data.main([fill(a) for a in args] + ["--out", str(tmp_path / "out")])
    assert e.value.code == 2 and fill(message) in capsys.readouterr().err


def test_script_refuses_foreign_out_dir_and_empty_sources(tmp_path, capsys):
    src = make_folder(tmp_path / "src")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert prepare_data.main([str(src), "--resolution", "16", "--out", str(tmp_path / "busy")]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "busy" / "notes.txt").exists()
    (tmp_path / "empty").mkdir()
    assert prepare_data.main([str(tmp_path / "empty"), "--resolution", "16", "--out", str(tmp_path / "o")]) == 1
    assert "no usable image" in capsys.readouterr().err
    assert json.loads((tmp_path / "o" / "report.json").read_text())["kept"] == 0
