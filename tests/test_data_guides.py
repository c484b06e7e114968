"""Training guides (data/guides.py): shapes from the scene's truth, folders from the image, stored once
in a prepared set (and computed on load for sets prepared before), batched by collate."""
from __future__ import annotations

import json

import numpy as np
import torch

import data
from data.guides import GuidedDataset, from_hex, hex_colours, scene_mask
from data.shapes import BACKGROUNDS, COLOURS, Scene, ShapesDataset, render_scene_chw
from tests.test_data_prepared import make_folder


def test_shapes_guides_come_from_the_scene():
    ds = GuidedDataset(ShapesDataset(32, size=6, seed=4), colours=5, grid=8)
    for i in range(6):
        item = ds[i]
        scene = Scene.from_dict(item["attributes"])
        k = len(scene.objects) + 1
        assert item["palette_weights"].tolist() == [1.0] * k + [0.0] * (5 - k)
        expected = {COLOURS[o.colour] for o in scene.objects} | {BACKGROUNDS[scene.background]}
        got = {tuple(int(v) for v in (c * 255).round().tolist()) for c in item["palette"][:k]}
        assert got == expected
        assert tuple((item["palette"][0] * 255).round().int().tolist()) == BACKGROUNDS[scene.background]  # largest area
        # the mask is where the image holds an object's colour, and the sketch is that mask, grey, cut to 8x8
        mask = scene_mask(scene, 32)
        image = torch.from_numpy(render_scene_chw(scene, 32)).float()
        bg = torch.tensor(BACKGROUNDS[scene.background]).float()[:, None, None]
        assert torch.equal((image - bg).abs().sum(0) > 0, mask > 0)
        sketch = item["sketch"]
        assert sketch.shape == (3, 8, 8) and torch.equal(sketch[0], sketch[1])
        area = torch.nn.functional.avg_pool2d(mask[None], 4)[0]
        assert area.flatten()[sketch[0].argmax()] > 0.3  # the brightest cell is an object's
        assert sketch[0][area == 0].max() < 0.5 * sketch[0].max()  # cells without any object stay dim


def test_prepared_folder_stores_the_guides_computed_from_its_images(tmp_path):
    src = make_folder(tmp_path / "src")
    data.prepare_dataset(src, tmp_path / "out", resolution=16, workers=1, sketch_grid=4)
    info = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert info["sketch_grid"] == 4 and np.load(tmp_path / "out" / "sketches.npy").shape == (5, 4, 4, 3)
    prepared = GuidedDataset(data.open_dataset(tmp_path / "out", resolution=16), colours=5, grid=4)
    live = GuidedDataset(data.open_dataset(src, resolution=16), colours=5, grid=4)
    for i in range(5):
        a, b = prepared[i], live[i]
        assert torch.equal(a["palette_weights"], b["palette_weights"])
        assert (a["palette"] - b["palette"]).abs().max() <= 0.5 / 255 + 1e-6  # stored as #rrggbb
        assert (a["sketch"] - b["sketch"]).abs().max() <= 0.5 / 255 + 1e-6  # stored as uint8
    flipped = GuidedDataset(data.open_dataset(tmp_path / "out", resolution=16, flip=True), colours=5, grid=4)
    assert torch.equal(flipped[7]["sketch"], prepared[2]["sketch"].flip(-1))
    other_grid = GuidedDataset(data.open_dataset(tmp_path / "out", resolution=16), colours=0, grid=2)[0]
    assert other_grid["sketch"].shape == (3, 2, 2) and "palette" not in other_grid


def test_a_set_prepared_without_guides_computes_them_on_load(tmp_path):
    src = make_folder(tmp_path / "src")
    data.prepare_dataset(src, tmp_path / "out", resolution=16, workers=1, sketch_grid=4)
    new = GuidedDataset(data.open_dataset(tmp_path / "out", resolution=16), colours=5, grid=4)
    expected = [new[i] for i in range(5)]
    (tmp_path / "out" / "sketches.npy").unlink()
    captions = tmp_path / "out" / "captions.jsonl"
    records = [json.loads(line) for line in captions.read_text().splitlines()]
    captions.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "palette"}) + "\n" for r in records))
    old = GuidedDataset(data.open_dataset(tmp_path / "out", resolution=16), colours=5, grid=4)
    for i in range(5):
        assert (old[i]["palette"] - expected[i]["palette"]).abs().max() <= 0.5 / 255 + 1e-6
        assert (old[i]["sketch"] - expected[i]["sketch"]).abs().max() <= 0.5 / 255 + 1e-6


def test_collate_batches_the_guides():
    ds = GuidedDataset(ShapesDataset(16, size=3), colours=5, grid=4)
    batch = data.collate([ds[i] for i in range(3)])
    assert batch["palette"].shape == (3, 5, 3) and batch["palette_weights"].shape == (3, 5)
    assert batch["sketch"].shape == (3, 3, 4, 4)
    assert "palette" not in data.collate([ShapesDataset(16, size=1)[0]])


def test_hex_round_trip():
    colours = torch.tensor([[1.0, 0.5, 0.0], [0.2, 0.4, 0.6]])
    assert hex_colours(colours) == ["#ff8000", "#336699"]
    assert (from_hex(hex_colours(colours)) - colours).abs().max() <= 0.5 / 255 + 1e-6
