"""Layer-level checks: modulated convolution forms vs a naive per-sample loop, equalised lr, FIR."""
import math

import pytest
import torch
import torch.nn.functional as F

from gan.layers import (
    CrossAttention,
    EqualConv2d,
    EqualLinear,
    blur,
    downsample2d,
    modulated_conv2d,
    upsample2d,
)


def naive_modconv(x, weight, styles, *, bias=None, gain=1.0, demodulate=True, up=False):
    """One sample at a time with its own modulated (and demodulated) weight."""
    outs = []
    for b in range(x.shape[0]):
        w = weight * styles[b].reshape(1, -1, 1, 1)  # [O, I, k, k]
        if demodulate:
            w = w / w.square().sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt()
        w = w * gain
        xb = x[b : b + 1]
        if up:
            y = F.conv_transpose2d(xb, w.transpose(0, 1), stride=2)
            y = blur(y, padding=1, gain=4.0)
        else:
            y = F.conv2d(xb, w, padding=w.shape[-1] // 2)
        if bias is not None:
            y = y + bias.reshape(1, -1, 1, 1)
        outs.append(y)
    return torch.cat(outs)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("up", [False, True])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_modconv_forms_match_naive_loop(fused, up, demodulate, channels_last):
    g = torch.Generator().manual_seed(0)
    B, I, O, H = 3, 6, 5, 8
    x = torch.randn(B, I, H, H, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(O, I, 3, 3, generator=g)
    styles = torch.randn(B, I, generator=g) + 1.0
    bias = torch.randn(O, generator=g)
    ref = naive_modconv(x, weight, styles, bias=bias, gain=1.4, demodulate=demodulate, up=up)
    out = modulated_conv2d(x, weight, styles, bias=bias, gain=1.4, demodulate=demodulate, up=up, fused=fused)
    assert out.shape == (B, O, 2 * H if up else H, 2 * H if up else H)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fused", [False, True])
def test_modconv_nearest_upsampling_is_nearest_then_conv(fused):
    g = torch.Generator().manual_seed(3)
    B, I, O, H = 2, 4, 5, 6
    x, weight = torch.randn(B, I, H, H, generator=g), torch.randn(O, I, 3, 3, generator=g)
    styles, bias = torch.randn(B, I, generator=g) + 1.0, torch.randn(O, generator=g)
    out = modulated_conv2d(x, weight, styles, bias=bias, gain=1.4, up=True, upsample="nearest", fused=fused)
    # Naive: nearest-neighbour upsampling, then a padded 3x3 conv with each sample's demodulated
    # weight, flipped (the transposed conv's weight read as an ordinary conv's).
    near = F.interpolate(x, scale_factor=2, mode="nearest")
    for b in range(B):
        w = weight * styles[b].reshape(1, -1, 1, 1)
        w = w / w.square().sum(dim=(1, 2, 3), keepdim=True).add(1e-8).sqrt() * 1.4
        ref = F.conv2d(near[b:b + 1], w.flip(2, 3), bias, padding=1)
        torch.testing.assert_close(out[b:b + 1], ref, atol=1e-5, rtol=1e-5)
    # One input pixel reaches a 4x4 patch of the output; the bilinear filter spreads it to 6x6.
    impulse = torch.zeros(1, I, H, H)
    impulse[0, :, 2, 2] = 1
    for upsample, side in (("nearest", 4), ("bilinear", 6)):
        y = modulated_conv2d(impulse, weight, styles[:1], gain=1.4, up=True, upsample=upsample, fused=fused)
        rows, cols = y.abs().sum(dim=1)[0].nonzero().unbind(1)
        assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (side, side)


def test_modconv_1x1_without_demodulation_matches_naive():
    g = torch.Generator().manual_seed(1)
    x, w, s = torch.randn(2, 4, 5, 5, generator=g), torch.randn(3, 4, 1, 1, generator=g), torch.randn(2, 4, generator=g)
    for fused in (False, True):
        out = modulated_conv2d(x, w, s, demodulate=False, fused=fused)
        torch.testing.assert_close(out, naive_modconv(x, w, s, demodulate=False), atol=1e-5, rtol=1e-5)


def test_demodulated_output_has_unit_scale_per_channel():
    # With demodulation, each output channel's effective weight has unit norm: for iid unit inputs the
    # output variance is ~1 whatever the style magnitude.
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 64, 16, 16, generator=g)
    out = modulated_conv2d(x, torch.randn(32, 64, 3, 3, generator=g), 10 * torch.rand(4, 64, generator=g) + 0.1)
    assert 0.8 < out.var().item() < 1.2


def test_equal_linear_runtime_scale_and_lr_multiplier():
    torch.manual_seed(0)
    layer = EqualLinear(400, 300, lr_mult=0.01, bias_init=0.5)
    # Stored weights are unit-variance / lr_mult; the forward scales them by lr_mult / sqrt(fan_in).
    assert abs(layer.weight.std().item() * 0.01 - 1.0) < 0.02
    x = torch.randn(8, 400)
    expected = x @ (layer.weight * 0.01 / math.sqrt(400)).t() + layer.bias * 0.01
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.bias * 0.01, torch.full([300], 0.5))
    # Unit-variance inputs give unit-variance outputs at init.
    assert 0.9 < layer(torch.randn(256, 400)).sub(0.5).std().item() < 1.1
    # The gradient on the stored weight is scaled by the runtime gain (what equalises the lr).
    layer.zero_grad()
    layer(x).sum().backward()
    ref_grad = (torch.ones(8, 300).t() @ x) * (0.01 / math.sqrt(400))
    torch.testing.assert_close(layer.weight.grad, ref_grad)


