"""The plain-module Inception against the TorchScript it was loaded from (real weights)."""
import numpy as np
import pytest
import torch
from cleanfid.resize import make_resizer

from eval.features import InceptionFeatures
from eval.inception import InceptionV3, find_torchscript, load_torchscript, state_dict_from_torchscript


@pytest.fixture(scope="module")
def extractor():
    return InceptionFeatures("cpu")


@pytest.fixture(scope="module")
def torchscript(extractor):
    return load_torchscript(extractor.weights_file)


def test_features_equal_torchscript_with_clean_fid_preprocessing(extractor, torchscript):
    # Two 64x64 images through clean-fid's own pipeline (its resize, (x-128)/128, the TorchScript)
    # and through InceptionFeatures (our resize, folded/fused plain module, channels-last).
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (2, 3, 64, 64), dtype=np.uint8)
    images[1] = np.clip(images[1].astype(int) // 4 + 100, 0, 255)  # a low-contrast second image
    resize = make_resizer("PIL", False, "bicubic", (299, 299))
    x = torch.from_numpy(np.stack([resize(im.transpose(1, 2, 0)).transpose(2, 0, 1) for im in images]))
    with torch.no_grad():
        expected = torchscript((x - 128) / 128)  # [2, 2048]
    ours = extractor(torch.from_numpy(images))
    assert ours.shape == (2, 2048) and ours.dtype == torch.float32
    assert expected.abs().max() > 1  # real features, not zeros
    torch.testing.assert_close(ours, expected, atol=1e-4, rtol=0)


def test_weights_are_reported_and_state_dict_maps_every_layer(extractor, torchscript):
    assert extractor.weights_file == str(find_torchscript())
    assert len(extractor.weights_sha256) == 64
    state = state_dict_from_torchscript(torchscript)
    assert set(state) == set(InceptionV3().state_dict())  # strict: nothing missing, nothing extra


def test_rejects_float_images(extractor):
    with pytest.raises(TypeError, match="uint8"):
        extractor(torch.zeros(1, 3, 32, 32))
    with pytest.raises(FileNotFoundError, match="Inception weights not found"):
        InceptionFeatures(weights="/nonexistent/inception.pt")


def test_conv_relu_fast_path_equals_eager_and_repacks_after_weight_change():
    from eval.inception import ConvReLU
    torch.manual_seed(0)
    conv = ConvReLU(in_channels=5, out_channels=7, kernel=(1, 3), stride=2, padding=(0, 1))
    with torch.no_grad():
        conv.weight.normal_()
        conv.bias.normal_()
        x = torch.randn(2, 5, 9, 11).contiguous(memory_format=torch.channels_last)
        reference = lambda: torch.relu(torch.nn.functional.conv2d(x, conv.weight, conv.bias, 2, (0, 1)))  # noqa: E731
        torch.testing.assert_close(conv(x), reference(), atol=1e-5, rtol=1e-5)
        conv.weight.mul_(-1)  # an in-place edit must invalidate the packed copy
        torch.testing.assert_close(conv(x), reference(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(conv(x.contiguous()), reference(), atol=1e-5, rtol=1e-5)
        linear = torch.nn.functional.conv2d(x, conv.weight, conv.bias, 2, (0, 1))
        torch.testing.assert_close(conv(x, relu=False), linear, atol=1e-5, rtol=1e-5)
        assert (linear < 0).any()  # the no-ReLU path really keeps negatives
    # With gradients on, the eager path runs and gradients flow to the input.
    xg = x.clone().requires_grad_(True)
    conv(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_pooled_conv_equals_conv_of_pooled_input():
    from eval.inception import PooledConv
    torch.manual_seed(1)
    branch = PooledConv(in_channels=6, out_channels=4)
    with torch.no_grad():
        branch.conv.weight.normal_()
        branch.conv.bias.normal_()
        x = torch.randn(2, 6, 7, 5).contiguous(memory_format=torch.channels_last)
        pooled = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        expected = torch.relu(torch.nn.functional.conv2d(pooled, branch.conv.weight, branch.conv.bias))
        torch.testing.assert_close(branch(x), expected, atol=1e-5, rtol=1e-5)


def test_chunked_stem_equals_one_pass(extractor, monkeypatch):
    import eval.inception as inception

    x = (torch.rand(5, 3, 299, 299, generator=torch.Generator().manual_seed(0)) * 2 - 1).contiguous(
        memory_format=torch.channels_last)
    with torch.no_grad():
        monkeypatch.setattr(inception, "STEM_CHUNK", 2)  # chunks of 2, 2, 1
        chunked = extractor.model(x)
        monkeypatch.setattr(inception, "STEM_CHUNK", 8)  # one pass
        whole = extractor.model(x)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-5)
