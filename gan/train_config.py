"""TrainConfig: every option of a training run, resolved from its preset, and validated in one place.

`resolve_config(preset, **overrides)` lays the preset's training defaults (gan/presets.py) over
TrainConfig's and the overrides (a script's flags) over those; `check_config` raises a ValueError
naming the command-line flag of the first bad option. The run writes the resolved config to
config.json.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gan.augment import AugmentConfig
from gan.config import drop_removed
from gan.loss import LossConfig
from gan.warmup import WarmupConfig

MIXED_PRECISION = ("no", "bf16", "fp16")
ENCODER_KINDS = ("embedding", "recurrent", "transformer")

# Training options removed after they measured no better (docs/experiments.md), with their inert value.
REMOVED_TRAIN_OPTIONS = {
    "loss": {"guide_weight": 0.0, "hard_negatives": "off"},
    "warmup": {"hard_negatives": "off", "word_region": False},
}


@dataclass
class TrainConfig:
    """Every option of a training run; config.json holds the resolved one."""

    data: str = "shapes"  # Dataset: a folder, .zip, prepared directory, or "shapes".
    preset: str = "shapes32"  # Preset (gan/presets.py): the model and these defaults.
    out: str = "runs/train"  # Run directory.
    encoder: str | None = None  # Encoder kind override (embedding|recurrent|transformer); None = preset's.
    kimg: float = 60.0  # Length of the whole run in thousands of images (resume counts from the state).
    minutes: float | None = None  # Wall-clock budget of this invocation: it then stops as on SIGTERM; None = none.
    batch: int = 32  # Global batch: processes x batch_gpu x accumulation steps.
    batch_gpu: int | None = None  # Images per process per micro-batch; None = batch / processes.
    g_lr: float = 0.0025  # Adam learning rate of G (generator + text encoder).
    d_lr: float = 0.0025  # Adam learning rate of D.
    encoder_lr_mult: float = 0.01  # Text encoder's learning rate relative to g_lr (0 = frozen after the warm-up).
    guide_lr_mult: float = 0.01  # Learning rate of the encoder's palette and sketch paths relative to g_lr.
    layout_lr: float = 1e-3  # Adam learning rate of G's layout map, with momentum (gan/layout.py).
    loss: LossConfig = field(default_factory=LossConfig)  # Loss term weights, R1 gamma and interval.
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # Differentiable augmentation + ADA.
    warmup: WarmupConfig = field(default_factory=WarmupConfig)  # Contrastive encoder warm-up (gan/warmup.py).
    ema_kimg: float = 10.0  # EMA half-life in kimg.
    ema_rampup: float | None = 0.05  # EMA horizon <= this fraction of images seen; None = no ramp-up.
    mixed_precision: str = "no"  # "no", "bf16" or "fp16" (Accelerate autocast).
    seed: int = 0  # Seeds the networks' initialisation, the data order and every process's RNG.
    snap: float = 10.0  # kimg between snapshots (grid, exported model, resumable state).
    tick: float = 1.0  # kimg between log lines.
    keep: int = 3  # Resumable states kept in OUT/checkpoints.
    resume: str | None = None  # A state dir, a run dir, or "latest" (OUT/checkpoints); None = fresh.
    init_from: str | None = None  # A model dir to fine-tune from (vocabulary extended); None = fresh.
    workers: int = 1  # DataLoader worker processes per training process (0 = load in the loop).
    grid_prompts: tuple[str, ...] = ()  # Rows of the sample grid; () = distinct captions spread over the dataset.
    grid_rows: int = 12  # Rows taken from the dataset when grid_prompts is empty.
    grid_seeds: int = 6  # Columns of the sample grid (latent seeds 0..grid_seeds-1).
    max_nonfinite: int = 20  # Stop after this many consecutive steps with a non-finite loss.
    threads: int | None = None  # torch.set_num_threads per process; None = leave torch's default.
    model: dict = field(default_factory=dict)  # Overrides merged into the preset's ModelConfig dict (a fresh run).
    input_drop: float = 0.5  # Probability that a training image loses its palette (and, apart, its sketch).
    # Probability that an image keeping its palette gets its caption's colour words swapped (the palette wins).
    palette_override: float = 0.0
    # Probability that a one-object image keeping its sketch gets its caption's place swapped (the sketch wins).
    sketch_override: float = 0.0
    # Shapes only: probability that a caption's size word is emphasised, "(large:1.41)", and drawn so.
    shapes_emphasis: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grid_prompts"] = list(self.grid_prompts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown option(s) {unknown}")
        d["loss"] = LossConfig(**drop_removed(d.get("loss", {}), "loss", REMOVED_TRAIN_OPTIONS))
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        d["warmup"] = WarmupConfig(**drop_removed(d.get("warmup", {}), "warmup", REMOVED_TRAIN_OPTIONS))
        d["grid_prompts"] = tuple(d.get("grid_prompts", ()))
        return cls(**d)


def deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, recursing into dicts present in both."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config(preset: str = "shapes32", **overrides: Any) -> TrainConfig:
    """TrainConfig defaults, then the preset's training defaults, then `overrides` (None = not given)."""
    from gan.presets import PRESETS, train_defaults

    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: choose one of {list(PRESETS)}")
    d = deep_merge(TrainConfig().to_dict(), train_defaults(preset))
    d = deep_merge(d, {k: v for k, v in overrides.items() if v is not None})
    d["preset"] = preset
    return TrainConfig.from_dict(d)


