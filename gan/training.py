"""The training loop: StyleGAN2-ADA's schedule under Hugging Face Accelerate.

One step shows `batch` images (global) and runs the loss phases in StyleGAN2-ADA's order:
Gmain (G's Adam), Dmain (D's Adam), and every `loss.r1_interval` steps Dreg (D's Adam).
Each phase runs `accum` micro-batches of `batch_gpu` images on every process inside
`accelerator.accumulate`, so batch = processes x batch_gpu x accum. G here is the exported
`TextToImage` (text encoder + generator, one optimiser): the text encoder trains through its
surrogate gradients from the G loss (see gan/loss.py for why D gets a detached code).

Progress is counted in images (kimg). Every `tick` kimg the gathered statistics go to the
progress bar, `log.jsonl` and TensorBoard; every `snap` kimg (and at the end) the main process
writes a sample grid and the exported EMA model, and all processes write the resumable state
(gan/checkpoint.py). `resume` continues exactly: images seen, optimisers, EMA, augmentation p
and its ADA accumulators, every RNG, and the data order (a seeded stream indexed by position).
`--kimg` is the length of the whole run, so a resumed run stops where the original would have.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import resource
import signal
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from encoders.code import SpikeCode
from encoders.tokenizer import cut_report, cuts_reported
from gan.augment import AugmentConfig, AugmentPipe, adjust_p
from gan.checkpoint import (TOKENIZER_FILE, load_guide_state, load_sketch_state, load_training_state, read_trainer,
                            resolve_resume, save_training_state)
from gan.ema import EMA
from gan.layout import LayoutTeacher, PromptLayout
from gan.loss import GANLoss, LossConfig
from gan.warmup import ImageTextScorer, WarmupConfig, WordSwaps, new_sketch, warm_up_encoder

MIXED_PRECISION = ("no", "bf16", "fp16")

# Per-preset training defaults (TrainConfig overrides; nested dicts merge into loss/augment/model).
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    # Tests and smoke runs: a few steps of the 16 px networks, every loss term on.
    "tiny": dict(kimg=0.128, batch=16, snap=0.064, tick=0.032, ema_kimg=0.01, ema_rampup=None,
                 loss=dict(r1_gamma=0.1, r1_interval=4, contrastive_weight=1.0, diversity_weight=1.0,
                           word_weight=1.0, guide_weight=1.0, sketch_weight=1.0, hard_negatives="exchange"),
                 augment=dict(interval=2, speed_kimg=1.0),
                 warmup=dict(kimg=0.032, batch=16, hard_negatives="replace", word_region=True, layout_kimg=0.016),
                 grid_seeds=4, grid_rows=4, workers=0),
    # The CPU main job (README command one): 32 px shapes in about 16 minutes on 2 cores
    # (measured ~16 s per kimg of training at 2 threads; 10.7 with D half as wide, same day).
    # 20-kimg runs scored by the attribute probe picked lr 0.005, the contrastive term and
    # code_in_w: mean attribute accuracy 0.46 (lr 0.0025, neither) -> 0.54, count 0.76 -> 0.90,
    # position 0.63 -> 0.82; but LPIPS diversity fell 0.12 -> 0.06 (one image per prompt), which
    # the mode-seeking term brings back to 0.15 (the issue 5 note lists every run). The word
    # term (D's word classifier, gan/loss.py) is on, with a D twice as wide (gan/config.py); G's
    # half of it counts only the caption's own words (gan/loss.py: main-job FID 179 -> 170, LPIPS
    # diversity 0.16 -> 0.22, attributes within noise over two seeds). Its weight 3 -> 6, seeds
    # 0 (the main job) / 1 / 2 (scripts/train.py --seed, the main job's scoring): mean attribute
    # accuracy 0.691 / 0.74 / 0.710 -> 0.752 / 0.756 / 0.714, background 0.50 / 0.76 / 0.52 ->
    # 0.77 / 0.84 / 0.59, shape 0.53 / 0.48 / 0.53 -> 0.59 / 0.56 / 0.55, colour 0.60 / 0.58 /
    # 0.62 -> 0.63 / 0.63 / 0.60, FID 170.3 / 174.8 / 183.9 -> 170.7 / 175.4 / 195.2, LPIPS
    # diversity 0.22 / 0.16 / 0.22 -> 0.18 / 0.14 / 0.13 (weight 10, seed 0: mean 0.752,
    # background 0.86, shape 0.54, FID 179.0). Weight 3, the main job, both measured the same
    # day at 2 threads, D 64 channels without the term -> 128 with it (before the
    # positives-only change): shape accuracy 0.32 -> 0.55, colour 0.54 -> 0.60,
    # position 0.90 -> 0.99, size 0.72 -> 0.73, relation 0.58 -> 0.59, count 0.93 -> 0.95,
    # background 0.77 -> 0.48, mean 0.680 -> 0.698; FID 179.8 -> 179.3, KID 0.109 -> 0.110,
    # LPIPS diversity 0.22 -> 0.16; 10:35 -> 15:46 wall, peak RSS 1.51 -> 1.64 GB. Backgrounds
    # swing between runs (one-thread 50-kimg runs: 0.75-0.86, seeds 0 / 1; main job 0.48, the
    # same run with --seed 1 0.78: seed 0 loses the grey background between 10 and 30 kimg,
    # though D's word classifier still tells grey fakes are not grey; the mode-seeking term's
    # pixel distance rewards a pair of seeds for flipping their background, gan/loss.py). R1
    # gamma 2 with the wide D: main job mean 0.666 (background 0.53, colour 0.45, FID 166), one-thread
    # 0.74 / 0.73 (seeds 0 / 1; 0.77 for seed 1 at gamma 0.5), so gamma stays 0.5. One machine
    # repeats the main job exactly; another day's machine gave the same preset 0.680 where it had
    # given 0.689, so differences under ~0.02 are noise. The text encoder stays nearly
    # frozen (encoder_lr_mult 0.01): at 0.1 and 1.0 the 20-kimg mean fell 0.52 -> 0.35 and 0.30.
    # D without blur (gan/config.py) and R1 gamma 0.1 -> 0.5: the main job went from
    # mean attribute accuracy 0.638 to 0.689 (count 0.96 -> 0.98, background 0.56 -> 0.77, shape
    # 0.27 -> 0.31, position 0.94 -> 0.98), FID 175 -> 174. Without the blur at gamma 0.1 it fell
    # to 0.585, FID 206, with D far ahead of G (final D loss 0.5; 1.1 at gamma 0.5).
    # Two-object scenes had their colours on the right sides only as often as swapped (the main
    # job's attr_binding 0.35, eval/attributes.py): G ordered the colours by a rule of its own.
    # Exchange hard negatives did not change that (gan/loss.py). G's layout map (gan/config.py),
    # warmed up alone for 128 kimg more, and the sketch term at weight 16 do (gan/layout.py):
    # 50-kimg runs, seed 0, the main job's eval, against the main job without them: binding 0.35 -> 0.89
    # (right 0.92, exchanged 0.00 of 400), colour 0.63 -> 0.96, relation 0.56 -> 1.00, shape
    # 0.59 -> 0.67, mean 0.752 -> 0.878; but background 0.77 -> 0.70, FID 170.7 -> 210.8, LPIPS
    # diversity 0.18 -> 0.11. At weight 4 or 8 it did not bind (0.33 / 0.31); with the map warmed
    # alone 64 kimg instead of 128, binding 0.80 and LPIPS diversity 0.05. Seed 1: binding 0.61
    # (right 0.62, exchanged 0.09), colour 0.81, mean 0.822, FID 201.2 (before: mean 0.756, FID 175.4).
    "shapes32": dict(kimg=50.0, batch=32, snap=10.0, tick=1.0, g_lr=0.005, d_lr=0.005, ema_kimg=2.0,
                     ema_rampup=0.05, loss=dict(r1_gamma=0.5, r1_interval=16, match_weight=1.0, contrastive_weight=1.0,
                                                diversity_weight=1.0, word_weight=6.0, sketch_weight=16.0),
                     # The procedural domain never repeats an image, so D cannot overfit it, and
                     # colour / translation augmentation would only blur the colours and positions
                     # the prompts ask for: no augmentation here (user datasets keep ADA).
                     augment=dict(mode="off"), workers=1,
                     # The text encoder first trains CLIP-style on the pairs (800 steps of 64, 80 s
                     # on 2 cores). Main job, against the same preset without it (final membrane
                     # off, its best setting then): mean attribute accuracy 0.546 -> 0.616, count
                     # 0.87 -> 0.94, background 0.37 -> 0.56, position 0.83 -> 0.92, relation
                     # 0.41 -> 0.52, LPIPS diversity 0.085 -> 0.165; FID 189 -> 203 (500 images);
                     # 15:11 -> 17:18 wall. Shapes stayed at chance (0.22) with or without it, and
                     # with a perfect one-hot code (0.29); D's blur was one reason (see shapes32's
                     # discriminator in gan/config.py). The guide term (--guide-weight, gan/loss.py)
                     # lifts shapes but costs background, so it is off here; with the warm-up's
                     # word-region term it does not bind colours to objects and costs FID on one
                     # seed of two (gan/loss.py).
                     warmup=dict(kimg=51.2, layout_kimg=128.0),
                     # Rows that vary one thing at a time: position, colour, shape, relation.
                     grid_prompts=(
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
                     )),
    "emoji64": dict(kimg=2000.0, batch=64, snap=50.0, tick=4.0, ema_kimg=10.0, loss=dict(r1_gamma=0.5)),
    "custom64": dict(kimg=5000.0, batch=64, snap=50.0, tick=4.0, ema_kimg=20.0, loss=dict(r1_gamma=0.5)),
    "custom128": dict(kimg=10000.0, batch=64, snap=50.0, tick=4.0, ema_kimg=20.0, loss=dict(r1_gamma=2.0)),
    "custom256": dict(kimg=25000.0, batch=64, snap=50.0, tick=4.0, ema_kimg=20.0, loss=dict(r1_gamma=10.0)),
}


@dataclass
class TrainConfig:
    """Every option of a training run; config.json holds the resolved one."""

    data: str = "shapes"  # Dataset: a folder, .zip, prepared directory, or "shapes".
    preset: str = "shapes32"  # Model preset (gan.config.preset) whose TRAIN_PRESETS defaults apply.
    out: str = "runs/train"  # Run directory.
    encoder: str | None = None  # Encoder kind override (embedding|recurrent|transformer); None = preset's.
    kimg: float = 60.0  # Length of the whole run in thousands of images (resume counts from the state).
    batch: int = 32  # Global batch: processes x batch_gpu x accumulation steps.
    batch_gpu: int | None = None  # Images per process per micro-batch; None = batch / processes.
    g_lr: float = 0.0025  # Adam learning rate of G (generator + text encoder).
    d_lr: float = 0.0025  # Adam learning rate of D.
    encoder_lr_mult: float = 0.01  # Text encoder's learning rate relative to g_lr (0 = frozen).
    layout_lr: float = 1e-3  # Adam learning rate of G's layout map, with momentum (gan/layout.py).
    loss: LossConfig = field(default_factory=LossConfig)  # R1 gamma/interval, matching-aware weight.
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
    grid_prompts: tuple[str, ...] = ()  # Rows of the sample grid; () = the dataset's first distinct captions.
    grid_rows: int = 12  # Rows taken from the dataset when grid_prompts is empty.
    grid_seeds: int = 6  # Columns of the sample grid (latent seeds 0..grid_seeds-1).
    max_nonfinite: int = 20  # Stop after this many consecutive steps with a non-finite loss.
    threads: int | None = None  # torch.set_num_threads per process; None = leave torch's default.
    model: dict = field(default_factory=dict)  # Overrides merged into the preset's ModelConfig dict.

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
        d["loss"] = LossConfig(**d.get("loss", {}))
        d["augment"] = AugmentConfig(**d.get("augment", {}))
        d["warmup"] = WarmupConfig(**d.get("warmup", {}))
        d["grid_prompts"] = tuple(d.get("grid_prompts", ()))
        return cls(**d)


def deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, recursing into dicts present in both."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config(preset: str = "shapes32", **overrides: Any) -> TrainConfig:
    """TrainConfig defaults, then TRAIN_PRESETS[preset], then `overrides` (None = not given)."""
    from gan.config import PRESETS

    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r}: choose one of {list(PRESETS)}")
    d = deep_merge(TrainConfig().to_dict(), TRAIN_PRESETS.get(preset, {}))
    d = deep_merge(d, {k: v for k, v in overrides.items() if v is not None})
    d["preset"] = preset
    return TrainConfig.from_dict(d)


def model_config(cfg: TrainConfig):
    """The ModelConfig a fresh run builds: the preset, the --encoder kind, then cfg.model."""
    from gan.config import ModelConfig, preset

    d = preset(cfg.preset).to_dict()
    if cfg.encoder is not None:
        d["encoder"]["kind"] = cfg.encoder
    return ModelConfig.from_dict(deep_merge(d, cfg.model))


def check_config(cfg: TrainConfig) -> None:
    """Errors that name the command-line flag of the bad option."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ValueError(msg)

    need(cfg.kimg > 0, f"--kimg must be > 0, got {cfg.kimg}")
    need(cfg.snap > 0, f"--snap must be > 0, got {cfg.snap}")
    need(cfg.tick > 0, f"tick must be > 0, got {cfg.tick}")
    need(cfg.batch >= 1, f"--batch must be >= 1, got {cfg.batch}")
    need(cfg.batch_gpu is None or cfg.batch_gpu >= 1, f"--batch-gpu must be >= 1, got {cfg.batch_gpu}")
    need(cfg.g_lr > 0 and cfg.d_lr > 0, f"--lr must be > 0, got G {cfg.g_lr}, D {cfg.d_lr}")
    need(cfg.encoder_lr_mult >= 0, f"--encoder-lr-mult must be >= 0, got {cfg.encoder_lr_mult}")
    need(cfg.layout_lr > 0, f"--layout-lr must be > 0, got {cfg.layout_lr}")
    need(cfg.mixed_precision in MIXED_PRECISION,
         f"--mixed-precision must be one of {MIXED_PRECISION}, got {cfg.mixed_precision!r}")
    need(cfg.encoder in (None, "embedding", "recurrent", "transformer"),
         f"--encoder must be embedding, recurrent or transformer, got {cfg.encoder!r}")
    need(cfg.workers >= 0, f"--workers must be >= 0, got {cfg.workers}")
    need(cfg.keep >= 1, f"keep must be >= 1, got {cfg.keep}")
    need(cfg.ema_kimg >= 0, f"ema_kimg must be >= 0, got {cfg.ema_kimg}")
    need(not (cfg.resume and cfg.init_from), "--resume and --init-from exclude each other")
    need(cfg.loss.hard_negatives == "off" or cfg.loss.match_weight > 0 or cfg.loss.contrastive_weight > 0,
         "--hard-negatives needs --match-weight or --contrastive-weight > 0: they are the terms it joins")
    need(cfg.loss.guide_weight == 0 or cfg.warmup.kimg > 0,
         f"--guide-weight {cfg.loss.guide_weight} needs --warmup-kimg > 0: the guide is the warm-up's image tower")
    need(cfg.loss.sketch_weight == 0 or cfg.warmup.kimg > 0,
         f"--sketch-weight {cfg.loss.sketch_weight} needs --warmup-kimg > 0: the sketch is the warmed layout map's")
    need(cfg.max_nonfinite >= 1, f"max_nonfinite must be >= 1, got {cfg.max_nonfinite}")


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


