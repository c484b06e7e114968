"""Guides end to end on the tiny preset: train with a palette and a sketch (exact resume, seeded
dropout), sample them from the pipeline and the CLI, score them with the eval CLI (palette against
caption judged on painted images), and the refusals of a model trained without them."""
from __future__ import annotations

import json

import numpy as np
import PIL.Image
import pytest
import torch

from data.guides import BACKGROUNDS, override_colour_words, override_place, scene_palette
from data.shapes import COLOURS, PLACE_PHRASES, Scene, ShapesDataset, render_scene_chw
from encoders.guides import GuideEncoder
from eval import cli as eval_cli
from eval import metrics
from eval.guides import conflict_shares, conflicting_place, conflicting_scene, mask_iou, palette_adherence
from gan.pipeline import Pipeline
from gan import loss as gan_loss
from gan.stream import batch_guides, override_captions
from gan.train_config import resolve_config
from gan.training import train
from scripts import sample
from tests.test_training import assert_same, weights

GUIDED = dict(threads=1, palette_override=0.5, model={"encoder": {"palette": True, "sketch_grid": 4}})


def guided(out, **kw):
    return resolve_config("tiny", out=str(out), **{**GUIDED, **kw})


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory):
    """0.064 kimg of the tiny preset with guides on (4 steps of 16 images)."""
    return train(guided(tmp_path_factory.mktemp("guided"), kimg=0.064, snap=0.032))


def layout_png(path):
    rgb = np.zeros((24, 24, 3), dtype=np.uint8)
    rgb[4:12, 2:10] = 255
    PIL.Image.fromarray(rgb).save(path)
    return path


def test_guided_training_resumes_exactly(guided_run, tmp_path, monkeypatch):
    cfg = json.loads((guided_run.out / "config.json").read_text())
    assert cfg["model"]["encoder"]["palette"] is True and cfg["model"]["encoder"]["sketch_grid"] == 4
    assert cfg["train"]["input_drop"] == 0.5 and cfg["train"]["palette_override"] == 0.5
    seen = []
    forward = GuideEncoder.forward

    def spy(self, guides, *args, **kw):
        if guides is not None:
            seen.append(((guides.palette_weights.sum(1) > 0).float().mean().item(), guides.sketch_mask.float().mean().item()))
        return forward(self, guides, *args, **kw)

    monkeypatch.setattr(GuideEncoder, "forward", spy)
    train(guided(tmp_path, kimg=0.032, snap=0.032))
    kept = torch.tensor(seen)  # share of images keeping each guide, per encoder call in the GAN phases
    assert len(seen) > 0 and 0.2 < float(kept.mean()) < 0.8 and kept.min() < kept.max()
    monkeypatch.undo()
    resumed = train(guided(tmp_path, kimg=0.064, snap=0.032, model={}, resume="latest"))
    assert_same(weights(resumed.model), weights(guided_run.model))
    assert_same(weights(resumed.discriminator), weights(guided_run.discriminator))


def test_dropout_follows_the_key():
    batch = {"palette": torch.rand(64, 5, 3), "palette_weights": torch.ones(64, 5), "sketch": torch.rand(64, 3, 4, 4)}
    a = batch_guides(batch, drop=0.5, key=(0, 0, 3, 0))
    assert torch.equal(a.palette_weights, batch_guides(batch, drop=0.5, key=(0, 0, 3, 0)).palette_weights)
    assert not torch.equal(a.sketch_mask, batch_guides(batch, drop=0.5, key=(0, 0, 4, 0)).sketch_mask)
    assert batch_guides(batch, drop=0.0, key=(0,)).sketch_mask.all()
    assert batch_guides({"image": None}, drop=0.5, key=(0,)) is None


