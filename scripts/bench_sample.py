"""Benchmark sampling: images/s of the Pipeline against the bare generator forward, same run.

For each preset (untrained weights; speed does not depend on training), with a batch of 64:
  g_forward_img_s    Generator forward alone (eval, no grad, a fixed SpikeCode), as scripts/bench.py
  pipe_pt_img_s      Pipeline(prompts, seeds, output_type="pt"): encode every prompt, latents per
                     seed, mapping (with truncation psi=0.7 towards each prompt's mean w),
                     synthesis with const noise
  pipe_pil_img_s     the same, returning PIL images (adds the uint8 conversion)
  pipe_over_g        pipe_pt_img_s / g_forward_img_s: what the pipeline adds over the generator
Timings are medians over --reps, with the three measurements interleaved per rep so that
machine load drifts hit them alike. Workloads: 8 prompts x 8 seeds (64 images) and 1 prompt
x 64 seeds.

  python scripts/bench_sample.py [--presets shapes32,emoji64] [--batch 64] [--reps 5] [--threads 2] [--json PATH]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from data.files import write_json

from encoders import make_tokenizer
from gan.presets import preset
from gan.model import TextToImage
from gan.pipeline import Pipeline
from scripts.bench import make_code

PROMPTS = [
    "a red circle", "a (blue:1.3) square left of a green triangle", "a big yellow star",
    "a small purple circle above a red square", "an orange triangle on a white background",
    "a green star right of a blue circle", "a tiny red square", "a large (cyan:1.2) triangle below a pink star",
]


def build_pipeline(name: str, device: torch.device) -> Pipeline:
    """An untrained model of preset `name` with a tokenizer built from PROMPTS."""
    cfg = preset(name)
    tok = make_tokenizer(cfg.encoder, PROMPTS)
    torch.manual_seed(0)
    model = TextToImage(cfg.replace(vocab_size=len(tok)))
    return Pipeline(model=model, tokenizer=tok, device=device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleaved(fns: dict[str, callable], *, warmup: int, reps: int, device: torch.device) -> dict[str, float]:
    """Median seconds per fn, the fns run in turn within every rep."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_preset(name: str, *, batch: int, reps: int, warmup: int, device: torch.device) -> dict:
    pipe = build_pipeline(name, device)
    G = pipe.generator
    z = torch.randn(batch, G.z_dim, device=device)
    code = make_code(batch, G.c_dim, device=device)

    def g_forward():
        with torch.no_grad():
            G(z, code, noise_mode="const")

    out: dict = {"resolution": pipe.resolution, "batch": batch,
                 "g_params": sum(p.numel() for p in G.parameters()),
                 "encoder_params": sum(p.numel() for p in pipe.encoder.parameters())}
    workloads = {"8x8": (PROMPTS, list(range(8))), "1x64": (PROMPTS[:1], list(range(64)))}
    for wname, (prompts, seeds) in workloads.items():
        assert len(prompts) * len(seeds) == 64
        gen = dict(psi=0.7, truncation="prompt", noise_mode="const", batch=batch)
        t = interleaved({
            "g": g_forward,
            "pt": lambda: pipe(prompts, seeds, output_type="pt", **gen),
            "pil": lambda: pipe(prompts, seeds, **gen),
        }, warmup=warmup, reps=reps, device=device)
        out[wname] = {
            "g_forward_img_s": batch / t["g"],
            "pipe_pt_img_s": 64 / t["pt"],
            "pipe_pil_img_s": 64 / t["pil"],
            "pipe_over_g": (64 / t["pt"]) / (batch / t["g"]),
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="shapes32,emoji64", help="comma list of presets")
    ap.add_argument("--batch", type=int, default=64, help="images per generator call")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed warm-up runs")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the CI machine has 2 cores)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON to this file")
    args = ap.parse_args(argv)
    if args.reps < 1 or args.warmup < 0 or args.batch < 1:
        ap.error("--reps and --batch must be >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results: dict = {"device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
                     "reps": args.reps}
    print(f"{'preset':<10} {'px':>4} {'workload':>8} {'G fwd img/s':>12} {'pipe pt img/s':>14} {'pipe PIL img/s':>15} {'pipe/G':>7}")
    for name in args.presets.split(","):
        r = bench_preset(name, batch=args.batch, reps=args.reps, warmup=args.warmup, device=device)
        results[name] = r
        for w in ("8x8", "1x64"):
            x = r[w]
            print(f"{name:<10} {r['resolution']:>4} {w:>8} {x['g_forward_img_s']:>12.1f} {x['pipe_pt_img_s']:>14.1f} "
                  f"{x['pipe_pil_img_s']:>15.1f} {x['pipe_over_g']:>7.2f}")
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
