"""Train a text-to-image spiking GAN: parse, validate, build a TrainConfig, call gan.training.train.

    python scripts/train.py --data shapes --preset shapes32 --out runs/shapes32
    python scripts/train.py --data DIR --preset custom32 --processes 2     # a CPU: two processes, 1.3x faster
    accelerate launch --num_processes 2 scripts/train.py --data DIR --preset custom64 --batch 64
    python scripts/train.py --out runs/shapes32 --resume latest      # continue exactly
    python scripts/train.py --data new_domain/ --init-from runs/shapes32/model --out runs/ft

Options left out take the preset's training defaults (gan/presets.py).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python / accelerate launch / torchrun scripts/train.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="spikegan-train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    core = p.add_argument_group("run")
    core.add_argument("--data", default="shapes", help="dataset folder, .zip, prepared directory, or 'shapes'")
    core.add_argument("--preset", default="shapes32", help="model preset and its training defaults (gan/presets.py)")
    core.add_argument("--out", default=None, help="run directory (default: runs/<preset>)")
    core.add_argument("--kimg", type=float, default=None, help="length of the run in thousands of images")
    core.add_argument("--minutes", type=float, default=None,
                      help="wall-clock budget: the run then stops as on SIGTERM (snapshot, model, state); "
                           "--resume latest continues it")
    core.add_argument("--batch", type=int, default=None, help="global batch size")
    core.add_argument("--batch-gpu", type=int, default=None, help="images per process per micro-batch")
    core.add_argument("--lr", type=float, default=None, help="Adam learning rate of G and D")
    core.add_argument("--gamma", type=float, default=None, help="R1 regularisation weight")
    core.add_argument("--augment", choices=("ada", "fixed", "off"), default=None, help="augmentation mode")
    core.add_argument("--seed", type=int, default=None)
    core.add_argument("--snap", type=float, default=None, help="kimg between snapshots")
    core.add_argument("--resume", default=None, help="state dir, run dir, or 'latest' (in --out)")
    core.add_argument("--init-from", default=None, help="model dir to fine-tune from (vocabulary is extended)")
    core.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None)
    core.add_argument("--workers", type=int, default=None, help="data loader workers per process")
    core.add_argument("--threads", type=int, default=None, help="torch threads per process")
    core.add_argument("--processes", type=int, default=1,
                      help="start this many training processes (torchrun) with the cores split between them; "
                           "ignored inside a launcher (torchrun, accelerate launch)")
    core.add_argument("--metrics", default=None,
                      help="comma-separated eval metrics computed at each snapshot (e.g. fid,alignment)")
    core.add_argument("--metrics-images", type=int, default=1000, help="generated images per metric evaluation")
    core.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")

    core.add_argument("--discriminator", choices=("residual", "projected", "projected+pixel"), default=None,
                      help="D (a fresh run): the residual StyleGAN2 D, the projected D on frozen pretrained "
                           "EfficientNet-Lite0 features, or both with their logits summed (default: the preset's)")
    core.add_argument("--backbone-resolution", type=int, default=None,
                      help="the projected D resizes images to this before its feature network (a fresh run)")

    text = p.add_argument_group("text conditioning")
    text.add_argument("--encoder", choices=("embedding", "recurrent", "transformer"), default=None,
                      help="text encoder kind (default: the preset's)")
    text.add_argument("--encoder-lr-mult", type=float, default=None,
                      help="text encoder learning rate relative to --lr (0 = frozen)")
    text.add_argument("--max-length", type=int, default=None,
                      help="tokens per caption (a fresh run); longer captions lose their last tokens")
    text.add_argument("--encoder-spikes", choices=("on", "off"), default=None,
                      help="off: the dense ablation, continuous values in place of spikes (a fresh run)")
    text.add_argument("--palette", choices=("on", "off"), default=None,
                      help="on: the model also takes a colour palette, spike-coded beside the words (a fresh run)")
    text.add_argument("--sketch-grid", type=int, default=None,
                      help="the model also takes a sketch cut to this grid, e.g. 8 (a fresh run; 0 = none)")
    text.add_argument("--input-drop", type=float, default=None,
                      help="probability that a training image loses its palette, and apart its sketch (default 0.5)")
    text.add_argument("--palette-override", type=float, default=None,
                      help="probability that an image keeping its palette has its caption's colour words swapped, "
                           "so the palette wins where the two disagree (default 0)")
    text.add_argument("--sketch-override", type=float, default=None,
                      help="probability that a one-object image keeping its sketch has its caption's place swapped "
                           "('on the left' -> 'at the top'), so the sketch wins where the two disagree (default 0)")
    text.add_argument("--shapes-emphasis", type=float, default=None,
                      help="shapes only: probability that a caption's size word is emphasised, e.g. '(large:1.41)', "
                           "and the object drawn that much larger or smaller (default 0)")
    text.add_argument("--steps-per-token", type=int, default=None, help="time steps K per token window (a fresh run)")
    text.add_argument("--match-weight", type=float, default=None,
                      help="weight of the matching-aware term (real image, other caption = fake)")
    text.add_argument("--contrastive-weight", type=float, default=None,
                      help="weight of the image-caption contrastive term (D on reals, G on fakes)")
    text.add_argument("--diversity-weight", type=float, default=None,
                      help="weight of the mode-seeking term (two latents per caption in the G phase)")
    text.add_argument("--warmup-kimg", type=float, default=None,
                      help="kimg of contrastive encoder warm-up on the training pairs before the GAN (0 = none)")

    research = p.add_argument_group("research (shapes32 uses them; measured in docs/experiments.md)")
    research.add_argument("--word-weight", type=float, default=None,
                          help="weight of the word term (D's word classifier: which words the caption has)")
    research.add_argument("--layout-resolution", type=int, default=None,
                          help="G adds a map of the prompt, read from its tokens, to its features at this "
                               "resolution (a fresh run; 0 = none)")
    research.add_argument("--layout-lr", type=float, default=None, help="Adam learning rate of that map")
    research.add_argument("--warmup-layout-kimg", type=float, default=None,
                          help="after the warm-up, the map trains alone for this many kimg on the warmed tokens")
    research.add_argument("--warmup-guides", choices=("on", "off"), default=None,
                          help="on: a guided model's layout map warms up reading the palette and sketch too")
    research.add_argument("--sketch-weight", type=float, default=None,
                          help="weight of the sketch term (G's image against the warmed map's frozen sketch)")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    """argparse namespace -> TrainConfig, checked by gan.train_config.check_config (errors name the flag)."""
    from gan.train_config import check_config, resolve_config

    overrides: dict[str, Any] = dict(
        data=args.data, encoder=args.encoder, out=args.out or f"runs/{args.preset}", kimg=args.kimg, minutes=args.minutes,
        batch=args.batch, batch_gpu=args.batch_gpu, g_lr=args.lr, d_lr=args.lr,
        encoder_lr_mult=args.encoder_lr_mult, layout_lr=args.layout_lr,
        mixed_precision=args.mixed_precision, seed=args.seed, snap=args.snap, resume=args.resume,
        init_from=args.init_from, workers=args.workers, threads=args.threads, input_drop=args.input_drop,
        palette_override=args.palette_override, sketch_override=args.sketch_override,
        shapes_emphasis=args.shapes_emphasis)
    sections = {
        "loss": {"r1_gamma": args.gamma, "match_weight": args.match_weight,
                 "contrastive_weight": args.contrastive_weight, "diversity_weight": args.diversity_weight,
                 "word_weight": args.word_weight, "sketch_weight": args.sketch_weight},
        "augment": {"mode": args.augment},
        "warmup": {"kimg": args.warmup_kimg, "layout_kimg": args.warmup_layout_kimg,
                   "guides": None if args.warmup_guides is None else args.warmup_guides == "on"},
        "model": {"encoder": {"max_length": args.max_length, "steps_per_token": args.steps_per_token,
                              "spikes": None if args.encoder_spikes is None else args.encoder_spikes == "on",
                              "palette": None if args.palette is None else args.palette == "on",
                              "sketch_grid": args.sketch_grid},
                  "generator": {"layout_resolution": args.layout_resolution}},
    }
    for name, section in sections.items():
        if given := drop_none(section):
            overrides[name] = given
    if args.discriminator in ("projected", "projected+pixel") or args.backbone_resolution is not None:
        pixel = None if args.discriminator is None else args.discriminator == "projected+pixel"
        overrides.setdefault("model", {})["projected"] = drop_none({"backbone_resolution": args.backbone_resolution,
                                                                    "pixel": pixel})
    elif args.discriminator == "residual":
        overrides.setdefault("model", {})["projected"] = None
    cfg = resolve_config(args.preset, **overrides)
    check_config(cfg)
    if args.resume is not None:
        from gan.checkpoint import resolve_resume

        resolve_resume(args.resume, cfg.out)  # raises naming --resume
    return cfg


def drop_none(d: dict[str, Any]) -> dict[str, Any]:
    """`d` without the options not given (None), recursing into nested dicts; empty ones go too."""
    out = {}
    for k, v in d.items():
        v = drop_none(v) if isinstance(v, dict) else v
        if v is not None and v != {}:
            out[k] = v
    return out


def metrics_callback(names: str, cfg, num_images: int):
    """The snapshot metrics hook, built from eval/ (imported only here: gan/ never imports eval).
    Unknown metric names raise naming --metrics."""
    import eval.metrics

    metric_names = eval.metrics.check_names(names.split(","))
    built = {}

    def run(model_dir, kimg: float) -> dict:
        if "callback" not in built:  # the reference set needs the model's resolution
            from data import open_dataset
            from gan.model import load_config

            resolution = load_config(model_dir).resolution
            reference = open_dataset(cfg.data, resolution=resolution, seed=cfg.seed + 1)
            built["callback"] = eval.metrics.snapshot_callback(metric_names, reference, num=num_images)
        return built["callback"](model_dir, kimg)

    return run


def launch(argv: list[str], processes: int, threads: int | None) -> int:
    """Run this script with `argv` as `processes` processes under torchrun, each with `threads`
    torch threads (default: the cores split between them). torchrun runs in its own session and
    SIGINT (Ctrl-C) or SIGTERM here is passed on once: each process then saves its state and stops,
    as a single process does (a signal reaching them twice would abort the save). Returns 0 when
    stopped so, else torchrun's exit status."""
    from gan.reporting import usable_cores

    threads = threads or max(1, usable_cores() // processes)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(Path(__file__).resolve()), *argv, "--threads", str(threads)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, start_new_session=True)
    stopped = []

    def forward(signum, _frame):
        stopped.append(signum)
        proc.send_signal(signum)

    handlers = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        rc = proc.wait()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0 if stopped else rc


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        if args.processes < 1:
            raise ValueError(f"--processes must be >= 1, got {args.processes}")
        cfg = build_config(args)
    except ValueError as e:
        print(f"spikegan-train: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        from gan.train_config import model_config

        print(json.dumps({"train": cfg.to_dict(), "model": model_config(cfg).to_dict()}, indent=2))
        return 0
    if args.processes > 1 and "LOCAL_RANK" not in os.environ:  # not yet inside a launcher
        return launch(argv, args.processes, args.threads)
    from gan.training import NonFiniteLossError, train

    try:
        callback = metrics_callback(args.metrics, cfg, args.metrics_images) if args.metrics else None
    except ValueError as e:
        print(f"spikegan-train: error: {e}", file=sys.stderr)
        return 2
    try:
        result = train(cfg, metrics_callback=callback)
    except (ValueError, NonFiniteLossError) as e:
        print(f"spikegan-train: error: {e}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) == 0 and result.state.step > 0:  # one line per run, not per process
        print(f"{'stopped' if result.interrupted else 'done'} at {result.state.nimg / 1000:.3f} kimg: "
              f"model in {result.out / 'model'}, state in {result.out / 'checkpoints'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
