"""Latent optimisation: schedule, noise regularisation, projection and refinement on a tiny G."""
from __future__ import annotations

import math

import pytest
import torch

from encoders import SpikeCode
from gan.presets import preset
from gan.generator import Generator
from gan.projector import (OptimConfig, lr_at, noise_buffers, noise_maps, noise_regularization, project,
                           refine)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def G() -> Generator:
    torch.manual_seed(0)
    G = Generator(preset("tiny").generator).eval()
    with torch.no_grad():  # untrained noise strengths are 0; give the noise maps some effect
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.1)
    return G


def _code(G: Generator, batch: int = 1, seed: int = 1) -> SpikeCode:
    g = torch.Generator().manual_seed(seed)
    L, C = 3, G.c_dim
    return SpikeCode(torch.randn(batch, C, generator=g), torch.randn(batch, L, C, generator=g),
                     torch.ones(batch, L, dtype=torch.bool))


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).square().flatten(1).mean(1)  # [B]


def test_lr_schedule_ramps():
    cfg = OptimConfig(steps=100, lr=0.1)
    assert lr_at(0, cfg) == 0.0
    assert lr_at(5, cfg) == pytest.approx(0.1)            # end of the 5 % warm-up
    assert lr_at(2, cfg) == pytest.approx(0.1 * 2 / 5)
    assert lr_at(50, cfg) == pytest.approx(0.1)
    # cosine ramp-down over the last 25 %: at t = 0.875 the ramp is 0.5
    assert lr_at(87, cfg) == pytest.approx(0.1 * (0.5 - 0.5 * math.cos(0.13 / 0.25 * math.pi)))
    assert lr_at(99, cfg) < 0.001


def test_noise_regularization_matches_naive_reference():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(16, 16, generator=g), torch.randn(4, 4, generator=g)]
    expected = 0.0
    for v in maps:
        n = v.clone()
        while True:
            H, W = n.shape
            sx = sum(n[i, j] * n[i, (j - 1) % W] for i in range(H) for j in range(W)) / (H * W)
            sy = sum(n[i, j] * n[(i - 1) % H, j] for i in range(H) for j in range(W)) / (H * W)
            expected += sx**2 + sy**2
            if H <= 8:
                break
            n = n.reshape(H // 2, 2, W // 2, 2).mean(dim=(1, 3))
    assert torch.allclose(noise_regularization(maps), torch.tensor(float(expected)), rtol=1e-5, atol=1e-8)
    # Smooth noise is penalised far more than white noise.
    smooth = torch.nn.functional.avg_pool2d(torch.randn(1, 1, 18, 18, generator=g), 3, 1)[0, 0]
    smooth = (smooth - smooth.mean()) / smooth.std()
    assert noise_regularization([smooth]) > 20 * noise_regularization([torch.randn(16, 16, generator=g)])


def test_noise_maps_context_restores(G):
    bufs = noise_buffers(G)
    assert bufs, "the generator should keep constant noise maps"
    name = next(iter(bufs))
    before = bufs[name].clone()
    with noise_maps(G, {name: torch.zeros_like(before)}):
        assert torch.count_nonzero(noise_buffers(G)[name]) == 0
    assert torch.equal(noise_buffers(G)[name], before)
    with pytest.raises(KeyError, match="not buffers"):
        with noise_maps(G, {"nope.noise_const": before}):
            pass


def test_projection_lowers_distance_to_target(G):
    code = _code(G)
    with torch.no_grad():
        z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(5))
        ws = G.mapping(z, code.pooled.expand(2, -1))
        target = G.synthesis(ws[:1], code, noise_mode="const")         # reachable target
        start = ws[1:]                                                   # another w to start from
        d0 = float(_mse(G.synthesis(start, code, noise_mode="const"), target))
    noise_before = {k: v.clone() for k, v in noise_buffers(G).items()}
    result = project(G, target, code, distance=_mse, w_start=start, w_std=1.0, pixel_weight=0.0,
                     cfg=OptimConfig(steps=30, lr=0.1))
    d1 = float(_mse(result.images, target))
    assert d1 < 0.5 * d0, (d0, d1)
    assert result.history[-1]["distance"] < result.history[0]["distance"]
    assert result.ws.shape == start.shape and set(result.noise) == set(noise_before)
    # The caller's generator is untouched; its noise maps are as they were.
    for k, v in noise_buffers(G).items():
        assert torch.equal(v, noise_before[k])
    # The result's images are what G makes from its ws and noise maps.
    with noise_maps(G, result.noise), torch.no_grad():
        assert torch.allclose(G.synthesis(result.ws, code, noise_mode="const"), result.images, atol=1e-5)
    # Optimised noise maps stay normalised.
    for v in result.noise.values():
        assert abs(float(v.mean())) < 1e-4 and abs(float(v.square().mean()) - 1) < 1e-3


def test_projection_is_deterministic(G):
    code = _code(G)
    target = torch.zeros(1, 3, G.resolution, G.resolution)
    w0 = G.prompt_mean_w(code.pooled)[:, None].expand(-1, G.num_ws, -1)
    cfg = OptimConfig(steps=3, lr=0.05, w_plus=True)
    a = project(G, target, code, distance=_mse, w_start=w0, w_std=1.0, cfg=cfg, seed=7)
    b = project(G, target, code, distance=_mse, w_start=w0, w_std=1.0, cfg=cfg, seed=7)
    assert torch.equal(a.ws, b.ws)
    assert not torch.equal(a.ws[:, 0], a.ws[:, 1])  # W+: layers move apart


