"""Typed configs for the generator, discriminator and whole model, and the named presets.

A model rebuilds from its `ModelConfig` alone (`ModelConfig.from_dict(json.load(...))`). The named
presets are in gan/presets.py; `python -m gan.config` prints the parameter counts of every preset.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from encoders import EncoderConfig

    from .projected import ProjectedDiscriminatorConfig

RESOLUTIONS = (16, 32, 64, 128, 256)
ARCHITECTURES = ("skip", "orig")
UPSAMPLE_MODES = ("bilinear", "nearest")  # gan.layers.UPSAMPLE_TAPS
# Options removed after they measured no better (docs/experiments.md), with the value that is inert:
# a saved config naming one at that value loads unchanged, any other value is refused.
REMOVED_OPTIONS = {"discriminator": {"word_head": "trunk", "word_region": False, "max_tokens": None}}


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """StyleGAN2's feature width at one resolution: min(channel_base // res, channel_max)."""
    return min(channel_base // resolution, channel_max)


def _check_resolution(resolution: int, what: str) -> None:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"{what}.resolution must be one of {RESOLUTIONS}, got {resolution}")


@dataclass
class GeneratorConfig:
    resolution: int = 32  # Output resolution R (16..256, a power of two).
    c_dim: int = 128  # Width of the conditioning code (== encoder.code_dim).
    z_dim: int = 128  # Width of the latent z.
    w_dim: int = 128  # Width of the intermediate latent w.
    embed_dim: int | None = None  # Width of the embedded pooled code; None = w_dim.
    mapping_layers: int = 2  # Fully connected layers in the mapping network.
    mapping_lr_mult: float = 0.01  # Learning-rate multiplier of the mapping network.
    code_in_w: int = 0  # Features of w that embed the code directly, bypassing the mapping MLP (StyleGAN-T); 0 = none.
    w_avg_beta: float = 0.995  # EMA decay of the tracked mean w (updated in training mode).
    channel_base: int = 4096  # Feature width is min(channel_base // res, channel_max).
    channel_max: int = 128  # Widest feature map.
    # Upsampling: "bilinear" (StyleGAN2's [1,3,3,1] FIR) or "nearest" ([1,1], sharper; docs/experiments.md).
    upsample: str = "bilinear"
    architecture: str = "skip"  # "skip": toRGB at every resolution, summed (StyleGAN2); "orig": toRGB at R only.
    attn_resolutions: tuple[int, ...] = (8, 16)  # Resolutions with cross-attention to tokens.
    attn_heads: int = 4  # Heads per cross-attention layer (and of the layout's attention).
    # The prompt's layout map (gan/layout.py) joins G's features at this resolution; 0 = none.
    layout_resolution: int = 0
    max_tokens: int = 64  # Longest caption the layout takes (its learned positions).
    fused_modconv: bool = False  # Grouped-conv modulation (slower on CPU, see scripts/bench.py).
    channels_last: bool = True  # Run convolutions in NHWC memory format.
    conv_clamp: float | None = None  # Clamp conv outputs to +-this (helps fp16), None = off.

    def __post_init__(self) -> None:
        _check_resolution(self.resolution, "generator")
        self.attn_resolutions = tuple(int(r) for r in self.attn_resolutions)
        bad = [r for r in self.attn_resolutions if r < 4 or r > self.resolution or r & (r - 1)]
        if bad:
            raise ValueError(f"generator.attn_resolutions {bad} must be powers of two in [4, {self.resolution}]")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"generator.upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"generator.architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.mapping_layers < 1:
            raise ValueError(f"generator.mapping_layers must be >= 1, got {self.mapping_layers}")
        r = self.layout_resolution
        if r and (r < 4 or r > self.resolution or r & (r - 1)):
            raise ValueError(f"generator.layout_resolution must be 0 or a power of two in [4, {self.resolution}], got {r}")
        if r and self.c_dim % self.attn_heads:
            raise ValueError(f"generator.layout_resolution needs c_dim ({self.c_dim}) divisible by attn_heads "
                             f"({self.attn_heads})")
        if self.max_tokens < 1:
            raise ValueError(f"generator.max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.code_in_w < self.w_dim:
            raise ValueError(f"generator.code_in_w must lie in [0, w_dim={self.w_dim}), got {self.code_in_w}")

    def channels(self, res: int) -> int:
        return channels_at(res, self.channel_base, self.channel_max)

    @property
    def block_resolutions(self) -> list[int]:
        """[4, 8, ..., R]."""
        return [2**i for i in range(2, int(math.log2(self.resolution)) + 1)]

    @property
    def num_ws(self) -> int:
        """One w per layer: one conv at 4x4, two per higher resolution, and one per toRGB (every
        resolution for "skip", the last for "orig")."""
        blocks = len(self.block_resolutions)
        return 1 + 2 * (blocks - 1) + (blocks if self.architecture == "skip" else 1)


@dataclass
class DiscriminatorConfig:
    resolution: int = 32  # Input resolution R.
    c_dim: int = 128  # Width of the conditioning code (== encoder.code_dim).
    channel_base: int = 4096  # Feature width is min(channel_base // res, channel_max).
    channel_max: int = 128  # Widest feature map.
    cmap_dim: int | None = None  # Width of the projection; None = channels at 4x4.
    mapping_layers: int = 2  # Layers of the code -> cmap mapping.
    mapping_lr_mult: float = 0.01  # Learning-rate multiplier of that mapping.
    word_classes: int = 0  # Outputs of the word classifier, a Linear on D's features (the vocabulary size; 0 = none).
    blur_down: bool = True  # FIR-blur before each stride-2 conv (StyleGAN2); False = plain strided convs.
    mbstd_group: int = 4  # Minibatch-std group size (largest divisor of the batch up to this).
    mbstd_channels: int = 1  # Minibatch-std feature channels.
    channels_last: bool = True  # Run convolutions in NHWC memory format.
    conv_clamp: float | None = None  # Clamp conv outputs to +-this, None = off.

    def __post_init__(self) -> None:
        _check_resolution(self.resolution, "discriminator")
        if self.word_classes < 0:
            raise ValueError(f"discriminator.word_classes must be >= 0, got {self.word_classes}")

    def channels(self, res: int) -> int:
        return channels_at(res, self.channel_base, self.channel_max)


@dataclass
class ModelConfig:
    name: str  # Preset or user name, written to config.json.
    resolution: int  # Image resolution (generator and discriminator must agree).
    encoder: EncoderConfig  # The spiking text encoder (encoders.EncoderConfig).
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    vocab_size: int = 0  # Tokenizer vocabulary size (set from the tokenizer; 0 = not yet known).
    # The projected discriminator on frozen pretrained features (gan/projected.py) in place of the
    # residual one above; None = the residual D.
    projected: ProjectedDiscriminatorConfig | None = None

    def __post_init__(self) -> None:
        checked = [("generator", self.generator), ("discriminator", self.discriminator)]
        if self.projected is not None:
            checked.append(("projected", self.projected))
        for what, cfg in checked:
            if cfg.resolution != self.resolution:
                raise ValueError(f"{what}.resolution {cfg.resolution} != resolution {self.resolution}")
            if cfg.c_dim != self.encoder.code_dim:
                raise ValueError(f"{what}.c_dim {cfg.c_dim} != encoder.code_dim {self.encoder.code_dim}")
        g = self.generator
        tokens = self.encoder.max_length + self.encoder.guide_tokens  # the caption's, then the guides'
        if g.layout_resolution and tokens > g.max_tokens:
            raise ValueError(f"encoder.max_length {self.encoder.max_length} + guide tokens {self.encoder.guide_tokens} > "
                             f"generator.max_tokens {g.max_tokens}: the layout has positions for {g.max_tokens} tokens")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "vocab_size": self.vocab_size,
            "encoder": self.encoder.to_dict(),
            "generator": _to_plain(dataclasses.asdict(self.generator)),
            "discriminator": _to_plain(dataclasses.asdict(self.discriminator)),
            "projected": dataclasses.asdict(self.projected) if self.projected is not None else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        from encoders import EncoderConfig

        from .projected import ProjectedDiscriminatorConfig

        d = dict(d)
        projected = d.get("projected")
        _reject_unknown(d, {f.name for f in dataclasses.fields(cls)}, "model config")
        return cls(
            name=d["name"],
            resolution=int(d["resolution"]),
            vocab_size=int(d.get("vocab_size", 0)),
            encoder=EncoderConfig.from_dict(d["encoder"]),
            generator=_dataclass_from_dict(GeneratorConfig, d.get("generator", {}), "generator"),
            discriminator=_dataclass_from_dict(DiscriminatorConfig, drop_removed(d.get("discriminator", {}), "discriminator"),
                                               "discriminator"),
            projected=_dataclass_from_dict(ProjectedDiscriminatorConfig, projected, "projected")
            if projected is not None else None,
        )

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _to_plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def drop_removed(d: dict[str, Any], section: str, removed: dict[str, dict[str, Any]] = REMOVED_OPTIONS) -> dict[str, Any]:
    """`d` without the removed options of `section` that hold their inert value; a removed option
    set to anything else is refused, so that an old config never loads as something it was not."""
    out = dict(d)
    for key, inert in removed.get(section, {}).items():
        if key not in out:
            continue
        value = out.pop(key)
        if inert is not None and value != inert:
            raise ValueError(f"{section}.{key} = {value!r}: this option was removed (it measured no better, "
                             f"docs/experiments.md); a model or state trained with it cannot be loaded by this "
                             f"version")
    return out


def _reject_unknown(d: dict[str, Any], known: set[str], what: str) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{what}: unknown keys {unknown} (known: {sorted(known)})")


def _dataclass_from_dict(cls, d: dict[str, Any], what: str):
    _reject_unknown(d, {f.name for f in dataclasses.fields(cls)}, what)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def parameter_counts(cfg: ModelConfig, vocab_size: int = 1000) -> dict[str, int]:
    """Parameters of G, D and the text encoder built from `cfg` (encoder at `vocab_size`)."""
    from encoders import build_encoder

    from .discriminator import build_discriminator
    from .generator import Generator

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    return {
        "generator": count(Generator(cfg.generator)),
        "discriminator": count(build_discriminator(cfg)),  # the projected D's frozen backbone is no parameter
        "encoder": count(build_encoder(cfg.encoder, cfg.vocab_size or vocab_size)),
    }


def main() -> None:
    from .presets import PRESETS, preset

    print(f"{'preset':<10} {'res':>4} {'G params':>12} {'D params':>12} {'encoder':>12}")
    for name in PRESETS:
        cfg = preset(name)
        n = parameter_counts(cfg)
        print(f"{name:<10} {cfg.resolution:>4} {n['generator']:>12,} {n['discriminator']:>12,} {n['encoder']:>12,}")


if __name__ == "__main__":
    main()
