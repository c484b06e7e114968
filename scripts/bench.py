"""Benchmark the networks on this machine, in one run, against its own conv3x3 peak.

Measures (medians over reps after warm-up):
  conv_peak_gflops   a big batch of 3x3 convs (256 ch, 32x32, fp32) forward + backward,
                     best of NCHW and channels-last
  g_forward_img_s    generator forward (eval, no grad), images/s
  train_step_img_s   training-step equivalent: G forward, D on fakes and on reals, one
                     backward through both (G and D weights, code gradients), images/s
  train_step_gflops  its achieved GFLOP/s (FLOPs counted by torch.utils.flop_counter)
at the shapes32 preset and at the reference size (32 px, batch 32, channel_base 4096,
channel_max 256, 2 mapping layers, 256-d conditioning code, no cross-attention: the
StyleGAN2-ADA networks the targets refer to).

  python scripts/bench.py [--json PATH] [--reps 5] [--batch 32] [--compile] [--device cuda]
                          [--amp bf16|fp16] [--channels-last on|off] [--fused-modconv] [--joint-d]
  python scripts/bench.py --params      parameter counts of G, D and encoder per preset
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# On a shared machine OpenMP's default spin-waiting makes every parallel region wait for a
# descheduled sibling thread (measured here: G forward 7x slower under load). Must be set
# before torch loads OpenMP; export OMP_WAIT_POLICY=ACTIVE to measure the spinning default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from data.files import write_json  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from encoders.code import SpikeCode  # noqa: E402
from gan.config import DiscriminatorConfig, GeneratorConfig  # noqa: E402
from gan.presets import preset  # noqa: E402
from gan.discriminator import Discriminator  # noqa: E402
from gan.generator import Generator  # noqa: E402


def reference_configs() -> tuple[GeneratorConfig, DiscriminatorConfig]:
    """The reference size of the issue (StyleGAN2-ADA's networks at 32 px)."""
    g = GeneratorConfig(
        resolution=32, c_dim=256, z_dim=512, w_dim=512, channel_base=4096, channel_max=256, mapping_layers=2,
        attn_resolutions=(),
    )
    d = DiscriminatorConfig(resolution=32, c_dim=256, channel_base=4096, channel_max=256, mapping_layers=2)
    return g, d


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, *, warmup: int, reps: int, device: torch.device) -> float:
    """Median seconds of fn() over `reps` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def conv_peak(*, device: torch.device, batch: int, warmup: int, reps: int) -> dict[str, float]:
    """GFLOP/s of 3x3 conv fwd + bwd (input and weight grads), 256 ch, 32x32, NCHW vs NHWC."""
    out = {}
    for name, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        x = torch.randn(batch, 256, 32, 32, device=device).contiguous(memory_format=fmt).requires_grad_(True)
        w = torch.randn(256, 256, 3, 3, device=device).contiguous(memory_format=fmt).requires_grad_(True)
        g = torch.randn(batch, 256, 32, 32, device=device).contiguous(memory_format=fmt)

        def step():
            y = F.conv2d(x, w, padding=1)
            torch.autograd.grad(y, (x, w), g)

        flops = count_flops(step)
        out[name] = flops / timed(step, warmup=warmup, reps=reps, device=device) / 1e9
    return out


def make_code(B: int, c_dim: int, *, device: torch.device, L: int = 16, requires_grad: bool = False) -> SpikeCode:
    g = torch.Generator().manual_seed(0)
    pooled = torch.randn(B, c_dim, generator=g).to(device).requires_grad_(requires_grad)
    tokens = torch.randn(B, L, c_dim, generator=g).to(device).requires_grad_(requires_grad)
    lengths = torch.randint(3, L + 1, (B, 1), generator=g)
    mask = (torch.arange(L).expand(B, L) < lengths).to(device)
    return SpikeCode(pooled, tokens, mask)


def bench_networks(
    gcfg: GeneratorConfig, dcfg: DiscriminatorConfig, *, batch: int, device: torch.device, warmup: int, reps: int,
    compile: bool = False, autocast: torch.dtype | None = None, joint_d: bool = False,
) -> dict[str, float]:
    """G forward and training-step timings of one G/D pair (see the module docstring).

    joint_d: score fakes and reals in one D call on the concatenated batch (the minibatch-std
    groups never mix the halves), instead of two calls.
    """
    torch.manual_seed(0)
    G, D = Generator(gcfg).to(device), Discriminator(dcfg).to(device)
    Gc, Dc = (torch.compile(G), torch.compile(D)) if compile else (G, D)
    z = torch.randn(batch, gcfg.z_dim, device=device)
    reals = torch.rand(batch, 3, gcfg.resolution, gcfg.resolution, device=device) * 2 - 1
    amp = (
        torch.autocast(device_type=device.type, dtype=autocast) if autocast is not None else torch.autocast(device.type, enabled=False)
    )

    def g_forward():
        with torch.no_grad(), amp:
            Gc(z, make_code_fixed)

    def train_step():
        code = make_code(batch, gcfg.c_dim, device=device, requires_grad=True)
        with amp:
            fake = Gc(z, code)
            if joint_d:
                logits = Dc(torch.cat([fake, reals]), torch.cat([code.pooled, code.pooled]))
                loss = F.softplus(logits[:batch]).mean() + F.softplus(-logits[batch:]).mean()
            else:
                loss = F.softplus(Dc(fake, code.pooled)).mean() + F.softplus(-Dc(reals, code.pooled)).mean()
        loss.backward()
        G.zero_grad(set_to_none=True)
        D.zero_grad(set_to_none=True)

    make_code_fixed = make_code(batch, gcfg.c_dim, device=device)
    # A frozen G, as sampling uses it. With trainable weights, the FLOP counter's module tracker
    # fails on views of parameters made under no_grad (the layout map's queries).
    trainable = [p for p in G.parameters() if p.requires_grad]
    G.eval().requires_grad_(False)
    t_fwd = timed(g_forward, warmup=warmup, reps=reps, device=device)
    fwd_flops = count_flops(g_forward)
    for p in trainable:
        p.requires_grad_(True)
    G.train()
    D.train()
    t_step = timed(train_step, warmup=warmup, reps=reps, device=device)
    step_flops = count_flops(train_step)
    return {
        "g_forward_img_s": batch / t_fwd,
        "g_forward_gflops": fwd_flops / t_fwd / 1e9,
        "train_step_img_s": batch / t_step,
        "train_step_gflops": step_flops / t_step / 1e9,
        "train_step_gflop_per_img": step_flops / batch / 1e9,
        "g_params": sum(p.numel() for p in G.parameters()),
        "d_params": sum(p.numel() for p in D.parameters()),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, default=None, help="write the results as JSON to this file")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs")
    ap.add_argument("--batch", type=int, default=32, help="images per batch")
    ap.add_argument("--peak-batch", type=int, default=16, help="batch of the conv-peak measurement")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--compile", action="store_true", help="torch.compile G and D")
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast dtype")
    ap.add_argument("--channels-last", choices=["on", "off"], default="on", help="NHWC activations in G and D")
    ap.add_argument("--fused-modconv", action="store_true", help="use the grouped-conv modulation")
    ap.add_argument("--joint-d", action="store_true", help="score fakes and reals in one D call")
    ap.add_argument("--configs", default="reference,shapes32", help="comma list: reference, and/or preset names")
    ap.add_argument("--params", action="store_true", help="print parameter counts of every preset and exit")
    args = ap.parse_args(argv)
    if args.params:
        from gan.config import main as print_parameter_counts

        print_parameter_counts()
        return {}
    if args.reps < 1 or args.warmup < 0 or args.batch < 1:
        ap.error("--reps and --batch must be >= 1, --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]

    results: dict = {
        "device": args.device, "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "batch": args.batch, "torch": torch.__version__,
        "compile": args.compile, "amp": args.amp, "channels_last": args.channels_last == "on",
        "fused_modconv": args.fused_modconv, "joint_d": args.joint_d,
    }
    peak = conv_peak(device=device, batch=args.peak_batch, warmup=args.warmup, reps=args.reps)
    results["conv_peak_by_format"] = peak
    results["conv_peak_gflops"] = max(peak.values())
    print("conv3x3 256ch 32x32 fwd+bwd: " + ", ".join(f"{k} {v:.1f}" for k, v in peak.items()) + " GFLOP/s")

    for name in args.configs.split(","):
        if name == "reference":
            gcfg, dcfg = reference_configs()
        else:
            cfg = preset(name)
            gcfg, dcfg = cfg.generator, cfg.discriminator
        cl = args.channels_last == "on"
        gcfg = replace(gcfg, channels_last=cl, fused_modconv=args.fused_modconv)
        dcfg = replace(dcfg, channels_last=cl)
        r = bench_networks(
            gcfg, dcfg, batch=args.batch, device=device, warmup=args.warmup, reps=args.reps, compile=args.compile,
            autocast=amp, joint_d=args.joint_d,
        )
        r["train_step_of_peak"] = r["train_step_gflops"] / results["conv_peak_gflops"]
        results[name] = r

    print(f"\n{'config':<10} {'G fwd img/s':>12} {'train img/s':>12} {'train GFLOP/s':>14} {'% conv peak':>12} {'GFLOP/img':>10}")
    for name in args.configs.split(","):
        r = results[name]
        print(
            f"{name:<10} {r['g_forward_img_s']:>12.1f} {r['train_step_img_s']:>12.2f} {r['train_step_gflops']:>14.1f} "
            f"{100 * r['train_step_of_peak']:>11.0f}% {r['train_step_gflop_per_img']:>10.2f}"
        )
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
