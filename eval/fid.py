"""FID and KID, computed as clean-fid computes them.

`frechet_distance` is clean-fid's own function. `kid` is clean-fid's `kernel_distance` (cubic
polynomial kernel, unbiased MMD^2 estimate averaged over random subsets of at most 1000) with
its own seeded random generator, returning the spread over subsets as well; with the same seed
as `np.random.seed` it draws the same subsets as clean-fid (a test checks equality).
`FeatureStats` accumulates mean and covariance in float64 while features stream past, so a
reference set never needs to be held in memory for FID.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from cleanfid.fid import frechet_distance as _clean_frechet_distance

from eval import cache
from eval.features import iterate_batches


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """FID between N(mu1, sigma1) and N(mu2, sigma2): |mu1-mu2|^2 + Tr(s1 + s2 - 2 sqrt(s1 s2)).

    mu: [D], sigma: [D, D] (float64 recommended). clean-fid's implementation."""
    with warnings.catch_warnings():
        # clean-fid passes scipy's deprecated `disp=False` to sqrtm; the result is unchanged.
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        return float(_clean_frechet_distance(mu1, sigma1, mu2, sigma2))


def kid(
    feats1: np.ndarray,
    feats2: np.ndarray,
    *,
    num_subsets: int = 100,  # Random subsets averaged over (clean-fid's default).
    max_subset_size: int = 1000,  # Subset size cap (clean-fid's default).
    seed: int = 0,  # Seed of the subset draws.
) -> tuple[float, float]:
    """Kernel Inception Distance between features [N1, D] and [N2, D] -> (mean, std over subsets).

    The per-subset value is the unbiased MMD^2 with kernel k(x, y) = (x.y / D + 1)^3, so two
    samples of one distribution score ~0 (it can be slightly negative). When neither set is larger
    than max_subset_size, every subset is a whole set and the spread is exactly 0 (clean-fid reports
    rounding noise there, ~1e-7): a spread needs more than max_subset_size images in a set."""
    assert feats1.ndim == 2 and feats2.ndim == 2 and feats1.shape[1] == feats2.shape[1], \
        f"kid: expected [N1,D] and [N2,D], got {feats1.shape} and {feats2.shape}"
    n = feats1.shape[1]
    m = min(feats1.shape[0], feats2.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"kid: needs at least 2 features per set, got {feats1.shape[0]} and {feats2.shape[0]}")
    rng = np.random.RandomState(seed)  # np.random.choice semantics, as clean-fid uses
    values = np.empty(num_subsets)
    for i in range(num_subsets):
        x = feats2[rng.choice(feats2.shape[0], m, replace=False)]
        y = feats1[rng.choice(feats1.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
        b = (x @ y.T / n + 1) ** 3
        values[i] = ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m
    whole = m == feats1.shape[0] == feats2.shape[0]  # each subset a permutation of both sets
    return float(values.mean()), 0.0 if whole else float(values.std())


class FeatureStats:
    """Streaming mean and covariance of feature vectors, accumulated in float64.

    `update(feats [B, D])` as batches arrive; `mean() -> [D]`, `cov() -> [D, D]` (unbiased, as
    `np.cov(..., rowvar=False)`). With `keep_features`, the raw features are also kept (KID
    needs them; 8 KiB per 2048-d image in float32)."""

    def __init__(
        self,
        dim: int,  # Feature width D.
        *,
        keep_features: bool = False,  # Also keep every feature vector (for KID).
    ):
        self.dim = dim
        self.num = 0
        self._sum = np.zeros(dim, np.float64)
        self._sum_outer = np.zeros((dim, dim), np.float64)
        self._kept: list[np.ndarray] | None = [] if keep_features else None

    def update(self, feats: np.ndarray) -> None:
        feats = np.asarray(feats)
        assert feats.ndim == 2 and feats.shape[1] == self.dim, f"expected [B,{self.dim}], got {feats.shape}"
        f64 = feats.astype(np.float64)
        self.num += len(f64)
        self._sum += f64.sum(0)
        self._sum_outer += f64.T @ f64
        if self._kept is not None:
            self._kept.append(feats.astype(np.float32))

    def mean(self) -> np.ndarray:
        assert self.num >= 1, "FeatureStats: no features accumulated"
        return self._sum / self.num

    def cov(self) -> np.ndarray:
        assert self.num >= 2, f"FeatureStats: covariance needs >= 2 features, have {self.num}"
        mu = self.mean()
        return (self._sum_outer - self.num * np.outer(mu, mu)) / (self.num - 1)

    def features(self) -> np.ndarray:
        """The kept features [N, D] float32 (needs `keep_features=True`)."""
        if self._kept is None:
            raise RuntimeError("FeatureStats was built with keep_features=False")
        return np.concatenate(self._kept) if self._kept else np.zeros((0, self.dim), np.float32)


def fid_from_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """FID between two feature sets [N1, D], [N2, D] (mean and unbiased covariance of each)."""
    s1, s2 = FeatureStats(feats1.shape[1]), FeatureStats(feats2.shape[1])
    s1.update(feats1)
    s2.update(feats2)
    return frechet_distance(s1.mean(), s1.cov(), s2.mean(), s2.cov())



@dataclass
class ReferenceStats:
    """FID/KID statistics of a reference set: mu [D] and sigma [D,D] float64, features [N,D] float32."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    num: int  # Images the statistics cover.
    key: str  # Cache key (dataset content, resolution, count, network).
    path: Path | None  # The cache file (None when caching is off).


def extractor_id(extractor) -> str:
    """What identifies an image feature network in cache keys: its weights' sha256, or the
    class name of a stand-in without one."""
    return getattr(extractor, "weights_sha256", None) or type(extractor).__qualname__


def reference_stats(
    dataset: torch.utils.data.Dataset,
    resolution: int,
    num: int | None,
    extractor,
    cache_dir: str | Path | None = None,
    *,
    batch: int = 32,  # Images per extractor call.
    use_cache: bool = True,  # False = always recompute, never write.
) -> ReferenceStats:
    """Statistics of the first `num` images of `dataset` (None = all), computed once and cached.

    `dataset` yields items `{"image": uint8 [3,R,R], ...}` with R == `resolution`. The cache file
    lives under `cache_dir` (None = `$SPIKEGAN_CACHE` or `~/.cache/spikegan`), in `fid/`, keyed
    by the images' content hash, the resolution, the count and the network weights; it is
    written atomically, so an interrupted run never leaves a half-written file."""
    count = len(dataset) if num is None else min(num, len(dataset))
    if count < 2:
        raise ValueError(f"reference_stats: need at least 2 reference images, dataset has {len(dataset)}")
    content = cache.dataset_fingerprint(dataset, count, resolution=resolution)
    key = cache.make_key(content=content, resolution=resolution, num=count, network=extractor_id(extractor))
    path = cache.cache_path("fid", f"ref-r{resolution}-n{count}-{key}.npz", cache_dir=cache_dir) if use_cache else None
    if path is not None and path.is_file():
        data = cache.load_npz(path)
        return ReferenceStats(mu=data["mu"], sigma=data["sigma"], features=data["features"],
                              num=int(data["num"]), key=key, path=path)

    stats = None
    for images in iterate_batches(dataset, batch, limit=count):
        feats = np.asarray(extractor(images), dtype=np.float32)  # [B, D]
        if stats is None:
            stats = FeatureStats(feats.shape[1], keep_features=True)
        stats.update(feats)
    assert stats is not None and stats.num == count, f"reference_stats: expected {count} images, got {stats and stats.num}"
    result = ReferenceStats(mu=stats.mean(), sigma=stats.cov(), features=stats.features(), num=count, key=key, path=path)
    if path is not None:
        cache.save_npz_atomic(path, mu=result.mu, sigma=result.sigma, features=result.features,
                              num=np.int64(count), meta=np.array(json.dumps(
                                  {"content": content, "resolution": resolution, "num": count,
                                   "network": extractor_id(extractor)})))
    return result
