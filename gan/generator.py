"""Conditional StyleGAN2 generator: mapping (z, pooled code) -> w, synthesis (w, tokens) -> image."""
from __future__ import annotations

import torch
from torch import nn

from encoders.code import SpikeCode

from .config import GeneratorConfig
from .layers import CrossAttention, MappingNetwork, SynthesisLayer, ToRGB, upsample2d
from .layout import PromptLayout



class SynthesisBlock(nn.Module):
    """One resolution: [up-conv,] conv, [+ the prompt's layout map,] [cross-attention,] [toRGB added
    to the upsampled image]."""

    def __init__(
        self,
        in_channels: int,  # Input channels, 0 = the first block (starts from a learned 4x4 const).
        out_channels: int,  # Output channels.
        *,
        resolution: int,  # Output resolution.
        w_dim: int,  # Width of w.
        code_dim: int,  # Width of the token codes.
        attn_heads: int | None,  # Cross-attention heads, None = no cross-attention here.
        torgb: bool,  # Add this resolution's toRGB to the image? (False: pass the image on unchanged.)
        fused: bool,  # Grouped-conv modulation?
        conv_clamp: float | None,  # Clamp conv outputs, None = off.
        upsample: str = "bilinear",  # Upsampling filter of the up-conv and the image (layers.UPSAMPLE_TAPS).
    ) -> None:
        super().__init__()
        self.resolution, self.upsample = resolution, upsample
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
            self.conv0 = None
        else:
            self.conv0 = SynthesisLayer(
                in_channels, out_channels, w_dim=w_dim, resolution=resolution, up=True, upsample=upsample, fused=fused,
                conv_clamp=conv_clamp,
            )
        self.conv1 = SynthesisLayer(
            out_channels, out_channels, w_dim=w_dim, resolution=resolution, fused=fused, conv_clamp=conv_clamp
        )
        self.attn = CrossAttention(out_channels, code_dim, heads=attn_heads) if attn_heads else None
        self.torgb = ToRGB(out_channels, w_dim=w_dim, fused=fused, conv_clamp=conv_clamp) if torgb else None
        self.num_ws = (1 if self.conv0 is None else 2) + (self.torgb is not None)

    def forward(
        self,
        x: torch.Tensor | None,  # Features [B, in, R/2, R/2], None for the first block.
        img: torch.Tensor | None,  # RGB so far [B, 3, R/2, R/2], None for the first block.
        ws: torch.Tensor,  # [B, num_ws, w_dim] for this block.
        code: SpikeCode,  # Token codes for cross-attention.
        *,
        noise_mode: str,
        memory_format: torch.memory_format,
        layout_map: torch.Tensor | None = None,  # [B, out, R, R] added after the convs (gan/layout.py).
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (features [B, out, R, R], img [B, 3, R, R])."""
        w = ws.unbind(dim=1)
        if self.conv0 is None:
            B = ws.shape[0]
            x = self.const.to(ws.dtype).unsqueeze(0).expand(B, -1, -1, -1).contiguous(memory_format=memory_format)
            x = self.conv1(x, w[0], noise_mode=noise_mode)
        else:
            x = self.conv0(x, w[0], noise_mode=noise_mode)
            x = self.conv1(x, w[1], noise_mode=noise_mode)
        if layout_map is not None:
            x = x + layout_map.to(x.dtype).contiguous(memory_format=memory_format)
        if self.attn is not None:
            x = self.attn(x, code.tokens.to(x.dtype), code.mask)
        if self.torgb is not None:
            y = self.torgb(x, w[-1])
            img = y if img is None else upsample2d(img, self.upsample).add_(y)
        return x, img


class SynthesisNetwork(nn.Module):
    """Learned 4x4 const -> blocks at 4, 8, ..., R -> image [B, 3, R, R]: toRGB outputs summed over
    resolutions ("skip", StyleGAN2) or the last resolution's alone ("orig"). With
    `layout_resolution`, the prompt's layout map (gan/layout.py) joins the features there."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        blocks, prev = [], 0
        for res in cfg.block_resolutions:
            ch = cfg.channels(res)
            blocks.append(
                SynthesisBlock(
                    prev, ch, resolution=res, w_dim=cfg.w_dim, code_dim=cfg.c_dim,
                    attn_heads=cfg.attn_heads if res in cfg.attn_resolutions else None,
                    torgb=cfg.architecture == "skip" or res == cfg.resolution,
                    fused=cfg.fused_modconv, conv_clamp=cfg.conv_clamp, upsample=cfg.upsample,
                )
            )
            prev = ch
        self.blocks = nn.ModuleList(blocks)
        self.layout = None
        if cfg.layout_resolution:
            self.layout = PromptLayout(cfg.c_dim, cfg.channels(cfg.layout_resolution), resolution=cfg.layout_resolution,
                                       max_tokens=cfg.max_tokens, heads=cfg.attn_heads)
        self.num_ws = sum(b.num_ws for b in blocks)
        assert self.num_ws == cfg.num_ws, (self.num_ws, cfg.num_ws)
        if cfg.channels_last:  # conv weights in NHWC too, else every conv call converts them
            self.blocks.to(memory_format=torch.channels_last)

    def forward(self, ws: torch.Tensor, code: SpikeCode, *, noise_mode: str = "random") -> torch.Tensor:
        """ws [B, num_ws, w_dim], code (tokens [B, L, C], mask [B, L]) -> img [B, 3, R, R]."""
        B = ws.shape[0]
        assert ws.shape[1:] == (self.num_ws, self.cfg.w_dim), (ws.shape, self.num_ws, self.cfg.w_dim)
        assert code.batch_size == B, (code.batch_size, B)
        fmt = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        layout_map = None if self.layout is None else self.layout(code.tokens.to(ws.dtype), code.mask)
        x = img = None
        i = 0
        for block in self.blocks:
            here = layout_map if block.resolution == self.cfg.layout_resolution else None
            x, img = block(x, img, ws[:, i : i + block.num_ws], code, noise_mode=noise_mode, memory_format=fmt,
                           layout_map=here)
            i += block.num_ws
        return img


class Generator(nn.Module):
    """Text-conditional StyleGAN2 generator: G(z, code) -> image [B, 3, R, R] in about [-1, 1]."""

    def __init__(self, cfg: GeneratorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.z_dim, self.c_dim, self.w_dim, self.resolution = cfg.z_dim, cfg.c_dim, cfg.w_dim, cfg.resolution
        self.synthesis = SynthesisNetwork(cfg)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(
            z_dim=cfg.z_dim, c_dim=cfg.c_dim, w_dim=cfg.w_dim, num_ws=self.num_ws, num_layers=cfg.mapping_layers,
            embed_dim=cfg.embed_dim, lr_mult=cfg.mapping_lr_mult, w_avg_beta=cfg.w_avg_beta,
            code_in_w=cfg.code_in_w,
        )

    @property
    def w_avg(self) -> torch.Tensor:
        """Running mean of w over all prompts [w_dim] (the global truncation target)."""
        return self.mapping.w_avg

    def forward(
        self,
        z: torch.Tensor,  # Latents [B, z_dim].
        code: SpikeCode,  # The encoder's output for B prompts.
        *,
        psi: float = 1.0,  # Truncation: 1 = none, 0 = the target mean.
        truncation: str = "prompt",  # "prompt" (conditional, StyleGAN-T) or "global".
        noise_mode: str = "random",  # "random", "const" (deterministic) or "none".
        update_w_avg: bool | None = None,  # Track w_avg from this batch; None = in training mode.
    ) -> torch.Tensor:
        """-> img [B, 3, R, R]."""
        ws = self.mapping(z, code.pooled, psi=psi, truncation=truncation, update_w_avg=update_w_avg)
        return self.synthesis(ws, code, noise_mode=noise_mode)

    def prompt_mean_w(self, pooled: torch.Tensor, *, num: int = 256, seed: int = 0) -> torch.Tensor:
        """Each prompt's mean w over `num` fixed latents: pooled [B, C] -> [B, w_dim]."""
        return self.mapping.prompt_mean_w(pooled, num=num, seed=seed)

    def attention_layers(self) -> list[CrossAttention]:
        return [m for m in self.modules() if isinstance(m, CrossAttention)]

    def record_attention(self, flag: bool = True) -> None:
        """Keep (or stop keeping) each cross-attention layer's last weights in `.last_attention`."""
        for layer in self.attention_layers():
            layer.record = flag
            if not flag:
                layer.last_attention = None
