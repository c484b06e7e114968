"""FID/KID mechanics with a tiny stand-in extractor (no Inception weights needed)."""
import numpy as np
import pytest
import torch
from cleanfid.fid import kernel_distance
from cleanfid.resize import make_resizer

from eval import cache
from eval.features import clean_resize, extract_features, iterate_batches
from eval.fid import FeatureStats, fid_from_features, frechet_distance, kid, reference_stats


class TinyExtractor:
    """Stand-in for Inception: 4x4 average pool of [-1,1] images, then a fixed projection to 12-d."""

    dim = 12

    def __init__(self):
        self.calls = 0
        self.proj = torch.randn(3 * 4 * 4, self.dim, generator=torch.Generator().manual_seed(0))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        x = images.float() / 127.5 - 1
        x = torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)  # [B, 48]
        return torch.tanh(x @ self.proj)  # [B, 12]


class ImageSet(torch.utils.data.Dataset):
    """Items {"image": uint8 [3,R,R], "text", "index"} from a fixed uint8 tensor."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "text": f"image {i}", "index": i}


def smooth_images(n: int, seed: int, res: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    return (torch.nn.functional.interpolate(low, size=res, mode="bilinear") * 255).round().to(torch.uint8)


def add_noise(images: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=g) * sigma
    return (images.float() + noise).clamp(0, 255).round().to(torch.uint8)


def test_feature_stats_match_numpy_over_streamed_batches():
    feats = np.random.RandomState(0).randn(50, 7).astype(np.float32) * 3 + 1
    stats = FeatureStats(7, keep_features=True)
    for chunk in np.array_split(feats, 4):
        stats.update(chunk)
    np.testing.assert_allclose(stats.mean(), feats.astype(np.float64).mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.cov(), np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-10)
    np.testing.assert_array_equal(stats.features(), feats)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_noise():
    ext = TinyExtractor()
    images = smooth_images(300, seed=1)
    ref = extract_features(images, ext, batch=64)
    assert abs(fid_from_features(ref, ref)) < 1e-6
    fids = [fid_from_features(ref, extract_features(add_noise(images, s, seed=2), ext, batch=64))
            for s in (10.0, 40.0, 120.0)]
    assert 0 < fids[0] < fids[1] < fids[2], fids


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    # Diagonal covariances: FID = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, abs=1e-9)


def test_kid_matches_clean_fid_and_is_unbiased_on_equal_distributions():
    rng = np.random.RandomState(0)
    f1, f2 = rng.randn(200, 16), rng.randn(150, 16)
    mean, std = kid(f1, f2, num_subsets=20, max_subset_size=100, seed=3)
    np.random.seed(3)
    assert mean == pytest.approx(kernel_distance(f1, f2, num_subsets=20, max_subset_size=100), rel=1e-12)
    # Same distribution: ~0 within the spread of the estimate; shifted: clearly positive.
    assert abs(mean) < 3 * std / np.sqrt(20) + 1e-3
    shifted, _ = kid(f1, f2 + 0.5, num_subsets=20, max_subset_size=100, seed=3)
    assert shifted > 20 * abs(mean) and shifted > 0.01


def test_kid_spread_is_zero_when_every_subset_is_both_whole_sets():
    rng = np.random.RandomState(1)
    f1, f2 = rng.randn(60, 8), rng.randn(60, 8) + 0.3
    mean, std = kid(f1, f2, num_subsets=10, max_subset_size=100, seed=0)
    np.random.seed(0)
    assert std == 0.0 and mean == pytest.approx(kernel_distance(f1, f2, num_subsets=10, max_subset_size=100), rel=1e-9)
    assert kid(f1, f2, num_subsets=10, max_subset_size=50, seed=0)[1] > 0  # subsets of 50 of 60 differ


def test_clean_resize_equals_clean_fid_bit_for_bit():
    image = np.random.RandomState(0).randint(0, 256, (3, 37, 53), dtype=np.uint8)
    ours = clean_resize(image)  # [3, 299, 299]
    theirs = make_resizer("PIL", False, "bicubic", (299, 299))(image.transpose(1, 2, 0))  # [299, 299, 3]
    assert ours.dtype == np.float32 and ours.shape == (3, 299, 299)
    np.testing.assert_array_equal(ours, theirs.transpose(2, 0, 1))


def test_iterate_batches_regroups_items_and_batches_and_stops_at_limit():
    images = smooth_images(10, seed=0, res=8)
    mixed = [images[0], images[1:4], {"image": images[4:9]}, images[9]]
    batches = list(iterate_batches(mixed, 3))
    assert [len(b) for b in batches] == [3, 3, 3, 1]
    assert torch.equal(torch.cat(batches), images)
    assert [len(b) for b in iterate_batches(ImageSet(images), 4, limit=7)] == [4, 3]


def test_reference_stats_cache_roundtrip_and_key_follows_content(tmp_path):
    images = smooth_images(40, seed=5)
    ext = TinyExtractor()
    first = reference_stats(ImageSet(images), 16, 30, ext, cache_dir=tmp_path, batch=8)
    assert first.num == 30 and first.features.shape == (30, 12) and ext.calls == 4
    assert first.path.is_file() and first.path.parent == tmp_path / "fid"
    assert [p.name for p in first.path.parent.iterdir()] == [first.path.name]  # no temp files left
    direct = extract_features(images[:30], TinyExtractor(), batch=8)
    np.testing.assert_allclose(first.mu, direct.astype(np.float64).mean(0), atol=1e-9)

    again = reference_stats(ImageSet(images), 16, 30, ext, cache_dir=tmp_path)
    assert ext.calls == 4 and again.key == first.key  # served from the cache
    np.testing.assert_array_equal(again.sigma, first.sigma)

    changed = images.clone()
    changed[7, 1, 3, 3] ^= 1  # one pixel, one bit
    other = reference_stats(ImageSet(changed), 16, 30, ext, cache_dir=tmp_path)
    assert other.key != first.key and ext.calls > 4
    assert reference_stats(ImageSet(images), 16, 20, ext, cache_dir=tmp_path).key != first.key  # count
    assert cache.make_key(a=1, b=2) == cache.make_key(b=2, a=1) != cache.make_key(a=1, b=3)


def test_reference_stats_checks_resolution_and_default_dir_is_the_users_cache(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="expected resolution 32"):
        reference_stats(ImageSet(smooth_images(4, seed=0)), 32, 4, TinyExtractor(), cache_dir=tmp_path)
    monkeypatch.setenv("SPIKEGAN_CACHE", str(tmp_path / "c"))
    assert cache.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SPIKEGAN_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # never site-packages, where clean-fid caches
    assert cache.default_cache_dir() == tmp_path / "home" / ".cache" / "spikegan"
