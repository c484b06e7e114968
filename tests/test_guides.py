"""Guides (encoders/guides.py, data/colour.py): palette parsing, sketch loading, their spike coding
into the SpikeCode's tokens, absent guides, the refusals, and the colour maths they stand on."""
from __future__ import annotations

import numpy as np
import PIL.Image
import pytest
import torch

from data.colour import delta_e, dominant_colours, sketch_grid, srgb_to_lab
from encoders import EncoderConfig, build_encoder, make_tokenizer
from encoders.config import MAX_COLOURS
from encoders.guides import GuideError, Guides, Palette, load_sketch, parse_palette

CAPTIONS = ["a red circle", "a blue square on the left", "a green star"]


def encoder(**guides):
    cfg = EncoderConfig(code_dim=16, embed_dim=8, hidden=16, max_length=8, **guides)
    tok = make_tokenizer(cfg, CAPTIONS)
    torch.manual_seed(0)
    return build_encoder(cfg, len(tok)).eval(), tok


# --- colour maths ---------------------------------------------------------------------------

def test_lab_of_known_colours():
    lab = srgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(lab[0], torch.tensor([100.0, 0.0, 0.0]), atol=0.01)
    assert torch.allclose(lab[1], torch.zeros(3), atol=0.01)
    assert torch.allclose(lab[2], torch.tensor([53.24, 80.09, 67.20]), atol=0.05)  # sRGB red, as published
    assert float(delta_e(lab[0], lab[1])) == pytest.approx(100.0, abs=0.01)


def test_dominant_colours_of_a_two_colour_image():
    img = torch.zeros(3, 20, 20, dtype=torch.uint8)
    img[0, :, :15] = 255  # 75 % red, 25 % black
    colours, shares = dominant_colours(img, 5)
    assert colours.shape == (2, 3) and torch.allclose(shares, torch.tensor([0.75, 0.25]))
    assert torch.allclose(colours[0], torch.tensor([1.0, 0, 0])) and torch.allclose(colours[1], torch.zeros(3))
    again = dominant_colours(img, 5)
    assert torch.equal(again[0], colours)  # deterministic


def test_sketch_grid_of_a_half_image():
    img = torch.zeros(3, 64, 48)
    img[:, :, :24] = 1.0  # left half white
    s = sketch_grid(img, 4)
    assert s.shape == (3, 4, 4)
    assert torch.all(s[:, :, 0] > 0.95) and torch.all(s[:, :, 3] < 0.05)  # far cells keep their colour
    assert torch.all((s[:, :, 1] > s[:, :, 2]))  # the blur makes the edge soft


# --- parsing and loading --------------------------------------------------------------------

def test_parse_palette():
    p = parse_palette("#ff0000, 0000ff:1.5")
    assert p.colours == ((1.0, 0.0, 0.0), (0.0, 0.0, 1.0)) and p.weights == (1.0, 1.5)


@pytest.mark.parametrize("text, named", [
    ("#ff000", "'#ff000'"), ("#gg0000", "'#gg0000'"), ("", "no colours"),
    ("#ff0000:x", "'x'"), ("#ff0000:-1", "'-1'"), ("#ff0000:nan", "'nan'"), ("#ff0000:0", "'0'"),
    (",".join(["#ff0000"] * (MAX_COLOURS + 1)), f"at most {MAX_COLOURS}"),
])
def test_parse_palette_errors_name_the_value(text, named):
    with pytest.raises(GuideError, match=named) as e:
        parse_palette(text)
    assert "\n" not in str(e.value)


def test_palette_weights_must_be_positive():
    with pytest.raises(GuideError, match="nan"):
        Palette.of([(1, 0, 0)], [float("nan")])
    with pytest.raises(GuideError, match="-2"):
        Palette.of([(1, 0, 0)], [-2.0])


def test_load_sketch_from_file_array_and_mask(tmp_path):
    rgb = np.zeros((30, 50, 3), dtype=np.uint8)
    rgb[:, :25] = (255, 0, 0)
    PIL.Image.fromarray(rgb).save(tmp_path / "s.png")
    from_file = load_sketch(tmp_path / "s.png", 4)
    from_array = load_sketch(torch.from_numpy(rgb).permute(2, 0, 1), 4)
    assert from_file.shape == (3, 4, 4) and torch.equal(from_file, from_array)
    mask = load_sketch(np.ones((10, 10), dtype=np.float32), 2)
    assert torch.allclose(mask, torch.ones(3, 2, 2))


