"""The procedural shapes domain: determinism, exact ground truth, captions."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

import data
from data import shapes
from data.shapes import COLOURS, BACKGROUNDS, Scene, ShapeObject, ShapesDataset


def colour_pixels(img: np.ndarray, rgb) -> np.ndarray:
    """Bool [R, R]: pixels that hold exactly `rgb`. img: uint8 [R, R, 3]."""
    return (img == np.asarray(rgb, dtype=np.uint8)).all(axis=2)


def test_items_are_deterministic_per_seed():
    a, b, c = ShapesDataset(32, seed=5), ShapesDataset(32, seed=5), ShapesDataset(32, seed=6)
    for i in (0, 1, 17, 1000):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and x["text"] == y["text"]
        assert x["attributes"] == y["attributes"] and x["index"] == i
    assert [a[i]["text"] for i in range(20)] != [c[i]["text"] for i in range(20)]
    assert len(ShapesDataset(32)) == shapes.INFINITE_LENGTH and len(ShapesDataset(32, size=7)) == 7
    with pytest.raises(IndexError):
        ShapesDataset(32, size=7)[7]


@pytest.mark.parametrize("resolution", [15, 257, 32.0])
def test_resolution_outside_16_256_is_refused(resolution):
    with pytest.raises(ValueError, match="16..256"):
        ShapesDataset(resolution)


@pytest.mark.parametrize("resolution", [16, 32, 64, 256])
def test_attributes_match_pixels(resolution):
    ds = ShapesDataset(resolution, seed=1)
    n_two = 0
    for i in range(40 if resolution < 256 else 8):
        item = ds[i]
        img = item["image"].permute(1, 2, 0).numpy()  # [R, R, 3]
        attrs = item["attributes"]
        bg = BACKGROUNDS[attrs["background"]]
        for corner in (img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]):
            assert tuple(corner) == bg
        boxes = []
        for obj in attrs["objects"]:
            cx, cy = obj["centre"]
            # the pixel under the object's centre holds its colour exactly
            assert tuple(img[int(cy), int(cx)]) == COLOURS[obj["colour"]]
            ys, xs = np.nonzero(colour_pixels(img, COLOURS[obj["colour"]]))
            x0, y0, x1, y1 = obj["bbox"]
            assert xs.min() >= x0 and xs.max() < x1 and ys.min() >= y0 and ys.max() < y1
            mx, my = xs.mean() / resolution, ys.mean() / resolution
            side = {"left": mx < 0.4, "right": mx > 0.6, "top": my < 0.4, "bottom": my > 0.6,
                    "centre": 0.4 < mx < 0.6 and 0.4 < my < 0.6}
            assert side[obj["position"]], (obj, mx, my)
            boxes.append((xs.min(), ys.min(), xs.max(), ys.max()))
        if attrs["relation"] is not None:
            n_two += 1
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes
            holds = {"left of": ax1 < bx0, "right of": ax0 > bx1, "above": ay1 < by0, "below": ay0 > by1}
            assert holds[attrs["relation"]], attrs
        json.dumps(attrs)
    assert n_two > 0


def test_mask_equals_naive_supersampling():
    """The vectorised coverage equals a per-pixel loop over 8x8 subsamples."""
    res, ss = 16, 8
    for shape in shapes.SHAPES:
        m = shapes.object_mask(res, shape, "large", "left")
        r = shapes.SIZES["large"] * res
        cx, cy = m.centre
        assert (cx, cy) == (4.5, 8.5)  # pixel centres, left of a 16 px image
        full = np.zeros((res, res))
        for py, px in itertools.product(range(res), range(res)):
            # one pixel at a time: its 8x8 subsample points
            sub = (np.arange(ss) + 0.5) / ss
            u = (px + sub[None, :] - cx) / r + 0 * sub[:, None]
            v = (py + sub[:, None] - cy) / r + 0 * sub[None, :]
            full[py, px] = shapes.shape_inside(shape, u, v).sum() / ss**2
        h, w = m.alpha.shape
        assert full.sum() == pytest.approx(m.alpha.sum(), abs=1e-5)
        np.testing.assert_allclose(full[m.y0 : m.y0 + h, m.x0 : m.x0 + w], m.alpha, atol=1e-6)


def test_colours_are_distinct_and_backgrounds_apart():
    assert len(COLOURS) >= 8 and set(COLOURS).isdisjoint(BACKGROUNDS)
    assert set(shapes.SHAPES) >= {"circle", "square", "triangle", "star", "cross"}
    rgb = [np.array(c, float) for c in [*COLOURS.values(), *BACKGROUNDS.values()]]
    dists = [np.linalg.norm(a - b) for a, b in itertools.combinations(rgb, 2)]
    assert min(dists) > 60
    # at 16 px every small object still shows its exact colour at its centre
    for shape, colour, pos in itertools.product(shapes.SHAPES, COLOURS, shapes.POSITIONS):
        scene = Scene("white", (ShapeObject(shape, colour, "small", pos),))
        img = shapes.render_scene(scene, 16)
        cx, cy = shapes.object_mask(16, shape, "small", pos).centre
        assert tuple(img[int(cy), int(cx)]) == COLOURS[colour]


def test_the_issue_phrasings():
    rng = np.random.default_rng(0)
    one = Scene("white", (ShapeObject("circle", "red", "small", "left"),))
    assert shapes.caption_scene(one, rng, template=0, with_size=(True,)).caption == "a small red circle on the left"
    two = Scene("white", (ShapeObject("circle", "red", "small", "left"),
                          ShapeObject("square", "blue", "large", "right")), "left of")
    ex = shapes.caption_scene(two, rng, template=0, with_size=(False, True))
    assert ex.caption == "a red circle left of a large blue square"
    assert ex.mentioned["objects"][0]["size"] is False and ex.mentioned["relation"] is True
    ex = shapes.caption_scene(two, rng, template=2, with_size=(False, False))
    assert ex.caption == "blue square, red circle to its left, on white" and ex.mentioned["background"]


def test_captions_name_the_scene():
    ds = ShapesDataset(32, seed=2)
    where = {"left": "on the left", "right": "on the right", "top": "at the top",
             "bottom": "at the bottom", "centre": "in the centre"}
    its = {"left of": "to its left", "right of": "to its right", "above": "above it", "below": "below it"}
    for i in range(200):
        ex = ds.example(i)
        for obj in ex.scene.objects:
            assert f"{obj.colour} {obj.shape}" in ex.caption
        if ex.scene.relation is None:
            assert where[ex.scene.objects[0].position] in ex.caption
        else:
            assert ex.scene.relation in ex.caption or its[ex.scene.relation] in ex.caption
            a, b = ex.scene.objects
            if its[ex.scene.relation] in ex.caption:  # "<b>, <a> to its left": reference first
                assert ex.caption.index(b.shape) < ex.caption.index(f"{a.colour} {a.shape}")
            else:
                assert ex.caption.index(f"{a.colour} {a.shape}") < ex.caption.index(f"{b.colour} {b.shape}")
    texts = {ds.example(i).caption for i in range(200)}
    assert len(texts) > 150  # several templates and phrasings


def test_captions_cover_the_vocabulary():
    words = {w for t in ShapesDataset(32).captions() for w in t.replace(",", " ").split()}
    assert words == set(shapes.vocabulary())
    assert len(ShapesDataset(32, size=10).captions()) == 10


def test_scene_validation_and_round_trip():
    a = ShapeObject("star", "green", "large", "top")
    b = ShapeObject("cross", "pink", "small", "bottom")
    scene = Scene("grey", (a, b), "above")
    assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene
    with pytest.raises(ValueError, match="positions"):
        Scene("grey", (a, b), "left of")
    with pytest.raises(ValueError, match="different colours"):
        Scene("grey", (a, ShapeObject("cross", "green", "small", "bottom")), "above")
    with pytest.raises(ValueError, match="unknown shape"):
        ShapeObject("hexagon", "green", "large", "top")
    with pytest.raises(ValueError, match="unknown background"):
        Scene("red", (a,))


def test_sampling_covers_every_value():
    rng = np.random.default_rng(0)
    seen: dict[str, set] = {k: set() for k in ("shape", "colour", "size", "position", "relation", "background")}
    for _ in range(2000):
        scene = shapes.sample_scene(rng)
        seen["relation"].add(scene.relation)
        seen["background"].add(scene.background)
        for o in scene.objects:
            for k in ("shape", "colour", "size", "position"):
                seen[k].add(getattr(o, k))
    assert seen["shape"] == set(shapes.SHAPES) and seen["colour"] == set(COLOURS)
    assert seen["size"] == set(shapes.SIZES) and seen["position"] == set(shapes.POSITIONS)
    assert seen["relation"] == {None, *shapes.RELATIONS} and seen["background"] == set(BACKGROUNDS)


def test_float_images_and_dataloader_with_two_workers():
    ds = ShapesDataset(16, size=12, seed=4, image_dtype="float32")
    assert ds[0]["image"].dtype == torch.float32 and ds[0]["image"].abs().max() <= 1.0
    ds = ShapesDataset(16, size=12, seed=4)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=data.collate)
    batches = list(loader)
    assert len(batches) == 3
    assert torch.equal(torch.cat([b["index"] for b in batches]), torch.arange(12))
    assert torch.equal(batches[1]["image"][0], ds[4]["image"])
    assert batches[2]["attributes"][3] == ds[11]["attributes"]
