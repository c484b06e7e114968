"""Benchmark the data package: scanning a folder, loading a prepared set, shapes generation.

    python scripts/bench_data.py [--emoji DIR] [--repeats 3] [--shapes-count 4000]
                                 [--shapes-resolutions 16,64,128,256] [--json PATH]

Prints medians over repeats (the machine is shared: compare figures within one run); --json
also writes them: rates as {"per_s", "per_cpu_s"} (items per wall second and per CPU second).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.files import write_json  # noqa: E402

import data  # noqa: E402
from data import shapes  # noqa: E402

DEFAULT_EMOJI = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "noto-emoji-64"


CPU_SECONDS: list[float] = []  # CPU seconds (this process + reaped workers) of the last timed() call


def cpu_now() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall seconds of `fn()` over `repeats` runs, and the last result. The median
    CPU seconds go to CPU_SECONDS[0]: on a shared machine, work per CPU-second is the
    steadier figure (wall time includes waiting for other people's processes)."""
    times, cpus, result = [], [], None
    for _ in range(repeats):
        t, c = time.perf_counter(), cpu_now()
        result = fn()
        times.append(time.perf_counter() - t)
        cpus.append(cpu_now() - c)
    CPU_SECONDS[:] = [statistics.median(cpus)]
    return statistics.median(times), result


def rates(n: int, wall: float) -> dict[str, float]:
    """Items per wall second and per CPU second of the last timed() call."""
    return {"per_s": n / wall, "per_cpu_s": n / max(CPU_SECONDS[0], 1e-9)}


def shown(r: dict[str, float]) -> str:
    return f"{r['per_s']:.0f}/s wall, {r['per_cpu_s']:.0f}/CPU-s"


def iterate(ds, workers: int, batch: int) -> int:
    if workers == 0:
        return sum(1 for i in range(len(ds)) if ds[i] is not None)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers,
                                         collate_fn=data.collate, persistent_workers=False)
    return sum(len(b["text"]) for b in loader)


def bench_emoji(emoji: Path, repeats: int) -> dict | None:
    if not (emoji / "metadata.jsonl").is_file():
        print(f"emoji set not found at {emoji}: skipping the scan and prepared-load figures")
        return None
    out: dict = {"scan": {}}
    for workers in (1, 2):  # the default picks 1 for small files like these
        sec, ds = timed(lambda: data.FolderDataset(emoji, resolution=64, scan_workers=workers), repeats)
        label = f"{workers} thread{'s' if workers > 1 else ''}"
        n = ds.report.kept + len(ds.report.skipped)
        r = out["scan"][f"{workers}_threads"] = {"kept": ds.report.kept, "skipped": len(ds.report.skipped),
                                                 "seconds": sec, "entries": rates(n, sec)}
        print(f"scan emoji ({label}): {r['kept']} kept, {r['skipped']} skipped, {sec:.2f} s, entries {shown(r['entries'])}")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "emoji64"
        sec, report = timed(lambda: data.prepare_dataset(emoji, prepared, resolution=64), 1)
        size_mb = sum(f.stat().st_size for f in prepared.iterdir()) / 2**20
        out["prepare"] = {"images": report.kept, "seconds": sec, "mib": size_mb}
        print(f"prepare emoji at 64 px: {report.kept} images, {sec:.2f} s, {size_mb:.1f} MiB on disk")
        sec, ds = timed(lambda: data.open_dataset(prepared, resolution=64), repeats)
        out["open_prepared_seconds"] = sec
        print(f"open prepared emoji at 64 px: {sec:.3f} s")
        sec, n = timed(lambda: iterate(data.open_dataset(prepared, resolution=64), 0, 0), repeats)
        out["load_prepared"] = rates(n, sec)
        print(f"load prepared emoji at 64 px (open + every item, 1 process): {sec:.2f} s, items {shown(rates(n, sec))}")
        sec, n = timed(lambda: iterate(data.open_dataset(prepared, resolution=64), 2, 64), repeats)
        out["load_prepared_loader"] = rates(n, sec)
        print(f"load prepared emoji at 64 px (DataLoader, 2 workers, batch 64): {sec:.2f} s, items {shown(rates(n, sec))}")
        folder = data.FolderDataset(emoji, resolution=64)
        sub = torch.utils.data.Subset(folder, range(0, len(folder), 4))
        sec, n = timed(lambda: iterate(sub, 0, 0), repeats)
        out["decode_folder"] = rates(n, sec)
        print(f"reference: decode from the folder at 64 px (1 process, {n} items): items {shown(rates(n, sec))}")
    return out


def bench_shapes(count: int, repeats: int, resolutions: list[int]) -> dict:
    out: dict = {}
    ds = shapes.ShapesDataset(32, seed=0)
    ds[0]  # builds the mask cache
    sec, n = timed(lambda: iterate(torch.utils.data.Subset(ds, range(count)), 0, 0), repeats)
    out["items_32"] = rates(n, sec)
    print(f"shapes at 32 px, items (scene + caption + render + attributes), 1 process: img {shown(out['items_32'])}")
    sec, _ = timed(lambda: [shapes.render_scene_chw(ds.example(i).scene, 32) for i in range(count)], repeats)
    out["render_32"] = rates(count, sec)
    print(f"shapes at 32 px, sample + render only, 1 process: img {shown(out['render_32'])}")
    sec, n = timed(lambda: iterate(torch.utils.data.Subset(ds, range(4 * count)), 2, 256), repeats)
    out["loader_32"] = rates(n, sec)
    print(f"shapes at 32 px, DataLoader 2 workers, batch 256 (incl. worker start): img {shown(out['loader_32'])}")
    for res in resolutions:
        d = shapes.ShapesDataset(res)
        d[0]
        m = max(min(200, count), count // max(res // 16, 1) ** 2)
        sec, n = timed(lambda: iterate(torch.utils.data.Subset(d, range(m)), 0, 0), repeats)
        out[f"items_{res}"] = rates(n, sec)
        print(f"shapes at {res} px, 1 process: img {shown(out[f'items_{res}'])}")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--emoji", type=Path, default=DEFAULT_EMOJI, help="the noto-emoji-64 folder")
    p.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    p.add_argument("--shapes-count", type=int, default=4000, help="images per shapes timing")
    p.add_argument("--shapes-resolutions", default="16,64,128,256", help="comma list of further shapes sizes")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.shapes_count < 1:
        p.error("--repeats and --shapes-count must be >= 1")
    try:
        resolutions = [int(r) for r in args.shapes_resolutions.split(",") if r]
    except ValueError:
        p.error(f"--shapes-resolutions must be a comma list of integers, got {args.shapes_resolutions!r}")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread; "
          f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f}")
    results = {"torch": torch.__version__, "threads": torch.get_num_threads(), "repeats": args.repeats,
               "load_average": os.getloadavg()[0], "emoji": bench_emoji(args.emoji, args.repeats),
               "shapes": bench_shapes(args.shapes_count, args.repeats, resolutions)}
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
