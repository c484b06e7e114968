"""Project a real image into a spikegan model's latent space, then re-prompt it.

    python scripts/project.py --model runs/shapes32/model --target photo.png \
        --prompt "a red circle" --steps 500 --out proj/ --edit-prompt "a blue circle"

Finds the w whose image under the prompt's spike code reproduces the target (LPIPS plus a
pixel loss, noise maps regularised as in StyleGAN2's projector), and writes to --out:
target.png (the target at the model's resolution), proj.png (the reconstruction),
projected_w.npz (w [1, num_ws, w_dim], the prompt, the optimised noise maps) and, per
--edit-prompt, edit-<i>.png: the same offset from the new prompt's mean w,
w_edit = mean_w(new) + (w_proj - mean_w(old)), synthesised under the new prompt's code, so
the image keeps its layout and follows the new text.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spikegan-project", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR", help="model directory")
    p.add_argument("--target", required=True, metavar="IMAGE", help="the image to reproduce (resized to the model's resolution)")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the prompt the image is read under")
    p.add_argument("--steps", type=int, default=1000, help="optimisation steps (StyleGAN2 uses 1000)")
    p.add_argument("--out", default="projection", metavar="DIR", help="output folder")
    p.add_argument("--edit-prompt", action="append", default=[], metavar="TEXT",
                   help="regenerate with the same offset from this prompt's mean w (repeatable)")
    p.add_argument("--lr", type=float, default=0.1, help="peak Adam learning rate")
    p.add_argument("--pixel-weight", type=float, default=1.0, help="weight of the mean squared pixel error")
    p.add_argument("--noise-reg", type=float, default=1e5, help="weight of the noise-map regularisation")
    p.add_argument("--no-noise", action="store_true", help="optimise w only, keep the model's noise maps")
    p.add_argument("--w-plus", action="store_true", help="one w per synthesis layer (W+) instead of one w (W)")
    p.add_argument("--w-samples", type=int, default=2048, help="samples for the prompt's mean w and its spread")
    p.add_argument("--seed", type=int, default=303, help="seeds the exploration noise on w")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--lpips-backbone", metavar="FILE", default=None,
                   help="AlexNet features (safetensors) for LPIPS; default $SPIKEGAN_LPIPS_BACKBONE")
    p.add_argument("--log-every", type=int, default=50, help="print the loss every N steps (0 = never)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error(f"--steps: must be >= 1, got {args.steps}")
    if args.lr <= 0:
        parser.error(f"--lr: must be > 0, got {args.lr}")
    if args.w_samples < 2:
        parser.error(f"--w-samples: must be >= 2, got {args.w_samples}")
    if not Path(args.target).is_file():
        parser.error(f"--target: {args.target} is not a file")
    if not args.prompt.strip():
        parser.error("--prompt: empty prompt")
    return args


def run(args: argparse.Namespace) -> dict:
    """Project, save, re-prompt; returns {"lpips": float, "files": [paths]}."""
    import numpy as np
    import PIL.Image
    import torch

    from eval.lpips import LPIPS
    from gan.grid import from_pil, to_pil
    from gan.pipeline import Pipeline
    from gan.projector import OptimConfig, noise_maps, project, upsampled

    pipe = Pipeline.from_pretrained(args.model, device=args.device)
    try:
        with PIL.Image.open(args.target) as im:
            target = from_pil(im, resolution=pipe.resolution).to(pipe.device)  # [1, 3, R, R]
    except (OSError, PIL.UnidentifiedImageError) as e:
        raise ValueError(f"--target {args.target}: not a readable image ({e})") from e
    lpips = upsampled(LPIPS(args.lpips_backbone).to(pipe.device))  # AlexNet needs >= 64 px

    code = pipe.encode([args.prompt])
    mean_w, w_std = pipe.prompt_w_stats(code, num=args.w_samples)  # [1, num_ws, w_dim], float
    cfg = OptimConfig(steps=args.steps, lr=args.lr, optimize_noise=not args.no_noise,
                      noise_reg_weight=args.noise_reg, w_plus=args.w_plus)

    def log(step: int, stats: dict) -> None:
        if args.log_every and (step % args.log_every == 0 or step == args.steps - 1):
            print(f"step {step + 1:>5d}/{args.steps}: lpips {stats['distance']:.4f} "
                  f"pixel {stats['pixel']:.4f} loss {stats['loss']:.4f}")

    result = project(pipe.generator, target, code, distance=lpips, w_start=mean_w, w_std=w_std,
                     pixel_weight=args.pixel_weight, cfg=cfg, seed=args.seed, log=log)
    with torch.no_grad():
        start_lpips = float(lpips(pipe.synthesize(mean_w, code), target)[0])
        final_lpips = float(lpips(result.images, target)[0])

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "target.png", out / "proj.png", out / "projected_w.npz"]
    to_pil(target)[0].save(files[0])
    to_pil(result.images)[0].save(files[1])
    np.savez(files[2], w=result.ws.cpu().numpy(), prompt=np.array(args.prompt),
             lpips=np.array(final_lpips), **{f"noise/{k}": v.cpu().numpy() for k, v in result.noise.items()})
    print(f"LPIPS to target: {start_lpips:.4f} at the prompt's mean w -> {final_lpips:.4f} projected")

    for i, text in enumerate(args.edit_prompt):
        new_code = pipe.encode([text])
        new_mean, _ = pipe.prompt_w_stats(new_code, num=args.w_samples)
        w_edit = new_mean + (result.ws - mean_w)
        with noise_maps(pipe.generator, result.noise):
            image = pipe.synthesize(w_edit, new_code)
        path = out / f"edit-{i:02d}.png"
        to_pil(image)[0].save(path)
        files.append(path)
        print(f"edit {i}: {text!r} -> {path}")
    return {"lpips": final_lpips, "lpips_start": start_lpips, "files": files}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from encoders import PromptError
    from gan.pipeline import ModelDirError

    try:
        result = run(args)
    except (ModelDirError, PromptError, FileNotFoundError, ValueError) as e:
        print(f"spikegan-project: error: {e}", file=sys.stderr)
        return 1
    for path in result["files"]:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
