"""Shapes attribute probe: ground truth -> targets, the scoring rule, a probe that learns, caching."""
import dataclasses

import pytest
import torch

from data.shapes import Scene, ShapeObject, ShapesDataset, scene_attributes
from eval import attributes as at
from eval import fitted


def _attrs(scene: Scene, mentioned: dict | None = None, resolution: int = 16) -> dict:
    return scene_attributes(scene, resolution, mentioned)


TWO = Scene("white", (ShapeObject("circle", "red", "small", "right"), ShapeObject("square", "blue", "large", "left")),
            "right of")
ONE = Scene("black", (ShapeObject("star", "green", "large", "top"),))


def _perfect(attrs: dict) -> dict:
    t = at.targets(attrs)
    return {h: (v if v != at.IGNORE else 0) for h, v in t.items()}


def test_slots_are_canonical():
    t = at.targets(_attrs(TWO))
    # "red circle right of blue square": slot A is the left object, the blue square.
    assert at.HEADS["a_colour"][t["a_colour"]] == "blue" and at.HEADS["b_colour"][t["b_colour"]] == "red"
    assert at.HEADS["a_position"][t["a_position"]] == "left" and at.HEADS["count"][t["count"]] == "2"
    t1 = at.targets(_attrs(ONE))
    assert t1["b_shape"] == at.IGNORE and at.HEADS["a_position"][t1["a_position"]] == "top"


def test_hits_count_only_what_the_caption_mentions():
    mentioned = {"background": False, "relation": True,
                 "objects": [{"shape": True, "colour": True, "size": False, "position": False},
                             {"shape": True, "colour": True, "size": True, "position": False}]}
    attrs = _attrs(TWO, mentioned)
    hits = at.attribute_hits(_perfect(attrs), attrs)
    assert hits == {"count": [True], "background": [], "shape": [True, True], "colour": [True, True],
                    "size": [True], "position": [], "relation": [True], "binding": [True],
                    "shape_one": [], "shape_two": [True, True]}


def test_swapped_objects_break_the_relation_but_not_the_shapes_count():
    attrs = _attrs(TWO)
    pred = _perfect(attrs)
    # The generator drew the red circle on the left and the blue square on the right.
    pred["a_colour"], pred["b_colour"] = pred["b_colour"], pred["a_colour"]
    pred["a_shape"], pred["b_shape"] = pred["b_shape"], pred["a_shape"]
    hits = at.attribute_hits(pred, attrs)
    assert hits["relation"] == [False] and hits["colour"] == [False, False] and hits["binding"] == [False]
    # One colour wrong but arrangement right: the relation still holds, the binding does not.
    pred = _perfect(attrs)
    pred["a_colour"] = at.HEADS["a_colour"].index("pink")
    hits = at.attribute_hits(pred, attrs)
    assert hits["relation"] == [True] and hits["binding"] == [False]
    # Both colours in place but a third object seen: no binding either.
    pred = _perfect(attrs)
    pred["count"] = 0
    assert at.attribute_hits(pred, attrs)["binding"] == [False]
    assert at.attribute_hits(_perfect(_attrs(ONE)), _attrs(ONE))["binding"] == []


def test_accuracy_matches_naive_count():
    ds = ShapesDataset(16, size=50, seed=3)
    attrs = [ds[i]["attributes"] for i in range(50)]
    truth = torch.stack([torch.tensor([_perfect(a)[h] for h in at.HEADS]) for a in attrs])
    assert all(v in (None, 1.0) for v in at.accuracy(truth, attrs).values())
    wrong = truth.clone()
    col = list(at.HEADS).index("a_colour")
    wrong[::2, col] = (wrong[::2, col] + 1) % len(at.HEADS["a_colour"])
    acc = at.accuracy(wrong, attrs)
    naive = [ok for i, a in enumerate(attrs) for ok in at.attribute_hits(dict(zip(at.HEADS, wrong[i].tolist())), a)["colour"]]
    assert acc["colour"] == sum(naive) / len(naive) < 1.0
    assert acc["shape"] == acc["shape_one"] == acc["shape_two"] == 1.0
    # Shape split by the scene's object count: slot B's shape wrong hurts only two-object scenes.
    col = list(at.HEADS).index("b_shape")
    wrong[:, col] = (wrong[:, col] + 1) % len(at.HEADS["b_shape"])
    acc = at.accuracy(wrong, attrs)
    assert acc["shape_one"] == 1.0 and acc["shape_two"] == 0.5
    two = [i for i, a in enumerate(attrs) if len(a["objects"]) == 2]  # binding: every odd one, untouched
    assert acc["binding"] == sum(i % 2 for i in two) / len(two) and 0 < acc["binding"] < 1


SMALL = at.ProbeConfig(resolution=16, channels=16, hidden=128, train_images=3000, steps=250, batch=64,
                       lr=3e-3, heldout_images=400)


@pytest.fixture(scope="module")
def trained():
    # One thread: many tiny convolutions; a shared, busy CPU makes OpenMP threads spin-wait.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return at.train_probe(SMALL)
    finally:
        torch.set_num_threads(threads)


def test_probe_learns_real_shapes(trained):
    probe, report = trained
    assert report["loss_last"] < 0.05 * report["loss_first"]
    held = report["heldout"]
    # Held-out real procedural images: the probe reads them back (the ceiling, ~100 %).
    assert min(held.values()) >= 0.97, held
    assert held["count"] == held["position"] == 1.0


def test_probe_save_load_and_cache(tmp_path, trained):
    probe, report = trained
    probe.save(tmp_path / "p", info={"report": report})
    loaded = at.AttributeProbe.load(tmp_path / "p")
    images, _ = at.render_set(16, 20, seed=9)
    assert torch.equal(loaded.predict(images), probe.predict(images))
    assert torch.equal(probe.predict(images), probe.predict(images.float() / 127.5 - 1))
    # The cache key follows the config.
    k1 = fitted.probe_cache_key(SMALL)
    assert k1 == fitted.probe_cache_key(dataclasses.replace(SMALL))
    assert k1 != fitted.probe_cache_key(dataclasses.replace(SMALL, steps=251))
    assert k1 != fitted.probe_cache_key(dataclasses.replace(SMALL, resolution=32))


def test_fit_probe_reuses_the_cache(tmp_path):
    cfg = at.ProbeConfig(resolution=16, channels=4, hidden=8, train_images=64, steps=2, heldout_images=16)
    p1, f1 = fitted.fit_probe(cfg, cache_dir=tmp_path)
    stamp = (f1 / "probe.safetensors").stat().st_mtime_ns
    p2, f2 = fitted.fit_probe(cfg, cache_dir=tmp_path)
    assert f1 == f2 and (f2 / "probe.safetensors").stat().st_mtime_ns == stamp
    assert p2.info["key"] == p1.info["key"]
    for a, b in zip(p1.state_dict().values(), p2.state_dict().values()):
        assert torch.equal(a, b)


def test_probe_rejects_wrong_input():
    probe = at.AttributeProbe(at.ProbeConfig(resolution=16, channels=4, hidden=8))
    with pytest.raises(AssertionError):
        probe(torch.zeros(1, 3, 32, 32))