# ---------------------------------------------------------------------------------------------
# Data: a seeded, endless, position-indexed stream (exact resume restarts it at a position).

class StreamSampler(torch.utils.data.Sampler):
    """Shuffled epochs of range(size) from torch.randperm seeded with (seed, epoch), dealt round
    robin: process `rank` of `world` takes stream positions rank, rank + world, ... Starts after
    `start` of this process's items, so a resumed run sees exactly what the original would have."""

    def __init__(self, *, size: int, rank: int, world: int, seed: int, start: int = 0) -> None:
        self.size, self.rank, self.world, self.seed, self.start = size, rank, world, seed, start

    def __iter__(self):
        g = self.start * self.world + self.rank  # global stream position
        epoch, perm = -1, None
        while True:
            e, i = divmod(g, self.size)
            if e != epoch:
                epoch = e
                perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100003 + e))
            yield int(perm[i])
            g += self.world


@dataclass
class MicroBatch:
    real: torch.Tensor  # [b, 3, R, R] float in [-1, 1]
    tokens: Any  # encoders.TokenBatch with b rows
    index: torch.Tensor  # [b] dataset indices


def make_loader(dataset, *, batch_gpu: int, rank: int, world: int, seed: int, start: int, workers: int):
    from data import collate

    sampler = StreamSampler(size=len(dataset), rank=rank, world=world, seed=seed, start=start)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_gpu, sampler=sampler, collate_fn=collate, num_workers=workers,
        persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed),  # keeps global RNG untouched
        prefetch_factor=4 if workers > 0 else None, worker_init_fn=leave_stop_signals_to_parent)


