"""Benchmark the spiking text encoders: ms per batch (forward + backward) and spikes per prompt.

    python scripts/bench_encoders.py [--batch 64] [--length 16] [--reps 9] [--threads 1]
                                     [--kinds embedding,recurrent,transformer] [--json out.json]
                                     [--gan-preset shapes32]

Every figure is a median over --reps timed runs after one warm-up. The machine may be shared,
so a fixed dense matmul (4096x256 @ 256x256) is timed between runs as a reference: compare
encoders by their ratio to it. The transformer encoder is timed with its frozen-feature
cache warm (what training sees once every caption has been seen) and cold (cache off).
With --gan-preset, the preset's own encoder is also timed inside a GAN training-step
equivalent (encoder, G forward, D on fakes and reals, one backward through all) at the same
batch, and its share of that step is reported.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from encoders import EncoderConfig, build_encoder, make_tokenizer  # noqa: E402
from encoders.tokenizer import cuts_reported  # noqa: E402

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "heart"]
RELATIONS = ["left of", "right of", "above", "below", "next to"]


def prompts(n: int, length: int, seed: int = 0) -> list[str]:
    """n shapes-style prompts of exactly `length` words (some with emphasis)."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    out = []
    for i in range(n):
        words: list[str] = []
        while len(words) < length:
            words += ["a", "small" if i % 2 else "big", pick(COLOURS), pick(SHAPES), *pick(RELATIONS).split()]
        words = words[:length]
        if i % 3 == 0:
            words[2] = f"({words[2]}:1.5)"
        out.append(" ".join(words))
    return out


def reference_ms() -> float:
    a, w = torch.randn(4096, 256), torch.randn(256, 256)
    t = time.perf_counter()
    a @ w
    return (time.perf_counter() - t) * 1e3


def bench(cfg: EncoderConfig, texts: list[str], reps: int) -> dict:
    tok = make_tokenizer(cfg, texts)
    enc = build_encoder(cfg, len(tok))
    with cuts_reported():  # WordPiece may cut a 16-word prompt to max_length tokens
        batch = tok(texts)
    assert batch.ids.shape[1] == max(batch.lengths.tolist()), batch.ids.shape

    def train_step() -> None:
        enc.zero_grad(set_to_none=True)
        code = enc(batch)
        (code.pooled.square().mean() + code.tokens.square().mean()).backward()

    def eval_step() -> None:
        with torch.no_grad():
            enc(batch)

    timings: dict[str, list[float]] = {"train_ms": [], "eval_ms": [], "ref_ms": []}
    enc.train()
    train_step()  # warm-up (and, for the transformer, loads the backbone and fills the cache)
    enc.eval()
    eval_step()
    for _ in range(reps):
        timings["ref_ms"].append(reference_ms())
        enc.train()
        t = time.perf_counter()
        train_step()
        timings["train_ms"].append((time.perf_counter() - t) * 1e3)
        enc.eval()
        t = time.perf_counter()
        eval_step()
        timings["eval_ms"].append((time.perf_counter() - t) * 1e3)
    enc.eval()
    with torch.no_grad():
        stats = enc(batch).stats
    med = {k: statistics.median(v) for k, v in timings.items()}
    return {
        **med,
        "train_ratio": med["train_ms"] / med["ref_ms"],
        "tokens": list(batch.ids.shape),
        "spikes_per_prompt": float(stats["spikes"].median()),
        "synops_per_prompt": float(stats["synops"].median()),
        "dense_macs_per_prompt": float(stats["dense_macs"]),
        "firing_rate": float(stats["firing_rate"]),
        "params": sum(p.numel() for p in enc.parameters()),
    }


