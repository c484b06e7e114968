"""Typed configs for the generator, discriminator and whole model, and the named presets.

A model rebuilds from its `ModelConfig` alone (`ModelConfig.from_dict(json.load(...))`).
`python -m gan.config` prints the parameter counts of every preset.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from encoders import EncoderConfig

RESOLUTIONS = (16, 32, 64, 128, 256)
ARCHITECTURES = ("skip", "orig")
UPSAMPLE_MODES = ("bilinear", "nearest")  # gan.layers.UPSAMPLE_TAPS
WORD_HEADS = ("net", "trunk")  # gan.discriminator.Discriminator.words
WORD_REGION_HEADS = 4  # Heads of the word-region term's self-attention over the caption's tokens.


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
    # Upsampling: "bilinear" (StyleGAN2's [1,3,3,1] FIR) or "nearest" ([1,1], sharper). Fitted by MSE
    # to one-object shapes scenes, shapes32's G drew the right shape for 0.89 of them after 1000
    # steps with "nearest", 0.55 with "bilinear"; but the main job with it fell from 0.689 to 0.646
    # mean attribute accuracy (shape 0.31 -> 0.30, background 0.77 -> 0.59, FID 174 -> 215).
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
    word_classes: int = 0  # Outputs of the word classifier (the vocabulary size; 0 = none).
    word_head: str = "net"  # Word classifier: "net" (a CNN of its own, WordNet) or "trunk" (a Linear on D's features).
    blur_down: bool = True  # FIR-blur before each stride-2 conv (StyleGAN2); False = plain strided convs.
    # Word-region term (XMC-GAN): each caption token, in context, attends over D's 4x4 cells, and the
    # logit adds how well the tokens agree with what they attend to (gan.discriminator.WordRegion).
    word_region: bool = False
    max_tokens: int = 64  # Longest caption the word-region term takes (its learned positions).
    mbstd_group: int = 4  # Minibatch-std group size (largest divisor of the batch up to this).
    mbstd_channels: int = 1  # Minibatch-std feature channels.
    channels_last: bool = True  # Run convolutions in NHWC memory format.
    conv_clamp: float | None = None  # Clamp conv outputs to +-this, None = off.

    def __post_init__(self) -> None:
        _check_resolution(self.resolution, "discriminator")
        if self.word_classes < 0:
            raise ValueError(f"discriminator.word_classes must be >= 0, got {self.word_classes}")
        if self.word_head not in WORD_HEADS:
            raise ValueError(f"discriminator.word_head must be one of {WORD_HEADS}, got {self.word_head!r}")
        if self.word_region and self.c_dim % WORD_REGION_HEADS:
            raise ValueError(f"discriminator.word_region needs c_dim divisible by {WORD_REGION_HEADS}, got {self.c_dim}")
        if self.max_tokens < 1:
            raise ValueError(f"discriminator.max_tokens must be >= 1, got {self.max_tokens}")

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

    def __post_init__(self) -> None:
        for what, cfg in (("generator", self.generator), ("discriminator", self.discriminator)):
            if cfg.resolution != self.resolution:
                raise ValueError(f"{what}.resolution {cfg.resolution} != resolution {self.resolution}")
            if cfg.c_dim != self.encoder.code_dim:
                raise ValueError(f"{what}.c_dim {cfg.c_dim} != encoder.code_dim {self.encoder.code_dim}")
        g = self.generator
        if g.layout_resolution and self.encoder.max_length > g.max_tokens:
            raise ValueError(f"encoder.max_length {self.encoder.max_length} > generator.max_tokens {g.max_tokens}: "
                             f"the layout has positions for {g.max_tokens} tokens")
        d = self.discriminator
        if d.word_region and self.encoder.max_length > d.max_tokens:
            raise ValueError(f"encoder.max_length {self.encoder.max_length} > discriminator.max_tokens {d.max_tokens}: "
                             f"the word-region term has positions for {d.max_tokens} tokens")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "resolution": self.resolution,
            "vocab_size": self.vocab_size,
            "encoder": self.encoder.to_dict(),
            "generator": _to_plain(dataclasses.asdict(self.generator)),
            "discriminator": _to_plain(dataclasses.asdict(self.discriminator)),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        from encoders import EncoderConfig

        d = dict(d)
        _reject_unknown(d, {f.name for f in dataclasses.fields(cls)}, "model config")
        return cls(
            name=d["name"],
            resolution=int(d["resolution"]),
            vocab_size=int(d.get("vocab_size", 0)),
            encoder=EncoderConfig.from_dict(d["encoder"]),
            generator=_dataclass_from_dict(GeneratorConfig, d.get("generator", {}), "generator"),
            discriminator=_dataclass_from_dict(DiscriminatorConfig, d.get("discriminator", {}), "discriminator"),
        )

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


def _to_plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _reject_unknown(d: dict[str, Any], known: set[str], what: str) -> None:
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{what}: unknown keys {unknown} (known: {sorted(known)})")


def _dataclass_from_dict(cls, d: dict[str, Any], what: str):
    _reject_unknown(d, {f.name for f in dataclasses.fields(cls)}, what)
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


# ----------------------------------------------------------------------------------------------
# Presets (data): resolution, code width, encoder kind, G/D widths.

_PRESETS: dict[str, dict[str, Any]] = {
    # Tests: 16 px, a few thousand parameters per network.
    "tiny": dict(
        resolution=16, encoder_kind="embedding", code_dim=32,
        g=dict(z_dim=32, w_dim=32, channel_base=256, channel_max=32, attn_resolutions=(8,), attn_heads=2,
               layout_resolution=8),
        d=dict(channel_base=256, channel_max=32, word_head="trunk"),
    ),
    # The CPU main job: 32 px shapes, trains in ~20 minutes on 2 cores. Narrow networks (~25
    # CPU-seconds per kimg); mapping lr multipliers raised from StyleGAN2's 0.01 so that G's
    # mapping and D's projection learn to read the code within a short run (measured: the
    # real/mismatch score gap at 33 kimg was 0.5 with these, 0.16 with 0.01). Rate coding with
    # frozen noise: deterministic codes (fresh Bernoulli noise made two encodings of one prompt
    # differ as much as two prompts do) that keep what the words say (a linear probe reads a
    # one-object caption's colour from the pooled code with accuracy 0.98; latency coding 0.52).
    # toRGB at 32 px only ("orig"): the summed low-resolution toRGB layers of "skip" painted
    # rainbow blotches early on and trained slower (30 kimg of direct regression: MSE 0.031
    # against 0.040). The main job with "orig" (final membrane still on): FID 213, LPIPS diversity
    # 0.20, mean attribute accuracy 0.554, 19.8 s/kimg; with "skip", measured in an earlier
    # session: 231, 0.14, 0.545, 18.8.
    "shapes32": dict(
        resolution=32, encoder_kind="recurrent", code_dim=128,
        # The final membrane stays on: after the contrastive warm-up (TRAIN_PRESETS) the readout
        # weighs it (see EncoderConfig.final_membrane).
        encoder=dict(coding="rate", rate_noise="frozen"),
        g=dict(z_dim=64, w_dim=128, code_in_w=64, channel_base=1024, channel_max=64, attn_resolutions=(8, 16),
               attn_heads=4, mapping_lr_mult=0.1, architecture="orig",
               # The prompt's layout at 8x8, so two objects' colours go where the caption puts
               # them (gan/layout.py; held to its warm-up's sketch by the sketch term, TRAIN_PRESETS).
               layout_resolution=8),
        # D downsamples with plain stride-2 convs, without StyleGAN2's FIR blur: a small object here
        # is 9 pixels across, and the blur hides what tells a star from a circle (D's trunk trained
        # as a plain 5-way shape classifier on one-object images: 0.56 accuracy after 1000 steps
        # with the blur, 1.00 without). 50-kimg runs at R1 gamma 0.1, seeds 0 / 1 / 2: shape 0.23 / 0.24 /
        # 0.24 -> 0.31 / 0.32 / 0.31, mean attribute accuracy 0.66 / 0.62 / 0.56 -> 0.67 / 0.66 / 0.65.
        # The sharper D wins faster, so R1 is stronger with it (TRAIN_PRESETS).
        # D is twice as wide as G (64 channels at 32 px, 128 below), and its own features name
        # the caption's words (word_head "trunk" with the word term on, TRAIN_PRESETS; AC-GAN's
        # shared trunk; why, in gan/discriminator.py). The head on the narrow D lifted shapes too,
        # but cost backgrounds (0.77 -> 0.53 in the main job); the wider D keeps room for both in
        # most runs. 50-kimg runs at one thread, attribute probe:
        # shape 0.29 / 0.37 (seeds 0 / 1, narrow D, no word term) -> 0.53 at 40 kimg / 0.54,
        # mean 0.68 / 0.69 -> 0.72 at 40 kimg / 0.77. 1.5x the main job's wall time.
        d=dict(channel_base=2048, channel_max=128, mapping_lr_mult=1.0, blur_down=False, word_head="trunk"),
    ),
    "emoji64": dict(
        resolution=64, encoder_kind="transformer", code_dim=256,
        g=dict(z_dim=128, w_dim=256, channel_base=8192, channel_max=256, attn_resolutions=(8, 16), attn_heads=4),
        d=dict(channel_base=8192, channel_max=256),
    ),
    "custom64": dict(
        resolution=64, encoder_kind="transformer", code_dim=256,
        g=dict(z_dim=256, w_dim=256, channel_base=16384, channel_max=512, attn_resolutions=(8, 16), attn_heads=8),
        d=dict(channel_base=16384, channel_max=512),
    ),
    "custom128": dict(
        resolution=128, encoder_kind="transformer", code_dim=256,
        g=dict(z_dim=512, w_dim=512, channel_base=16384, channel_max=512, attn_resolutions=(8, 16, 32), attn_heads=8),
        d=dict(channel_base=16384, channel_max=512),
    ),
    "custom256": dict(
        resolution=256, encoder_kind="transformer", code_dim=256,
        g=dict(z_dim=512, w_dim=512, channel_base=16384, channel_max=512, attn_resolutions=(8, 16, 32), attn_heads=8),
        d=dict(channel_base=16384, channel_max=512),
    ),
}

PRESETS = tuple(_PRESETS)


def preset(name: str) -> ModelConfig:
    """The named preset's ModelConfig (vocab_size 0: set it from the tokenizer)."""
    from encoders import EncoderConfig

    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(_PRESETS)}")
    p = _PRESETS[name]
    res, code_dim = p["resolution"], p["code_dim"]
    return ModelConfig(
        name=name,
        resolution=res,
        encoder=EncoderConfig(kind=p["encoder_kind"], code_dim=code_dim, **p.get("encoder", {})),
        generator=GeneratorConfig(resolution=res, c_dim=code_dim, **p["g"]),
        discriminator=DiscriminatorConfig(resolution=res, c_dim=code_dim, **p["d"]),
    )


def parameter_counts(cfg: ModelConfig, vocab_size: int = 1000) -> dict[str, int]:
    """Parameters of G, D and the text encoder built from `cfg` (encoder at `vocab_size`)."""
    from encoders import build_encoder

    from .discriminator import Discriminator
    from .generator import Generator

    def count(m) -> int:
        return sum(p.numel() for p in m.parameters())

    return {
        "generator": count(Generator(cfg.generator)),
        "discriminator": count(Discriminator(cfg.discriminator)),
        "encoder": count(build_encoder(cfg.encoder, cfg.vocab_size or vocab_size)),
    }


def main() -> None:
    print(f"{'preset':<10} {'res':>4} {'G params':>12} {'D params':>12} {'encoder':>12}")
    for name in PRESETS:
        cfg = preset(name)
        n = parameter_counts(cfg)
        print(f"{name:<10} {cfg.resolution:>4} {n['generator']:>12,} {n['discriminator']:>12,} {n['encoder']:>12,}")


if __name__ == "__main__":
    main()