@contextmanager
def catch_stop_signals():
    """Within the block, SIGINT and SIGTERM only record their name in the yielded dict (the loop
    polls it and stops cleanly); a second one raises KeyboardInterrupt. The old handlers come
    back on exit."""
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None:  # second signal: give up waiting
            raise KeyboardInterrupt
        stop["signal"] = signal.Signals(signum).name

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)


def leave_stop_signals_to_parent(worker_id: int) -> None:
    """Loader workers ignore SIGINT and SIGTERM. A terminal's Ctrl-C and a scheduler's SIGTERM
    reach the whole process group; a worker killed by one makes the loader raise before the
    training process has written its final state. That process stops its workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ---------------------------------------------------------------------------------------------

class GeneratorStep(nn.Module):
    """The TextToImage as one module for Accelerate/DDP: (z, tokens) -> (img, code), so the
    encoder's and generator's gradients synchronise together in the G phase."""

    def __init__(self, model: nn.Module) -> None:  # gan.model.TextToImage
        super().__init__()
        self.model = model

    def forward(self, z: torch.Tensor, tokens) -> tuple[torch.Tensor, Any]:
        code = self.model.encoder(tokens)
        return self.model.generator(z, code), code


@dataclass
class LoopState:
    """Everything besides networks and optimisers that a resume must restore."""

    nimg: int = 0  # Images shown so far (all processes).
    step: int = 0  # Optimiser steps of G so far (skipped ones included).
    augment_p: float = 0.0  # Current augmentation probability.
    ada_sign_sum: float = 0.0  # ADA accumulators since the last adjustment (gathered).
    ada_count: float = 0.0
    nonfinite_total: int = 0  # Steps with a skipped phase because a loss was not finite.
    nonfinite_streak: int = 0  # Consecutive such steps.

    def count_nonfinite(self, ok: bool, *, limit: int, checkpoints: Path) -> None:
        """Count a step (ok: every phase stepped); `limit` consecutive bad ones stop the run."""
        if ok:
            self.nonfinite_streak = 0
            return
        self.nonfinite_total += 1
        self.nonfinite_streak += 1
        if self.nonfinite_streak >= limit:
            raise NonFiniteLossError(
                f"the loss was not finite in {self.nonfinite_streak} consecutive steps (at {self.nimg / 1000:.3f} "
                f"kimg; {self.nonfinite_total} skipped in all); stopping. The last saved state in {checkpoints} is "
                f"whole: lower --lr, raise --gamma or use --mixed-precision no, then --resume latest")

    def adjust_augment(self, augment: AugmentPipe, ada: list[float], cfg: TrainConfig) -> None:
        """ADA: add this step's gathered (sum of sign(D(real)), count), and every
        cfg.augment.interval steps move augment.p toward the target."""
        self.ada_sign_sum += ada[0]
        self.ada_count += ada[1]
        if self.step % cfg.augment.interval == 0 and self.ada_count > 0:
            augment.p = adjust_p(augment.p, rt=self.ada_sign_sum / self.ada_count, target=cfg.augment.target,
                                 num_images=cfg.batch * cfg.augment.interval, speed_kimg=cfg.augment.speed_kimg)
            self.ada_sign_sum = self.ada_count = 0.0


@dataclass
class TrainResult:
    """What train() leaves behind (unwrapped modules, on the training device)."""

    out: Path
    model: nn.Module  # Live TextToImage.
    ema: nn.Module  # EMA TextToImage (what OUT/model holds; the live model if stopped in the warm-up).
    discriminator: nn.Module
    tokenizer: Any
    state: LoopState
    interrupted: bool


class NonFiniteLossError(RuntimeError):
    """The loss was not finite in too many consecutive steps."""


class MainProcess:
    """The one place side effects happen: files, console, trackers; no-ops on other ranks."""

    def __init__(self, accelerator, out: Path) -> None:
        self.accelerator = accelerator
        self.out = out
        self.active = accelerator.is_main_process

    def print(self, *args) -> None:
        if self.active:
            from tqdm import tqdm

            tqdm.write(" ".join(str(a) for a in args))

    def write_json(self, name: str, payload: dict) -> None:
        if self.active:
            path = self.out / name
            tmp = path.with_suffix(path.suffix + ".tmp")
            tmp.write_text(json.dumps(payload, indent=2) + "\n")
            os.replace(tmp, path)

    def append_log(self, record: dict) -> None:
        if self.active:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                             step=int(record["kimg"] * 1000))

    def run(self, fn: Callable, *args, **kwargs):
        """fn(*args) on the main process only, without touching any RNG the loop uses."""
        if not self.active:
            return None
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)


def _flat_hparams(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_hparams(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def grid_prompts(cfg: TrainConfig, captions: list[str]) -> list[str]:
    """The fixed prompts of the sample grid: cfg.grid_prompts or the first distinct captions."""
    if cfg.grid_prompts:
        return list(cfg.grid_prompts)
    return list(dict.fromkeys(captions))[: cfg.grid_rows]


@torch.no_grad()
def render_grid(model: nn.Module, tokenizer, prompts: list[str], seeds: list[int], *, device,
                emphasis: bool = True) -> Any:
    """PIL grid: one row per prompt (its text in a left margin), one column per latent seed;
    EMA model, constant noise, 32 px and smaller tiles doubled (nearest) for legibility.
    emphasis=False reads the prompts literally (dataset captions, as training reads them)."""
    import PIL.Image
    import PIL.ImageDraw

    from gan.grid import image_grid, to_pil

    was_training = model.training
    model.eval()
    z_dim = model.generator.z_dim
    z = torch.cat([torch.randn(1, z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)
    tokens = tokenizer([p for p in prompts for _ in seeds], emphasis=emphasis).to(device)  # row-major: prompt, seed
    img = model.generator(z.repeat(len(prompts), 1), model.encoder(tokens), noise_mode="const")
    rows = to_pil(img.float())
    model.train(was_training)
    scale = 2 if rows[0].size[0] <= 32 else 1
    if scale > 1:
        rows = [im.resize((im.size[0] * scale, im.size[1] * scale), PIL.Image.NEAREST) for im in rows]
    grid = image_grid(rows, rows=len(prompts), cols=len(seeds), gap=2)
    margin = 300
    canvas = PIL.Image.new("RGB", (grid.size[0] + margin, grid.size[1]), (255, 255, 255))
    canvas.paste(grid, (margin, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    tile = rows[0].size[1] + 2
    for r, prompt in enumerate(prompts):
        draw.text((4, r * tile + tile // 2 - 6), prompt[:48], fill=(0, 0, 0))
    return canvas


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


# ---------------------------------------------------------------------------------------------

def build_networks(cfg: TrainConfig, resume_dir: Path | None, main: MainProcess):
    """(dataset, its captions, model TextToImage, D, tokenizer, model_cfg) for a fresh, resumed or
    fine-tuned run."""
    from data import open_dataset
    from encoders import load_tokenizer, make_tokenizer
    from gan.config import DiscriminatorConfig, ModelConfig
    from gan.discriminator import Discriminator
    from gan.model import TextToImage, load_model

    if resume_dir is not None:
        model_cfg = ModelConfig.from_dict(read_trainer(resume_dir)["model_config"])
        dataset = open_dataset(cfg.data, resolution=model_cfg.resolution, seed=cfg.seed)
        captions = dataset.captions()
        tokenizer = load_tokenizer(resume_dir / TOKENIZER_FILE)
        model = TextToImage(model_cfg)
    elif cfg.init_from is not None:
        model, tokenizer = load_model(cfg.init_from, device="cpu")
        dataset = open_dataset(cfg.data, resolution=model.cfg.resolution, seed=cfg.seed)
        old_size = len(tokenizer)
        captions = dataset.captions()
        added = tokenizer.extend(captions)
        model.encoder.resize_vocab(len(tokenizer))
        # D starts afresh (a model directory holds none), so cfg.model may still reshape it.
        d = deep_merge(dataclasses.asdict(model.cfg.discriminator), cfg.model.get("discriminator", {}))
        model_cfg = model.cfg.replace(vocab_size=len(tokenizer), discriminator=DiscriminatorConfig(**d))
        model.cfg = model_cfg
        main.print(f"fine-tuning {cfg.init_from}: vocabulary {old_size} -> {len(tokenizer)} words "
                   f"(new: {' '.join(added[:20])}{' ...' if len(added) > 20 else ''})")
    else:
        model_cfg = model_config(cfg)
        dataset = open_dataset(cfg.data, resolution=model_cfg.resolution, seed=cfg.seed)
        captions = dataset.captions()
        tokenizer = make_tokenizer(model_cfg.encoder, captions)
        model_cfg = model_cfg.replace(vocab_size=len(tokenizer))
        model = TextToImage(model_cfg)
    if resume_dir is not None and (cfg.loss.word_weight > 0) != (model_cfg.discriminator.word_classes > 0):
        raise ValueError(f"--word-weight {cfg.loss.word_weight}: the run in {resume_dir} was trained "
                         f"{'with' if model_cfg.discriminator.word_classes else 'without'} D's word classifier; "
                         f"resume it with the word weight it started with")
    if resume_dir is None:  # D's word classifier covers the (possibly extended) vocabulary, or is absent
        words = len(tokenizer) if cfg.loss.word_weight > 0 else 0
        model_cfg = model_cfg.replace(discriminator=dataclasses.replace(model_cfg.discriminator, word_classes=words))
        model.cfg = model_cfg
    return dataset, captions, model, Discriminator(model_cfg.discriminator), tokenizer, model_cfg


class TickStats:
    """Per-process sums of the loss phases' statistics between log ticks, gathered at each tick;
    ADA's `ada/*` entries are kept apart, per step."""

    def __init__(self, device) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # name -> [sum, count]
        self.ada = torch.zeros(2, device=device)  # this step's sum of sign(D(real)) and count
        self.device = device

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            if k.startswith("ada/"):
                self.ada[0 if k == "ada/sign_sum" else 1] += v.detach().float()
                continue
            s = self.sums.setdefault(k, torch.zeros(2, device=self.device))
            s += torch.stack([v.detach().float(), torch.ones((), device=self.device)])

    def pop_ada(self) -> torch.Tensor:
        """This step's ADA sums (this process's), then zeroed."""
        ada = self.ada.clone()
        self.ada.zero_()
        return ada

    def gather(self, accelerator) -> dict[str, float]:
        """Means over every process since the last gather, then cleared."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        sums = accelerator.reduce(torch.stack([self.sums[k] for k in keys]), reduction="sum")
        self.sums.clear()
        return {k: round(float(sums[i, 0] / sums[i, 1].clamp(min=1)), 6) for i, k in enumerate(keys)}


def run_warmup(cfg: TrainConfig, encoder: nn.Module, dataset, tokenizer, swaps: WordSwaps | None, *, resolution: int,
               device, any_process_stopped: Callable[[dict], bool],
               layout: PromptLayout | None = None
               ) -> tuple[dict, ImageTextScorer, LayoutTeacher | None, str | None]:
    """The contrastive encoder warm-up (gan/warmup.py) under the stop signals: (its log record,
    the image-text scorer, the warmed layout's frozen sketch (None without a layout), the signal's
    name if a process was stopped, else None). Every process draws the same pairs (rank 0 of 1),
    so all warm up alike. G's layout, if any, warms up too."""
    pairs = make_loader(dataset, batch_gpu=cfg.warmup.batch, rank=0, world=1, seed=cfg.seed, start=0,
                        workers=cfg.workers)
    sketch = new_sketch(layout, device) if layout is not None else None
    with catch_stop_signals() as stop:
        warm, guide = warm_up_encoder(encoder, iter(pairs), tokenizer, cfg.warmup, resolution=resolution,
                                      device=device, swaps=swaps, should_stop=lambda: any_process_stopped(stop),
                                      layout=layout, sketch=sketch)
    del pairs
    stopped = any_process_stopped(stop)
    teacher = LayoutTeacher(copy.deepcopy(layout), sketch) if layout is not None else None
    return warm, guide, teacher, (stop["signal"] or "signal") if stopped else None