def test_load_sketch_errors(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    with pytest.raises(GuideError, match="empty.png.*empty"):
        load_sketch(tmp_path / "empty.png", 4)
    with pytest.raises(GuideError, match="junk.png.*not a readable image"):
        load_sketch(tmp_path / "junk.png", 4)
    with pytest.raises(GuideError, match="no such file"):
        load_sketch(tmp_path / "missing.png", 4)
    with pytest.raises(GuideError, match="NaN"):
        load_sketch(torch.full((3, 4, 4), float("nan")), 4)
    import encoders.guides as guides

    big = PIL.Image.new("RGB", (64, 64))
    big.save(tmp_path / "big.png")
    old = guides.MAX_SKETCH_PIXELS
    guides.MAX_SKETCH_PIXELS = 100
    try:
        with pytest.raises(GuideError, match="64x64 pixels"):
            load_sketch(tmp_path / "big.png", 4)
    finally:
        guides.MAX_SKETCH_PIXELS = old


# --- coding ---------------------------------------------------------------------------------

def guides_for(batch: int, grid: int = 4) -> Guides:
    palette = parse_palette("#ff0000:1.5,#00ff00,#0000ff")
    return Guides.build(batch, palette=palette, sketch=torch.rand(3, 10, 10, generator=torch.Generator().manual_seed(1)),
                        grid=grid)


def test_guide_tokens_join_the_caption_tokens():
    enc, tok = encoder(palette=True, sketch_grid=4)
    batch = tok(CAPTIONS[:2])
    code = enc(batch.with_guides(guides_for(2)))
    M, S = 8, MAX_COLOURS + 16
    assert code.tokens.shape == (2, M + S, 16) and code.mask.shape == (2, M + S)
    # the caption's tokens, padding to max_length, then 3 of 5 palette slots and all 16 cells
    assert code.mask[0].tolist() == [True] * 3 + [False] * 5 + [True] * 3 + [False] * 2 + [True] * 16
    assert torch.all(code.tokens[~code.mask] == 0)
    again = enc(batch.with_guides(guides_for(2)))
    assert torch.equal(again.tokens, code.tokens) and torch.equal(again.pooled, code.pooled)  # eval: deterministic


def test_absent_guides_leave_the_text_code_alone():
    """With no guides (or all dropped) the caption's tokens and pooled code are those of the same
    encoder's text path, and every guide slot is masked."""
    enc, tok = encoder(palette=True, sketch_grid=4)
    plain, _ = encoder()
    batch = tok(CAPTIONS)
    guided = enc(batch)
    text = plain(batch)
    L = batch.ids.shape[1]
    assert torch.equal(guided.tokens[:, :L], text.tokens) and torch.equal(guided.pooled, text.pooled)
    assert not guided.mask[:, L:].any()
    dropped = guides_for(3).dropped(1.0, torch.Generator().manual_seed(0))
    none_left = enc(batch.with_guides(dropped))
    assert torch.equal(none_left.tokens, guided.tokens) and torch.equal(none_left.pooled, guided.pooled)


def test_palette_and_sketch_change_the_code_and_weights_set_the_height():
    enc, tok = encoder(palette=True, sketch_grid=4)
    batch = tok(CAPTIONS[:1])
    red = enc(batch.with_guides(Guides.build(1, palette=parse_palette("#ff0000"))))
    blue = enc(batch.with_guides(Guides.build(1, palette=parse_palette("#0000ff"))))
    heavy = enc(batch.with_guides(Guides.build(1, palette=parse_palette("#ff0000:2"))))
    P = 8  # first palette slot
    assert not torch.allclose(red.tokens[:, P], blue.tokens[:, P])
    assert not torch.allclose(red.tokens[:, P], heavy.tokens[:, P])
    assert not torch.allclose(red.pooled, blue.pooled)


def test_dropout_is_seeded_and_per_kind():
    g = guides_for(400)
    a = g.dropped(0.5, torch.Generator().manual_seed(3))
    b = g.dropped(0.5, torch.Generator().manual_seed(3))
    assert torch.equal(a.palette_weights, b.palette_weights) and torch.equal(a.sketch_mask, b.sketch_mask)
    kept_palette = (a.palette_weights.sum(1) > 0).float()
    assert 0.4 < kept_palette.mean() < 0.6 and 0.4 < a.sketch_mask.float().mean() < 0.6
    assert not torch.equal(kept_palette.bool(), a.sketch_mask)  # independent draws


def test_gradients_reach_the_guide_encoder():
    enc, tok = encoder(palette=True, sketch_grid=2)
    enc.train()
    code = enc(tok(CAPTIONS).with_guides(guides_for(3, grid=2)))
    (code.tokens.square().sum() + code.pooled.sum()).backward()
    for name, p in enc.guides.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_guides_off_builds_the_encoder_as_before():
    """Guides are built after everything else: the text path's initial weights do not change."""
    plain, _ = encoder()
    guided, _ = encoder(palette=True)
    assert plain.guides is None and not any(k.startswith("guides.") for k in plain.state_dict())
    shared = plain.state_dict()
    for k, v in guided.state_dict().items():
        if not k.startswith("guides."):
            assert torch.equal(v, shared[k]), k
    old = {k: v for k, v in EncoderConfig().to_dict().items() if k not in ("palette", "sketch_grid")}
    assert EncoderConfig.from_dict(old) == EncoderConfig()  # a saved config without the keys: guides off


def test_refusals():
    plain, tok = encoder()
    batch = tok(CAPTIONS[:1])
    with pytest.raises(GuideError, match="trained without a palette"):
        plain(batch.with_guides(Guides.build(1, palette=parse_palette("#ff0000"))))
    with pytest.raises(GuideError, match="trained without a sketch"):
        plain(batch.with_guides(Guides.build(1, sketch=torch.rand(1, 3, 4, 4))))
    palette_only, tok = encoder(palette=True)
    with pytest.raises(GuideError, match="trained without a sketch"):
        palette_only(batch.with_guides(Guides.build(1, sketch=torch.rand(1, 3, 4, 4))))
    sketchy, tok = encoder(sketch_grid=4)
    with pytest.raises(GuideError, match="2x2 cells; this model takes 4x4"):
        sketchy(batch.with_guides(Guides.build(1, sketch=torch.rand(1, 3, 2, 2))))
    with pytest.raises(ValueError, match="sketch_grid"):
        EncoderConfig(sketch_grid=-1)
