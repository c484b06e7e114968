"""Train a text-to-image spiking GAN: parse, validate, build a TrainConfig, call gan.training.train.

    python scripts/train.py --data shapes --preset shapes32 --out runs/shapes32
    accelerate launch --num_processes 2 scripts/train.py --data DIR --preset custom64 --batch 64
    python scripts/train.py --out runs/shapes32 --resume latest      # continue exactly
    python scripts/train.py --data new_domain/ --init-from runs/shapes32/model --out runs/ft

Options left out take the preset's training defaults (gan.training.TRAIN_PRESETS).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file (python / accelerate launch / torchrun scripts/train.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="spikegan-train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="shapes", help="dataset folder, .zip, prepared directory, or 'shapes'")
    p.add_argument("--preset", default="shapes32", help="model preset (gan.config) and its training defaults")
    p.add_argument("--encoder", choices=("embedding", "recurrent", "transformer"), default=None,
                   help="text encoder kind (default: the preset's)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<preset>)")
    p.add_argument("--kimg", type=float, default=None, help="length of the run in thousands of images")
    p.add_argument("--batch", type=int, default=None, help="global batch size")
    p.add_argument("--batch-gpu", type=int, default=None, help="images per process per micro-batch")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate of G and D")
    p.add_argument("--encoder-lr-mult", type=float, default=None,
                   help="text encoder learning rate relative to --lr (0 = frozen)")
    p.add_argument("--gamma", type=float, default=None, help="R1 regularisation weight")
    p.add_argument("--match-weight", type=float, default=None,
                   help="weight of the matching-aware term (real image, other caption = fake)")
    p.add_argument("--contrastive-weight", type=float, default=None,
                   help="weight of the image-caption contrastive term (D on reals, G on fakes)")
    p.add_argument("--diversity-weight", type=float, default=None,
                   help="weight of the mode-seeking term (two latents per caption in the G phase)")
    p.add_argument("--word-weight", type=float, default=None,
                   help="weight of the word term (D's word classifier: which words the caption has)")
    p.add_argument("--sketch-weight", type=float, default=None,
                   help="weight of the sketch term (G's image at the layout map's size against the warmed map's "
                        "frozen sketch of its caption; needs --layout-resolution and the warm-up)")
    p.add_argument("--guide-weight", type=float, default=None,
                   help="weight of the guide term (the warm-up's frozen image tower scores G's images; needs the warm-up)")
    p.add_argument("--hard-negatives", choices=("off", "replace", "exchange"), default=None,
                   help="negative captions made from each caption join D's mismatch and the contrastive terms: "
                        "one word replaced, or two of its words exchanged (same words, other binding)")
    p.add_argument("--warmup-kimg", type=float, default=None,
                   help="kimg of contrastive encoder warm-up on the training pairs before the GAN (0 = none)")
    p.add_argument("--warmup-hard-negatives", choices=("off", "replace", "exchange"), default=None,
                   help="in the warm-up, each image also rejects a negative made from its caption (NegCLIP)")
    p.add_argument("--warmup-word-region", choices=("on", "off"), default=None,
                   help="the warm-up's scorer (the guide) also reads the caption's tokens over its image cells "
                        "(a fresh run), so it can tell which word goes with which part of the image")
    p.add_argument("--word-region", choices=("on", "off"), default=None,
                   help="D's word-region term (a fresh run): caption tokens in context attend over D's cells")
    p.add_argument("--layout-resolution", type=int, default=None,
                   help="G adds a map of the prompt, read from its tokens, to its features at this resolution "
                        "(a fresh run; 0 = none): it places each word's colour where the caption puts it")
    p.add_argument("--layout-lr", type=float, default=None, help="Adam learning rate of that map (with momentum)")
    p.add_argument("--warmup-layout-kimg", type=float, default=None,
                   help="after the warm-up, that map trains alone for this many kimg on the warmed encoder's tokens")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per caption (a fresh run); longer captions lose their last tokens")
    p.add_argument("--encoder-spikes", choices=("on", "off"), default=None,
                   help="off: the dense ablation, the same encoder with continuous values in place of spikes (a fresh run)")
    p.add_argument("--steps-per-token", type=int, default=None, help="time steps K in each token's window (a fresh run)")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--snap", type=float, default=None, help="kimg between snapshots")
    p.add_argument("--resume", default=None, help="state dir, run dir, or 'latest' (in --out)")
    p.add_argument("--init-from", default=None, help="model dir to fine-tune from (vocabulary is extended)")
    p.add_argument("--workers", type=int, default=None, help="data loader workers per process")
    p.add_argument("--threads", type=int, default=None, help="torch threads per process")
    p.add_argument("--augment", choices=("ada", "fixed", "off"), default=None, help="augmentation mode")
    p.add_argument("--metrics", default=None,
                   help="comma-separated eval metrics computed at each snapshot (e.g. fid,alignment)")
    p.add_argument("--metrics-images", type=int, default=1000, help="generated images per metric evaluation")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace):
    """argparse namespace -> TrainConfig; ValueError messages name the flag."""
    from gan.training import check_config, resolve_config

    for flag, value, low in (("--kimg", args.kimg, 0), ("--snap", args.snap, 0), ("--lr", args.lr, 0)):
        if value is not None and not value > low:
            raise ValueError(f"{flag} must be > {low}, got {value}")
    for flag, value in (("--batch", args.batch), ("--batch-gpu", args.batch_gpu), ("--threads", args.threads),
                        ("--max-length", args.max_length), ("--steps-per-token", args.steps_per_token)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    for flag, value in (("--gamma", args.gamma), ("--match-weight", args.match_weight),
                        ("--contrastive-weight", args.contrastive_weight),
                        ("--diversity-weight", args.diversity_weight), ("--word-weight", args.word_weight),
                        ("--guide-weight", args.guide_weight), ("--sketch-weight", args.sketch_weight)):
        if value is not None and value < 0:
            raise ValueError(f"{flag} must be >= 0, got {value}")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    overrides: dict[str, Any] = dict(
        data=args.data, encoder=args.encoder, out=args.out or f"runs/{args.preset}", kimg=args.kimg,
        batch=args.batch, batch_gpu=args.batch_gpu, g_lr=args.lr, d_lr=args.lr,
        encoder_lr_mult=args.encoder_lr_mult, layout_lr=args.layout_lr,
        mixed_precision=args.mixed_precision, seed=args.seed, snap=args.snap, resume=args.resume,
        init_from=args.init_from, workers=args.workers, threads=args.threads)
    loss = {"r1_gamma": args.gamma, "match_weight": args.match_weight, "contrastive_weight": args.contrastive_weight,
            "diversity_weight": args.diversity_weight, "word_weight": args.word_weight,
            "guide_weight": args.guide_weight, "sketch_weight": args.sketch_weight, "hard_negatives": args.hard_negatives}
    if loss := {k: v for k, v in loss.items() if v is not None}:
        overrides["loss"] = loss
    model: dict[str, Any] = {}
    if args.max_length is not None:
        if args.resume is not None or args.init_from is not None:
            raise ValueError("--max-length applies to a fresh run: --resume and --init-from keep the tokenizer "
                             "they load")
        model["encoder"] = {"max_length": args.max_length}
    spikes = None if args.encoder_spikes is None else args.encoder_spikes == "on"
    for flag, key, value in (("--encoder-spikes", "spikes", spikes), ("--steps-per-token", "steps_per_token", args.steps_per_token)):
        if value is not None:
            if args.resume is not None or args.init_from is not None:
                raise ValueError(f"{flag} applies to a fresh run: --resume and --init-from keep the encoder they load")
            model.setdefault("encoder", {})[key] = value
    if args.word_region is not None:
        if args.resume is not None:
            raise ValueError("--word-region applies to a fresh run: --resume keeps the discriminator it loads")
        model["discriminator"] = {"word_region": args.word_region == "on"}
    if args.layout_resolution is not None:
        r = args.layout_resolution
        if r < 0 or (r and (r < 4 or r & (r - 1))):
            raise ValueError(f"--layout-resolution must be 0 (none) or a power of two >= 4, got {r}")
        if args.resume is not None or args.init_from is not None:
            raise ValueError("--layout-resolution applies to a fresh run: --resume and --init-from keep the "
                             "generator they load")
        model["generator"] = {"layout_resolution": args.layout_resolution}
    if model:
        overrides["model"] = model
    if args.augment is not None:
        overrides["augment"] = {"mode": args.augment}
    if args.warmup_kimg is not None:
        if args.warmup_kimg < 0:
            raise ValueError(f"--warmup-kimg must be >= 0, got {args.warmup_kimg}")
        overrides["warmup"] = {"kimg": args.warmup_kimg}
    if args.warmup_hard_negatives is not None:
        overrides.setdefault("warmup", {})["hard_negatives"] = args.warmup_hard_negatives
    if args.warmup_layout_kimg is not None:
        if args.warmup_layout_kimg < 0:
            raise ValueError(f"--warmup-layout-kimg must be >= 0, got {args.warmup_layout_kimg}")
        overrides.setdefault("warmup", {})["layout_kimg"] = args.warmup_layout_kimg
    if args.warmup_word_region is not None:
        if args.resume is not None:
            raise ValueError("--warmup-word-region applies to a fresh run: --resume keeps the guide it loads")
        overrides.setdefault("warmup", {})["word_region"] = args.warmup_word_region == "on"
    try:
        cfg = resolve_config(args.preset, **overrides)
    except ValueError as e:
        raise ValueError(str(e)) from None
    check_config(cfg)
    if args.data != "shapes":
        if not Path(args.data).exists():
            raise ValueError(f"--data {args.data}: no such file or directory (or use 'shapes')")
    if args.resume is not None:
        from gan.checkpoint import resolve_resume

        resolve_resume(args.resume, cfg.out)  # raises naming --resume
    if args.init_from is not None:
        if not (Path(args.init_from) / "config.json").is_file():
            raise ValueError(f"--init-from {args.init_from}: not a model directory (no config.json)")
    return cfg


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = build_config(args)
    except ValueError as e:
        print(f"spikegan-train: error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        from gan.training import model_config

        print(json.dumps({"train": cfg.to_dict(), "model": model_config(cfg).to_dict()}, indent=2))
        return 0
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
