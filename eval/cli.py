"""`python -m eval` / `spikegan-eval`: score saved models and folders of images in one table.

    python -m eval --model runs/a/model --model runs/b/model --data shapes \\
        --metrics fid,kid,lpips_diversity,alignment,attributes --num 1000 --json scores.json
    python -m eval --images other_system/ --data data/my64 # images + metadata.jsonl of captions
    python -m eval --model runs/a/model --data data/my64 --save-images gen/  # keep the scored images
    python -m eval lpips a.png b.png                 # LPIPS between two image files
    python -m eval train-scorer --data DIR --out DIR # the alignment scorer of a reference set

Image i of a model comes from prompt i and seed `--seed + i`; prompts are the reference set's
captions in order, one image per caption (COCO FID-30k protocol), or the lines of --prompts.
An --images folder (another system's outputs, read like a training folder) is scored image by
image with its first caption, at the side of its first image unless --resolution says.
The JSON holds every value, the number of images, the seeds, the weight files used (with
sha256) and the time taken; its layout is `SCHEMA` (a test keeps it stable).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from data.files import atomic_write_text, sha256_file
from eval.allocator import keep_freed_memory

SCHEMA = "spikegan-eval/2"  # /2: rows of --images folders ("images"; "model" and "seeds" None)
ROW_KEYS = ("model", "model_sha256", "images", "resolution", "values", "num_images", "seeds", "weights", "seconds")
DEFAULT_METRICS = "fid,fd_domain,kid,alignment"
TOP_KEYS = ("schema", "created", "command", "data", "metrics", "settings", "rows", "seconds")
SUBCOMMANDS = ("lpips", "train-scorer")


class CliError(Exception):
    """A bad option or file; printed as `error: ...` with exit status 2."""


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CliError(f"--device {name}: CUDA is not available on this machine")
    return name


def _positive(option: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{option} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{option} must be >= 1, got {value}")
        return value
    return parse


# ----------------------------------------------------------------------------------------
# Scoring models.


def score_parser() -> argparse.ArgumentParser:
    from eval.metrics import names

    p = argparse.ArgumentParser(
        prog="python -m eval",
        description="Score text-to-image models and folders of images (each --model or --images flag makes a row "
                    f"of one table). Subcommands: {', '.join(SUBCOMMANDS)} (see `python -m eval SUBCOMMAND --help`).")
    p.add_argument("--model", action="append", default=[], metavar="DIR",
                   help="model directory (config.json, model.safetensors, tokenizer.json); repeatable")
    p.add_argument("--images", action="append", default=[], metavar="DIR",
                   help="a folder or .zip of images with their captions (metadata.jsonl lines {\"file_name\", "
                        "\"text\"}), e.g. another system's outputs; repeatable")
    p.add_argument("--resolution", type=_positive("--resolution"), default=None,
                   help="side --images folders and the reference set are read at (default: each folder's first image)")
    p.add_argument("--data", required=True, metavar="PATH|shapes",
                   help="reference set: a folder, .zip, prepared directory, or 'shapes'")
    p.add_argument("--metrics", default=DEFAULT_METRICS,
                   help=f"comma-separated, from: {', '.join(names())} (default: {DEFAULT_METRICS})")
    p.add_argument("--num", type=_positive("--num"), default=1000,
                   help="images generated per model, or read per --images folder (default 1000)")
    p.add_argument("--num-ref", type=_positive("--num-ref"), default=None,
                   help="reference images for FID/KID statistics (default: --num)")
    p.add_argument("--prompts", metavar="FILE", default=None,
                   help="one prompt per line, cycled to --num (default: the reference captions in order)")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED + i (default 0)")
    p.add_argument("--data-seed", type=int, default=0,
                   help="seed of the reference set (shapes: which scenes; a run trained with --seed S drew "
                        "seed S's, so another seed holds its scenes out; default 0)")
    p.add_argument("--batch", type=_positive("--batch"), default=32, help="images per network call (default 32)")
    p.add_argument("--psi", type=float, default=1.0, help="truncation psi (default 1 = none)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (default: cuda if available)")
    p.add_argument("--json", metavar="OUT", default=None, help="write the results as JSON here")
    p.add_argument("--cache-dir", default=None, help="cache of reference statistics, scorers and probes "
                   "(default: $SPIKEGAN_CACHE or ~/.cache/spikegan)")
    p.add_argument("--lpips-backbone", metavar="PATH", default=None,
                   help="AlexNet trunk for LPIPS (default: torchvision's cache, then $SPIKEGAN_LPIPS_BACKBONE)")
    p.add_argument("--lpips-prompts", type=_positive("--lpips-prompts"), default=32,
                   help="prompts for lpips_diversity (default 32)")
    p.add_argument("--lpips-seeds", type=_positive("--lpips-seeds"), default=4,
                   help="seeds per prompt for lpips_diversity (default 4)")
    p.add_argument("--scorer", metavar="DIR", default=None,
                   help="alignment scorer from `train-scorer` (default: the cached one, trained on demand)")
    p.add_argument("--scorer-num", type=_positive("--scorer-num"), default=2000,
                   help="real pairs an on-demand scorer trains on (default 2000)")
    p.add_argument("--scorer-text", choices=("auto", "minilm", "tower"), default="auto",
                   help="scorer text features (default auto: MiniLM if installed)")
    p.add_argument("--probe", metavar="DIR", default=None, help="attribute probe folder (default: cached, trained on demand)")
    p.add_argument("--clip-weights", metavar="PATH", default=None,
                   help="open_clip checkpoint for clip_score (needs the extra open_clip_torch)")
    p.add_argument("--clip-arch", default="ViT-B-32", help="open_clip architecture of --clip-weights")
    p.add_argument("--palette-tolerance", type=float, default=15.0,
                   help="palette, palette_conflict: CIE76 delta E within which a pixel shows a colour (default 15)")
    p.add_argument("--palette-shift", type=int, default=0,
                   help="palette: image i gets the palette of reference item i + this; 0 = its own, another "
                        "value a palette that mostly disagrees with the caption")
    p.add_argument("--save-images", metavar="DIR", default=None,
                   help="keep the images the --model was scored on: DIR/<i>.png and a metadata.jsonl of their prompts "
                        "and seeds, which --images (or another scorer) reads back bit for bit; one --model")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    return p


def read_prompts(path: str) -> list[str]:
    """Non-empty lines of a text file (errors name the option and the file)."""
    f = Path(path)
    if not f.is_file():
        raise CliError(f"--prompts {path}: no such file")
    prompts = [line.strip() for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise CliError(f"--prompts {path}: the file has no prompts")
    return prompts


def open_reference(path: str, resolution: int, seed: int = 0):
    import data

    if path != "shapes" and not Path(path).exists():
        raise CliError(f"--data {path}: no such file or directory (or use 'shapes')")
    try:
        return data.open_dataset(path, resolution=resolution, seed=seed)
    except (OSError, ValueError) as e:
        raise CliError(f"--data {path}: {e}") from e


def open_images(path: str, resolution: int | None):
    """An --images folder (data.FolderDataset) at `resolution`, or at its first image's shorter side."""
    from data import report as R
    from data.folder import METADATA, EmptyDatasetError, FolderDataset

    try:
        folder = FolderDataset(path, resolution=resolution or 64)
    except EmptyDatasetError as e:
        if {s.reason for s in e.report.skipped} == {R.MISSING_CAPTION}:
            raise CliError(f"--images {path}: no image has a caption: {Path(path) / METADATA} is missing or names "
                           "none of them (one line per image: {\"file_name\": \"0.png\", \"text\": \"its prompt\"})") from e
        raise CliError(f"--images {path}: {e}") from e
    except (OSError, ValueError) as e:
        raise CliError(f"--images {path}: {e}") from e
    return folder if resolution is not None else folder.with_resolution(min(folder.stored_size(0)))


