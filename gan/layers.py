"""Building blocks shared by the generator and discriminator (StyleGAN2 in spirit).

Everything here is plain PyTorch: no custom CUDA/C++ ops, so it runs the same on CPU, CUDA
and under autocast. Conventions:

- Equalised learning rate: parameters are stored at unit scale (divided by the lr multiplier)
  and scaled at run time by `lr_mult / sqrt(fan_in)` (Karras et al. 2018).
- Activation gain: leaky ReLU is positively homogeneous, `lrelu(x) * g == lrelu(x * g)` for
  g > 0, so the sqrt(2) gain (and residual sqrt(0.5) gains) are folded into the weight and
  bias scales: no extra pass over the activations.
- Resampling uses the fixed separable FIR [1, 3, 3, 1] (StyleGAN2's default; G can upsample with
  [1, 1] instead), applied as an ordinary depthwise convolution.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2.0)


TRUNCATIONS = ("prompt", "global")  # MappingNetwork targets: the prompt's mean w, or the global w_avg.


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """Scale `x` to unit mean square along `dim` (StyleGAN's pixel norm on latents)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


# ----------------------------------------------------------------------------------------------
# FIR resampling. Zero insertion followed by [1, 3, 3, 1] is bilinear upsampling, followed by
# [1, 1] nearest-neighbour upsampling.
UPSAMPLE_TAPS = {"bilinear": (1.0, 3.0, 3.0, 1.0), "nearest": (1.0, 1.0)}


@functools.lru_cache(maxsize=256)
def _fir_kernel(channels: int, gain: float, device: torch.device, dtype: torch.dtype,
                taps: tuple[float, ...]) -> torch.Tensor:
    f = torch.tensor(taps, dtype=torch.float64)
    k = torch.outer(f, f)
    k = k * (gain / k.sum())
    return k.to(device=device, dtype=dtype).repeat(channels, 1, 1, 1)


def fir_kernel(channels: int, *, gain: float = 1.0, device=None, dtype=None,
               taps: tuple[float, ...] = UPSAMPLE_TAPS["bilinear"]) -> torch.Tensor:
    """Depthwise kernel [channels, 1, n, n]: outer(taps, taps) normalised to sum `gain`.

    A cached constant (never modified, needs no gradient); built once per (shape, device, dtype).
    """
    args = (channels, float(gain), torch.device(device or "cpu"), dtype or torch.float32, tuple(taps))
    if torch.compiler.is_compiling():  # keep graphs free of Python-side caches
        return _fir_kernel.__wrapped__(*args)
    return _fir_kernel(*args)


def blur(x: torch.Tensor, *, padding: int, gain: float = 1.0, stride: int = 1,
         taps: tuple[float, ...] = UPSAMPLE_TAPS["bilinear"]) -> torch.Tensor:
    """Depthwise FIR filter: [B, C, H, W] -> [B, C, (H + 2p - n) // stride + 1, ...]."""
    C = x.shape[1]
    k = fir_kernel(C, gain=gain, device=x.device, dtype=x.dtype, taps=taps)
    return F.conv2d(x, k, stride=stride, padding=padding, groups=C)


def upsample2d(x: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """2x upsampling by zero insertion + the mode's filter (gain 4): [B,C,H,W] -> [B,C,2H,2W].

    "bilinear" ([1,3,3,1], StyleGAN2's) equals bilinear interpolation (half-pixel centres) except
    at the border, where the outside is zero instead of clamped; "nearest" ([1,1]) equals
    nearest-neighbour upsampling.
    """
    taps = UPSAMPLE_TAPS[mode]
    k = fir_kernel(x.shape[1], gain=4.0, device=x.device, dtype=x.dtype, taps=taps)
    return F.conv_transpose2d(x, k, stride=2, padding=(len(taps) - 2) // 2, groups=x.shape[1])


def downsample2d(x: torch.Tensor) -> torch.Tensor:
    """2x FIR downsampling: [B, C, H, W] -> [B, C, H/2, W/2]."""
    return blur(x, padding=1, stride=2)


def upsample_filter(x: torch.Tensor, mode: str) -> torch.Tensor:
    """A stride-2 transposed 3x3 conv's output [B, C, 2H+1, 2W+1] -> [B, C, 2H, 2W] through the
    mode's filter (gain 4, the zero-inserted pixels' share)."""
    taps = UPSAMPLE_TAPS[mode]
    return blur(x, padding=(len(taps) - 2) // 2, gain=4.0, taps=taps)


# ----------------------------------------------------------------------------------------------
# Equalised-lr layers.


class EqualLinear(nn.Module):
    """Fully connected layer with equalised learning rate; optional leaky ReLU (gain sqrt 2)."""

    def __init__(
        self,
        in_features: int,  # Input width.
        out_features: int,  # Output width.
        *,
        bias: bool = True,  # Add a learned bias?
        bias_init: float = 0.0,  # Initial value of the bias.
        lr_mult: float = 1.0,  # Learning-rate multiplier (mapping networks use 0.01).
        activation: bool = False,  # Leaky ReLU with gain sqrt(2) after the affine map?
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        act_gain = LRELU_GAIN if activation else 1.0
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mult)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init) / lr_mult)) if bias else None
        self.weight_gain = lr_mult / math.sqrt(in_features) * act_gain
        self.bias_gain = lr_mult * act_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., in_features] -> [..., out_features]."""
        # Gains go in as addmm's alpha/beta: no scaled copy of the weight per call.
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.bias is not None:
            x2 = torch.addmm(self.bias.to(x2.dtype), x2, self.weight.to(x2.dtype).t(), beta=self.bias_gain, alpha=self.weight_gain)
        else:
            x2 = torch.mm(x2, self.weight.to(x2.dtype).t()).mul_(self.weight_gain)
        x = x2.reshape(*shape[:-1], self.out_features)
        if self.activation:
            x = F.leaky_relu(x, LRELU_SLOPE)
        return x

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, activation={self.activation}"


class EqualConv2d(nn.Module):
    """Conv layer with equalised learning rate, optional 2x downsampling and leaky ReLU.

    Downsampling follows StyleGAN2: blur (pad 2 for 3x3, the FIR's own stride 2 for 1x1), then
    a stride-2 convolution, so the convolution runs at the output resolution. With blur=False
    a 3x3 conv strides over the unfiltered input (pad 1) and a 1x1 conv reads 2x2 averages.
    """

    def __init__(
        self,
        in_channels: int,  # Input channels.
        out_channels: int,  # Output channels.
        kernel_size: int,  # 1 or 3.
        *,
        bias: bool = True,  # Add a learned bias?
        activation: bool = True,  # Leaky ReLU after the convolution?
        down: bool = False,  # Halve the resolution (stride 2)?
        blur: bool = True,  # With down: FIR-blur first (StyleGAN2's anti-aliasing)?
        gain: float = 1.0,  # Extra output gain (e.g. sqrt(0.5) for residual branches).
        conv_clamp: float | None = None,  # Clamp outputs to +-this, None = no clamping.
    ) -> None:
        super().__init__()
        assert kernel_size in (1, 3), kernel_size
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.activation, self.down, self.blur, self.conv_clamp = activation, down, blur, conv_clamp
        act_gain = (LRELU_GAIN if activation else 1.0) * gain
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = act_gain / math.sqrt(in_channels * kernel_size**2)
        self.bias_gain = act_gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, in, H, W] -> [B, out, H / (2 if down else 1), ...]."""
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if not self.down:
            x = F.conv2d(x, w, b, padding=self.kernel_size // 2)
        elif self.kernel_size == 1:
            x = F.conv2d(downsample2d(x) if self.blur else F.avg_pool2d(x, 2), w, b)
        elif self.blur:
            x = F.conv2d(blur(x, padding=2), w, b, stride=2)
        else:
            x = F.conv2d(x, w, b, stride=2, padding=1)
        if self.activation:
            x = F.leaky_relu(x, LRELU_SLOPE, inplace=True)  # conv outputs are not saved for backward
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}->{self.out_channels}, k={self.kernel_size}, down={self.down}, blur={self.blur}, "
            f"activation={self.activation}"
        )