def make_optimizers(cfg: TrainConfig, model: nn.Module, D: nn.Module) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """StyleGAN2's Adam pair (betas 0, 0.99). G's covers the generator and, at encoder_lr_mult, the
    text encoder: at G's rate its spiking layers drift into saturation within a few kimg (firing
    rate 0.06 -> 0.28) and the codes of different prompts collapse before D has learnt to read
    them (measured on shapes32). G's layout map, if any, has a group of its own at layout_lr with
    momentum (betas 0.9, 0.999): without it the map's attention does not learn (gan/layout.py). Lazy R1 steps D's Adam r1_interval / (r1_interval + 1) times as
    often, so its rate and beta2 are scaled to match (StyleGAN2's mb_ratio)."""
    mb = cfg.loss.r1_interval / (cfg.loss.r1_interval + 1) if cfg.loss.r1_gamma > 0 else 1.0
    layout = model.generator.synthesis.layout
    in_layout = {id(p) for p in layout.parameters()} if layout is not None else set()
    g_groups = [{"params": [p for p in model.generator.parameters() if p.requires_grad and id(p) not in in_layout],
                 "lr": cfg.g_lr},
                {"params": [p for p in model.encoder.parameters() if p.requires_grad],
                 "lr": cfg.g_lr * cfg.encoder_lr_mult},
                {"params": [p for p in (layout.parameters() if layout is not None else ()) if p.requires_grad],
                 "lr": cfg.layout_lr, "betas": (0.9, 0.999)}]
    g_opt = torch.optim.Adam([g for g in g_groups if g["params"]], betas=(0.0, 0.99), eps=1e-8)
    d_opt = torch.optim.Adam(D.parameters(), lr=cfg.d_lr * mb, betas=(0.0, 0.99**mb), eps=1e-8)
    return g_opt, d_opt