def test_equal_linear_activation_gain():
    torch.manual_seed(0)
    layer = EqualLinear(16, 8, activation=True)
    x = torch.randn(4, 16)
    expected = F.leaky_relu(x @ (layer.weight / 4.0).t(), 0.2) * math.sqrt(2)
    torch.testing.assert_close(layer(x), expected)


def test_equal_conv_matches_reference_and_downsamples():
    torch.manual_seed(0)
    conv = EqualConv2d(4, 6, 3, down=True, gain=0.5)
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 4, 8, 8)
    w = conv.weight / math.sqrt(4 * 9)
    ref = F.leaky_relu(F.conv2d(blur(x, padding=2), w, conv.bias, stride=2), 0.2) * math.sqrt(2) * 0.5
    torch.testing.assert_close(conv(x), ref)
    skip = EqualConv2d(4, 6, 1, down=True, bias=False, activation=False)
    assert skip(x).shape == (2, 6, 4, 4)


def test_equal_conv_without_blur_strides_over_the_raw_input():
    torch.manual_seed(0)
    conv = EqualConv2d(4, 6, 3, down=True, blur=False, activation=False)
    x = torch.randn(2, 4, 8, 8)
    w = conv.weight / math.sqrt(4 * 9)
    torch.testing.assert_close(conv(x), F.conv2d(x, w, conv.bias, stride=2, padding=1))
    # The 1x1 skip reads plain 2x2 means: each output pixel is one 2x2 block's average.
    skip = EqualConv2d(4, 6, 1, down=True, blur=False, bias=False, activation=False)
    naive = torch.stack([torch.stack([x[:, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(2, 3)) for j in range(4)], -1)
                         for i in range(4)], -2)
    torch.testing.assert_close(skip(x), F.conv2d(naive, skip.weight / 2))
    # A one-pixel detail survives unblurred: it reaches exactly one output of the strided conv.
    impulse = torch.zeros(1, 4, 8, 8)
    impulse[0, :, 4, 4] = 1
    assert (conv(impulse) - conv(torch.zeros_like(impulse))).abs().sum(dim=1).gt(0).sum() == 1


def test_nearest_upsample_repeats_each_pixel():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(upsample2d(x, "nearest"), F.interpolate(x, scale_factor=2, mode="nearest"))


def test_fir_upsample_is_bilinear_inside_and_downsample_preserves_constants():
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    up = upsample2d(x)
    ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])
    ones = torch.ones(1, 3, 8, 8)
    torch.testing.assert_close(downsample2d(ones)[..., 1:-1, 1:-1], torch.ones(1, 3, 2, 2))


def test_cross_attention_ignores_masked_tokens_and_handles_empty_rows():
    torch.manual_seed(0)
    attn = CrossAttention(8, 6, heads=2)
    x = torch.randn(3, 8, 4, 4)
    tokens = torch.randn(3, 5, 6)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    attn.record = True
    out = attn(x, tokens, mask)
    weights = attn.last_attention
    assert weights.shape == (3, 2, 16, 5)
    assert torch.isfinite(out).all()
    assert (weights[0, :, :, 2:] == 0).all() and torch.allclose(weights[0].sum(-1), torch.ones(2, 16))
    torch.testing.assert_close(out[2], x[2] + attn.out.bias.reshape(8, 1, 1) * attn.gain)  # no tokens: bias only
    poisoned = tokens.clone()
    poisoned[0, 2:] = 1e4 * torch.randn(3, 6)
    poisoned[2] = float("nan")
    torch.testing.assert_close(attn(x, poisoned, mask), out, atol=0, rtol=0)