def test_refine_raises_score_and_stays_near(G):
    code = _code(G, seed=3)
    with torch.no_grad():
        ws = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(2)), code.pooled)

    def redness(images: torch.Tensor) -> torch.Tensor:  # [B]: red minus green and blue
        return (images[:, 0] - 0.5 * images[:, 1] - 0.5 * images[:, 2]).flatten(1).mean(1)

    with torch.no_grad():
        start = G.synthesis(ws, code, noise_mode="const")
    result = refine(G, ws, code, score=redness, distance=_mse, distance_weight=1.0,
                    cfg=OptimConfig(steps=12, lr=0.05, w_noise=0.0))
    before, after = float(redness(start)), float(redness(result.images))
    assert after > before + 0.01, (before, after)
    # A heavy distance term holds the image closer to where it started.
    held = refine(G, ws, code, score=redness, distance=_mse, distance_weight=1e4,
                  cfg=OptimConfig(steps=12, lr=0.05, w_noise=0.0))
    assert float(_mse(held.images, start)) < float(_mse(result.images, start))


def test_optim_config_errors():
    with pytest.raises(ValueError, match="steps"):
        OptimConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        OptimConfig(lr=0.0)


def test_upsampled_distance():
    from gan.projector import upsampled

    seen = []

    def d(x, y):
        seen.append(x.shape)
        return (x - y).abs().flatten(1).mean(1)

    x, y = torch.zeros(2, 3, 16, 16), torch.ones(2, 3, 16, 16)
    assert torch.allclose(upsampled(d, min_size=64)(x, y), torch.ones(2))
    big = torch.zeros(1, 3, 128, 128)
    upsampled(d, min_size=64)(big, big)
    assert seen == [(2, 3, 64, 64), (1, 3, 128, 128)]


# ---------------------------------------------------------------------------------------------
# scripts/project.py end to end with the real LPIPS (AlexNet trunk from shared weights).

LPIPS_BACKBONE = "/work/shared/weights/alexnet-features.safetensors"


def _lpips_backbone() -> str:
    import os
    from pathlib import Path

    path = os.environ.get("SPIKEGAN_LPIPS_BACKBONE", LPIPS_BACKBONE)
    if not Path(path).is_file():
        pytest.skip(f"LPIPS AlexNet trunk not found at {path} (set SPIKEGAN_LPIPS_BACKBONE)")
    return path


def test_project_script_lowers_lpips_and_reprompts(tmp_path, capsys):
    import numpy as np
    import PIL.Image

    from gan.pipeline import Pipeline
    from scripts import project
    from tests.test_pipeline import make_model_dir

    model = make_model_dir(tmp_path / "model")
    pipe = Pipeline.from_pretrained(model)
    pipe("a blue square", 3)[0].resize((40, 40), PIL.Image.BICUBIC).save(tmp_path / "target.png")  # any size
    out = tmp_path / "proj"
    result = project.run(project.parse_args([
        "--model", str(model), "--target", str(tmp_path / "target.png"), "--prompt", "a blue square",
        "--steps", "15", "--lpips-backbone", _lpips_backbone(), "--out", str(out),
        "--edit-prompt", "a red circle", "--log-every", "0"]))
    assert result["lpips"] < 0.8 * result["lpips_start"], result
    assert sorted(p.name for p in out.iterdir()) == ["edit-00.png", "proj.png", "projected_w.npz", "target.png"]
    saved = np.load(out / "projected_w.npz")
    assert saved["w"].shape == (1, pipe.num_ws, pipe.generator.w_dim) and str(saved["prompt"]) == "a blue square"
    # The saved w and noise maps reproduce proj.png.
    from gan.grid import to_pil
    from gan.projector import noise_maps

    noise = {k[len("noise/"):]: torch.from_numpy(saved[k]) for k in saved.files if k.startswith("noise/")}
    assert noise
    with noise_maps(pipe.generator, noise):
        again = to_pil(pipe.synthesize(torch.from_numpy(saved["w"]), pipe.encode(["a blue square"])))[0]
    assert np.abs(np.asarray(again).astype(int) - np.asarray(PIL.Image.open(out / "proj.png"))).max() <= 1
    # The edit is the same offset from the new prompt's mean w, under the new prompt.
    old_mean, _ = pipe.prompt_w_stats(pipe.encode(["a blue square"]), num=2048)
    new_code = pipe.encode(["a red circle"])
    new_mean, _ = pipe.prompt_w_stats(new_code, num=2048)
    with noise_maps(pipe.generator, noise):
        edit = to_pil(pipe.synthesize(new_mean + torch.from_numpy(saved["w"]) - old_mean, new_code))[0]
    assert np.abs(np.asarray(edit).astype(int) - np.asarray(PIL.Image.open(out / "edit-00.png"))).max() <= 1


def test_project_script_errors(tmp_path, capsys):
    from scripts import project

    with pytest.raises(SystemExit):
        project.parse_args(["--model", "m", "--target", str(tmp_path / "none.png"), "--prompt", "a"])
    assert "--target" in capsys.readouterr().err
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(SystemExit):
        project.parse_args(["--model", "m", "--target", str(bad), "--prompt", "a", "--steps", "0"])
    assert "--steps" in capsys.readouterr().err
