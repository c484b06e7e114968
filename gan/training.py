"""The training loop: StyleGAN2-ADA's schedule under Hugging Face Accelerate.

One step shows `batch` images (global) and runs the loss phases in StyleGAN2-ADA's order:
Gmain (G's Adam), Dmain (D's Adam), and every `loss.r1_interval` steps Dreg (D's Adam).
Each phase runs `accum` micro-batches of `batch_gpu` images on every process inside
`accelerator.accumulate`, so batch = processes x batch_gpu x accum. G here is the exported
`TextToImage` (text encoder + generator, one optimiser): the text encoder trains through its
surrogate gradients from the G loss (gan/loss.py says why D gets a detached code).

Progress is counted in images (kimg). Every `tick` kimg the gathered statistics go to the
progress bar, `log.jsonl` and TensorBoard; every `snap` kimg (and at the end) the main process
writes a sample grid and the exported EMA model, and all processes write the resumable state
(gan/checkpoint.py). `resume` continues exactly: images seen, optimisers, EMA, augmentation p
and its ADA accumulators, every RNG, and the data order (gan/stream.py).
`--kimg` is the length of the whole run, so a resumed run stops where the original would have.
"""
from __future__ import annotations

import dataclasses
import datetime
import os
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from encoders.encoder import CodeNorm
from encoders.tokenizer import cut_report, cuts_reported
from gan.augment import AugmentPipe, adjust_p
from gan.checkpoint import TOKENIZER_FILE, load_sketch_state, load_training_state, read_trainer, resolve_resume, save_training_state
from gan.ema import EMA
from gan.grid import grid_prompts, render_grid
from gan.layout import LayoutTeacher
from gan.loss import GANLoss
from gan.reporting import MainProcess, TickStats, flat_hparams, peak_rss_mb
from gan.signals import catch_stop_signals
from gan.stream import MicroBatch, batch_guides, make_loader, override_captions
from gan.train_config import TrainConfig, check_config, model_config, split_batch
from gan.warmup import run_warmup


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


# ---------------------------------------------------------------------------------------------

def data_options(cfg: TrainConfig) -> dict:
    """Keyword options of open_dataset that the run's config sets (the shapes domain's emphasis)."""
    return {"emphasis_p": cfg.shapes_emphasis} if cfg.shapes_emphasis > 0 else {}


def build_networks(cfg: TrainConfig, resume_dir: Path | None, main: MainProcess):
    """(dataset, its captions, model TextToImage, D, tokenizer, model_cfg) for a fresh, resumed or
    fine-tuned run."""
    from data import open_dataset
    from encoders import load_tokenizer, make_tokenizer
    from gan.config import ModelConfig
    from gan.discriminator import build_discriminator
    from gan.model import TextToImage, load_model

    if resume_dir is not None:
        model_cfg = ModelConfig.from_dict(read_trainer(resume_dir)["model_config"])
        dataset = open_dataset(cfg.data, resolution=model_cfg.resolution, seed=cfg.seed, **data_options(cfg))
        captions = dataset.captions()
        tokenizer = load_tokenizer(resume_dir / TOKENIZER_FILE)
        model = TextToImage(model_cfg)
    elif cfg.init_from is not None:
        model, tokenizer = load_model(cfg.init_from, device="cpu")
        dataset = open_dataset(cfg.data, resolution=model.cfg.resolution, seed=cfg.seed, **data_options(cfg))
        old_size = len(tokenizer)
        captions = dataset.captions()
        added = tokenizer.extend(captions)
        model.encoder.resize_vocab(len(tokenizer))
        model_cfg = model.cfg.replace(vocab_size=len(tokenizer))
        model.cfg = model_cfg
        main.print(f"fine-tuning {cfg.init_from}: vocabulary {old_size} -> {len(tokenizer)} words "
                   f"(new: {' '.join(added[:20])}{' ...' if len(added) > 20 else ''})")
    else:
        model_cfg = model_config(cfg)
        dataset = open_dataset(cfg.data, resolution=model_cfg.resolution, seed=cfg.seed, **data_options(cfg))
        captions = dataset.captions()
        tokenizer = make_tokenizer(model_cfg.encoder, captions)
        model_cfg = model_cfg.replace(vocab_size=len(tokenizer))
        model = TextToImage(model_cfg)
    if model_cfg.encoder.guide_tokens:  # items carry the palette and sketch the encoder takes
        from data.guides import GuidedDataset
        from encoders.config import MAX_COLOURS

        dataset = GuidedDataset(dataset, colours=MAX_COLOURS if model_cfg.encoder.palette else 0,
                                grid=model_cfg.encoder.sketch_grid)
    if resume_dir is not None and (cfg.loss.word_weight > 0) != (model_cfg.discriminator.word_classes > 0):
        raise ValueError(f"--word-weight {cfg.loss.word_weight}: the run in {resume_dir} was trained "
                         f"{'with' if model_cfg.discriminator.word_classes else 'without'} D's word classifier; "
                         f"resume it with the word weight it started with")
    if resume_dir is not None:
        drawn = read_trainer(resume_dir)["train_config"].get("shapes_emphasis", 0.0)
        if drawn != cfg.shapes_emphasis:
            raise ValueError(f"--shapes-emphasis {cfg.shapes_emphasis}: the run in {resume_dir} drew its captions with "
                             f"{drawn}; resume it with --shapes-emphasis {drawn}")
    if cfg.loss.word_weight > 0 and model_cfg.projected is not None:
        raise ValueError(f"--word-weight {cfg.loss.word_weight}: the projected discriminator has no word classifier; "
                         f"use --word-weight 0 with it")
    if resume_dir is None:  # D's word classifier covers the (possibly extended) vocabulary, or is absent
        words = len(tokenizer) if cfg.loss.word_weight > 0 else 0
        model_cfg = model_cfg.replace(discriminator=dataclasses.replace(model_cfg.discriminator, word_classes=words))
        model.cfg = model_cfg
    return dataset, captions, model, build_discriminator(model_cfg), tokenizer, model_cfg


