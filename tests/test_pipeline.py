"""gan.pipeline.Pipeline on a tiny untrained model: determinism, layout, truncation, modes, damaged dirs."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from encoders import PromptError, make_tokenizer
from gan.presets import preset
from gan.grid import image_grid, to_pil
from gan.model import TextToImage, save_model
from gan.pipeline import ModelDirError, Pipeline, seed_latents

CAPTIONS = ["a red circle", "a blue square left of a green triangle", "a big yellow star above a small red square"]
PROMPTS = ["a (red:1.4) circle", "a blue square left of a green triangle"]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model_dir(path: Path, seed: int = 0) -> Path:
    """A tiny untrained model directory; noise strengths set non-zero so noise modes matter."""
    cfg = preset("tiny")
    tok = make_tokenizer(cfg.encoder, CAPTIONS)
    torch.manual_seed(seed)
    model = TextToImage(cfg.replace(vocab_size=len(tok)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.2)
    return save_model(path, model, tok)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def pipe(model_dir) -> Pipeline:
    return Pipeline.from_pretrained(model_dir)


def test_seed_latents_are_per_seed():
    z = seed_latents([3, 1, 3], 8)
    assert z.shape == (3, 8)
    assert torch.equal(z[0], z[2]) and not torch.equal(z[0], z[1])
    assert torch.equal(z[1], torch.randn(1, 8, generator=torch.Generator().manual_seed(1))[0])


def test_same_prompt_and_seed_same_image(pipe, model_dir):
    a = pipe(PROMPTS, [0, 1, 2], output_type="pt", batch=4)
    assert a.shape == (6, 3, 16, 16)
    b = pipe(PROMPTS, [0, 1, 2], output_type="pt", batch=4)
    assert torch.equal(a, b)
    # A freshly loaded pipeline gives the same images.
    c = Pipeline.from_pretrained(model_dir)(PROMPTS, [0, 1, 2], output_type="pt", batch=4)
    assert torch.equal(a, c)
    # Different seeds and different prompts give different images.
    assert (a[0] - a[1]).abs().max() > 1e-3 and (a[0] - a[3]).abs().max() > 1e-3


def test_image_independent_of_batch_composition(pipe):
    a = pipe(PROMPTS, [0, 1, 2], output_type="pt", batch=4)  # prompt-major: index p * 3 + s
    alone = pipe([PROMPTS[1]], [2], output_type="pt", batch=1)
    assert torch.allclose(alone[0], a[5], atol=1e-5)
    other = pipe([PROMPTS[1], "a big yellow star"], [7, 1], output_type="pt", batch=3)
    assert torch.allclose(other[1], a[4], atol=1e-5)


def test_repeated_prompts_share_one_code(pipe):
    code = pipe.encode(["a red circle", "a blue square", "a red circle"])
    assert code.batch_size == 3
    assert torch.equal(code.pooled[0], code.pooled[2]) and torch.equal(code.tokens[0], code.tokens[2])
    alone = pipe.encode(["a blue square"])
    assert torch.allclose(code.pooled[1], alone.pooled[0], atol=1e-6)


def test_pil_output_matches_tensor(pipe):
    images = pipe(PROMPTS[0], [5, 6])
    assert len(images) == 2 and all(isinstance(im, PIL.Image.Image) and im.size == (16, 16) for im in images)
    t = pipe(PROMPTS[0], [5, 6], output_type="pt")
    assert all(np.array_equal(np.asarray(im), np.asarray(ref)) for im, ref in zip(images, to_pil(t)))


def test_emphasis_changes_the_image_and_bad_syntax_errors(pipe):
    plain = pipe("a red circle", 0, output_type="pt")
    emph = pipe("a (red:1.4) circle", 0, output_type="pt")
    assert (plain - emph).abs().max() > 1e-4
    with pytest.raises(PromptError):
        pipe("a (red circle", 0)


def test_grid_tiles_are_the_single_images(pipe):
    seeds = [0, 3, 9]
    images = pipe(PROMPTS, seeds, batch=5)
    grid = np.asarray(image_grid(images, rows=len(PROMPTS), cols=len(seeds)))
    assert grid.shape == (2 * 16, 3 * 16, 3)
    for r, prompt in enumerate(PROMPTS):
        for c, seed in enumerate(seeds):
            single = np.asarray(pipe(prompt, seed)[0]).astype(int)
            tile = grid[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16].astype(int)
            assert np.abs(tile - single).max() <= 1, (r, c)  # float rounding across batch sizes


def test_truncation(pipe):
    # psi = 0 with prompt truncation: every seed lands on the prompt's mean w.
    lat = pipe.prepare([PROMPTS[0]], [0, 1, 2], psi=0.0, truncation="prompt")
    mean, _ = pipe.prompt_w_stats(pipe.encode([PROMPTS[0]]))
    assert torch.allclose(lat.ws, mean.expand(3, -1, -1), atol=1e-5)
    # global truncation at psi = 0 lands on w_avg, whatever the prompt.
    lat = pipe.prepare(PROMPTS, [0], psi=0.0, truncation="global")
    assert torch.allclose(lat.ws, pipe.generator.w_avg.expand_as(lat.ws), atol=1e-6)
    # psi = 0.5 lies half-way.
    full = pipe.prepare([PROMPTS[0]], [4], psi=1.0).ws
    half = pipe.prepare([PROMPTS[0]], [4], psi=0.5).ws
    assert torch.allclose(half, (full + mean) / 2, atol=1e-5)
    # The same as the generator's own truncation inside its mapping network.
    for mode in ("prompt", "global"):
        lat = pipe.prepare(PROMPTS, [0, 5], psi=0.7, truncation=mode)
        ref = pipe.generator.mapping(pipe.latents([0, 5]).repeat(2, 1), lat.code.pooled, psi=0.7, truncation=mode)
        assert torch.allclose(lat.ws, ref, atol=1e-5), mode
    with pytest.raises(ValueError, match="truncation"):
        pipe(PROMPTS[0], 0, truncation="local")
    with pytest.raises(ValueError, match="psi"):
        pipe(PROMPTS[0], 0, psi=-1.0)


def test_noise_modes(pipe):
    const = pipe(PROMPTS[0], [0, 1], output_type="pt")
    rand1 = pipe(PROMPTS[0], [0, 1], noise_mode="random", output_type="pt")
    rand2 = pipe(PROMPTS[0], [0, 1], noise_mode="random", output_type="pt")
    none = pipe(PROMPTS[0], [0, 1], noise_mode="none", output_type="pt")
    assert torch.equal(rand1, rand2)  # random noise comes from a private, seeded RNG
    assert (const - rand1).abs().max() > 1e-4 and (const - none).abs().max() > 1e-4
    state = torch.random.get_rng_state()
    pipe(PROMPTS[0], [0], noise_mode="random")
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is left alone
    with pytest.raises(ValueError, match="noise_mode"):
        pipe(PROMPTS[0], 0, noise_mode="loud")


def test_style_mix_grid(pipe):
    rows, cols = [0, 1], [2, 3, 4]
    grid = pipe.style_mix(PROMPTS[0], rows, cols)
    assert grid.size == (16 * 4, 16 * 3)
    a = np.asarray(grid).astype(int)
    tile = lambda r, c: a[r * 16:(r + 1) * 16, c * 16:(c + 1) * 16]  # noqa: E731
    assert (tile(0, 0) == 255).all()  # blank corner
    col_imgs = [np.asarray(im).astype(int) for im in pipe(PROMPTS[0], cols)]
    row_imgs = [np.asarray(im).astype(int) for im in pipe(PROMPTS[0], rows)]
    for c in range(3):
        assert np.abs(tile(0, c + 1) - col_imgs[c]).max() <= 1
    for r in range(2):
        assert np.abs(tile(r + 1, 0) - row_imgs[r]).max() <= 1
    # Cell (r, c): coarse ws from row seed r, fine ws from column seed c.
    k = pipe.default_coarse_layers()
    assert 0 < k < pipe.num_ws
    lat = pipe.prepare([PROMPTS[0]], [1, 4])
    ws = torch.cat([lat.ws[:1, :k], lat.ws[1:, k:]], dim=1)
    mixed = np.asarray(to_pil(pipe.synthesize(ws, lat.code.index([0])))[0]).astype(int)
    assert np.abs(tile(2, 3) - mixed).max() <= 1
    assert np.abs(mixed - row_imgs[1]).max() > 2 and np.abs(mixed - col_imgs[2]).max() > 2
    with pytest.raises(ValueError, match="coarse layers"):
        pipe.style_mix(PROMPTS[0], rows, cols, coarse_layers=pipe.num_ws)


def test_interpolation_frames(pipe):
    frames = pipe.interpolate(PROMPTS, [0], frames=4)   # two keyframes, loop: 2 transitions x 4
    assert len(frames) == 8
    keys = pipe(PROMPTS, [0])
    assert np.abs(np.asarray(frames[0]).astype(int) - np.asarray(keys[0])).max() <= 1
    assert np.abs(np.asarray(frames[4]).astype(int) - np.asarray(keys[1])).max() <= 1
    assert np.abs(np.asarray(frames[2]).astype(int) - np.asarray(frames[0])).max() > 2
    open_walk = pipe.interpolate([PROMPTS[0]], [0, 1, 2], frames=3, loop=False)
    assert len(open_walk) == 2 * 3 + 1
    with pytest.raises(ValueError, match="two keyframes"):
        pipe.interpolate(PROMPTS[0], [0])


def test_attention_maps(pipe, tmp_path):
    image, words, maps = pipe.attention_maps("a (red:1.4) circle", 0)
    assert words == ["a", "red", "circle"]
    assert image.shape == (1, 3, 16, 16) and maps.shape == (3, 16, 16)
    assert torch.allclose(maps.sum(0), torch.ones(16, 16), atol=1e-4)  # softmax over tokens
    assert all(layer.last_attention is None for layer in pipe.generator.attention_layers())
    panel = pipe.attention_panel("a (red:1.4) circle", 0)
    assert panel.width > 3 * panel.height / 2  # a row of 1 + 3 panels
    wrapped = pipe.attention_panel("a (red:1.4) circle", 0, columns=2)
    assert wrapped.size == (panel.width // 2, 2 * panel.height)  # 2 rows of 2 panels
    raster = pipe.write_raster("a (red:1.4) circle", tmp_path / "r.png")
    with PIL.Image.open(raster) as im:
        assert im.size[0] > 100 and im.size[1] > 100


# ---------------------------------------------------------------------------------------------
# Damaged model directories: clear errors naming the file, nothing executed.


class _Marker:
    """Unpickling this writes a marker file: proof that code from the file ran."""

    path = ""

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "pwned"))


def _damaged(tmp_path: Path, model_dir: Path) -> Path:
    import shutil

    d = tmp_path / "damaged"
    shutil.copytree(model_dir, d)
    return d


def test_truncated_safetensors(tmp_path, model_dir):
    d = _damaged(tmp_path, model_dir)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelDirError, match="model.safetensors: not a readable safetensors file"):
        Pipeline.from_pretrained(d)


def test_pickle_renamed_safetensors_is_not_executed(tmp_path, model_dir):
    d = _damaged(tmp_path, model_dir)
    marker = tmp_path / "marker.txt"
    evil = _Marker()
    evil.path = str(marker)
    (d / "model.safetensors").write_bytes(pickle.dumps({"generator.w": evil}))
    # Sanity: unpickling it really would write the marker.
    pickle.loads(pickle.dumps(evil))
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ModelDirError, match=r"model.safetensors: is a Python pickle, not safetensors"):
        Pipeline.from_pretrained(d)
    assert not marker.exists()
    # A torch.save file (a zip of pickles) is refused the same way.
    torch.save({"x": evil}, d / "model.safetensors")
    with pytest.raises(ModelDirError, match=r"model.safetensors: is a torch.save zip archive"):
        Pipeline.from_pretrained(d)
    assert not marker.exists()


def test_missing_tokenizer(tmp_path, model_dir):
    d = _damaged(tmp_path, model_dir)
    (d / "tokenizer.json").unlink()
    with pytest.raises(ModelDirError, match="tokenizer.json"):
        Pipeline.from_pretrained(d)


def test_config_not_matching_weights(tmp_path, model_dir):
    d = _damaged(tmp_path, model_dir)
    cfg = json.loads((d / "config.json").read_text())
    cfg["generator"]["channel_max"] = 16
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelDirError, match=r"model.safetensors does not match .*config.json"):
        Pipeline.from_pretrained(d)


def test_missing_dir_and_bad_config(tmp_path, model_dir):
    with pytest.raises(ModelDirError, match="not a model directory"):
        Pipeline.from_pretrained(tmp_path / "nope")
    d = _damaged(tmp_path, model_dir)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="config.json"):
        Pipeline.from_pretrained(d)
