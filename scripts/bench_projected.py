"""Benchmark the projected discriminator against the preset's own, in one run.

For each preset, one training-style pass at batch 32: D(img, pooled) on images that need a
gradient, softplus loss, backward to D's parameters and the images (what G's step and D's step
each pay). Timed: the preset's gan.discriminator.Discriminator and gan.projected.ProjectedDiscriminator
(default widths) at each backbone input resolution. Medians over --reps, the networks run in turn
within every rep (scripts/bench_sample.interleaved) so that load drifts hit them alike; `ratio` is
the projected D's time over the preset D's from the same run.

  python scripts/bench_projected.py [--presets shapes32,emoji64] [--backbone-resolutions 32,64,128,224]
                                    [--batch 32] [--reps 3] [--warmup 1] [--threads 2] [--device cpu] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see scripts/bench.py

import torch  # noqa: E402

from data.files import write_json  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from gan.presets import preset  # noqa: E402
from gan.discriminator import Discriminator  # noqa: E402
from gan.efficientnet import EfficientNetLite0, load_efficientnet_lite0  # noqa: E402
from gan.projected import ProjectedDiscriminator, ProjectedDiscriminatorConfig  # noqa: E402
from scripts.bench_sample import interleaved  # noqa: E402


def d_step(D: torch.nn.Module, img: torch.Tensor, pooled: torch.Tensor):
    """A closure: one forward + backward of D, gradients to its parameters and the images."""

    def step() -> None:
        x = img.detach().requires_grad_(True)
        F.softplus(D(x, pooled)).mean().backward()
        D.zero_grad(set_to_none=True)

    return step


def bench_preset(name: str, resolutions: list[int], *, backbone: EfficientNetLite0, batch: int, reps: int,
                 warmup: int, device: torch.device) -> dict:
    """Seconds per step of the preset's D and of the projected D at each backbone resolution."""
    cfg = preset(name)
    R, c_dim = cfg.resolution, cfg.discriminator.c_dim
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(batch, 3, R, R, generator=g) * 2 - 1).to(device)
    pooled = torch.randn(batch, c_dim, generator=g).to(device)
    torch.manual_seed(0)
    nets = {"preset_d": Discriminator(cfg.discriminator)}
    for r in resolutions:
        pcfg = ProjectedDiscriminatorConfig(resolution=R, c_dim=c_dim, backbone_resolution=r)
        nets[f"projected_{r}"] = ProjectedDiscriminator(pcfg, backbone=backbone)
    nets = {k: D.to(device).train() for k, D in nets.items()}
    seconds = interleaved({k: d_step(D, img, pooled) for k, D in nets.items()}, warmup=warmup, reps=reps, device=device)
    base = seconds["preset_d"]
    return {
        "resolution": R, "batch": batch,
        "preset_d": {"seconds": base, "params": sum(p.numel() for p in nets["preset_d"].parameters())},
        **{k: {"seconds": s, "ratio": s / base, "params": sum(p.numel() for p in nets[k].parameters())}
           for k, s in seconds.items() if k != "preset_d"},
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="shapes32,emoji64", help="comma list of presets")
    ap.add_argument("--backbone-resolutions", default="32,64,128,224",
                    help="comma list of the projected D's backbone input resolutions")
    ap.add_argument("--batch", type=int, default=32, help="images per step")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON to this file")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.batch < 2:
        ap.error("--reps must be >= 1, --warmup >= 0 and --batch >= 2 (batch norm in the heads)")
    try:
        resolutions = [int(r) for r in args.backbone_resolutions.split(",")]
    except ValueError:
        ap.error(f"--backbone-resolutions must be a comma list of integers, got {args.backbone_resolutions!r}")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backbone = load_efficientnet_lite0()
    results: dict = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "batch": args.batch, "reps": args.reps}
    print(f"{'preset':<10} {'px':>4} {'D':>14} {'s/step':>8} {'ratio':>7} {'params':>10}")
    for name in args.presets.split(","):
        r = bench_preset(name, resolutions, backbone=backbone, batch=args.batch, reps=args.reps, warmup=args.warmup,
                         device=device)
        results[name] = r
        for k, v in r.items():
            if isinstance(v, dict):
                print(f"{name:<10} {r['resolution']:>4} {k:>14} {v['seconds']:>8.3f} {v.get('ratio', 1.0):>7.2f} "
                      f"{v['params']:>10,}")
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
