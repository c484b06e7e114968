"""Benchmark FID feature extraction: the plain-module Inception against the TorchScript and the
machine's conv3x3 peak, all measured in this run, plus peak memory while streaming images.

    python scripts/bench_eval.py --batch 32 --repeats 3 --stream 256 --json bench_eval.json

Reports (medians over interleaved repeats, so load from other processes hits every case alike;
each figure both from wall time and from process CPU time / threads, see `Timer`):
- conv3x3 peak: best median GFLOP/s of a 3x3 conv (channels-last, fp32) over a few layer shapes;
- Inception network only: images/s and achieved GFLOP/s (FLOPs from torch.utils.flop_counter),
  as a fraction of that peak; the TorchScript's images/s at the same batch and the speed-up;
- end to end (`InceptionFeatures`: clean resize from the source resolution + network): images/s;
- streaming: peak resident set (ru_maxrss) while `--stream` images flow through extraction into
  `FeatureStats`, and the resident set after the first batch, to show memory does not grow with N.

`--keep-freed-memory on` (the default, as in the eval CLI) applies `eval.allocator.keep_freed_memory`
first; run once with `off` to measure what it saves (system seconds per call are reported).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eval.allocator import keep_freed_memory  # noqa: E402
from eval.features import InceptionFeatures, iterate_batches  # noqa: E402
from eval.fid import FeatureStats  # noqa: E402
from eval.inception import INPUT_SIZE, load_torchscript  # noqa: E402

# (in_channels, out_channels, spatial size) of 3x3 convs like Inception's own.
PEAK_SHAPES = [(64, 96, 35), (96, 96, 35), (192, 192, 17), (384, 384, 17), (448, 384, 8)]


def rss_mb() -> float:
    """Current resident set in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Timer:
    """Wall seconds and process CPU seconds of calls, by name.

    On a shared machine other processes steal cores, which inflates wall time; the process's
    CPU time divided by the thread count estimates the wall time an idle machine would show
    (OpenMP spin-waits still inflate it a little). Both are reported; ratios use one kind."""

    def __init__(self, threads: int):
        self.threads = threads
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self.system: dict[str, list[float]] = {}  # kernel time (page faults), all threads

    def __call__(self, name: str, fn) -> None:
        wall, cpu, system = time.perf_counter(), time.process_time(), resource.getrusage(resource.RUSAGE_SELF).ru_stime
        fn()
        self.wall.setdefault(name, []).append(time.perf_counter() - wall)
        self.cpu.setdefault(name, []).append((time.process_time() - cpu) / self.threads)
        self.system.setdefault(name, []).append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - system)

    def median(self, name: str, kind: str) -> float:
        return statistics.median({"wall": self.wall, "cpu": self.cpu, "system": self.system}[kind][name])


def conv3x3_case(batch: int, cin: int, cout: int, hw: int):
    """A padded 3x3 conv at this batch, eager F.conv2d (oneDNN, channels-last): -> (fn, flops)."""
    x = torch.randn(batch, cin, hw, hw).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin, 3, 3)
    b = torch.randn(cout)
    fn = lambda: F.conv2d(x, w, b, padding=1)  # noqa: E731
    fn()  # warm-up (oneDNN primitive creation)
    return fn, 2 * batch * cout * cin * 9 * hw * hw


def inception_flops(model: torch.nn.Module) -> float:
    """FLOPs of one 299x299 image through the network (2 per multiply-add).

    Counted on the eager aten.convolution path (oneDNN off): the flop counter has no formula
    for the fused oneDNN op, and both compute the same convolutions."""
    x = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.no_grad(), torch.backends.mkldnn.flags(enabled=False):
        model(x)
    return float(counter.get_total_flops())