def encoder_parameters(encoder: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The encoder's parameters: (its text path, its palette and sketch paths)."""
    text, guides = [], []
    for name, p in encoder.named_parameters():
        (guides if name.startswith("guides.") else text).append(p)
    return text, guides


def make_optimizers(cfg: TrainConfig, model: nn.Module, D: nn.Module) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """StyleGAN2's Adam pair (betas 0, 0.99). G's covers the generator and, at encoder_lr_mult, the
    text encoder (at G's full rate its spiking layers saturate and the codes of different prompts
    collapse; at 0 it is frozen), and at guide_lr_mult the encoder's palette and sketch paths. G's
    layout map, if any, has a group of its own at layout_lr with momentum (betas 0.9, 0.999):
    without momentum its attention does not learn. Lazy R1 steps D's Adam
    r1_interval / (r1_interval + 1) times as often, so its rate and beta2 are scaled to match
    (StyleGAN2's mb_ratio)."""
    mb = cfg.loss.r1_interval / (cfg.loss.r1_interval + 1) if cfg.loss.r1_gamma > 0 else 1.0
    layout = model.generator.synthesis.layout
    in_layout = {id(p) for p in layout.parameters()} if layout is not None else set()
    text, guides = encoder_parameters(model.encoder)
    g_groups = [{"params": [p for p in model.generator.parameters() if p.requires_grad and id(p) not in in_layout],
                 "lr": cfg.g_lr},
                {"params": [p for p in text if p.requires_grad], "lr": cfg.g_lr * cfg.encoder_lr_mult},
                {"params": [p for p in guides if p.requires_grad], "lr": cfg.g_lr * cfg.guide_lr_mult},
                {"params": [p for p in (layout.parameters() if layout is not None else ()) if p.requires_grad],
                 "lr": cfg.layout_lr, "betas": (0.9, 0.999)}]
    g_opt = torch.optim.Adam([g for g in g_groups if g["params"]], betas=(0.0, 0.99), eps=1e-8)
    d_opt = torch.optim.Adam(D.parameters(), lr=cfg.d_lr * mb, betas=(0.0, 0.99**mb), eps=1e-8)
    return g_opt, d_opt


def train(cfg: TrainConfig, *, metrics_callback: Callable[[Path, float], dict] | None = None) -> TrainResult:
    """Run (or resume) training as `cfg` says; see the module docstring. metrics_callback(model_dir,
    kimg) -> dict of numbers runs on the main process after each exported snapshot model."""
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs, set_seed

    check_config(cfg)
    run_start = time.time()
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
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accum, sync_with_dataloader=False),
        # The other processes wait while the main one scores a snapshot (--metrics): minutes on a slow CPU.
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(hours=4))])
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
    if cfg.palette_override > 0 and not model_cfg.encoder.palette:
        raise ValueError(f"--palette-override {cfg.palette_override} needs a model that takes a palette (--palette on "
                         f"in a fresh run)")
    if cfg.sketch_override > 0 and not model_cfg.encoder.sketch_grid:
        raise ValueError(f"--sketch-override {cfg.sketch_override} needs a model that takes a sketch (--sketch-grid G "
                         f"in a fresh run)")
    if cfg.warmup.guides and not (model_cfg.encoder.guide_tokens and model.generator.synthesis.layout is not None):
        raise ValueError("--warmup-guides on needs a model that takes a palette or a sketch (--palette on, --sketch-grid G) "
                         "and G's layout map (--layout-resolution), in a fresh run")
    emphasis = getattr(dataset, "emphasis_syntax", False)  # captions written in prompt syntax (shapes)
    device = accelerator.device
    model.to(device)
    D.to(device)

    def any_process_stopped(stop: dict) -> bool:
        """Whether any process caught a signal or reached the --minutes budget; a process stopped by
        another's takes its reason (a signal before the budget), so the main process names it."""
        flags = torch.tensor([float(stop["signal"] not in (None, "budget")), float(stop["signal"] == "budget")],
                             device=device)
        signalled, budget = accelerator.reduce(flags, reduction="sum").tolist()
        if stop["signal"] is None and signalled + budget > 0:
            stop["signal"] = "signal" if signalled else "budget"
        return signalled + budget > 0

    # Captions longer than max_length are reported once here, not warned about one by one below.
    if report := cut_report(tokenizer, captions):
        main.print(f"{report} (--max-length sets the limit of a fresh run)")

    def conditioning(b: dict, key: Sequence[int]):
        """A batch's guides (each dropped at cfg.input_drop) and the captions that condition it (words
        overridden by the guides at cfg.palette_override / sketch_override), both drawn from `key`."""
        guides = batch_guides(b, drop=cfg.input_drop, key=key)
        return override_captions(b["text"], guides, p=cfg.palette_override, key=key, sketch_p=cfg.sketch_override), guides

    warm, teacher = {}, None
    if resume_dir is None and cfg.warmup.kimg > 0:
        with cuts_reported():
            from data.guides import GuidedDataset

            # The encoder's warm-up reads images and captions only: its pairs skip the guides (4-8x the cost of
            # an item); the layout's reads them with --warmup-guides on.
            text_pairs = dataset.dataset if isinstance(dataset, GuidedDataset) else dataset

            def guided_tokens(b: dict, step: int):
                texts, guides = conditioning(b, (cfg.seed, rank, step))  # keys of three numbers: none of the GAN's four
                return tokenizer(texts, emphasis=emphasis).with_guides(guides)

            warm, teacher, stopped = run_warmup(
                cfg.warmup, model.encoder, text_pairs, tokenizer, seed=cfg.seed, workers=cfg.workers,
                resolution=model_cfg.resolution, device=device, any_process_stopped=any_process_stopped,
                layout=model.generator.synthesis.layout, emphasis=emphasis,
                guided=(dataset, guided_tokens) if cfg.warmup.guides else None, rank=rank, world=world)
        if stopped:
            main.print(f"{stopped} received in the encoder warm-up, after {warm['warmup/steps']} of its steps: no "
                       f"training state exists yet; run the same command again to start over")
            accelerator.end_training()
            return TrainResult(out=out, model=model, ema=model, discriminator=D, tokenizer=tokenizer,
                               state=LoopState(), interrupted=True)
        main.print(f"encoder warm-up: {cfg.warmup.kimg:g} kimg in {warm['warmup/seconds']:.0f} s, contrastive loss "
                   f"{warm['warmup/loss']:.3f}, in-batch retrieval {warm['warmup/accuracy']:.2f}"
                   + (f", layout error {warm['warmup/layout_error']:.3f}" if "warmup/layout_error" in warm else ""))
    elif resume_dir is not None and cfg.loss.sketch_weight > 0:  # the sketch the run warmed up, from its state
        teacher = LayoutTeacher.like(model.generator.synthesis.layout)
        teacher.load_state_dict(load_sketch_state(resume_dir))
        teacher = teacher.to(device)
    if cfg.loss.sketch_weight == 0:
        teacher = None
    if cfg.encoder_lr_mult == 0:  # the text path stays as the warm-up left it, and costs no backward pass
        for p in encoder_parameters(model.encoder)[0]:
            p.requires_grad_(False)
            p.grad = None  # the warm-up's last gradient
    model.train()
    D.train()
    ema = EMA(source=model, ema_kimg=cfg.ema_kimg, ema_rampup=cfg.ema_rampup)
    if world > 1:  # the pooled code's statistics over the global batch, as a single process has them
        for m in model.encoder.modules():
            if isinstance(m, CodeNorm):
                m.synced = True
    augment = AugmentPipe(cfg=cfg.augment)

    loss_fn = GANLoss(cfg=cfg.loss, augment=augment if cfg.augment.mode != "off" else None, teacher=teacher)

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
    accelerator.init_trackers("tensorboard", config=flat_hparams(resolved))
    if warm:
        main.append_log({"kimg": 0.0, **warm})
    prompts = grid_prompts(cfg.grid_prompts, captions, cfg.grid_rows)

    loader = make_loader(dataset, batch_gpu=batch_gpu, rank=rank, world=world, seed=cfg.seed,
                         start=state.step * batch_gpu * accum, workers=cfg.workers)
    batches = iter(loader)

    def next_micro(k: int) -> MicroBatch:
        from data import to_float

        b = next(batches)
        texts, guides = conditioning(b, (cfg.seed, rank, state.step, k))
        with cuts_reported():
            tokens = tokenizer(texts, emphasis=emphasis).with_guides(guides).to(device)
            content = None if texts == list(b["text"]) else \
                tokenizer(b["text"], emphasis=emphasis).with_guides(guides).to(device)
        return MicroBatch(real=to_float(b["image"]).to(device), tokens=tokens, index=b["index"], content=content)

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

    @torch.no_grad()
    def encode_content(tokens):
        """The code of the captions the real images show, for the sketch term's teacher (eval mode:
        the code's running statistics stay as the conditioning pass left them)."""
        was_training = model.encoder.training
        model.encoder.eval()
        try:
            return model.encoder(tokens)
        finally:
            model.encoder.train(was_training)

    def call_inputs(phase: str, m: MicroBatch) -> dict:
        z = torch.randn(m.real.shape[0], model.generator.z_dim, device=device)
        if phase == "Gmain":
            return dict(G=G_step, D=D_raw, z=z, batch=m.tokens, content=m.content,
                        content_code=None if m.content is None or teacher is None else encode_content(m.content))
        if phase == "Dmain":
            return dict(G=G_raw, D=D_ddp, z=z, batch=m.tokens, real=m.real, content=m.content)
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
                       "peak_rss_mb": round(peak_rss_mb(), 1)})
        main.append_log(record)
        bar.set_postfix({"G": record.get("loss/G"), "D": record.get("loss/D"), "p": record["augment_p"],
                         "s/kimg": record["sec_per_kimg"]}, refresh=False)
        tick_start, tick_nimg0, skips_in_tick = time.time(), state.nimg, 0

    interrupted = False
    try:
        while state.nimg < total_nimg:
            micro = [next_micro(k) for k in range(accum)]
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
            if cfg.minutes is not None and time.time() - run_start >= 60 * cfg.minutes and stop["signal"] is None:
                stop["signal"] = "budget"  # the wall-clock budget ends the run as a SIGTERM would
            interrupted = any_process_stopped(stop)
            if done or interrupted or state.nimg // snap_nimg > prev // snap_nimg:
                snapshot()
            if interrupted:
                why = f"--minutes {cfg.minutes:g} reached" if stop["signal"] == "budget" else \
                    f"{stop['signal'] or 'signal'} received"
                main.print(f"{why}: state saved at {state.nimg / 1000:.3f} kimg in {out / 'checkpoints'} and the model "
                           f"in {out / 'model'}; continue with --resume latest")
                break
    finally:
        bar.close()
        exits.close()  # the old signal handlers come back
        accelerator.end_training()
    return TrainResult(out=out, model=model, ema=ema.model, discriminator=D_raw, tokenizer=tokenizer, state=state,
                       interrupted=interrupted)
