"""LPIPS (AlexNet, v0.1) against a naive re-implementation with the same weights; offline resolution."""
from pathlib import Path

import lpips as lpips_package
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

from eval.lpips import ENV_BACKBONE, LPIPS, distance_between_files, load_image_tensor, lpips_diversity

BACKBONE = Path(__file__).resolve().parents[2] / "shared" / "weights" / "alexnet-features.safetensors"
pytestmark = pytest.mark.skipif(not BACKBONE.is_file(), reason=f"AlexNet trunk for tests not at {BACKBONE}")


@pytest.fixture(scope="module")
def model():
    return LPIPS(BACKBONE)


@pytest.fixture()
def no_torchvision_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(ENV_BACKBONE, raising=False)


def naive_lpips(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 written out: scale, AlexNet ReLU outputs 1..5, unit-normalise channels, squared
    difference, 1x1 heads from the lpips package's alex.pth, spatial mean, sum over layers."""
    trunk = {k.removeprefix("features."): v for k, v in load_file(str(BACKBONE)).items()}
    heads = torch.load(Path(lpips_package.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu", weights_only=True)
    shift = torch.tensor([-.030, -.088, -.188])[None, :, None, None]
    scale = torch.tensor([.458, .448, .450])[None, :, None, None]

    def taps(z):
        z = (z - shift) / scale
        out = []
        z = F.relu(F.conv2d(z, trunk["0.weight"], trunk["0.bias"], stride=4, padding=2)); out.append(z)
        z = F.max_pool2d(z, 3, 2)
        z = F.relu(F.conv2d(z, trunk["3.weight"], trunk["3.bias"], padding=2)); out.append(z)
        z = F.max_pool2d(z, 3, 2)
        z = F.relu(F.conv2d(z, trunk["6.weight"], trunk["6.bias"], padding=1)); out.append(z)
        z = F.relu(F.conv2d(z, trunk["8.weight"], trunk["8.bias"], padding=1)); out.append(z)
        z = F.relu(F.conv2d(z, trunk["10.weight"], trunk["10.bias"], padding=1)); out.append(z)
        return out

    total = 0
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        total = total + F.conv2d((a - b) ** 2, heads[f"lin{k}.model.1.weight"]).mean((2, 3))
    return total.flatten()


def known_pair() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = F.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=64, mode="bicubic").clamp(0, 1) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    return x, y


def test_identical_images_score_zero_and_known_pair_matches_naive(model):
    x, y = known_pair()
    with torch.no_grad():
        assert torch.equal(model(x, x), torch.zeros(2))
        ours = model(x, y)
        expected = naive_lpips(x, y)
    assert ours.shape == (2,) and (ours > 0.01).all()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert model.backbone_file == str(BACKBONE) and len(model.backbone_sha256) == 64


def test_distance_between_files_reads_pngs_like_lpips_2imgs(model, tmp_path):
    x, y = known_pair()
    paths = []
    for name, img in (("a.png", x[0]), ("b.png", y[0])):
        array = ((img.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        Image.fromarray(array).save(tmp_path / name)
        paths.append(tmp_path / name)
        # im2tensor(load_image(path)) of the lpips package: x / 127.5 - 1
        np.testing.assert_allclose(load_image_tensor(tmp_path / name)[0].permute(1, 2, 0).numpy(),
                                   array / 127.5 - 1, atol=1e-6)
    with torch.no_grad():
        expected = model(load_image_tensor(paths[0]), load_image_tensor(paths[1]))[0].item()
    assert distance_between_files(*paths, backbone=BACKBONE) == pytest.approx(expected, abs=1e-7)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="equal size"):
        distance_between_files(paths[0], tmp_path / "small.png", backbone=BACKBONE)


def test_lpips_diversity_averages_all_pairs_per_prompt(model):
    x, y = known_pair()
    z = -x
    groups = torch.stack([torch.stack([x[0], y[0], z[0]]), torch.stack([x[1], x[1], x[1]])])  # [2,3,3,64,64]
    with torch.no_grad():
        d = lambda a, b: model(a[None], b[None]).item()  # noqa: E731
        first = (d(x[0], y[0]) + d(x[0], z[0]) + d(y[0], z[0])) / 3
    value = lpips_diversity(groups, model, batch=2)
    assert value == pytest.approx((first + 0.0) / 2, rel=1e-5)
    assert lpips_diversity(list(groups), model) == pytest.approx(value, rel=1e-6)
    with pytest.raises(ValueError, match=">= 2 images"):
        lpips_diversity([x[:1]], model)


def test_backbone_resolution_env_and_clear_error(no_torchvision_cache, monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        LPIPS()
    assert "--lpips-backbone" in str(err.value) and ENV_BACKBONE in str(err.value)
    monkeypatch.setenv(ENV_BACKBONE, str(BACKBONE))
    assert LPIPS().backbone_file == str(BACKBONE)
    with pytest.raises(FileNotFoundError, match="not found"):
        LPIPS(tmp_path / "missing.safetensors")
    bad = {k: v for k, v in load_file(str(BACKBONE)).items() if not k.startswith("features.10.")}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="alexnet"):
        LPIPS(tmp_path / "bad.safetensors")
