"""What a training run reports: side effects on the main process only (files, console, trackers),
and the loss statistics gathered over every process between log ticks."""
from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any, Callable

import torch

from data.files import write_json


class MainProcess:
    """The one place side effects happen: files, console, trackers; no-ops on other ranks."""

    def __init__(self, accelerator, out: Path) -> None:
        self.accelerator = accelerator
        self.out = out
        self.active = accelerator.is_main_process

    def print(self, *args) -> None:
        if self.active:
            from tqdm import tqdm

            tqdm.write(" ".join(str(a) for a in args))

    def write_json(self, name: str, payload: dict) -> None:
        if self.active:
            write_json(self.out / name, payload)

    def append_log(self, record: dict) -> None:
        if self.active:
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                             step=int(record["kimg"] * 1000))

    def run(self, fn: Callable, *args, **kwargs):
        """fn(*args) on the main process only, without touching any RNG the loop uses."""
        if not self.active:
            return None
        with torch.random.fork_rng(devices=[]):
            return fn(*args, **kwargs)


def flat_hparams(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_hparams(v, key + "."))
        else:
            out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def usable_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class TickStats:
    """Per-process sums of the loss phases' statistics between log ticks, gathered at each tick;
    ADA's `ada/*` entries are kept apart, per step."""

    def __init__(self, device) -> None:
        self.sums: dict[str, torch.Tensor] = {}  # name -> [sum, count]
        self.ada = torch.zeros(2, device=device)  # this step's sum of sign(D(real)) and count
        self.device = device

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            if k.startswith("ada/"):
                self.ada[0 if k == "ada/sign_sum" else 1] += v.detach().float()
                continue
            s = self.sums.setdefault(k, torch.zeros(2, device=self.device))
            s += torch.stack([v.detach().float(), torch.ones((), device=self.device)])

    def pop_ada(self) -> torch.Tensor:
        """This step's ADA sums (this process's), then zeroed."""
        ada = self.ada.clone()
        self.ada.zero_()
        return ada

    def gather(self, accelerator) -> dict[str, float]:
        """Means over every process since the last gather, then cleared."""
        keys = sorted(self.sums)
        if not keys:
            return {}
        sums = accelerator.reduce(torch.stack([self.sums[k] for k in keys]), reduction="sum")
        self.sums.clear()
        return {k: round(float(sums[i, 0] / sums[i, 1].clamp(min=1)), 6) for i, k in enumerate(keys)}
