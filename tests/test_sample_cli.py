"""Seed ranges, grids, GIFs and the spikegan-sample command line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from gan.grid import SeedRangeError, from_pil, image_grid, parse_seeds, save_gif, to_pil
from scripts import sample


# ---------------------------------------------------------------------------------------------
# Seed ranges.


@pytest.mark.parametrize("text, seeds", [
    ("0-7", list(range(8))),
    ("1,3,5-9", [1, 3, 5, 6, 7, 8, 9]),
    ("42", [42]),
    (" 2 , 0-1 ", [2, 0, 1]),
    ("3-3", [3]),
    ("5,5", [5, 5]),
    (str(2**64 - 1), [2**64 - 1]),
])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text, part", [
    ("1,x,3", "'x'"),
    ("0-7,9-a", "'9-a'"),
    ("7-3", "'7-3'"),
    ("1,,2", "stray comma"),
    ("-1", "'-1'"),
    ("1.5", "'1.5'"),
    ("", "empty"),
    (str(2**64), "exceeds"),
    ("0-2000000", "at most"),
])
def test_parse_seeds_errors_name_the_part(text, part):
    with pytest.raises(SeedRangeError) as e:
        parse_seeds(text, option="--col-seeds")
    assert "--col-seeds" in str(e.value) and part in str(e.value)


# ---------------------------------------------------------------------------------------------
# Grids, conversion, GIFs.


def _tiles(n: int, size: tuple[int, int] = (5, 3)) -> list[PIL.Image.Image]:
    rng = np.random.default_rng(0)
    return [PIL.Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def test_grid_layout_rows_by_cols():
    tiles = _tiles(6)
    grid = image_grid(tiles, rows=2, cols=3)
    assert grid.size == (3 * 5, 2 * 3)
    a = np.asarray(grid)
    for i, t in enumerate(tiles):
        r, c = divmod(i, 3)
        assert np.array_equal(a[r * 3:(r + 1) * 3, c * 5:(c + 1) * 5], np.asarray(t)), i


def test_grid_gap_and_errors():
    tiles = _tiles(4)
    grid = image_grid(tiles, rows=2, cols=2, gap=2)
    assert grid.size == (2 * 5 + 2, 2 * 3 + 2)
    assert np.array_equal(np.asarray(grid)[3:5, 0:5], np.full((2, 5, 3), 255, np.uint8))
    assert np.array_equal(np.asarray(grid)[5:8, 7:12], np.asarray(tiles[3]))
    with pytest.raises(ValueError, match="do not fill 3 rows x 2 columns"):
        image_grid(tiles, rows=3, cols=2)
    with pytest.raises(ValueError, match="image 1 is"):
        image_grid([tiles[0], tiles[1].resize((4, 4))], rows=1, cols=2)


def test_to_pil_rounding_and_roundtrip():
    x = torch.tensor([-1.0, -0.5, 0.0, 0.999, 1.0, 3.0]).view(1, 3, 1, 2)
    a = np.asarray(to_pil(x)[0])  # [1, 2, 3]
    assert a.shape == (1, 2, 3)
    # (x + 1) * 127.5, rounded, clamped to uint8 (data.to_uint8, eval's quantisation too).
    expected = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)[0].numpy()
    assert np.array_equal(a, expected)
    assert a[0, 0, 0] == 0 and a[0, 1, 2] == 255
    back = from_pil(PIL.Image.fromarray(a))  # [1, 3, 1, 2], u8 / 127.5 - 1
    assert back.shape == (1, 3, 1, 2)
    assert np.array_equal(((back + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy(), a)


def test_resize_like_pil_matches_pil():
    from gan.grid import resize_like_pil

    rng = np.random.default_rng(0)
    x = rng.random((2, 12, 9)).astype(np.float32) * 255  # [C, H, W], non-square
    ours = resize_like_pil(torch.from_numpy(x)[None], 20)[0].numpy()
    for c in range(2):
        ref = np.asarray(PIL.Image.fromarray(x[c], mode="F").resize((20, 20), resample=PIL.Image.BICUBIC))
        assert np.abs(ours[c] - ref).max() < 1e-3


def test_save_gif_frames(tmp_path):
    frames = _tiles(3, (8, 8))
    path = save_gif(frames, tmp_path / "sub" / "walk.gif", fps=10)
    with PIL.Image.open(path) as g:
        assert g.n_frames == 3 and g.size == (8, 8)
        assert g.info["duration"] == 100


# ---------------------------------------------------------------------------------------------
# Command line parsing.


def test_cli_parses_prompts_seeds_and_modes(tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("a red circle\n\n# comment\n a (blue:1.3) square \n")
    args = sample.parse_args(["--model", "m", "--prompts", str(f), "--seeds", "1,3-4", "--grid", "--out", "g.png",
                              "--truncation", "0.7", "--truncation-mode", "global"])
    assert args.prompt_list == ["a red circle", "a (blue:1.3) square"]
    assert args.seed_list == [1, 3, 4] and args.mode == "grid"
    assert args.truncation == 0.7 and args.truncation_mode == "global"
    args = sample.parse_args(["--model", "m", "--prompt", "a", "--prompt", "b", "--seeds", "0", "--interpolate", "--out", "x.gif"])
    assert args.prompt_list == ["a", "b"] and args.mode == "interpolate"
    args = sample.parse_args(["--model", "m", "--prompt", "a", "--style-mix", "--col-seeds", "5-6", "--out", "o"])
    assert args.seed_list == list(range(8)) and args.col_seed_list == [5, 6]


@pytest.mark.parametrize("argv, flag", [
    (["--seeds", "3-1"], "--seeds"),
    (["--truncation", "2.5"], "--truncation"),
    (["--batch", "0"], "--batch"),
    (["--grid", "--interpolate"], "--interpolate"),
    (["--refine", "5"], "--alignment-scorer"),
    (["--refine", "5", "--alignment-scorer", "s", "--grid"], "--refine"),
    (["--interpolate", "--seeds", "0"], "--interpolate"),
    (["--noise-mode", "loud"], "--noise-mode"),
    (["--out", "grid.png"], "--grid"),
    (["--style-mix", "--col-seeds", "a"], "--col-seeds"),
])
def test_cli_errors_name_the_flag(argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        sample.parse_args(["--model", "m", "--prompt", "a", "--out", "o", *argv])
    assert e.value.code == 2
    assert flag in capsys.readouterr().err


def test_cli_prompts_file_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sample.parse_args(["--model", "m", "--prompts", str(tmp_path / "nope.txt"), "--out", "o"])
    assert "--prompts" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(SystemExit):
        sample.parse_args(["--model", "m", "--prompts", str(empty), "--out", "o"])
    assert "no prompts" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# End to end on a tiny untrained model directory.


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, one_thread):
    from tests.test_pipeline import make_model_dir

    return make_model_dir(tmp_path_factory.mktemp("model"))


def test_cli_folder_of_pngs(model_dir, tmp_path, capsys):
    out = tmp_path / "imgs"
    assert sample.main(["--model", str(model_dir), "--prompt", "a red circle", "--prompt", "a (blue:1.2) square",
                        "--seeds", "3,5", "--out", str(out), "--batch", "3"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["p00-seed0003.png", "p00-seed0005.png", "p01-seed0003.png", "p01-seed0005.png"]
    assert str(out / "p01-seed0005.png") in capsys.readouterr().out
    with PIL.Image.open(out / "p00-seed0003.png") as im:
        assert im.size == (16, 16) and im.mode == "RGB"


def test_cli_grid_tiles_match_folder_images(model_dir, tmp_path):
    prompts, seeds = ["a red circle", "a (blue:1.2) square"], [3, 5, 8]
    argv = ["--model", str(model_dir), "--prompt", prompts[0], "--prompt", prompts[1], "--seeds", "3,5,8"]
    assert sample.main([*argv, "--grid", "--out", str(tmp_path / "g.png")]) == 0
    assert sample.main([*argv, "--out", str(tmp_path / "imgs")]) == 0
    grid = np.asarray(PIL.Image.open(tmp_path / "g.png")).astype(int)
    assert grid.shape == (2 * 16, 3 * 16, 3)
    for r in range(2):
        for c, s in enumerate(seeds):
            single = np.asarray(PIL.Image.open(tmp_path / "imgs" / f"p{r:02d}-seed{s:04d}.png")).astype(int)
            assert np.abs(grid[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] - single).max() <= 1


def test_cli_interpolate_style_mix_raster_attention(model_dir, tmp_path):
    m = ["--model", str(model_dir)]
    assert sample.main([*m, "--prompt", "a red circle", "--prompt", "a blue square", "--seeds", "0",
                        "--interpolate", "--frames", "3", "--out", str(tmp_path / "walk.gif")]) == 0
    with PIL.Image.open(tmp_path / "walk.gif") as g:
        assert g.n_frames == 6 and g.size == (16, 16)
    assert sample.main([*m, "--prompt", "a red circle", "--seeds", "0-1", "--col-seeds", "4-6", "--style-mix",
                        "--out", str(tmp_path / "mix")]) == 0
    with PIL.Image.open(tmp_path / "mix" / "style-mix.png") as im:
        assert im.size == (4 * 16, 3 * 16)
    assert sample.main([*m, "--prompt", "a (red:1.4) circle", "--seeds", "0", "--raster", "--attention",
                        "--out", str(tmp_path / "x")]) == 0
    names = sorted(p.name for p in (tmp_path / "x").iterdir())
    assert names == ["p00-seed0000-attention.png", "p00-seed0000.png", "raster-p00.png"]


def test_cli_reports_damaged_model_and_bad_prompt(model_dir, tmp_path, capsys):
    assert sample.main(["--model", str(tmp_path / "none"), "--prompt", "a", "--out", str(tmp_path / "o")]) == 1
    assert "not a model directory" in capsys.readouterr().err
    assert sample.main(["--model", str(model_dir), "--prompt", "a (red circle", "--seeds", "0",
                        "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "spikegan-sample: error: unbalanced '('" in err and "position 2" in err


def test_refine_wiring_uses_eval_scorer(model_dir, tmp_path, capsys, monkeypatch):
    """The differentiable alignment score agrees with eval's own scoring path, and --refine runs."""
    from eval.alignment import AlignmentScorer, ScorerConfig
    from eval.features import InceptionFeatures
    from data import to_uint8

    lpips = "/work/shared/weights/alexnet-features.safetensors"
    if not Path(lpips).is_file():
        pytest.skip(f"LPIPS AlexNet trunk not found at {lpips}")
    try:
        features = InceptionFeatures()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    torch.manual_seed(0)
    scorer = AlignmentScorer(cfg=ScorerConfig(text="tower", embed_dim=16, hidden_dim=32, tower_dim=16),
                             image_dim=2048, vocab=["a", "red", "circle", "blue", "square"]).eval()
    scorer.save(tmp_path / "scorer")
    score = sample.alignment_score(str(tmp_path / "scorer"), "a red circle")
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    images = to_uint8(images).float() / 127.5 - 1  # on the uint8 grid, as eval sees
    x = images.clone().requires_grad_(True)
    ours = score(x)
    ours.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with torch.no_grad():
        ref = (scorer.embed_images(features(to_uint8(images))) * scorer.embed_texts(["a red circle"])).sum(-1)
    assert torch.allclose(ours.detach(), ref, atol=1e-4), (ours, ref)

    out = tmp_path / "ref"
    built = []
    monkeypatch.setattr(sample, "alignment_score", lambda d, p, device: built.append((d, p)) or score)  # reuse: no reload
    assert sample.main(["--model", str(model_dir), "--prompt", "a red circle", "--seeds", "0", "--refine", "2",
                        "--alignment-scorer", str(tmp_path / "scorer"), "--lpips-backbone", lpips,
                        "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["p00-seed0000-after.png", "p00-seed0000-before.png"]
    assert built == [(str(tmp_path / "scorer"), "a red circle")]
    assert "refine p00-seed0000.png: alignment" in capsys.readouterr().out