# ----------------------------------------------------------------------------------------------
# Modulated convolution (StyleGAN2).


def demodulation_coefficients(weight: torch.Tensor, styles: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """1 / ||w * s|| per sample and output channel: weight [O,I,k,k], styles [B,I] -> [B,O] fp32.

    Computed in fp32 outside autocast: the squared sums overflow fp16 for wide layers.
    """
    with torch.autocast(device_type=weight.device.type, enabled=False):
        wsq = weight.float().square().sum(dim=(2, 3))  # [O, I]
        return (styles.float().square() @ wsq.t() + eps).rsqrt()  # [B, O]


def modulated_conv2d(
    x: torch.Tensor,  # Input activations [B, I, H, W].
    weight: torch.Tensor,  # Shared weight [O, I, k, k].
    styles: torch.Tensor,  # Per-sample input scales [B, I].
    *,
    bias: torch.Tensor | None = None,  # Bias [O] added after the (scaled) convolution.
    gain: float = 1.0,  # Output gain (the activation gain, folded into the per-sample scales).
    demodulate: bool = True,  # Normalise each output channel's effective weight to unit norm?
    up: bool = False,  # Upsample 2x (transposed stride-2 conv + FIR filter, as StyleGAN2)?
    upsample: str = "bilinear",  # With up: the filter after the transposed conv (UPSAMPLE_TAPS).
    fused: bool = False,  # True = StyleGAN2's grouped conv; False = scale input, shared conv, scale output.
) -> torch.Tensor:
    """Modulated convolution: [B, I, H, W] -> [B, O, H', W'] with H' = 2H if up else H.

    Computes gain * conv(x_b, w * s_b [* d_b]) + bias for every sample b. The non-fused form
    moves the per-sample scales outside the convolution so one shared (large, efficient)
    convolution serves the whole batch: conv(x_b * s_b, w) * d_b.

    Upsampling follows StyleGAN2: a stride-2 transposed conv to 2H+1, then a FIR filter back to
    2H. Filter and conv commute, so this is the conv applied to upsample2d(x, upsample) at 4x
    less cost: with "bilinear" ([1,3,3,1]) a bilinear upsampling, with "nearest" ([1,1]) a
    nearest-neighbour one (sharper: each upsampled pixel copies one input pixel instead of
    mixing 2x2).
    """
    B, I, H, W = x.shape
    O, I_w, kh, kw = weight.shape
    assert I_w == I and styles.shape == (B, I), (x.shape, weight.shape, styles.shape)
    if demodulate:
        out_scale = demodulation_coefficients(weight, styles) * gain  # [B, O] fp32
    else:
        out_scale = None
        styles = styles * gain if gain != 1.0 else styles

    if not fused:
        x = x * styles.to(x.dtype).reshape(B, I, 1, 1)
        if up:
            x = F.conv_transpose2d(x, weight.to(x.dtype).transpose(0, 1), stride=2)  # [B, O, 2H+1, 2W+1]
            x = upsample_filter(x, upsample)  # [B, O, 2H, 2W]
        else:
            x = F.conv2d(x, weight.to(x.dtype), padding=kh // 2)
        b = bias.to(x.dtype).reshape(1, O, 1, 1) if bias is not None else None
        if out_scale is not None:
            s = out_scale.to(x.dtype).reshape(B, O, 1, 1)
            return torch.addcmul(b, x, s) if b is not None else x * s
        return x + b if b is not None else x

    w = weight.unsqueeze(0) * styles.to(weight.dtype).reshape(B, 1, I, 1, 1)  # [B, O, I, k, k]
    if out_scale is not None:
        w = w * out_scale.to(w.dtype).reshape(B, O, 1, 1, 1)
    w = w.to(x.dtype)
    x = x.reshape(1, B * I, H, W)
    if up:
        w = w.transpose(1, 2).reshape(B * I, O, kh, kw)  # conv_transpose weight: [in, out/groups, k, k]
        x = F.conv_transpose2d(x, w, stride=2, groups=B)  # [1, B*O, 2H+1, 2W+1]
        x = upsample_filter(x, upsample)
    else:
        x = F.conv2d(x, w.reshape(B * O, I, kh, kw), padding=kh // 2, groups=B)
    x = x.reshape(B, O, x.shape[2], x.shape[3])
    return x + bias.to(x.dtype).reshape(1, O, 1, 1) if bias is not None else x


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv + demodulation, per-pixel noise, bias, leaky ReLU (gain sqrt 2)."""

    def __init__(
        self,
        in_channels: int,  # Input channels.
        out_channels: int,  # Output channels.
        *,
        w_dim: int,  # Width of the intermediate latent w.
        resolution: int,  # Output resolution (size of the const noise buffer).
        up: bool = False,  # Upsample 2x before the output resolution?
        upsample: str = "bilinear",  # With up: "bilinear" (StyleGAN2's FIR) or "nearest" (UPSAMPLE_TAPS).
        fused: bool = False,  # Grouped-conv modulation (see modulated_conv2d)?
        conv_clamp: float | None = None,  # Clamp outputs to +-this, None = no clamping.
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.resolution = in_channels, out_channels, resolution
        self.up, self.upsample, self.fused, self.conv_clamp = up, upsample, fused, conv_clamp
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, noise_mode: str = "random") -> torch.Tensor:
        """x [B, in, H, W], w [B, w_dim] -> [B, out, R, R]."""
        styles = self.affine(w)  # [B, in]
        # The activation gain sqrt(2) is folded into the output scale, bias and noise strength.
        x = modulated_conv2d(
            x, self.weight, styles, bias=self.bias * LRELU_GAIN, gain=LRELU_GAIN, up=self.up, upsample=self.upsample,
            fused=self.fused,
        )
        B, _, R, _ = x.shape
        assert R == self.resolution, (x.shape, self.resolution)
        strength = (self.noise_strength * LRELU_GAIN).to(x.dtype)
        if noise_mode == "random":
            noise = torch.randn(B, 1, R, R, device=x.device, dtype=x.dtype)
            x = x.addcmul_(noise, strength)  # in place: x is a fresh tensor nobody saved
        elif noise_mode == "const":
            x = x.add_(self.noise_const.to(x.dtype) * strength)
        elif noise_mode != "none":
            raise ValueError(f"noise_mode must be 'random', 'const' or 'none', got {noise_mode!r}")
        x = F.leaky_relu(x, LRELU_SLOPE, inplace=True)
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x

    def extra_repr(self) -> str:
        up = f"up={self.upsample}" if self.up else "up=False"
        return f"{self.in_channels}->{self.out_channels}, res={self.resolution}, {up}, fused={self.fused}"


class ToRGB(nn.Module):
    """Modulated 1x1 conv to RGB without demodulation (StyleGAN2's skip outputs)."""

    def __init__(
        self,
        in_channels: int,  # Input channels.
        *,
        w_dim: int,  # Width of w.
        out_channels: int = 3,  # Image channels.
        fused: bool = False,  # Grouped-conv modulation?
        conv_clamp: float | None = None,  # Clamp outputs to +-this, None = no clamping.
    ) -> None:
        super().__init__()
        self.fused, self.conv_clamp = fused, conv_clamp
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1.0 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """x [B, in, H, W], w [B, w_dim] -> [B, 3, H, W]."""
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, bias=self.bias, demodulate=False, fused=self.fused)
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


# ----------------------------------------------------------------------------------------------
# Cross-attention from image features to token codes (GigaGAN's idea).


def tokens_in_context(context: nn.Module, pos: torch.Tensor, tokens: torch.Tensor,
                      mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token codes [N, L, C] plus learned positions `pos` [>= L, C] through a self-attention layer
    (`context`, an nn.TransformerEncoderLayer) over each caption's real tokens -> (tokens in
    context [N, L, C], the padding mask the layer ignored [N, L]). A caption without tokens
    attends to its first (padding) slot, so no row is all masked (NaN)."""
    mask = mask.to(torch.bool)
    ignore = ~mask
    ignore[:, 0] &= mask.any(dim=1)
    L = tokens.shape[1]
    return context(tokens + pos[:L].to(tokens.dtype), src_key_padding_mask=ignore), ignore


class CrossAttention(nn.Module):
    """Image features attend to the prompt's token codes; residual with a learned gain.

    Queries come from the (layer-normed) feature map, keys and values from the (layer-normed)
    token codes. Padding tokens (mask False) get zero weight and contribute nothing, whatever
    their features hold; a prompt with no real token gets a zero update (no NaN).
    Set `.record = True` to keep the last weights in `.last_attention` [B, heads, H*W, L].
    """

    def __init__(
        self,
        channels: int,  # Feature channels C (also the attention width).
        code_dim: int,  # Width of the token codes.
        *,
        heads: int,  # Attention heads; must divide `channels`.
        gain_init: float = 0.1,  # Initial residual gain (learned).
    ) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention heads ({heads}) must divide the channels ({channels})")
        self.channels, self.code_dim, self.heads = channels, code_dim, heads
        self.q = EqualLinear(channels, channels, bias=False)
        self.k = EqualLinear(code_dim, channels, bias=False)
        self.v = EqualLinear(code_dim, channels, bias=False)
        self.out = EqualLinear(channels, channels)
        self.gain = nn.Parameter(torch.tensor(float(gain_init)))
        self.record = False
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W], tokens [B, L, code_dim], mask [B, L] bool -> [B, C, H, W]."""
        B, C, H, W = x.shape
        L = tokens.shape[1]
        nh, hd = self.heads, C // self.heads
        assert tokens.shape == (B, L, self.code_dim) and mask.shape == (B, L), (x.shape, tokens.shape, mask.shape)
        h = x.permute(0, 2, 3, 1).reshape(B, H * W, C)  # (B, HW, C); a view when channels-last
        h = F.layer_norm(h, (C,))
        t = F.layer_norm(tokens, (self.code_dim,))
        keep = mask.to(torch.bool)
        q = self.q(h).reshape(B, H * W, nh, hd).transpose(1, 2)  # (B, nh, HW, hd)
        k = self.k(t).reshape(B, L, nh, hd).transpose(1, 2)  # (B, nh, L, hd)
        v = self.v(t).masked_fill(~keep[:, :, None], 0.0).reshape(B, L, nh, hd).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) * hd**-0.5  # (B, nh, HW, L)
        scores = scores.masked_fill(~keep[:, None, None, :], torch.finfo(scores.dtype).min)
        attn = scores.softmax(dim=-1)
        # Rows without any real token: the softmax over all-masked scores is uniform; zero it.
        attn = attn * keep.any(dim=1).to(attn.dtype)[:, None, None, None]
        if self.record:
            self.last_attention = attn.detach()
        o = (attn @ v).transpose(1, 2).reshape(B, H * W, C)  # (B, HW, C)
        o = self.out(o) * self.gain
        return x + o.reshape(B, H, W, C).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, code_dim={self.code_dim}, heads={self.heads}"


class MappingNetwork(nn.Module):
    """[normalised z, normalised embed(c)] -> MLP (equalised lr, lr multiplier) -> w.

    With `code_in_w > 0` the last `code_in_w` features of w are a second, normalised
    embedding of c that bypasses the MLP, w = [mlp(z, c), embed'(c)], as StyleGAN-T appends
    its text embedding to the mapping output: every style then reads the prompt through one
    full-rate linear layer instead of the slow (lr-multiplied) MLP. With `z_dim == 0` it maps
    the code alone (the discriminator's projection `cmap`). When `w_avg_beta` is set it tracks
    the running mean of w in the buffer `w_avg`.
    """

    def __init__(
        self,
        *,
        z_dim: int,  # Latent width, 0 = no latent.
        c_dim: int,  # Conditioning code width, 0 = unconditional.
        w_dim: int,  # Output width.
        num_ws: int | None,  # Number of ws to broadcast to, None = return [B, w_dim].
        num_layers: int,  # Fully connected layers.
        embed_dim: int | None = None,  # Width of the embedded code, None = w_dim.
        lr_mult: float = 0.01,  # Learning-rate multiplier of the MLP.
        w_avg_beta: float | None = 0.995,  # EMA decay of the tracked mean w, None = do not track.
        code_in_w: int = 0,  # Features of w that embed c directly, bypassing the MLP (0 = none).
    ) -> None:
        super().__init__()
        assert z_dim > 0 or c_dim > 0
        assert 0 <= code_in_w < w_dim and (c_dim or not code_in_w), (code_in_w, w_dim, c_dim)
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.w_avg_beta = w_avg_beta
        embed_dim = embed_dim or w_dim
        self.embed = EqualLinear(c_dim, embed_dim) if c_dim else None
        self.code_to_w = EqualLinear(c_dim, code_in_w) if code_in_w else None
        widths = [z_dim + (embed_dim if c_dim else 0)] + [w_dim] * (num_layers - 1) + [w_dim - code_in_w]
        self.layers = nn.Sequential(
            *[EqualLinear(a, b, lr_mult=lr_mult, activation=True) for a, b in zip(widths[:-1], widths[1:])]
        )
        if w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def embed_inputs(self, z: torch.Tensor | None, c: torch.Tensor | None) -> torch.Tensor:
        """z [B, z_dim], c [B, c_dim] -> MLP input [B, z_dim + embed_dim]."""
        parts = []
        if self.z_dim:
            assert z is not None and z.shape[1] == self.z_dim, (None if z is None else z.shape, self.z_dim)
            parts.append(normalize_2nd_moment(z))
        if self.c_dim:
            assert c is not None and c.shape[1] == self.c_dim, (None if c is None else c.shape, self.c_dim)
            parts.append(normalize_2nd_moment(self.embed(c)))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def map(self, z: torch.Tensor | None, c: torch.Tensor | None) -> torch.Tensor:
        """z [B, z_dim], c [B, c_dim] -> w [B, w_dim], untruncated."""
        x = self.layers(self.embed_inputs(z, c))
        if self.code_to_w is None:
            return x
        return torch.cat([x, normalize_2nd_moment(self.code_to_w(c))], dim=1)

    def forward(
        self,
        z: torch.Tensor | None,  # Latents [B, z_dim].
        c: torch.Tensor | None,  # Pooled codes [B, c_dim].
        *,
        psi: float = 1.0,  # Truncation strength: 1 = none, 0 = the target mean itself.
        truncation: str = "prompt",  # Target: "prompt" = this prompt's mean w, "global" = w_avg.
        prompt_mean_samples: int = 256,  # Latents averaged for the prompt's mean w.
        update_w_avg: bool | None = None,  # Update w_avg from this batch; None = in training mode.
    ) -> torch.Tensor:
        """-> ws [B, num_ws, w_dim] (or [B, w_dim] when num_ws is None)."""
        x = self.map(z, c)  # [B, w_dim]
        if update_w_avg is None:
            update_w_avg = self.training
        if update_w_avg and self.w_avg_beta is not None:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().float().mean(dim=0).lerp(self.w_avg, self.w_avg_beta))
        if psi != 1.0:
            if truncation == "global":
                if self.w_avg_beta is None:
                    raise ValueError("global truncation needs a tracked w_avg (w_avg_beta is None)")
                target = self.w_avg.to(x.dtype).unsqueeze(0)
            elif truncation == "prompt":
                target = self.prompt_mean_w(c, num=prompt_mean_samples).to(x.dtype)
            else:
                raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
            x = torch.lerp(target.expand_as(x), x, psi)
        if self.num_ws is None:
            return x
        return x.unsqueeze(1).expand(-1, self.num_ws, -1)  # [B, num_ws, w_dim]

    def prompt_mean_w(self, c: torch.Tensor, *, num: int = 256, seed: int = 0) -> torch.Tensor:
        """Mean w of each prompt over `num` fixed latents (seeded, so deterministic): [B, w_dim].

        The conditional truncation target of StyleGAN-T: truncating toward it keeps the prompt.
        """
        if not self.z_dim:
            return self.map(None, c)
        B = c.shape[0]
        gen = torch.Generator(device=c.device).manual_seed(seed)
        z = torch.randn(num, self.z_dim, generator=gen, device=c.device, dtype=c.dtype)
        w = self.map(z.repeat(B, 1), c.repeat_interleave(num, dim=0))  # [B*num, w_dim]
        return w.reshape(B, num, self.w_dim).mean(dim=1)
