"""Emphasised size words in the shapes domain: "(large:1.41)" draws the object larger, and training
reads the weights (the spikes carry them) in the warm-up and the GAN phase."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from data.shapes import (EMPHASIS_WEIGHTS, MAX_RADIUS, SIZES, Scene, ShapeObject, ShapesDataset, caption_scene,
                         object_mask, object_radius, render_scene_chw)
from encoders import make_tokenizer, parse_prompt
from gan import loss as gan_loss
from gan import warmup
from gan.presets import preset
from gan.train_config import check_config, resolve_config
from gan.training import train


def test_object_radius_raises_the_distance_from_medium_to_the_weight():
    medium = (SIZES["small"] * SIZES["large"]) ** 0.5
    for size, base in SIZES.items():
        assert object_radius(size) == base  # weight 1 is the plain size, exactly
        for w in (0.5, 0.8, 1.25, 2.0):
            assert object_radius(size, w) == pytest.approx(min(medium * (base / medium) ** w, MAX_RADIUS))
    large = [object_radius("large", w) for w in (0.5, 0.8, 1.0, 1.25)]
    small = [object_radius("small", w) for w in (0.5, 0.8, 1.0, 1.25, 2.0)]
    assert large == sorted(large) and len(set(large)) == 4 and small == sorted(small, reverse=True)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_the_drawn_area_follows_the_weight_and_the_object_stays_inside(size):
    areas = []
    for w in EMPHASIS_WEIGHTS:
        m = object_mask(32, "circle", size, "left", w)
        x0, y0, x1, y1 = m.bbox
        assert 0 <= x0 and 0 <= y0 and x1 <= 32 and y1 <= 32
        areas.append(float(m.alpha.sum()))
    assert areas == sorted(areas, reverse=size == "small")
    assert areas[0] != areas[-1]


def test_emphasised_captions_say_the_weight_the_image_is_drawn_with():
    ds, plain = ShapesDataset(32, seed=3, emphasis_p=0.5), ShapesDataset(32, seed=3)
    emphasised = 0
    for i in range(300):
        item, ex = ds[i], ds.example(i)
        said = sorted((w, x) for w, x in parse_prompt(item["text"]) if w in SIZES)
        named = sorted((o.size, o.size_weight) for o, m in zip(ex.scene.objects, ex.mentioned["objects"]) if m["size"])
        assert said == named
        for obj, mentioned in zip(ex.scene.objects, ex.mentioned["objects"]):
            assert obj.size_weight in (1.0, *EMPHASIS_WEIGHTS) and (mentioned["size"] or obj.size_weight == 1.0)
            emphasised += obj.size_weight != 1.0
        assert torch.equal(item["image"], torch.from_numpy(render_scene_chw(ex.scene, 32)))
        assert [o["size_weight"] for o in item["attributes"]["objects"]] == [o.size_weight for o in ex.scene.objects]
        assert Scene.from_dict(item["attributes"]) == ex.scene
        p = plain.example(i)
        assert (p.scene.background, p.template, [o.size for o in p.scene.objects]) == \
               (ex.scene.background, ex.template, [o.size for o in ex.scene.objects])
    assert 50 < emphasised < 250


def test_without_emphasis_the_stream_is_the_one_before_emphasis_and_reads_alike_either_way():
    plain = ShapesDataset(32, seed=5)
    captions = [plain.example(i).caption for i in range(2000)]
    # sha256 of the same 2000 captions at commit da7ce6e, before emphasis existed: the main job's stream is unchanged
    digest = hashlib.sha256("\n".join(captions).encode()).hexdigest()
    assert digest == "3439734afb05a41b030ba673c672acbc40108342d900a6a5f7030343f15c2547"
    assert not any("(" in c for c in captions)
    tok = make_tokenizer(preset("shapes32").encoder, plain.captions())
    literal, parsed = tok(captions, emphasis=False), tok(captions, emphasis=True)  # why training may parse them
    assert torch.equal(literal.ids, parsed.ids) and torch.equal(literal.weights, parsed.weights)


def test_captions_for_the_vocabulary_leave_the_syntax_out():
    ds = ShapesDataset(32, seed=0, emphasis_p=1.0)
    caps = ds.captions(200)
    assert not any(ch in c for c in caps for ch in "():")
    assert any(ds.example(i).caption != c for i, c in enumerate(caps))
    assert caps[0] == " ".join(w for w, _ in parse_prompt(ds.example(0).caption))


def test_a_scene_refuses_a_bad_size_weight():
    with pytest.raises(ValueError, match="size_weight must lie in"):
        ShapeObject("circle", "red", "large", "left", size_weight=0.0)
    scene = Scene("white", (ShapeObject("circle", "red", "large", "left", size_weight=1.41),))
    assert caption_scene(scene, np.random.default_rng(0), template=0, with_size=(True,)).caption == \
        "a (large:1.41) red circle on the left"


def test_training_reads_the_weights_in_the_warmup_and_the_gan_phase(tmp_path, monkeypatch):
    seen, warm = [], []
    g_main = gan_loss.GANLoss.g_main
    monkeypatch.setattr(gan_loss.GANLoss, "g_main", lambda self, **kw: seen.append(kw["batch"]) or g_main(self, **kw))
    encoder_warmup = warmup.warm_up_encoder
    monkeypatch.setattr(warmup, "warm_up_encoder", lambda *a, **kw: warm.append(kw["emphasis"]) or encoder_warmup(*a, **kw))
    cfg = resolve_config("tiny", out=str(tmp_path), threads=1, kimg=0.032, snap=0.032, shapes_emphasis=1.0)
    train(cfg)
    weights = torch.cat([b.weights[b.mask] for b in seen])
    assert warm == [True] and set(weights.unique().tolist()) - {1.0}  # emphasised tokens reach G's code
    assert {round(w, 2) for w in weights.tolist()} <= {1.0, *EMPHASIS_WEIGHTS}
    with pytest.raises(ValueError, match="--shapes-emphasis 0.0: the run in .* drew its captions with 1.0"):
        train(resolve_config("tiny", out=str(tmp_path), threads=1, kimg=0.064, resume="latest"))


def test_shapes_emphasis_is_for_shapes_only(tmp_path):
    with pytest.raises(ValueError, match=r"--shapes-emphasis 0.3 \(yours or the preset's\) applies to --data shapes only"):
        check_config(resolve_config("tiny", out=str(tmp_path), data=str(tmp_path), shapes_emphasis=0.3))
    # shapes32 emphasises size words; on a folder the preset's value is refused unless zeroed.
    assert resolve_config("shapes32", out=str(tmp_path)).shapes_emphasis == 0.3
    with pytest.raises(ValueError, match="give --shapes-emphasis 0 for --data"):
        check_config(resolve_config("shapes32", out=str(tmp_path), data=str(tmp_path)))
    check_config(resolve_config("shapes32", out=str(tmp_path), data=str(tmp_path), shapes_emphasis=0.0))
    with pytest.raises(ValueError, match=r"--shapes-emphasis must lie in \[0, 1\]"):
        check_config(resolve_config("tiny", out=str(tmp_path), shapes_emphasis=1.5))