def train(cfg: TrainConfig, *, metrics_callback: Callable[[Path, float], dict] | None = None) -> TrainResult:
    """Run (or resume) training as `cfg` says; see the module docstring. metrics_callback(model_dir,
    kimg) -> dict of numbers runs on the main process after each exported snapshot model."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, set_seed

    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    resume_dir = resolve_resume(cfg.resume, out) if cfg.resume else None
    # Accumulation steps need the process count, known only once Accelerate has started.
    probe = int(os.environ.get("WORLD_SIZE", "1"))
    batch_gpu, accum = split_batch(cfg.batch, cfg.batch_gpu, probe)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # without it, torchrun on CPUs starts N single-process runs
        mixed_precision=cfg.mixed_precision, log_with="tensorboard", project_dir=str(out),
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accum, sync_with_dataloader=False))
    world, rank = accelerator.num_processes, accelerator.process_index
    batch_gpu, accum = split_batch(cfg.batch, cfg.batch_gpu, world)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    main = MainProcess(accelerator, out)

    set_seed(cfg.seed)  # identical initialisation on every process
    dataset, captions, model, D, tokenizer, model_cfg = build_networks(cfg, resume_dir, main)
    if cfg.loss.sketch_weight > 0 and model.generator.synthesis.layout is None:
        raise ValueError(f"--sketch-weight {cfg.loss.sketch_weight} needs G's layout map (--layout-resolution "
                         f"in a fresh run): the sketch is the warmed map's")
    device = accelerator.device
    model.to(device)
    D.to(device)

    def any_process_stopped(stop: dict) -> bool:
        flag = torch.tensor(float(stop["signal"] is not None), device=device)
        return accelerator.reduce(flag, reduction="sum").item() > 0

    # Captions longer than max_length are reported once here, not warned about one by one below.
    if report := cut_report(tokenizer, captions):
        main.print(f"{report} (--max-length sets the limit of a fresh run)")
    swaps = None
    if cfg.warmup.hard_negatives != "off" or cfg.loss.hard_negatives != "off":  # the guide uses the warm-up's kind
        with cuts_reported():
            swaps = WordSwaps.build(tokenizer, captions)
    warm, guide, teacher = {}, None, None
    if resume_dir is None and cfg.warmup.kimg > 0:
        with cuts_reported():
            warm, guide, teacher, stopped = run_warmup(cfg, model.encoder, dataset, tokenizer, swaps,
                                              resolution=model_cfg.resolution, device=device,
                                              any_process_stopped=any_process_stopped,
                                              layout=model.generator.synthesis.layout)
        if stopped:
            main.print(f"{stopped} received in the encoder warm-up, after {warm['warmup/steps']} of its steps: no "
                       f"training state exists yet; run the same command again to start over")
            accelerator.end_training()
            return TrainResult(out=out, model=model, ema=model, discriminator=D, tokenizer=tokenizer,
                               state=LoopState(), interrupted=True)
        main.print(f"encoder warm-up: {cfg.warmup.kimg:g} kimg in {warm['warmup/seconds']:.0f} s, contrastive loss "
                   f"{warm['warmup/loss']:.3f}, in-batch retrieval {warm['warmup/accuracy']:.2f}"
                   + (f", layout error {warm['warmup/layout_error']:.3f}" if "warmup/layout_error" in warm else ""))
    if cfg.loss.guide_weight == 0:
        guide = None
    elif resume_dir is not None:  # the scorer the run warmed up, from its state
        saved = load_guide_state(resume_dir)
        guide = ImageTextScorer(resolution=model_cfg.resolution, code_dim=model_cfg.encoder.code_dim,
                                word_region="words.pos" in saved,  # as the run warmed up, whatever cfg says
                                max_tokens=model_cfg.encoder.max_length, hard_negatives=cfg.warmup.hard_negatives)
        guide.load_state_dict(saved)
        guide = guide.to(device).requires_grad_(False).eval()
    if cfg.loss.sketch_weight == 0:
        teacher = None
    elif resume_dir is not None:  # the sketch the run warmed up, from its state
        teacher = LayoutTeacher.like(model.generator.synthesis.layout)
        teacher.load_state_dict(load_sketch_state(resume_dir))
        teacher = teacher.to(device)
    model.train()
    D.train()
    ema = EMA(source=model, ema_kimg=cfg.ema_kimg, ema_rampup=cfg.ema_rampup)
    augment = AugmentPipe(cfg=cfg.augment)

    def hard_negatives(tokens, kind: str) -> tuple[SpikeCode, torch.Tensor]:
        """The batch's hard-negative captions of `kind`, coded by the live encoder (detached, as
        D's view of every caption is)."""
        swapped, valid = swaps(tokens, kind)
        with torch.no_grad():
            return model.encoder(swapped.to(device)), valid

    loss_fn = GANLoss(cfg=cfg.loss, augment=augment if cfg.augment.mode != "off" else None, guide=guide, teacher=teacher,
                      hard_negatives=hard_negatives if swaps is not None else None)

    g_opt, d_opt = make_optimizers(cfg, model, D)
    G_step, D_ddp, g_opt, d_opt = accelerator.prepare(GeneratorStep(model), D, g_opt, d_opt)
    G_raw, D_raw = accelerator.unwrap_model(G_step), accelerator.unwrap_model(D_ddp)

    state = LoopState(augment_p=augment.p)
    if resume_dir is not None:
        ema.load_state_dict(load_training_state(resume_dir, accelerator=accelerator))
        state = LoopState(**read_trainer(resume_dir)["loop"])
        main.print(f"resumed from {resume_dir} at {state.nimg / 1000:.3f} kimg")
    else:
        set_seed(cfg.seed, device_specific=True)  # each process its own z, noise, augmentation
    augment.p = state.augment_p

    resolved = {"train": cfg.to_dict(), "model": model_cfg.to_dict(), "processes": world,
                "batch_gpu": batch_gpu, "accumulation": accum}
    main.write_json("config.json", resolved)
    accelerator.init_trackers("tensorboard", config=_flat_hparams(resolved))
    if warm:
        main.append_log({"kimg": 0.0, **warm})
    prompts = grid_prompts(cfg, captions)

    loader = make_loader(dataset, batch_gpu=batch_gpu, rank=rank, world=world, seed=cfg.seed,
                         start=state.step * batch_gpu * accum, workers=cfg.workers)
    batches = iter(loader)

    def next_micro() -> MicroBatch:
        from data import to_float

        b = next(batches)
        with cuts_reported():
            tokens = tokenizer(b["text"], emphasis=False)
        return MicroBatch(real=to_float(b["image"]).to(device), tokens=tokens.to(device), index=b["index"])

    exits = ExitStack()
    stop = exits.enter_context(catch_stop_signals())

    total_nimg = int(round(cfg.kimg * 1000))
    snap_nimg, tick_nimg = max(1, int(round(cfg.snap * 1000))), max(1, int(round(cfg.tick * 1000)))
    tick_stats = TickStats(device)
    tick_start, tick_nimg0 = time.time(), state.nimg
    skips_in_tick = 0

    from tqdm import tqdm

    bar = tqdm(total=cfg.kimg, initial=state.nimg / 1000, unit="kimg", disable=not accelerator.is_main_process,
               bar_format="{l_bar}{bar}| {n:.3f}/{total:.3f} kimg [{elapsed}<{remaining}{postfix}]",
               mininterval=2.0)

    def run_phase(phase: str, module, opt, micro: list[MicroBatch], **call) -> bool:
        """Accumulate one phase over the micro-batches, then step (True) or skip when non-finite."""
        bad = torch.zeros((), device=device)
        for m in micro:
            with accelerator.accumulate(module):
                inputs = call_inputs(phase, m)
                with accelerator.autocast():
                    loss, stats = loss_fn(phase, **inputs)
                bad += (~torch.isfinite(loss.detach())).float()
                accelerator.backward(loss)
                tick_stats.add(stats)
        ok = accelerator.reduce(bad, reduction="sum").item() == 0
        if ok:
            opt.step()
        opt.zero_grad(set_to_none=True)
        return ok

    def call_inputs(phase: str, m: MicroBatch) -> dict:
        z = torch.randn(m.real.shape[0], model.generator.z_dim, device=device)
        if phase == "Gmain":
            return dict(G=G_step, D=D_raw, z=z, batch=m.tokens)
        if phase == "Dmain":
            return dict(G=G_raw, D=D_ddp, z=z, batch=m.tokens, real=m.real)
        with torch.no_grad():
            code = model.encoder(m.tokens)
        return dict(D=D_ddp, real=m.real, code=code)

    def snapshot() -> None:
        kimg = state.nimg / 1000

        def export():
            from gan.model import save_model

            (out / "samples").mkdir(exist_ok=True)
            # Rows taken from the dataset are captions: read literally ("smile (" is no broken emphasis),
            # their cuts already reported.
            from_data = not cfg.grid_prompts
            with cuts_reported() if from_data else nullcontext():
                grid = render_grid(ema.model, tokenizer, prompts, list(range(cfg.grid_seeds)), device=device,
                                   emphasis=not from_data)
            grid.save(out / "samples" / f"grid-{kimg:08.3f}.png")
            save_model(out / "model", ema.model, tokenizer)
            if metrics_callback is not None:
                metrics = metrics_callback(out / "model", kimg)
                main.append_log({"kimg": kimg, **{f"metrics/{k}": v for k, v in metrics.items()}})

        main.run(export)
        save_training_state(out / "checkpoints", nimg=state.nimg, accelerator=accelerator,
                            ema_state=ema.state_dict(), tokenizer=tokenizer, keep=cfg.keep,
                            guide_state=guide.state_dict() if guide is not None else None,
                            sketch_state=teacher.state_dict() if teacher is not None else None,
                            trainer={"loop": dataclasses.asdict(state), "model_config": model_cfg.to_dict(),
                                     "train_config": cfg.to_dict(), "processes": world})

    def tick() -> None:
        nonlocal tick_start, tick_nimg0, skips_in_tick
        record: dict[str, Any] = {"kimg": round(state.nimg / 1000, 6), "step": state.step,
                                  **tick_stats.gather(accelerator)}
        dt = time.time() - tick_start
        record.update({"augment_p": round(augment.p, 6),
                       "sec_per_kimg": round(dt / max((state.nimg - tick_nimg0) / 1000, 1e-9), 3),
                       "nonfinite_skips": skips_in_tick, "nonfinite_total": state.nonfinite_total,
                       "peak_rss_mb": round(_peak_rss_mb(), 1)})
        main.append_log(record)
        bar.set_postfix({"G": record.get("loss/G"), "D": record.get("loss/D"), "p": record["augment_p"],
                         "s/kimg": record["sec_per_kimg"]}, refresh=False)
        tick_start, tick_nimg0, skips_in_tick = time.time(), state.nimg, 0

    interrupted = False
    try:
        while state.nimg < total_nimg:
            micro = [next_micro() for _ in range(accum)]
            D_raw.requires_grad_(False)
            ok = run_phase("Gmain", G_step, g_opt, micro)
            D_raw.requires_grad_(True)
            ok &= run_phase("Dmain", D_ddp, d_opt, micro)
            if cfg.loss.r1_gamma > 0 and state.step % cfg.loss.r1_interval == 0:
                ok &= run_phase("Dreg", D_ddp, d_opt, micro)
            state.step += 1
            state.nimg += cfg.batch
            ema.update(model, cur_nimg=state.nimg, batch_size=cfg.batch)
            skips_in_tick += not ok
            state.count_nonfinite(ok, limit=cfg.max_nonfinite, checkpoints=out / "checkpoints")
            ada = tick_stats.pop_ada()
            if cfg.augment.mode == "ada":
                state.adjust_augment(augment, accelerator.reduce(ada, reduction="sum").tolist(), cfg)
            state.augment_p = augment.p
            bar.update(cfg.batch / 1000)
            done = state.nimg >= total_nimg
            prev = state.nimg - cfg.batch
            if done or state.nimg // tick_nimg > prev // tick_nimg:
                tick()
            interrupted = any_process_stopped(stop)
            if done or interrupted or state.nimg // snap_nimg > prev // snap_nimg:
                snapshot()
            if interrupted:
                main.print(f"{stop['signal'] or 'signal'} received: state saved at {state.nimg / 1000:.3f} kimg "
                           f"in {out / 'checkpoints'}; continue with --resume latest")
                break
    finally:
        bar.close()
        exits.close()  # the old signal handlers come back
        accelerator.end_training()
    return TrainResult(out=out, model=model, ema=ema.model, discriminator=D_raw, tokenizer=tokenizer, state=state,
                       interrupted=interrupted)
