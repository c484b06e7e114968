"""The data package's contract: open_dataset, collate, to_float on folders and shapes."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import data


def test_to_float_maps_uint8_onto_minus_one_one():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8)
    y = data.to_float(x)
    assert y.dtype == torch.float32 and y[0] == -1.0 and y[1] == 1.0
    torch.testing.assert_close(y[2], torch.tensor(128 / 127.5 - 1.0), rtol=0, atol=1e-7)
    assert torch.equal(data.to_uint8(data.to_float(x)), x)
    with pytest.raises(TypeError):
        data.to_float(x.float())


def test_open_folder_and_collate(tmp_path):
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        Image.new("RGB", (20, 20), colour).save(tmp_path / f"{i}.png")
    (tmp_path / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"{i}.png", "text": f"image {i}"}) + "\n" for i in range(3)))
    ds = data.open_dataset(tmp_path, resolution=20)
    assert len(ds) == 3 and ds.report.kept == 3 and ds.report.skipped == []
    assert ds.captions() == ["image 0", "image 1", "image 2"]
    item = ds[1]
    assert item["text"] == "image 1" and item["index"] == 1
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 20, 20)
    assert torch.equal(item["image"][:, 0, 0], torch.tensor([0, 255, 0], dtype=torch.uint8))
    batch = data.collate([ds[i] for i in range(3)])
    assert batch["image"].shape == (3, 3, 20, 20) and batch["text"] == ["image 0", "image 1", "image 2"]
    assert torch.equal(batch["index"], torch.arange(3)) and "attributes" not in batch


def test_open_shapes_and_collate_attributes():
    ds = data.open_dataset("shapes", resolution=32, seed=3)
    items = [ds[i] for i in range(4)]
    batch = data.collate(items)
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert len(batch["attributes"]) == 4
    json.dumps(batch["attributes"])  # JSON-able ground truth
    assert ds.report.kept == len(ds)


def test_open_dataset_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        data.open_dataset(tmp_path / "nope", resolution=16)
    with pytest.raises(data.EmptyDatasetError, match=str(tmp_path)):
        data.open_dataset(tmp_path, resolution=16)
    with pytest.raises(ValueError, match="flip"):
        data.open_dataset("shapes", resolution=16, flip=True)