class RandomImages(torch.utils.data.Dataset):
    """Items {"image": uint8 [3,R,R]} generated on access, so the source itself holds no images."""

    def __init__(self, num: int, resolution: int):
        self.num, self.resolution = num, resolution

    def __len__(self):
        return self.num

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randint(0, 256, (3, self.resolution, self.resolution), dtype=torch.uint8, generator=g),
                "text": "", "index": i}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32, help="images per network call")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats (medians)")
    parser.add_argument("--resolution", type=int, default=64, help="source image size for the end-to-end run")
    parser.add_argument("--stream", type=int, default=256, help="images streamed for the memory measurement (0 = skip)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--keep-freed-memory", choices=["on", "off"], default="on",
                        help="glibc keeps freed blocks for reuse (eval.allocator), as the eval CLI does")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.resolution < 1 or args.stream < 0:
        parser.error("--batch, --repeats and --resolution must be >= 1, --stream >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    kept = keep_freed_memory() if args.keep_freed_memory == "on" else False

    extractor = InceptionFeatures("cpu", batch=args.batch)
    model = extractor.model
    torchscript = load_torchscript(extractor.weights_file)
    flops = inception_flops(model)
    threads = torch.get_num_threads()
    timer = Timer(threads)

    x = (torch.rand(args.batch, 3, INPUT_SIZE, INPUT_SIZE) * 2 - 1).contiguous(memory_format=torch.channels_last)
    x_dense = x.contiguous()
    images = torch.randint(0, 256, (args.batch, 3, args.resolution, args.resolution), dtype=torch.uint8)
    with torch.no_grad():
        convs = {f"{cin}x{cout}@{hw}": conv3x3_case(args.batch, cin, cout, hw) for cin, cout, hw in PEAK_SHAPES}
        model(x), torchscript(x_dense), extractor(images)  # warm-up
        for _ in range(args.repeats):  # interleaved: load from other processes hits every case alike
            for name, (fn, _) in convs.items():
                timer(name, fn)
            timer("torchscript", lambda: torchscript(x_dense))
            timer("plain", lambda: model(x))
            timer("end_to_end", lambda: extractor(images))

    result = {"threads": threads, "batch": args.batch, "repeats": args.repeats, "weights": extractor.weights_file,
              "keep_freed_memory": kept, "gflop_per_image": round(flops / 1e9, 3),
              "load_average": list(os.getloadavg()),
              "plain_system_s_per_call": round(timer.median("plain", "system"), 3)}
    for kind in ("wall", "cpu"):
        conv_gflops = {name: conv_flops / timer.median(name, kind) / 1e9 for name, (_, conv_flops) in convs.items()}
        peak = max(conv_gflops.values())
        ips = {k: args.batch / timer.median(k, kind) for k in ("plain", "torchscript", "end_to_end")}
        achieved = flops * ips["plain"] / 1e9
        result[kind] = {
            "conv3x3_gflops": {k: round(v, 2) for k, v in conv_gflops.items()},
            "conv3x3_peak_gflops": round(peak, 2),
            "plain_images_per_s": round(ips["plain"], 2),
            "plain_ms_per_image": round(1000 / ips["plain"], 1),
            "plain_gflops": round(achieved, 2),
            "plain_fraction_of_peak": round(achieved / peak, 3),
            "torchscript_images_per_s": round(ips["torchscript"], 2),
            "torchscript_ms_per_image": round(1000 / ips["torchscript"], 1),
            "torchscript_fraction_of_peak": round(flops * ips["torchscript"] / 1e9 / peak, 3),
            "speedup_vs_torchscript": round(ips["plain"] / ips["torchscript"], 2),
            "end_to_end_images_per_s": round(ips["end_to_end"], 2),
        }
    result["end_to_end_source_resolution"] = args.resolution
    torchscript = None  # its weights are freed before the memory measurement

    if args.stream:
        stats = FeatureStats(extractor.dim, keep_features=True)  # as reference_stats keeps them for KID
        rss_after_first = None
        start = time.perf_counter()
        for batch in iterate_batches(RandomImages(args.stream, args.resolution), args.batch):
            stats.update(extractor(batch).numpy())
            if rss_after_first is None:
                rss_after_first = rss_mb()
        result.update({
            "stream_images": stats.num,
            "stream_images_per_s": round(stats.num / (time.perf_counter() - start), 2),
            "rss_after_first_batch_mb": round(rss_after_first, 1),
            "rss_end_mb": round(rss_mb(), 1),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        })

    print(json.dumps(result, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
