"""The named presets: one table, each entry the model (resolution, encoder, G and D widths) and its
training defaults (TrainConfig fields; nested dicts merge into loss / augment / warmup / model).

`preset(name)` builds the ModelConfig; `train_defaults(name)` gives the training defaults that
gan.train_config.resolve_config lays over TrainConfig's. What each choice measured is in
docs/experiments.md.
"""
from __future__ import annotations

from typing import Any

from .augment import DIFFAUGMENT
from .config import DiscriminatorConfig, GeneratorConfig, ModelConfig

# Rows of the shapes32 sample grid: they vary one thing at a time (position, colour, shape, relation).
SHAPES_GRID_PROMPTS = (
    "a large red circle on the left on a white background",
    "a large red circle on the right on a white background",
    "a large blue square at the top on a white background",
    "a large blue square at the bottom on a white background",
    "a large green triangle in the centre on a black background",
    "a large yellow star in the centre on a black background",
    "a large purple cross in the centre on a grey background",
    "a large orange circle in the centre on a grey background",
    "a large cyan square on the left on a black background",
    "a large pink triangle on the right on a grey background",
    "a red circle left of a blue square",
    "a yellow star above a green cross",
)

_PRESETS: dict[str, dict[str, Any]] = {
    # Tests and smoke runs: 16 px, a few thousand parameters per network, every loss term on.
    "tiny": dict(
        model=dict(resolution=16, encoder_kind="embedding", code_dim=32,
                   g=dict(z_dim=32, w_dim=32, channel_base=256, channel_max=32, attn_resolutions=(8,), attn_heads=2,
                          layout_resolution=8),
                   d=dict(channel_base=256, channel_max=32)),
        train=dict(kimg=0.128, batch=16, snap=0.064, tick=0.032, ema_kimg=0.01, ema_rampup=None,
                   loss=dict(r1_gamma=0.1, r1_interval=4, contrastive_weight=1.0, diversity_weight=1.0,
                             word_weight=1.0, sketch_weight=1.0),
                   augment=dict(interval=2, speed_kimg=1.0),
                   warmup=dict(kimg=0.032, batch=16, layout_kimg=0.016),
                   grid_seeds=4, grid_rows=4, workers=0),
    ),
    # The CPU main job (README command one): 32 px shapes, 50 kimg on 2 cores.
    "shapes32": dict(
        model=dict(resolution=32, encoder_kind="recurrent", code_dim=128,
                   # Frozen rate-coding noise: deterministic codes that keep what the words say.
                   encoder=dict(coding="rate", rate_noise="frozen"),
                   # Mapping lr raised from StyleGAN2's 0.01 so G reads the code within a short run; the
                   # layout map places each word's colour where the caption puts it (gan/layout.py), at
                   # 16x16 so its sketch holds the shapes too: shape .883 against .687 at 8x8 over 3 seeds.
                   g=dict(z_dim=64, w_dim=128, code_in_w=64, channel_base=1024, channel_max=64,
                          attn_resolutions=(8, 16), attn_heads=4, mapping_lr_mult=0.1, architecture="orig",
                          layout_resolution=16),
                   # No FIR blur: a 9-pixel object's shape survives D's downsampling; D twice as wide as G.
                   d=dict(channel_base=2048, channel_max=128, mapping_lr_mult=1.0, blur_down=False)),
        # The text encoder stays as the warm-up left it: as good as training it on, one moving part less.
        train=dict(kimg=50.0, batch=32, snap=10.0, tick=1.0, g_lr=0.005, d_lr=0.005, encoder_lr_mult=0.0,
                   ema_kimg=2.0, ema_rampup=0.05,
                   loss=dict(r1_gamma=0.5, r1_interval=16, match_weight=1.0, contrastive_weight=1.0,
                             diversity_weight=1.0, word_weight=6.0, sketch_weight=16.0),
                   # A procedural domain never repeats an image, and colour / translation augmentation
                   # would blur the colours and places the prompts ask for.
                   augment=dict(mode="off"), workers=1,
                   warmup=dict(kimg=51.2, layout_kimg=128.0),
                   # 3 in 10 named size words emphasised, '(large:1.41)': binding, shape, FID better over 3 seeds.
                   shapes_emphasis=0.3,
                   grid_prompts=SHAPES_GRID_PROMPTS),
    ),
    # Your own images at 32 px on a CPU: the projected D on frozen EfficientNet-Lite0 features (images
    # seen at 64 px; heads without batch norm) plus the residual D on the pixels (the ImageNet features
    # barely see colour), R1 0.1, DiffAugment; the frozen MiniLM reads the captions.
    "custom32": dict(
        model=dict(resolution=32, encoder_kind="transformer", code_dim=256,
                   g=dict(z_dim=128, w_dim=256, channel_base=2048, channel_max=128, attn_resolutions=(8, 16),
                          attn_heads=4),
                   d=dict(channel_base=2048, channel_max=128),
                   projected=dict(backbone_resolution=64, batch_norm=False, pixel=True)),
        train=dict(kimg=1000.0, batch=32, snap=10.0, tick=1.0, g_lr=0.002, d_lr=0.002, ema_kimg=5.0,
                   loss=dict(r1_gamma=0.1, match_weight=1.0), augment=DIFFAUGMENT),
    ),
    "emoji64": dict(
        model=dict(resolution=64, encoder_kind="transformer", code_dim=256,
                   g=dict(z_dim=128, w_dim=256, channel_base=8192, channel_max=256, attn_resolutions=(8, 16),
                          attn_heads=4),
                   d=dict(channel_base=8192, channel_max=256)),
        train=dict(kimg=2000.0, batch=64, snap=50.0, tick=4.0, ema_kimg=10.0, loss=dict(r1_gamma=0.5)),
    ),
    "custom64": dict(
        model=dict(resolution=64, encoder_kind="transformer", code_dim=256,
                   g=dict(z_dim=256, w_dim=256, channel_base=16384, channel_max=512, attn_resolutions=(8, 16),
                          attn_heads=8),
                   d=dict(channel_base=16384, channel_max=512)),
        train=dict(kimg=5000.0, batch=64, snap=50.0, tick=4.0, ema_kimg=20.0, loss=dict(r1_gamma=0.5)),
    ),
    "custom128": dict(
        model=dict(resolution=128, encoder_kind="transformer", code_dim=256,
                   g=dict(z_dim=512, w_dim=512, channel_base=16384, channel_max=512, attn_resolutions=(8, 16, 32),
                          attn_heads=8),
                   d=dict(channel_base=16384, channel_max=512)),
        train=dict(kimg=10000.0, batch=64, snap=50.0, tick=4.0, ema_kimg=20.0, loss=dict(r1_gamma=2.0)),
    ),
    "custom256": dict(
        model=dict(resolution=256, encoder_kind="transformer", code_dim=256,
                   g=dict(z_dim=512, w_dim=512, channel_base=16384, channel_max=512, attn_resolutions=(8, 16, 32),
                          attn_heads=8),
                   d=dict(channel_base=16384, channel_max=512)),
        train=dict(kimg=25000.0, batch=64, snap=50.0, tick=4.0, ema_kimg=20.0, loss=dict(r1_gamma=10.0)),
    ),
}

PRESETS = tuple(_PRESETS)


def _entry(name: str) -> dict[str, Any]:
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(_PRESETS)}")
    return _PRESETS[name]


def preset(name: str) -> ModelConfig:
    """The named preset's ModelConfig (vocab_size 0: set it from the tokenizer)."""
    from encoders import EncoderConfig

    from .projected import ProjectedDiscriminatorConfig

    m = _entry(name)["model"]
    res, code_dim = m["resolution"], m["code_dim"]
    return ModelConfig(
        name=name,
        resolution=res,
        encoder=EncoderConfig(kind=m["encoder_kind"], code_dim=code_dim, **m.get("encoder", {})),
        generator=GeneratorConfig(resolution=res, c_dim=code_dim, **m["g"]),
        discriminator=DiscriminatorConfig(resolution=res, c_dim=code_dim, **m["d"]),
        projected=ProjectedDiscriminatorConfig(resolution=res, c_dim=code_dim, **m["projected"])
        if "projected" in m else None,
    )


def train_defaults(name: str) -> dict[str, Any]:
    """The named preset's training defaults (a dict of TrainConfig fields)."""
    return _entry(name)["train"]