def load(model_dir: str, device: str):
    from gan.model import load_model

    try:
        return load_model(model_dir, device=device)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CliError(f"--model {model_dir}: {e}") from e


def format_table(rows: Sequence[dict]) -> str:
    """Models as rows, values as columns; None shows as '-'."""
    columns = list(dict.fromkeys(k for r in rows for k in r["values"]))
    header = ["model", *columns, "images", "seconds"]
    body = []
    for r in rows:
        cells = [r["model"] or r["images"]]
        for c in columns:
            v = r["values"].get(c)
            cells.append("-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        body.append([*cells, str(r["num_images"]), f"{r['seconds']['total']:.1f}"])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def run_score(args: argparse.Namespace, argv: Sequence[str], *, extractor: Any = None, text_embedder: Any = None) -> dict:
    from eval import metrics

    t0 = time.perf_counter()
    if not args.model and not args.images:
        raise CliError("nothing to score: give --model DIR (a saved model) or --images DIR (images with captions)")
    try:
        metric_names = metrics.check_names(args.metrics.split(","))
        if args.images:
            metrics.check_images_names(metric_names)
    except metrics.MetricError as e:
        raise CliError(str(e)) from e
    prompts = read_prompts(args.prompts) if args.prompts else None
    if args.json:
        out_dir = Path(args.json).parent
        if out_dir.exists() and not out_dir.is_dir():
            raise CliError(f"--json {args.json}: {out_dir} is not a directory")
    for m in args.model:  # fail before any work on a missing model or folder
        if not Path(m).is_dir():
            raise CliError(f"--model {m}: no such directory")
    for d in args.images:
        if not Path(d).exists():
            raise CliError(f"--images {d}: no such directory or .zip")
    if args.save_images is not None:
        if len(args.model) != 1:
            raise CliError(f"--save-images {args.save_images}: keeps the images of one --model, got {len(args.model)}")
        keep = Path(args.save_images)
        if keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
            raise CliError(f"--save-images {args.save_images}: exists and is not an empty folder (two runs' images "
                           "would mix)")
    device = _device(args.device)
    log = None if args.quiet else (lambda msg: print(f"[eval] {msg}", file=sys.stderr, flush=True))
    if extractor is None and metrics.needs_features(metric_names):
        from eval.features import InceptionFeatures

        try:  # built once, shared by every model
            extractor = InceptionFeatures(device, batch=args.batch)
        except FileNotFoundError as e:
            raise CliError(str(e)) from e
    datasets: dict[int, Any] = {}
    opts = metrics.MetricOptions(
        num=args.num, seed=args.seed, batch=args.batch, device=device, prompts=prompts, psi=args.psi,
        num_ref=args.num_ref or args.num, cache_dir=args.cache_dir, lpips_backbone=args.lpips_backbone,
        lpips_prompts=args.lpips_prompts, lpips_seeds=args.lpips_seeds, scorer=args.scorer,
        scorer_num=args.scorer_num, scorer_text=args.scorer_text, probe=args.probe,
        clip_weights=args.clip_weights, clip_arch=args.clip_arch, extractor=extractor,
        text_embedder=text_embedder, log=log, palette_tolerance=args.palette_tolerance,
        palette_shift=args.palette_shift, save_images=args.save_images)

    def reference(res: int):
        if res not in datasets:
            datasets[res] = open_reference(args.data, res, args.data_seed)
        return datasets[res]

    rows = []
    for model_dir in args.model:
        model, tokenizer = load(model_dir, device)
        res = int(model.cfg.resolution)
        dataset = reference(res)
        if log:
            log(f"scoring {model_dir} ({res} px) on {', '.join(metric_names)}")
        try:
            result = metrics.evaluate(metric_names, model, tokenizer, dataset, opts)
        except metrics.MetricError as e:
            raise CliError(str(e)) from e
        weights_file = Path(model_dir) / "model.safetensors"
        rows.append({"model": str(model_dir), "model_sha256": sha256_file(weights_file), "images": None,
                     "resolution": res, **result.to_dict()})
    for images_dir in args.images:
        folder = open_images(images_dir, args.resolution)
        res = folder.resolution
        dataset = reference(res)
        if log:
            log(f"scoring {images_dir} ({folder.report.summary()}; read at {res} px) on {', '.join(metric_names)}")
        try:
            result = metrics.evaluate_images(metric_names, folder, dataset, opts)
        except metrics.MetricError as e:
            raise CliError(str(e)) from e
        rows.append({"model": None, "model_sha256": None, "images": str(images_dir), "resolution": res,
                     **result.to_dict()})
    payload = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": ["python", "-m", "eval", *argv],
        "data": {"path": args.data, "num_ref": args.num_ref or args.num},
        "metrics": metric_names,
        "settings": {"num": args.num, "seed": args.seed, "data_seed": args.data_seed, "batch": args.batch,
                     "psi": args.psi, "device": device, "noise_mode": "const", "prompts": args.prompts or "reference captions",
                     "seed_rule": "image i uses seed + i"},
        "rows": [{k: r[k] for k in ROW_KEYS} for r in rows],
        "seconds": time.perf_counter() - t0,
    }
    print(format_table(payload["rows"]))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps(payload, indent=2))
        print(f"wrote {args.json}")
    return payload


