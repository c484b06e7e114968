"""Sample images from a saved spikegan model (also installed as `spikegan-sample`).

    spikegan-sample --model runs/shapes32/model --prompt "a (red:1.4) circle" --seeds 0-7 --out out/
    spikegan-sample --model M --prompts prompts.txt --seeds 0-7 --grid --out grid.png
    spikegan-sample --model M --prompt "a red circle" --prompt "a blue square" --seeds 0 --interpolate --out walk.gif
    spikegan-sample --model M --prompt "a red circle" --seeds 0-3 --style-mix --col-seeds 10-13 --out mix.png
    spikegan-sample --model M --prompt "a red circle" --seeds 0-3 --raster --attention --out out/
    spikegan-sample --model M --prompt "a red circle" --seeds 0-3 --refine 100 --alignment-scorer S --out out/
    spikegan-sample --model M --prompt "a circle" --palette "#ff0000,#0000ff:1.5" --sketch layout.png --out out/
    spikegan-sample --model M --prompt "a circle" --palette none --palette "#ff0000" --palette "#0000ff" --grid --out p.png

--out is a folder, or a file name for the one-file modes (--grid: .png, --interpolate: .gif,
--style-mix: .png); given a folder there, they write grid.png / interpolation.gif /
style-mix.png inside it. Per-image files are named p<prompt index>-seed<seed>.png.

--palette and --sketch may be given several times with --grid (`none` = no guide): each prompt
then takes a row per palette and sketch (prompt-major, palettes before sketches vary), to compare
guides on the same seeds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gan.grid import SeedRangeError, image_grid, parse_seeds

MODES = ("images", "grid", "interpolate", "style-mix")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spikegan-sample", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (config.json, model.safetensors, tokenizer.json)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", metavar="TEXT", help="a prompt (repeatable); emphasis syntax: (word:1.4)")
    src.add_argument("--prompts", metavar="FILE", help="text file, one prompt per line (blank lines and #-comments skipped)")
    p.add_argument("--seeds", default="0-7", help="seeds: ranges and lists, e.g. 0-7 or 1,3,5-9 (default 0-7)")
    p.add_argument("--truncation", type=float, default=1.0, metavar="PSI", help="truncation psi in [0, 2] (1 = none)")
    p.add_argument("--truncation-mode", choices=("prompt", "global"), default="prompt",
                   help="truncate towards the prompt's mean w (default) or the global w_avg")
    p.add_argument("--noise-mode", choices=("const", "random", "none"), default="const", help="per-pixel noise")
    p.add_argument("--out", required=True, metavar="PATH", help="output folder (or file for --grid/--interpolate/--style-mix)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.add_argument("--batch", type=int, default=16, help="images per generator call")
    p.add_argument("--palette", action="append", default=None, metavar="COLOURS",
                   help="guide every image by 1-5 colours #rrggbb, optionally weighted: '#ff0000,#0000ff:1.5' "
                        "(a model trained with --palette on); repeatable with --grid, 'none' = no palette")
    p.add_argument("--sketch", action="append", default=None, metavar="IMAGE",
                   help="guide every image by a rough layout image of any size (a model trained with --sketch-grid); "
                        "repeatable with --grid, 'none' = no sketch")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--grid", action="store_true", help="one grid PNG: rows are prompts, columns are seeds")
    mode.add_argument("--interpolate", action="store_true", help="a GIF walking through every prompt x seed keyframe")
    mode.add_argument("--style-mix", action="store_true",
                      help="style-mixing grid per prompt: coarse styles from --seeds (rows), fine from --col-seeds")
    p.add_argument("--frames", type=int, default=16, help="--interpolate: frames per transition")
    p.add_argument("--fps", type=float, default=12.0, help="--interpolate: GIF frame rate")
    p.add_argument("--col-seeds", default=None, help="--style-mix: column seeds (default: the row seeds)")
    p.add_argument("--coarse-layers", type=int, default=None, help="--style-mix: how many leading ws are coarse (default half)")
    p.add_argument("--raster", action="store_true", help="also write a spike raster PNG per prompt")
    p.add_argument("--attention", action="store_true", help="also write per-word cross-attention maps per image")
    p.add_argument("--refine", type=int, default=0, metavar="N",
                   help="optimise w and noise for N steps to raise the prompt-alignment score; saves before/after")
    p.add_argument("--refine-lr", type=float, default=0.02, help="--refine: peak Adam learning rate")
    p.add_argument("--refine-lpips", type=float, default=1.0, help="--refine: weight of the LPIPS term to the start image")
    p.add_argument("--alignment-scorer", metavar="DIR", default=None, help="--refine: the eval package's alignment scorer folder")
    p.add_argument("--lpips-backbone", metavar="FILE", default=None,
                   help="--refine: AlexNet features (safetensors) for LPIPS; default $SPIKEGAN_LPIPS_BACKBONE")
    return p


def read_prompts(path: str) -> list[str]:
    """Prompts from a file, one per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ValueError(f"--prompts {path}: cannot read ({e.strerror})") from e
    prompts = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not prompts:
        raise ValueError(f"--prompts {path}: no prompts in the file")
    return prompts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate; errors name the flag (argparse exits with status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.prompt_list = args.prompt if args.prompt else read_prompts(args.prompts)
        args.seed_list = parse_seeds(args.seeds, option="--seeds")
        args.col_seed_list = parse_seeds(args.col_seeds, option="--col-seeds") if args.col_seeds else args.seed_list
    except (ValueError, SeedRangeError) as e:
        parser.error(str(e))
    if any(not p.strip() for p in args.prompt_list):
        parser.error("--prompt: empty prompt")
    if not 0.0 <= args.truncation <= 2.0:
        parser.error(f"--truncation: psi must lie in [0, 2], got {args.truncation}")
    if args.batch < 1:
        parser.error(f"--batch: must be >= 1, got {args.batch}")
    if args.frames < 1:
        parser.error(f"--frames: must be >= 1, got {args.frames}")
    if args.refine < 0:
        parser.error(f"--refine: steps must be >= 0, got {args.refine}")
    if args.refine and (args.grid or args.interpolate or args.style_mix):
        parser.error("--refine writes before/after images per prompt and seed; drop --grid/--interpolate/--style-mix")
    if (args.palette or args.sketch) and (args.refine or args.interpolate or args.style_mix):
        parser.error("--palette and --sketch guide plain images and --grid; drop --refine/--interpolate/--style-mix")
    for flag, values in (("--palette", args.palette), ("--sketch", args.sketch)):
        if values is not None and len(values) > 1 and not args.grid:
            parser.error(f"{flag} given {len(values)} times: several guides make rows of a --grid; add --grid")
    args.palettes = [none_or(v) for v in args.palette or [None]]
    args.sketches = [none_or(v) for v in args.sketch or [None]]
    if any(v is not None for v in args.palettes):
        from encoders.guides import GuideError, parse_palette

        try:
            args.palettes = [None if v is None else parse_palette(v) for v in args.palettes]
        except GuideError as e:
            parser.error(f"--palette: {e}")
    if args.refine and not args.alignment_scorer:
        parser.error("--refine: needs --alignment-scorer DIR (train one with `python -m eval train-scorer`)")
    if args.interpolate and len(args.prompt_list) * len(args.seed_list) < 2:
        parser.error("--interpolate: needs at least two keyframes (two --prompt or two --seeds)")
    args.mode = "grid" if args.grid else "interpolate" if args.interpolate else "style-mix" if args.style_mix else "images"
    if args.mode == "images" and Path(args.out).suffix.lower() in (".png", ".gif", ".jpg", ".jpeg"):
        parser.error(f"--out: {args.out} names a file, but one PNG per image goes into a folder; "
                     "add --grid for one grid PNG, or give a folder")
    return args


def none_or(value: str | None) -> str | None:
    """A --palette / --sketch value; 'none' means no guide."""
    return None if value is None or value.strip().lower() == "none" else value


def output_file(out: str, default_name: str, suffix: str) -> Path:
    """--out as a file when it ends with `suffix`, else `default_name` inside the folder --out."""
    path = Path(out)
    return path if path.suffix.lower() == suffix else path / default_name


def image_name(prompt_index: int, seed: int, tag: str = "") -> str:
    return f"p{prompt_index:02d}-seed{seed:04d}{tag}.png"


def run(args: argparse.Namespace) -> list[Path]:
    """Load the model, generate what the flags ask for; returns the files written."""
    from gan.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    gen = dict(psi=args.truncation, truncation=args.truncation_mode, noise_mode=args.noise_mode, batch=args.batch)
    prompts, seeds = args.prompt_list, args.seed_list
    guides = dict(palette=args.palettes[0], sketch=args.sketches[0])
    written: list[Path] = []
    out = Path(args.out)

    if args.mode == "grid":
        rows = [(p, palette, sketch) for p in prompts for palette in args.palettes for sketch in args.sketches]
        images = [im for p, palette, sketch in rows for im in pipe([p], seeds, **gen, palette=palette, sketch=sketch)]
        path = output_file(args.out, "grid.png", ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images, rows=len(rows), cols=len(seeds)).save(path)
        written.append(path)
        folder = path.parent
    elif args.mode == "interpolate":
        from gan.grid import save_gif

        frames = pipe.interpolate(prompts, seeds, frames=args.frames, **gen)
        path = save_gif(frames, output_file(args.out, "interpolation.gif", ".gif"), fps=args.fps)
        written.append(path)
        folder = path.parent
    elif args.mode == "style-mix":
        path = output_file(args.out, "style-mix.png", ".png")
        path.parent.mkdir(parents=True, exist_ok=True)
        for i, prompt in enumerate(prompts):
            grid = pipe.style_mix(prompt, seeds, args.col_seed_list, coarse_layers=args.coarse_layers, **gen)
            target = path if len(prompts) == 1 else path.with_name(f"{path.stem}-p{i:02d}{path.suffix}")
            grid.save(target)
            written.append(target)
        folder = path.parent
    else:
        out.mkdir(parents=True, exist_ok=True)
        folder = out
        if not args.refine:
            images = pipe(prompts, seeds, **gen, **guides)
            for k, im in enumerate(images):
                p, s = divmod(k, len(seeds))
                im.save(out / image_name(p, seeds[s]))
                written.append(out / image_name(p, seeds[s]))

    if args.refine:
        written += run_refine(pipe, args, folder)
    if args.raster:
        written += write_rasters(pipe, prompts, folder)
    if args.attention:
        written += write_attention(pipe, prompts, seeds, folder, psi=args.truncation,
                                   truncation=args.truncation_mode, noise_mode=args.noise_mode)
    return written


def write_rasters(pipe, prompts: list[str], folder: Path) -> list[Path]:
    """A spike raster PNG per prompt: raster-p<i>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, prompt in enumerate(prompts):
        path = folder / f"raster-p{i:02d}.png"
        pipe.write_raster(prompt, path)
        paths.append(path)
    return paths


def write_attention(pipe, prompts: list[str], seeds: list[int], folder: Path, **gen) -> list[Path]:
    """Per image, one panel per word of its cross-attention over the image: attention-p<i>-seed<s>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, prompt in enumerate(prompts):
        for s in seeds:
            path = folder / image_name(i, s, "-attention")
            pipe.attention_panel(prompt, s, **gen).save(path)
            paths.append(path)
    return paths


def alignment_score(scorer_dir: str, prompt: str, *, device: str = "cpu"):
    """eval's alignment scorer as a differentiable score: images [B,3,R,R] in [-1,1] -> [B] cosine
    between the images' and the prompt's embeddings in the scorer's shared space.

    The image side is the FID Inception's pool features of the images resized as clean-fid does
    (PIL bicubic per channel, here as its exact linear twin so that gradients flow).
    """
    import torch

    from eval.alignment import AlignmentScorer
    from eval.inception import INPUT_SIZE, load_inception
    from gan.grid import resize_like_pil

    scorer = AlignmentScorer.load(scorer_dir, device=device).requires_grad_(False)
    inception, _ = load_inception()
    inception = inception.to(device)
    with torch.no_grad():
        text = scorer.embed_texts([prompt])  # [1, E] unit vector

    def score(images: torch.Tensor) -> torch.Tensor:
        x = ((images + 1) * 127.5).clamp(0, 255)  # [B, 3, R, R] in [0, 255], as the FID network sees
        x = resize_like_pil(x, INPUT_SIZE).clamp(0, 255)  # [B, 3, 299, 299]
        features = inception(((x - 128) / 128).contiguous(memory_format=torch.channels_last))  # [B, 2048]
        return (scorer.embed_images(features) * text).sum(dim=-1)  # [B]

    return score


def run_refine(pipe, args: argparse.Namespace, folder: Path) -> list[Path]:
    """Refine every prompt x seed image: eval's alignment scorer and LPIPS wired into gan.projector.refine.
    Writes <name>-before.png and <name>-after.png; prints the score change per image."""
    import torch

    from eval.lpips import LPIPS
    from gan.grid import to_pil
    from gan.projector import OptimConfig, refine, upsampled

    lpips = upsampled(LPIPS(args.lpips_backbone).to(pipe.device))
    cfg = OptimConfig(steps=args.refine, lr=args.refine_lr, w_noise=0.0)
    paths = []
    for i, prompt in enumerate(args.prompt_list):
        score = alignment_score(args.alignment_scorer, prompt, device=args.device)
        for s in args.seed_list:
            lat = pipe.prepare([prompt], [s], psi=args.truncation, truncation=args.truncation_mode)
            start = pipe.synthesize(lat.ws, lat.code, noise_mode="const")
            result = refine(pipe.generator, lat.ws, lat.code, score=score, distance=lpips,
                            distance_weight=args.refine_lpips, cfg=cfg, seed=s)
            with torch.no_grad():
                before, after = float(score(start)[0]), float(score(result.images)[0])
                moved = float(lpips(result.images, start)[0])
            print(f"refine {image_name(i, s)}: alignment {before:.4f} -> {after:.4f} ({after - before:+.4f}), "
                  f"LPIPS to start {moved:.4f}")
            for tag, img in (("-before", start), ("-after", result.images)):
                path = folder / image_name(i, s, tag)
                to_pil(img)[0].save(path)
                paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from encoders import PromptError
    from encoders.guides import GuideError
    from gan.pipeline import ModelDirError

    try:
        written = run(args)
    except (ModelDirError, PromptError, GuideError, FileNotFoundError) as e:
        print(f"spikegan-sample: error: {e}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