def model_config(cfg: TrainConfig):
    """The ModelConfig a fresh run builds: the preset, the --encoder kind, then cfg.model."""
    from encoders import EncoderConfig
    from gan.config import ModelConfig
    from gan.presets import preset

    d = preset(cfg.preset).to_dict()
    if cfg.encoder is not None:
        d["encoder"]["kind"] = cfg.encoder
    d = deep_merge(d, cfg.model)
    guided = EncoderConfig.from_dict(d["encoder"])
    if guided.guide_tokens:  # the layout map needs a learned position for every guide token too
        need = guided.max_length + guided.guide_tokens
        d["generator"]["max_tokens"] = max(d["generator"].get("max_tokens", need), need)
    if d.get("projected") is not None:  # the projected D sees the model's images and codes
        d["projected"] = {"resolution": d["resolution"], "c_dim": d["encoder"]["code_dim"], **d["projected"]}
    return ModelConfig.from_dict(d)


def check_config(cfg: TrainConfig) -> None:
    """Every check of a run's options: a ValueError naming the command-line flag of the first bad one."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(msg)

    loss, warm = cfg.loss, cfg.warmup
    need(cfg.kimg > 0, f"--kimg must be > 0, got {cfg.kimg}")
    need(cfg.minutes is None or cfg.minutes > 0, f"--minutes must be > 0, got {cfg.minutes}")
    need(cfg.snap > 0, f"--snap must be > 0, got {cfg.snap}")
    need(cfg.tick > 0, f"tick must be > 0, got {cfg.tick}")
    need(cfg.batch >= 1, f"--batch must be >= 1, got {cfg.batch}")
    need(cfg.batch_gpu is None or cfg.batch_gpu >= 1, f"--batch-gpu must be >= 1, got {cfg.batch_gpu}")
    need(cfg.g_lr > 0 and cfg.d_lr > 0, f"--lr must be > 0, got G {cfg.g_lr}, D {cfg.d_lr}")
    need(cfg.encoder_lr_mult >= 0, f"--encoder-lr-mult must be >= 0, got {cfg.encoder_lr_mult}")
    need(cfg.guide_lr_mult >= 0, f"guide_lr_mult must be >= 0, got {cfg.guide_lr_mult}")
    need(cfg.layout_lr > 0, f"--layout-lr must be > 0, got {cfg.layout_lr}")
    need(cfg.mixed_precision in MIXED_PRECISION,
         f"--mixed-precision must be one of {MIXED_PRECISION}, got {cfg.mixed_precision!r}")
    need(cfg.encoder in (None, *ENCODER_KINDS), f"--encoder must be one of {ENCODER_KINDS}, got {cfg.encoder!r}")
    need(cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}")
    need(cfg.threads is None or cfg.threads >= 1, f"--threads must be >= 1, got {cfg.threads}")
    need(cfg.keep >= 1, f"keep must be >= 1, got {cfg.keep}")
    need(0 <= cfg.input_drop <= 1, f"--input-drop must lie in [0, 1], got {cfg.input_drop}")
    need(0 <= cfg.palette_override <= 1, f"--palette-override must lie in [0, 1], got {cfg.palette_override}")
    need(0 <= cfg.sketch_override <= 1, f"--sketch-override must lie in [0, 1], got {cfg.sketch_override}")
    need(0 <= cfg.shapes_emphasis <= 1, f"--shapes-emphasis must lie in [0, 1], got {cfg.shapes_emphasis}")
    need(cfg.shapes_emphasis == 0 or cfg.data == "shapes",
         f"--shapes-emphasis {cfg.shapes_emphasis} (yours or the preset's) applies to --data shapes only; "
         f"give --shapes-emphasis 0 for --data {cfg.data}")
    need(cfg.ema_kimg >= 0, f"ema_kimg must be >= 0, got {cfg.ema_kimg}")
    need(cfg.max_nonfinite >= 1, f"max_nonfinite must be >= 1, got {cfg.max_nonfinite}")
    need(not (cfg.resume and cfg.init_from), "--resume and --init-from exclude each other")
    need(not (cfg.model and (cfg.resume or cfg.init_from)),
         f"{model_flags(cfg.model)} apply to a fresh run: --resume and --init-from keep the networks they load")
    need(loss.r1_gamma >= 0, f"--gamma must be >= 0, got {loss.r1_gamma}")
    need(loss.r1_interval >= 1, f"loss.r1_interval must be >= 1, got {loss.r1_interval}")
    for flag, value in (("--match-weight", loss.match_weight), ("--contrastive-weight", loss.contrastive_weight),
                        ("--diversity-weight", loss.diversity_weight), ("--word-weight", loss.word_weight),
                        ("--sketch-weight", loss.sketch_weight)):
        need(value >= 0, f"{flag} must be >= 0, got {value}")
    need(warm.kimg >= 0, f"--warmup-kimg must be >= 0, got {warm.kimg}")
    need(warm.batch >= 2, f"warmup.batch must be >= 2 (negatives come from the batch), got {warm.batch}")
    need(warm.lr > 0, f"warmup.lr must be > 0, got {warm.lr}")
    need(warm.layout_kimg >= 0, f"--warmup-layout-kimg must be >= 0, got {warm.layout_kimg}")
    need(loss.sketch_weight == 0 or warm.kimg > 0,
         f"--sketch-weight {loss.sketch_weight} needs --warmup-kimg > 0: the sketch is the warmed layout map's")
    encoder = cfg.model.get("encoder", {})
    grid = encoder.get("sketch_grid", 0)
    need(isinstance(grid, int) and 0 <= grid <= 32, f"--sketch-grid must be an int in 0..32 (0 = no sketch), got {grid}")
    need(encoder.get("max_length", 1) >= 1, f"--max-length must be >= 1, got {encoder.get('max_length')}")
    need(encoder.get("steps_per_token", 1) >= 1,
         f"--steps-per-token must be >= 1, got {encoder.get('steps_per_token')}")
    r = cfg.model.get("generator", {}).get("layout_resolution", 0)
    need(r == 0 or (r >= 4 and not r & (r - 1)),
         f"--layout-resolution must be 0 (none) or a power of two >= 4, got {r}")
    need(cfg.data == "shapes" or Path(cfg.data).exists(),
         f"--data {cfg.data}: no such file or directory (or use 'shapes')")
    need(cfg.init_from is None or (Path(cfg.init_from) / "config.json").is_file(),
         f"--init-from {cfg.init_from}: not a model directory (no config.json)")


def model_flags(model: dict) -> str:
    """The flags that set these ModelConfig overrides, for error messages."""
    flags = {("encoder", "max_length"): "--max-length", ("encoder", "steps_per_token"): "--steps-per-token",
             ("encoder", "spikes"): "--encoder-spikes", ("encoder", "palette"): "--palette",
             ("encoder", "sketch_grid"): "--sketch-grid", ("generator", "layout_resolution"): "--layout-resolution",
             ("projected", "backbone_resolution"): "--discriminator projected / --backbone-resolution",
             ("projected", "pixel"): "--discriminator projected+pixel"}
    named = [flags.get((section, key), f"model.{section}.{key}") for section, sub in model.items()
             for key in (sub if isinstance(sub, dict) else {section: sub})]
    return ", ".join(named)


def split_batch(batch: int, batch_gpu: int | None, processes: int) -> tuple[int, int]:
    """(batch_gpu, accumulation steps) with batch = processes x batch_gpu x accum, or a ValueError
    naming the flags and numbers."""
    if batch_gpu is None:
        if batch % processes:
            raise ValueError(f"--batch {batch} does not divide into {processes} processes")
        return batch // processes, 1
    per_step = processes * batch_gpu
    if batch % per_step:
        raise ValueError(f"--batch {batch} is not a multiple of processes ({processes}) x --batch-gpu "
                         f"({batch_gpu}) = {per_step}")
    return batch_gpu, batch // per_step
