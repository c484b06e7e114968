"""The main job: train shapes32 on the built-in shapes domain, then sample a grid and score it.

    python scripts/main_job.py [--out runs/shapes32] [--kimg K] [--seed S] [--num N] [--processes P]

Run twice, it resumes from the last checkpoint instead of starting over. On a CPU it trains as two
processes of half the cores each (train.py --processes 2: torchrun, gloo), as the networks are too
narrow for one process's threads to keep the cores busy (docs/experiments.md measures it).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts import sample, train  # noqa: E402

# The domain's captions always say where a lone object is; a prompt that does not is outside it,
# and shapes32 draws the layout sketch's average of every place (gan/layout.py).
PROMPTS = (
    "a large red circle in the centre",
    "a large blue square at the top",
    "a large green triangle at the bottom",
    "a large yellow star on the left",
    "a large purple cross on the right",
    "a small orange circle on the left",
    "a small cyan square on the right",
    "a small pink star at the top",
    "a large blue circle at the bottom",
    "a red circle left of a blue square",
    "a yellow star above a green cross",
    "a purple triangle right of an orange circle",
)


def training_finished(out: Path) -> bool:
    """Whether the newest state in OUT/checkpoints has shown all the images its run asked for."""
    from gan.checkpoint import list_states, read_trainer

    states = list_states(out / "checkpoints")
    if not states:
        return False
    trainer = read_trainer(states[-1])
    return trainer["loop"]["nimg"] >= round(trainer["train_config"]["kimg"] * 1000)


def default_processes(out: Path) -> int:
    """As many processes as the run's newest state was saved by (a resume needs each one's RNG
    state); for a new run, 2 on a CPU of 2 or more cores, else 1."""
    import torch
    from gan.checkpoint import list_states, read_trainer
    from gan.reporting import usable_cores

    if states := list_states(out / "checkpoints"):
        return int(read_trainer(states[-1]).get("processes", 1))
    return 1 if torch.cuda.is_available() else min(2, usable_cores())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="main_job", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="runs/shapes32", help="run directory")
    p.add_argument("--kimg", type=float, default=None, help="training length (default: the preset's)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the preset's, 0)")
    p.add_argument("--num", type=int, default=500, help="images generated for the scores")
    p.add_argument("--metrics", default="attributes,fid,fd_domain,kid,variety", help="eval metrics (lpips_diversity is added "
                   "when an AlexNet backbone is found: $SPIKEGAN_LPIPS_BACKBONE or ../shared/weights)")
    p.add_argument("--processes", type=int, default=None,
                   help="training processes (default: a resumed run's own; a new run 2 on a CPU of 2 or more "
                        "cores, else 1)")
    args = p.parse_args(argv)
    out = Path(args.out)
    processes = args.processes if args.processes is not None else default_processes(out)

    train_args = ["--data", "shapes", "--preset", "shapes32", "--out", str(out)]
    if args.kimg is not None:
        train_args += ["--kimg", str(args.kimg)]
    if args.seed is not None:
        train_args += ["--seed", str(args.seed)]
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        train_args += ["--resume", "latest"]
    if (rc := train.main([*train_args, "--processes", str(processes)])) != 0:
        return rc
    if not training_finished(out):  # stopped by SIGINT / SIGTERM: no grid or scores from half a run
        print(f"training stopped before its end: run the same command again to continue it ({out})")
        return 0

    prompts = out / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    grid = out / "final-grid.png"
    if (rc := sample.main(["--model", str(out / "model"), "--prompts", str(prompts), "--seeds", "0-7",
                           "--grid", "--out", str(grid)])) != 0:
        return rc
    print(f"sample grid: {grid}")

    from eval import cli

    metrics, extra = args.metrics, []
    backbone = Path(__file__).resolve().parents[2] / "shared" / "weights" / "alexnet-features.safetensors"
    if "lpips" not in metrics and (os.environ.get("SPIKEGAN_LPIPS_BACKBONE") or backbone.is_file()):
        metrics += ",lpips_diversity"
        if not os.environ.get("SPIKEGAN_LPIPS_BACKBONE"):
            extra = ["--lpips-backbone", str(backbone)]
    # fd_domain's scorer trains on the FID reference images: no Inception pass beyond FID's own.
    return cli.main(["--model", str(out / "model"), "--data", "shapes", "--metrics", metrics, *extra,
                     "--num", str(args.num), "--scorer-num", str(args.num), "--json", str(out / "scores.json")])


if __name__ == "__main__":
    sys.exit(main())
