"""Evaluation networks fitted on demand and cached: the alignment scorer of a reference set
(`eval.alignment`) and the attribute probe of a resolution (`eval.attributes`).

Each is keyed by everything it depends on; a folder whose saved key matches is loaded,
otherwise the network is trained and saved there. A cache folder appears whole (it is
written beside and renamed into place); a user's `out` folder gets its files one by one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import torch

from eval import cache
from eval.fid import extractor_id


def _saved_key(config_file: Path) -> str | None:
    """The cache key a saved network folder records, None when there is none."""
    if not config_file.is_file():
        return None
    return json.loads(config_file.read_text()).get("info", {}).get("key")


def _publish_dir(tmp: Path, final: Path) -> None:
    """Move a finished folder into place; if another process got there first, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _save(net, folder: Path, *, info: dict, into_existing: bool) -> None:
    """net.save(folder, info=info): into a user's `--out` folder directly (it may hold other
    files; each file is written atomically), into a cache folder through a temporary sibling."""
    if into_existing:
        net.save(folder, info=info)
    else:
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        net.save(tmp, info=info)
        _publish_dir(tmp, folder)
    net.info = info


# ----------------------------------------------------------------------------------------
# The alignment scorer of a reference set.


def scorer_cache_key(dataset, resolution: int, num: int, extractor, cfg) -> tuple[str, int]:
    """(key, count) of the scorer trained on the first `num` pairs of `dataset`: it changes with
    the images' content, the resolution, the count, the image network and the scorer config."""
    from eval.alignment import FORMAT

    count = min(num, len(dataset))
    content = cache.dataset_fingerprint(dataset, count, resolution=resolution)
    key = cache.make_key(kind=FORMAT, content=content, resolution=resolution, num=count,
                         network=extractor_id(extractor), config=json.dumps(cfg.to_dict(), sort_keys=True))
    return key, count


def fit_scorer(dataset, resolution: int, num: int, extractor, *, cfg=None, cache_dir: str | None = None,
               out: str | Path | None = None, device: str = "cpu", batch: int = 32, text_embedder=None,
               log: Callable[[str], None] | None = None):
    """The alignment scorer of a reference set: loaded from the cache (or `out`) when its key
    matches, else trained on the first `num` real pairs (image features from `extractor`, the
    cached FID reference features) and saved there. Returns (scorer, folder)."""
    from eval.alignment import SCORER_CONFIG, AlignmentScorer, ScorerConfig, resolve_text_backend, train_scorer
    from eval.fid import reference_stats

    cfg = cfg or ScorerConfig()
    cfg = dataclasses.replace(cfg, text=resolve_text_backend(cfg.text))
    key, count = scorer_cache_key(dataset, resolution, num, extractor, cfg)
    folder = Path(out) if out is not None else cache.cache_path("alignment", f"scorer-r{resolution}-n{count}-{key}",
                                                                   cache_dir=cache_dir)
    if _saved_key(folder / SCORER_CONFIG) == key:
        return AlignmentScorer.load(folder, device=device, text_embedder=text_embedder), folder
    ref = reference_stats(dataset, resolution, count, extractor, cache_dir, batch=batch)
    n = len(dataset)
    captions = [dataset[i % n]["text"] for i in range(count)]
    scorer, report = train_scorer(torch.from_numpy(ref.features), captions, cfg, text_embedder=text_embedder,
                                  device=device, log=log)
    info = {"key": key, "num": count, "resolution": resolution, "network": extractor_id(extractor), "report": report}
    _save(scorer, folder, info=info, into_existing=out is not None)
    return scorer, folder


# ----------------------------------------------------------------------------------------
# The attribute probe of the shapes domain.


def probe_cache_key(cfg) -> str:
    """Changes with the probe config, the heads, and the renderer (a hash of rendered images)."""
    from data.shapes import ShapesDataset
    from eval.attributes import FORMAT, HEADS

    rendered = cache.dataset_fingerprint(ShapesDataset(cfg.resolution, size=64, seed=cfg.data_seed), 64,
                                         resolution=cfg.resolution)
    return cache.make_key(kind=FORMAT, config=json.dumps(cfg.to_dict(), sort_keys=True),
                          heads=json.dumps(HEADS), rendered=rendered)


def fit_probe(cfg, *, cache_dir: str | None = None, out: str | Path | None = None, device: str = "cpu",
              log: Callable[[str], None] | None = None):
    """The attribute probe for `cfg` (resolution, ...): from the cache or `out` when the key
    matches, else trained and saved there. Returns (probe, folder)."""
    from eval.attributes import PROBE_CONFIG, AttributeProbe, train_probe

    key = probe_cache_key(cfg)
    folder = Path(out) if out is not None else cache.cache_path("attributes", f"probe-r{cfg.resolution}-{key}",
                                                                   cache_dir=cache_dir)
    if _saved_key(folder / PROBE_CONFIG) == key:
        return AttributeProbe.load(folder, device=device), folder
    probe, report = train_probe(cfg, device=device, log=log)
    _save(probe, folder, info={"key": key, "report": report}, into_existing=out is not None)
    return probe, folder