def gan_share(preset_name: str, texts: list[str], reps: int) -> dict:
    """Encoder fwd+bwd alone vs a GAN training-step equivalent that includes it (same batch)."""
    import torch.nn.functional as F

    from gan.presets import preset
    from gan.discriminator import Discriminator
    from gan.generator import Generator

    mcfg = preset(preset_name)
    cfg = EncoderConfig.from_dict({**mcfg.encoder.to_dict(), "max_length": max(len(t.split()) for t in texts)})
    tok = make_tokenizer(cfg, texts)
    enc = build_encoder(cfg, len(tok)).train()
    G, D = Generator(mcfg.generator).train(), Discriminator(mcfg.discriminator).train()
    with cuts_reported():
        batch = tok(texts)
    B, R = len(texts), mcfg.resolution
    z = torch.randn(B, mcfg.generator.z_dim)
    reals = torch.rand(B, 3, R, R) * 2 - 1

    def encoder_only() -> None:
        code = enc(batch)
        (code.pooled.square().mean() + code.tokens.square().mean()).backward()

    def full_step() -> None:
        code = enc(batch)
        fake = G(z, code)
        loss = F.softplus(D(fake, code.pooled)).mean() + F.softplus(-D(reals, code.pooled)).mean()
        loss.backward()

    for fn in (encoder_only, full_step):
        fn()  # warm-up
    enc_ms, step_ms = [], []
    for _ in range(reps):
        for fn, out in ((encoder_only, enc_ms), (full_step, step_ms)):
            for m in (enc, G, D):
                m.zero_grad(set_to_none=True)
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
    e, s = statistics.median(enc_ms), statistics.median(step_ms)
    return {"preset": preset_name, "encoder": cfg.kind, "encoder_ms": e, "step_ms": s, "share": e / s}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="prompts per batch")
    ap.add_argument("--length", type=int, default=16, help="words per prompt (= max_length)")
    ap.add_argument("--reps", type=int, default=9, help="timed repetitions (median reported)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--kinds", default="embedding,recurrent,transformer", help="comma-separated encoder kinds")
    ap.add_argument("--coding", default="rate", choices=["rate", "latency"], help="spike coding")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--gan-preset", default=None, help="also time the preset's encoder inside a G+D training step")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    texts = prompts(args.batch, args.length)
    variants = []
    for kind in args.kinds.split(","):
        if kind == "recurrent":
            variants += [("recurrent/rleaky", dict(kind=kind)), ("recurrent/slstm", dict(kind=kind, recurrent_cell="slstm"))]
        elif kind == "transformer":
            variants += [("transformer/warm", dict(kind=kind)), ("transformer/cold", dict(kind=kind, feature_cache=0))]
        else:
            variants.append((kind, dict(kind=kind)))
    results = {}
    print(f"batch {args.batch} x {args.length} words, coding={args.coding}, threads={torch.get_num_threads()}")
    print(f"{'encoder':18s} {'train ms':>9s} {'eval ms':>8s} {'ref ms':>7s} {'ratio':>6s} "
          f"{'spikes/prompt':>13s} {'synops/prompt':>13s} {'dense MACs':>11s} {'rate':>6s} {'params':>8s}")
    for name, kw in variants:
        cfg = EncoderConfig(coding=args.coding, max_length=args.length, **kw)
        r = bench(cfg, texts, args.reps)
        results[name] = {"config": cfg.to_dict(), **r}
        print(f"{name:18s} {r['train_ms']:9.1f} {r['eval_ms']:8.1f} {r['ref_ms']:7.1f} {r['train_ratio']:6.2f} "
              f"{r['spikes_per_prompt']:13.0f} {r['synops_per_prompt']:13.3g} {r['dense_macs_per_prompt']:11.3g} "
              f"{r['firing_rate']:6.3f} {r['params']:8d}", flush=True)
    if args.gan_preset:
        r = gan_share(args.gan_preset, texts, args.reps)
        results["gan_share"] = r
        print(f"{r['preset']}: {r['encoder']} encoder {r['encoder_ms']:.1f} ms of a {r['step_ms']:.1f} ms "
              f"G+D training step at batch {args.batch} = {100 * r['share']:.1f} %")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=list))
    return results


if __name__ == "__main__":
    main()
