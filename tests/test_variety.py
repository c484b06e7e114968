"""The variety metric on hand-built cases whose answers are known."""
import math

import numpy as np
import pytest
import torch

from data.shapes import BACKGROUNDS, Scene, ShapeObject, render_scene_chw
from eval.attributes import HEADS
from eval.variety import caption, free_draw, measure_variety, normalised_entropy, variety_of, variety_scenes

R = 32
BG_RGB = {tuple(int(c) for c in render_scene_chw(Scene(name, (ShapeObject("circle", "red", "small", "left"),)), R)[:, 0, 0]):
          i for i, name in enumerate(BACKGROUNDS)}


def corner_predict(images):
    """Reads the background from the corner pixel exactly; every other head 0."""
    rows = torch.zeros(len(images), len(HEADS), dtype=torch.long)
    rows[:, list(HEADS).index("background")] = torch.tensor([BG_RGB[tuple(img[:, 0, 0].tolist())] for img in images])
    return rows


def drawer(background_of_seed):
    """Fake generator: a small red circle on the left, whatever the prompt, on the background background_of_seed(seed)."""
    def draw(prompts, seeds):
        obj = ShapeObject("circle", "red", "small", "left")
        return torch.stack([torch.from_numpy(render_scene_chw(Scene(background_of_seed(s), (obj,)), R)) for s in seeds])
    return draw


def test_normalised_entropy():
    assert normalised_entropy([1, 1, 1, 1], 3) == 0.0
    assert normalised_entropy([0, 1, 2], 3) == pytest.approx(1.0)
    assert normalised_entropy([0, 1, 0, 1], 2) == pytest.approx(1.0)
    assert normalised_entropy([0, 0, 0, 1], 2) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(2))


def test_variety_of_counts_each_prompts_seeds_and_objects():
    one = Scene("white", (ShapeObject("circle", "red", "small", "centre"),))
    two = Scene("white", (ShapeObject("circle", "red", "small", "left"), ShapeObject("star", "blue", "small", "right")),
                "left of")
    names = list(HEADS)
    pred = torch.zeros(8, len(HEADS), dtype=torch.long)
    pred[:4, names.index("background")] = torch.tensor([0, 1, 2, 0])  # prompt one: backgrounds 2:1:1
    pred[:4, names.index("a_size")] = torch.tensor([0, 1, 0, 1])  # uniform sizes
    pred[:4, names.index("b_size")] = torch.tensor([1, 1, 1, 1])  # no object B: not counted
    pred[4:, names.index("a_size")] = torch.tensor([0, 0, 0, 0])  # prompt two: background fixed, A fixed,
    pred[4:, names.index("b_size")] = torch.tensor([0, 1, 1, 0])  # B uniform
    bg, size = variety_of(pred, [one, two], 4)
    h211 = -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)) / math.log(3)
    assert bg == pytest.approx((h211 + 0) / 2)
    assert size == pytest.approx((1.0 + 0.5) / 2)


def test_a_generator_that_ignores_the_seed_shows_no_variety():
    out = measure_variety(drawer(lambda s: "grey"), corner_predict, R, prompts=4, seeds=6)
    assert out["variety_background"] == 0.0 and out["variety_size"] == 0.0 and out["variety_images"] == 24
    assert 0 < out["variety_background_real"] <= 1  # real scenes draw the background per seed


def test_a_generator_that_cycles_backgrounds_shows_them_all():
    names = list(BACKGROUNDS)
    out = measure_variety(drawer(lambda s: names[s % 3]), corner_predict, R, prompts=4, seeds=6)
    assert out["variety_background"] == pytest.approx(1.0)  # 2 of each background in 6 seeds


def test_captions_leave_background_and_sizes_free_and_real_draws_are_seeded():
    scenes = variety_scenes(8)
    assert [len(s.objects) for s in scenes] == [1, 2] * 4
    for s in scenes:
        text = caption(s)
        assert not any(b in text for b in BACKGROUNDS) and "small" not in text and "large" not in text, text
    a = [free_draw(s, np.random.default_rng(5)) for s in scenes]
    assert a == [free_draw(s, np.random.default_rng(5)) for s in scenes]
    assert {x.background for x in (free_draw(scenes[0], np.random.default_rng(k)) for k in range(20))} == set(BACKGROUNDS)


def test_one_seed_is_refused():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        measure_variety(drawer(lambda s: "grey"), corner_predict, R, prompts=2, seeds=1)