def test_pipeline_and_sample_cli_take_the_guides(guided_run, tmp_path, capsys):
    model = guided_run.out / "model"
    pipe = Pipeline.from_pretrained(model)
    plain = pipe(["a red circle"], [0], output_type="pt")
    red = pipe(["a red circle"], [0], palette="#ff0000", output_type="pt")
    blue = pipe(["a red circle"], [0], palette="#0000ff:1.5", output_type="pt")
    sketched = pipe(["a red circle"], [0], sketch=layout_png(tmp_path / "layout.png"), output_type="pt")
    assert not torch.equal(plain, red) and not torch.equal(red, blue) and not torch.equal(plain, sketched)
    assert torch.equal(red, pipe(["a red circle"], [0], palette="#ff0000", output_type="pt"))

    grid = tmp_path / "grid.png"
    rc = sample.main(["--model", str(model), "--prompt", "a red circle", "--prompt", "a blue square", "--seeds", "0-1",
                      "--palette", "#ff0000,#0000ff:1.5", "--sketch", str(tmp_path / "layout.png"), "--grid",
                      "--out", str(grid)])
    assert rc == 0 and min(PIL.Image.open(grid).size) >= 2 * 16  # 2 prompts x 2 seeds of 16 px
    (tmp_path / "junk.png").write_bytes(b"junk")
    rc = sample.main(["--model", str(model), "--prompt", "a circle", "--seeds", "0", "--sketch",
                      str(tmp_path / "junk.png"), "--out", str(tmp_path / "out")])
    assert rc == 1 and "junk.png" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sample.main(["--model", str(model), "--prompt", "a circle", "--palette", "#12345", "--out", str(tmp_path)])
    assert "--palette" in (err := capsys.readouterr().err) and "'#12345'" in err