# ----------------------------------------------------------------------------------------
# Subcommands.


def lpips_main(argv: Sequence[str]) -> float:
    from eval.lpips import distance_between_files

    p = argparse.ArgumentParser(prog="python -m eval lpips",
                                description="LPIPS (AlexNet, v0.1) between two image files, as lpips_2imgs.py prints it.")
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("--lpips-backbone", metavar="PATH", default=None,
                   help="AlexNet trunk (default: torchvision's cache, then $SPIKEGAN_LPIPS_BACKBONE)")
    args = p.parse_args(argv)
    for name in (args.image_a, args.image_b):
        if not Path(name).is_file():
            raise CliError(f"lpips: {name}: no such file")
    try:
        d = distance_between_files(args.image_a, args.image_b, backbone=args.lpips_backbone)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise CliError(f"lpips: {e}") from e
    print(f"Distance: {d:.3f}")
    return d


def train_scorer_main(argv: Sequence[str], *, extractor: Any = None, text_embedder: Any = None) -> dict:
    from eval.alignment import ScorerConfig
    from eval.fitted import fit_scorer

    defaults = ScorerConfig()
    p = argparse.ArgumentParser(prog="python -m eval train-scorer",
                                description="Train the alignment scorer (contrastive heads over frozen Inception "
                                            "and MiniLM features) on a reference set's real image-caption pairs.")
    p.add_argument("--data", required=True, metavar="PATH|shapes", help="reference set")
    p.add_argument("--out", required=True, metavar="DIR", help="where scorer.json + scorer.safetensors go")
    p.add_argument("--resolution", type=_positive("--resolution"), default=64,
                   help="image side the reference set is read at: the resolution of the models it will score (default 64)")
    p.add_argument("--num", type=_positive("--num"), default=2000, help="real pairs (20 %% held out; default 2000)")
    p.add_argument("--text", choices=("auto", "minilm", "tower"), default=defaults.text, help="text features")
    p.add_argument("--steps", type=_positive("--steps"), default=defaults.steps, help="optimizer steps")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--batch", type=_positive("--batch"), default=32, help="images per Inception call")
    p.add_argument("--device", default="auto")
    p.add_argument("--cache-dir", default=None, help="cache of the reference features")
    args = p.parse_args(argv)
    device = _device(args.device)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {args.out}: exists and is not a directory")
    dataset = open_reference(args.data, args.resolution)
    if extractor is None:
        from eval.features import InceptionFeatures

        try:
            extractor = InceptionFeatures(device, batch=args.batch)
        except FileNotFoundError as e:
            raise CliError(str(e)) from e
    cfg = ScorerConfig(text=args.text, steps=args.steps, seed=args.seed)
    t = time.perf_counter()
    scorer, folder = fit_scorer(dataset, args.resolution, args.num, extractor, cfg=cfg, cache_dir=args.cache_dir,
                                out=out, device=device, batch=args.batch, text_embedder=text_embedder,
                                log=lambda m: print(f"[train-scorer] {m}", file=sys.stderr, flush=True))
    report = scorer.info["report"]
    held, train = report["heldout"], report["train"]
    print(f"scorer: {folder} ({scorer.cfg.text} text features, {report['num_train']} train / "
          f"{report['num_heldout']} held-out pairs, {time.perf_counter() - t:.1f} s)")
    print(f"held-out real pairs: R-precision {held['r_precision']:.3f} (of {held['candidates']}), "
          f"cosine {held['cosine']:.3f}; train pairs: R-precision {train['r_precision']:.3f}")
    return scorer.info


def main(argv: Sequence[str] | None = None, *, extractor: Any = None, text_embedder: Any = None) -> int:
    """Entry point. `extractor` / `text_embedder` replace the Inception network / MiniLM (tests
    inject small stand-ins; None = the real networks)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # the network's large activations reuse freed heap (eval/allocator.py)
    try:
        if argv and argv[0] == "lpips":
            lpips_main(argv[1:])
        elif argv and argv[0] == "train-scorer":
            train_scorer_main(argv[1:], extractor=extractor, text_embedder=text_embedder)
        else:
            args = score_parser().parse_args(argv)
            run_score(args, argv, extractor=extractor, text_embedder=text_embedder)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
