"""LPIPS (Zhang et al. 2018) from the `lpips` package: AlexNet trunk, v0.1 linear heads. Offline.

The v0.1 heads ship inside the `lpips` package. The AlexNet trunk (torchvision's ImageNet
weights, `alexnet-owt-7be5be79.pth`) is never downloaded; it is looked for in this order:
1. the `backbone` argument (`--lpips-backbone PATH`);
2. torchvision's cache, `<torch.hub.get_dir()>/checkpoints/alexnet-owt-7be5be79.pth`;
3. the environment variable `SPIKEGAN_LPIPS_BACKBONE`;
and a missing trunk is an error that names all three. A `.safetensors` file holds tensors in
torchvision's `alexnet().features` layout (`features.0.weight`, ... or `0.weight`, ...); a `.pth`
file is torchvision's own checkpoint (its `classifier.*` tensors are ignored).
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import lpips as lpips_package
import numpy as np
import torch
from PIL import Image
from torch import nn

from data.files import sha256_file

TORCHVISION_FILE = "alexnet-owt-7be5be79.pth"
ENV_BACKBONE = "SPIKEGAN_LPIPS_BACKBONE"
# Where torchvision's alexnet().features layers sit in the lpips package's five slices.
_SLICES = {1: range(0, 2), 2: range(2, 5), 3: range(5, 8), 4: range(8, 10), 5: range(10, 12)}


def torchvision_cache_file() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILE


def find_backbone(backbone: str | Path | None = None) -> Path:
    """The AlexNet trunk file to use (see the module docstring for the order)."""
    if backbone is not None:
        if not Path(backbone).is_file():
            raise FileNotFoundError(f"LPIPS backbone file not found: {backbone} (given by --lpips-backbone / `backbone`)")
        return Path(backbone)
    cached = torchvision_cache_file()
    if cached.is_file():
        return cached
    env = os.environ.get(ENV_BACKBONE)
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"LPIPS backbone file not found: {env} (from ${ENV_BACKBONE})")
        return Path(env)
    raise FileNotFoundError(
        f"LPIPS needs AlexNet's ImageNet weights and nothing is downloaded. Not found in torchvision's "
        f"cache ({cached}); supply them with --lpips-backbone PATH or ${ENV_BACKBONE}=PATH: a "
        f".safetensors file in torchvision's alexnet().features layout (e.g. "
        f"shared/weights/alexnet-features.safetensors) or torchvision's {TORCHVISION_FILE}.")


def load_backbone_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of torchvision's `alexnet().features`, keyed `<index>.weight` / `<index>.bias`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    features = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    expected = {f"{i}.{p}" for i in (0, 3, 6, 8, 10) for p in ("weight", "bias")}
    if set(features) != expected:
        raise ValueError(f"{path}: expected torchvision alexnet().features tensors {sorted(expected)}, "
                         f"found {sorted(features)}")
    return features


class LPIPS(nn.Module):
    """LPIPS distance, AlexNet v0.1: images [B,3,H,W] float in [-1,1] (both) -> distances [B].

    `backbone_file`/`backbone_sha256` and `heads_file` name the weights (for reports)."""

    def __init__(
        self,
        backbone: str | Path | None = None,  # AlexNet trunk file; None = torchvision cache, then $SPIKEGAN_LPIPS_BACKBONE.
    ):
        super().__init__()
        path = find_backbone(backbone)
        with warnings.catch_warnings():
            # pnet_rand=True: torchvision builds a random trunk (no download); we load it below.
            warnings.filterwarnings("ignore", category=UserWarning)
            self.metric = lpips_package.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=True, verbose=False)
        self.heads_file = str(Path(lpips_package.__file__).parent / "weights" / "v0.1" / "alex.pth")
        self._check_heads()
        features = load_backbone_state(path)
        trunk = {f"slice{s}.{k}": features[k] for s, idx in _SLICES.items() for k in features
                 if int(k.split(".")[0]) in idx}
        self.metric.net.load_state_dict(trunk, strict=True)
        self.backbone_file = str(path)
        self.backbone_sha256 = sha256_file(path)
        self.eval().requires_grad_(False)

    def _check_heads(self) -> None:
        # lpips loads its heads with strict=False; make sure every head weight really came from the file.
        heads = torch.load(self.heads_file, map_location="cpu", weights_only=True)
        for name, tensor in self.metric.state_dict().items():
            if name.startswith("lin") and not name.startswith("lins.") and not torch.equal(tensor, heads[name]):
                raise RuntimeError(f"LPIPS head {name} did not load from {self.heads_file}")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x, y: [B,3,H,W] in [-1,1] -> [B] distances (0 for identical images)."""
        assert x.shape == y.shape and x.ndim == 4 and x.shape[1] == 3, f"LPIPS: got {tuple(x.shape)} and {tuple(y.shape)}"
        return self.metric(x, y).reshape(x.shape[0])  # [B,1,1,1] -> [B]


def lpips_diversity(
    groups: torch.Tensor | Sequence[torch.Tensor],
    model: LPIPS,
    *,
    batch: int = 64,  # Image pairs per LPIPS call.
) -> float:
    """Mean pairwise LPIPS between images of the same prompt (different seeds): low = mode collapse.

    `groups`: [P, S, 3, H, W] float in [-1,1] (P prompts x S seeds), or a list of [S_p,3,H,W].
    Every unordered pair within a group is scored once; the result is the mean over prompts of
    each prompt's mean pairwise distance (groups with fewer than 2 images are skipped)."""
    per_prompt = []
    device = next(model.parameters()).device
    for images in groups:
        assert images.ndim == 4 and images.shape[1] == 3, f"lpips_diversity: group must be [S,3,H,W], got {tuple(images.shape)}"
        if len(images) < 2:
            continue
        i, j = torch.triu_indices(len(images), len(images), offset=1)  # all pairs i < j
        dists = []
        with torch.no_grad():
            for k in range(0, len(i), batch):
                a, b = images[i[k:k + batch]].to(device), images[j[k:k + batch]].to(device)
                dists.append(model(a, b).cpu())
        per_prompt.append(torch.cat(dists).double().mean().item())
    if not per_prompt:
        raise ValueError("lpips_diversity: needs at least one prompt with >= 2 images")
    return float(np.mean(per_prompt))


def load_image_tensor(path: str | Path) -> torch.Tensor:
    """An image file as float [1,3,H,W] in [-1,1] (the lpips package's `im2tensor(load_image(path))`)."""
    with Image.open(path) as image:
        array = np.asarray(image.convert("RGB"), dtype=np.float64)  # [H,W,3] 0..255
    return torch.from_numpy(array / (255.0 / 2.0) - 1.0).permute(2, 0, 1)[None].float()


def distance_between_files(a: str | Path, b: str | Path, backbone: str | Path | None = None) -> float:
    """LPIPS between two image files of equal size, as the lpips package's `lpips_2imgs.py` prints it."""
    x, y = load_image_tensor(a), load_image_tensor(b)
    if x.shape != y.shape:
        raise ValueError(f"LPIPS needs images of equal size: {a} is {x.shape[3]}x{x.shape[2]}, "
                         f"{b} is {y.shape[3]}x{y.shape[2]}")
    with torch.no_grad():
        return float(LPIPS(backbone)(x, y)[0])