def test_eval_cli_scores_the_guides(guided_run, tmp_path, capsys):
    out = tmp_path / "scores.json"
    rc = eval_cli.main(["--model", str(guided_run.out / "model"), "--data", "shapes", "--metrics",
                        "palette,sketch,palette_conflict,sketch_conflict", "--num", "4", "--batch", "2", "--json", str(out),
                        "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    values = json.loads(out.read_text())["rows"][0]["values"]
    assert values.pop("palette_conflict_images") == 4 and values.pop("sketch_conflict_images") == 4
    assert set(values) == {"palette_coverage", "palette_outside", "sketch_cell_error", "sketch_iou", "palette_wins",
                           "palette_caption_wins", "sketch_wins", "sketch_caption_wins", "sketch_conflict_iou"}
    assert all(0 <= v <= 1 for v in values.values())
    assert values["palette_wins"] + values["palette_caption_wins"] <= 1


def test_a_model_without_guides_refuses_them(tiny_model_dir, tmp_path, capsys):
    rc = sample.main(["--model", str(tiny_model_dir), "--prompt", "a circle", "--seeds", "0", "--palette", "#ff0000",
                      "--out", str(tmp_path / "a")])
    assert rc == 1 and "trained without a palette" in capsys.readouterr().err
    rc = sample.main(["--model", str(tiny_model_dir), "--prompt", "a circle", "--seeds", "0", "--sketch",
                      str(layout_png(tmp_path / "s.png")), "--out", str(tmp_path / "b")])
    assert rc == 1 and "trained without a sketch" in capsys.readouterr().err
    for metric in ("palette", "palette_conflict"):
        rc = eval_cli.main(["--model", str(tiny_model_dir), "--data", "shapes", "--metrics", metric, "--num", "2",
                            "--device", "cpu", "--quiet"])
        assert rc != 0 and f"{metric}: this model was trained without a palette" in capsys.readouterr().err


def test_adherence_measures_on_known_images():
    img = torch.zeros(1, 3, 10, 10, dtype=torch.uint8)
    img[0, 0, :, :5] = 255  # left half red, right half black
    palette = torch.tensor([[[1.0, 0, 0], [0, 0, 1.0], [0, 0, 0]]])
    coverage, outside = palette_adherence(img, palette, torch.tensor([[1.0, 1.0, 0.0]]))
    assert coverage.tolist() == [0.5] and outside.tolist() == [0.5]  # blue missing; black is no palette colour
    coverage, outside = palette_adherence(img, palette, torch.ones(1, 3))
    assert coverage.tolist() == [pytest.approx(2 / 3)] and outside.tolist() == [0.0]
    a = torch.zeros(1, 4, 4, dtype=torch.bool)
    b = a.clone()
    a[0, :2] = True
    b[0, 1:3] = True
    assert mask_iou(a, b).tolist() == [pytest.approx(1 / 3)]


# --- palette against caption ----------------------------------------------------------------

def test_the_conflicting_palette_has_none_of_the_scenes_colours():
    shapes = ShapesDataset(16, size=300)
    swaps = set()
    for i in range(len(shapes)):
        scene = shapes.example(i).scene
        swapped = conflicting_scene(scene, i)
        assert swapped == conflicting_scene(scene, i)  # deterministic
        assert swapped.background != scene.background
        assert [(o.shape, o.size, o.position) for o in swapped.objects] == [
            (o.shape, o.size, o.position) for o in scene.objects]
        named = {o.colour for o in scene.objects}
        assert not named & {o.colour for o in swapped.objects}
        palette = scene_palette(swapped, 16)
        own = scene_palette(scene, 16)
        assert len(palette) == len(own) and not (palette[:, None] == own[None]).all(-1).any()
        swaps.update((a.colour, b.colour) for a, b in zip(scene.objects, swapped.objects))
    assert all(len({b for a, b in swaps if a == c}) >= 3 for c in COLOURS)  # the swap turns with the index


def test_the_conflicting_place_is_another_layout_of_the_same_objects():
    shapes = ShapesDataset(16, size=200)
    for i in range(len(shapes)):
        scene = shapes.example(i).scene
        moved = conflicting_place(scene, i)
        assert moved == conflicting_place(scene, i) and moved.background == scene.background
        assert [(o.shape, o.colour, o.size) for o in moved.objects] == [(o.shape, o.colour, o.size) for o in scene.objects]
        assert all(a.position != b.position for a, b in zip(moved.objects, scene.objects))
        if scene.relation is not None:
            axis = {"left of": "x", "right of": "x", "above": "y", "below": "y"}
            assert axis[moved.relation] != axis[scene.relation]
    lone = {conflicting_place(Scene.from_dict({"background": "white", "objects": [
        {"shape": "star", "colour": "red", "size": "large", "position": "left"}]}), i).objects[0].position for i in range(8)}
    assert lone == {"right", "top", "bottom", "centre"}


def test_sketch_conflict_on_painted_images(guided_run, monkeypatch):
    from data.guides import scene_sketch

    model = guided_run.ema.eval()
    R = model.cfg.resolution

    def painting(kind):
        def generate(ctx, guides):
            out = []
            for i, attributes in enumerate(ctx.prompt_attributes()):
                scene = Scene.from_dict(attributes)
                moved = conflicting_place(scene, i)
                assert torch.equal(guides.sketch[i], scene_sketch(moved, R, model.cfg.encoder.sketch_grid))
                out.append(torch.from_numpy(render_scene_chw(moved if kind == "sketch" else scene, R)))
            return torch.stack(out)
        return generate

    ctx = metrics.Context(model, guided_run.tokenizer, ShapesDataset(R, size=8), metrics.MetricOptions(num=8))
    got = {}
    for kind in ("sketch", "caption"):
        monkeypatch.setattr(metrics, "generate_guided", painting(kind))
        got[kind] = metrics.sketch_conflict(ctx)
    assert [got[k]["sketch_wins"] for k in got] == [1.0, 0.0] and [got[k]["sketch_caption_wins"] for k in got] == [0.0, 1.0]
    assert got["sketch"]["sketch_conflict_iou"] > got["caption"]["sketch_conflict_iou"]
    assert got["sketch"]["sketch_conflict_images"] == 8


def painted(kind: str):
    """A generate_guided stand-in that checks the palettes it is given: image i is its scene drawn in
    the palette's colours ("palette"), in the caption's ("caption"), or the palette's background alone
    ("empty")."""
    def generate(ctx, guides):
        R, out = ctx.resolution, []
        for i, attributes in enumerate(ctx.prompt_attributes()):
            scene = Scene.from_dict(attributes)
            swapped = conflicting_scene(scene, i)
            palette = guides.palette[i][guides.palette_weights[i] > 0]
            assert torch.equal(palette, scene_palette(swapped, R))
            image = torch.from_numpy(render_scene_chw(scene if kind == "caption" else swapped, R))
            out.append(image[:, :1, :1].expand(-1, R, R) if kind == "empty" else image)  # a corner: the background
        return torch.stack(out)
    return generate


@pytest.mark.parametrize("kind, wins, caption_wins",
                         [("palette", 1.0, 0.0), ("caption", 0.0, 1.0), ("empty", 0.0, 0.0)])
def test_palette_conflict_on_painted_images(guided_run, monkeypatch, kind, wins, caption_wins):
    model = guided_run.ema.eval()
    ctx = metrics.Context(model, guided_run.tokenizer, ShapesDataset(model.cfg.resolution, size=6),
                          metrics.MetricOptions(num=8))
    monkeypatch.setattr(metrics, "generate_guided", painted(kind))
    assert metrics.palette_conflict(ctx) == {"palette_wins": wins, "palette_caption_wins": caption_wins,
                                             "palette_conflict_images": 8}


def test_conflict_shares_take_the_nearest_colour():
    img = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    img[0, :, 0, 0] = torch.tensor(COLOURS["blue"])
    img[0, :, 0, 1] = torch.tensor(COLOURS["purple"])
    img[0, :, 1, 0] = torch.tensor([90, 45, 185])  # ΔE 14.2 from blue, 15.8 from purple: within 16 of both
    img[0, :, 1, 1] = torch.tensor(COLOURS["purple"])  # not an object pixel
    mask = torch.tensor([[[True, True], [True, False]]])
    rgb = {k: torch.tensor([[COLOURS[k]] * 2], dtype=torch.float32) / 255 for k in ("blue", "purple")}
    palette, caption = conflict_shares(img, mask, rgb["purple"], rgb["blue"], tolerance=16.0)
    assert palette.tolist() == [pytest.approx(1 / 3)] and caption.tolist() == [pytest.approx(2 / 3)]
    palette, caption = conflict_shares(img, mask, rgb["purple"], rgb["blue"], tolerance=10.0)
    assert palette.tolist() == [pytest.approx(1 / 3)] and caption.tolist() == [pytest.approx(1 / 3)]


def test_palette_conflict_needs_the_scenes(guided_run):
    model = guided_run.ema.eval()
    R = model.cfg.resolution
    photos = [{"image": torch.zeros(3, R, R, dtype=torch.uint8), "text": "a photo", "index": i} for i in range(4)]
    with pytest.raises(metrics.MetricError, match="palette_conflict: the reference set has no ground-truth"):
        metrics.palette_conflict(metrics.Context(model, guided_run.tokenizer, photos, metrics.MetricOptions(num=4)))
    opts = metrics.MetricOptions(num=4, prompts=["a red circle"])
    with pytest.raises(metrics.MetricError, match="palette_conflict: prompts from --prompts have no known scenes"):
        metrics.palette_conflict(metrics.Context(model, guided_run.tokenizer, ShapesDataset(R, size=4), opts))


def test_override_colour_words_swaps_each_within_its_family():
    text = "a red circle left of a blue square on a white background"
    swapped = [override_colour_words(text, torch.Generator().manual_seed(s)).split() for s in range(20)]
    for words in swapped:
        assert words[1] in COLOURS and words[1] != "red" and words[6] in COLOURS and words[6] != "blue"
        assert words[10] in BACKGROUNDS and words[10] != "white"
        assert [w for i, w in enumerate(words) if i not in (1, 6, 10)] == \
            [w for i, w in enumerate(text.split()) if i not in (1, 6, 10)]
    assert len({" ".join(w) for w in swapped}) > 5
    assert swapped[3] == override_colour_words(text, torch.Generator().manual_seed(3)).split()
    assert override_colour_words("a reddish star", torch.Generator()) == "a reddish star"


def test_override_captions_swaps_only_where_the_palette_stays():
    texts = [f"a red circle number {i}" for i in range(64)]
    batch = {"palette": torch.rand(64, 5, 3), "palette_weights": torch.ones(64, 5)}
    guides = batch_guides(batch, drop=0.5, key=(0, 0, 3, 0))
    kept = (guides.palette_weights.sum(1) > 0).tolist()
    out = override_captions(texts, guides, p=1.0, key=(0, 0, 3, 0))
    assert [o != t for o, t in zip(out, texts)] == kept and 10 < sum(kept) < 54
    half = override_captions(texts, guides, p=0.5, key=(0, 0, 3, 0))
    assert 0 < sum(o != t for o, t in zip(half, texts)) < sum(kept)
    assert half == override_captions(texts, guides, p=0.5, key=(0, 0, 3, 0))
    assert override_captions(texts, guides, p=0.0, key=(0,)) == texts
    assert override_captions(texts, None, p=1.0, key=(0,)) == texts


def test_override_place_swaps_a_lone_objects_place_and_leaves_relations_alone():
    ds = ShapesDataset(32, seed=0)
    for i in range(400):
        ex = ds.example(i)
        out = override_place(ex.caption, torch.Generator().manual_seed(i))
        if len(ex.scene.objects) == 2:
            assert out == ex.caption
            continue
        said = PLACE_PHRASES[ex.scene.objects[0].position]
        others = [p for p in PLACE_PHRASES.values() if p != said and p in out]
        assert said not in out and len(others) == 1 and out == ex.caption.replace(said, others[0])
    text = "a red circle on the left"
    assert len({override_place(text, torch.Generator().manual_seed(s)) for s in range(40)}) == 4
    assert override_place(text, torch.Generator().manual_seed(7)) == override_place(text, torch.Generator().manual_seed(7))


def test_override_captions_swaps_places_only_where_the_sketch_stays_and_leaves_the_palette_draw_alone():
    texts = [f"a red circle on the left number {i}" for i in range(64)]
    batch = {"palette": torch.rand(64, 5, 3), "palette_weights": torch.ones(64, 5), "sketch": torch.rand(64, 3, 4, 4)}
    guides = batch_guides(batch, drop=0.5, key=(0, 0, 3, 0))
    kept = guides.sketch_mask.tolist()
    out = override_captions(texts, guides, p=0.0, sketch_p=1.0, key=(0, 0, 3, 0))
    assert [o != t for o, t in zip(out, texts)] == kept and 10 < sum(kept) < 54
    assert all("red" in o for o in out) and all(("on the left" in o) != k for o, k in zip(out, kept))
    colours_only = override_captions(texts, guides, p=1.0, key=(0, 0, 3, 0))
    both = override_captions(texts, guides, p=1.0, sketch_p=1.0, key=(0, 0, 3, 0))
    assert [b.split()[1] for b in both] == [c.split()[1] for c in colours_only]  # the palette draw is unchanged
    assert both == override_captions(texts, guides, p=1.0, sketch_p=1.0, key=(0, 0, 3, 0))


def test_sketch_override_conditions_on_the_swapped_place_and_targets_the_shown_one(tmp_path, monkeypatch):
    seen = []
    g_main = gan_loss.GANLoss.g_main
    monkeypatch.setattr(gan_loss.GANLoss, "g_main",
                        lambda self, **kw: seen.append((kw["batch"], kw["content"])) or g_main(self, **kw))
    train(guided(tmp_path, kimg=0.032, snap=0.032, input_drop=0.0, palette_override=0.0, sketch_override=1.0))
    places = {w for p in PLACE_PHRASES.values() for w in p.split()}
    swapped = 0
    for batch, content in seen:
        assert content is not None
        for said, shown in zip(batch.words, content.words):
            differ = [(a, b) for a, b in zip(said, shown) if a != b]
            assert len(said) == len(shown) and all(a in places and b in places for a, b in differ)
            swapped += bool(differ)
    assert swapped > 0


def test_sketch_override_needs_a_sketch(tmp_path):
    with pytest.raises(ValueError, match="--sketch-override 0.5 needs a model that takes a sketch"):
        train(resolve_config("tiny", out=str(tmp_path), threads=1, sketch_override=0.5))


def test_palette_override_conditions_on_the_swapped_caption_and_targets_the_shown_one(tmp_path, monkeypatch):
    seen, targets = [], []
    g_main, d_main, word_targets = gan_loss.GANLoss.g_main, gan_loss.GANLoss.d_main, gan_loss.word_targets

    def spy_g(self, **kw):
        seen.append(("G", kw["batch"], kw["content"], kw["content_code"]))
        return g_main(self, **kw)

    def spy_d(self, **kw):
        seen.append(("D", kw["batch"], kw["content"], None))
        return d_main(self, **kw)

    monkeypatch.setattr(gan_loss.GANLoss, "g_main", spy_g)
    monkeypatch.setattr(gan_loss.GANLoss, "d_main", spy_d)
    monkeypatch.setattr(gan_loss, "word_targets", lambda tokens, n: targets.append(tokens) or word_targets(tokens, n))
    train(guided(tmp_path, kimg=0.032, snap=0.032, input_drop=0.0, palette_override=1.0))
    assert {phase for phase, *_ in seen} == {"G", "D"}
    for phase, batch, content, code in seen:
        assert content is not None and len(content) == len(batch)
        for said, shown in zip(batch.words, content.words):
            differ = [(a, b) for a, b in zip(said, shown) if a != b]
            assert len(said) == len(shown) and differ and all(a in COLOURS or a in BACKGROUNDS for a, _ in differ)
        if phase == "G":
            assert code is not None and code.batch_size == len(content)
    shown = {tuple(w) for _, _, content, _ in seen for w in content.words}
    said = {tuple(w) for _, batch, _, _ in seen for w in batch.words}
    assert targets and all({tuple(w) for w in t.words} <= shown - said for t in targets)  # targets: the shown captions


def test_palette_override_needs_a_palette(tmp_path):
    with pytest.raises(ValueError, match="--palette-override 0.5 needs a model that takes a palette"):
        train(resolve_config("tiny", out=str(tmp_path), threads=1, palette_override=0.5))


def test_sample_grid_takes_a_row_per_guide(guided_run, tmp_path, capsys):
    model, grid = guided_run.out / "model", tmp_path / "guides.png"
    rc = sample.main(["--model", str(model), "--prompt", "a red circle", "--prompt", "a blue square", "--seeds", "0-2",
                      "--palette", "none", "--palette", "#00ff00", "--palette", "#0000ff:1.5", "--grid", "--out", str(grid)])
    assert rc == 0
    tiles = torch.from_numpy(np.array(PIL.Image.open(grid))).permute(2, 0, 1)
    R = guided_run.ema.cfg.resolution
    assert tiles.shape == (3, 6 * R, 3 * R)  # 2 prompts x 3 palettes rows, 3 seeds columns
    pipe = Pipeline.from_pretrained(model)
    for row, (prompt, palette) in enumerate([(p, c) for p in ("a red circle", "a blue square")
                                             for c in (None, "#00ff00", "#0000ff:1.5")]):
        want = torch.from_numpy(np.array(pipe([prompt], [1], palette=palette)[0])).permute(2, 0, 1)
        assert torch.equal(tiles[:, row * R:(row + 1) * R, R:2 * R], want)
    with pytest.raises(SystemExit):
        sample.main(["--model", str(model), "--prompt", "a circle", "--palette", "#ff0000", "--palette", "#00ff00",
                     "--out", str(tmp_path / "imgs")])
    assert "--palette given 2 times" in capsys.readouterr().err


def test_the_warmup_draws_its_pairs_without_guides(tmp_path, monkeypatch):
    from data.guides import GuidedDataset

    calls, getitem = [], GuidedDataset.__getitem__
    monkeypatch.setattr(GuidedDataset, "__getitem__", lambda self, i: calls.append(i) or getitem(self, i))
    train(guided(tmp_path, kimg=0.032, snap=0.032))  # warm-up 0.032 + 0.016 kimg of pairs, then 0.032 kimg of GAN
    assert len(calls) == 32


def test_warmup_guides_warm_the_layout_on_the_same_pairs_with_their_guides(tmp_path, monkeypatch):
    """--warmup-guides on: the layout phase takes the pairs the plain warm-up takes (the stream going
    on where the encoder's phase left it), now carrying their guides, overridden as in training; so
    the map's positions of the guide slots train. Off, they are never read."""
    from gan import warmup

    seen, layout_alone = {}, warmup.warm_up_layout
    for guides in (False, True):
        def spy(encoder, layout, sketch, batches, tokens_of, cfg, **kw):
            def recorded(batch, step):
                seen[guides] = (batch["index"].tolist(), batch["text"], tokens_of(batch, step))
                return seen[guides][2]

            text_rows, before = encoder.cfg.max_length, layout.pos.detach().clone()
            stats = layout_alone(encoder, layout, sketch, batches, recorded, cfg, **kw)
            seen[guides] += (not torch.equal(before[text_rows:], layout.pos.detach()[text_rows:]),)
            return stats

        monkeypatch.setattr(warmup, "warm_up_layout", spy)
        train(guided(tmp_path / str(guides), kimg=0.032, snap=0.032, input_drop=0.0, palette_override=1.0,
                     warmup={"guides": guides}))
    (plain_index, _, plain_tokens, plain_trained), (index, texts, tokens, trained) = seen[False], seen[True]
    assert index == plain_index and len(index) == 16
    assert plain_tokens.guides is None and not plain_trained
    assert tokens.guides is not None and tokens.guides.sketch is not None and trained
    assert all(any(w not in t.split() for w in words) for words, t in zip(tokens.words, texts))  # colours swapped


def test_warmup_guides_need_guides_and_a_layout(tmp_path):
    with pytest.raises(ValueError, match="--warmup-guides on needs a model that takes a palette or a sketch"):
        train(resolve_config("tiny", out=str(tmp_path), threads=1, warmup={"guides": True}))
