"""The eval CLI end to end on the tiny preset, with a small stand-in for the Inception network."""
import dataclasses
import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from data.files import sha256_file
from data.shapes import ShapesDataset
from eval import cli, fitted, metrics
from eval.attributes import ProbeConfig

pytestmark = pytest.mark.filterwarnings("ignore:Matrix is singular")  # FID of 12 images in 48-d

ALEXNET = cli.Path(__file__).resolve().parents[2] / "shared" / "weights" / "alexnet-features.safetensors"


class TinyFeatures:
    """Stand-in for InceptionFeatures: uint8 [B,3,H,W] -> [B,48] (4x4 average colours)."""

    dim = 48

    def __call__(self, images):
        assert images.dtype == torch.uint8
        return F.adaptive_avg_pool2d(images.float() / 255, 4).flatten(1)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from encoders import make_tokenizer
    from gan.presets import preset
    from gan.model import TextToImage, save_model

    cfg = preset("tiny")
    tok = make_tokenizer(cfg.encoder, ShapesDataset(16).captions(limit=512))
    cfg = dataclasses.replace(cfg, vocab_size=len(tok))
    out = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_model(out / "a", TextToImage(cfg), tok)
    torch.manual_seed(1)
    save_model(out / "b", TextToImage(cfg), tok)
    return out / "a", out / "b"


@pytest.fixture(scope="module")
def scorer_and_probe(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    rc = cli.main(["train-scorer", "--data", "shapes", "--out", str(root / "scorer"), "--resolution", "16",
                   "--num", "64", "--steps", "5", "--text", "tower", "--device", "cpu",
                   "--cache-dir", str(root / "cache")], extractor=TinyFeatures())
    assert rc == 0
    fitted.fit_probe(ProbeConfig(resolution=16, channels=4, hidden=8, train_images=64, steps=2, heldout_images=16),
                      out=root / "probe")
    return root / "scorer", root / "probe"


def _run(argv, capsys):
    rc = cli.main(argv, extractor=TinyFeatures())
    out = capsys.readouterr()
    return rc, out.out, out.err


VALUE_KEYS = {
    "fid", "fd_domain", "kid", "kid_std", "r_precision", "cosine", "r_precision_real", "cosine_real", "candidates",
    *(f"{p}_{k}" for p in ("attr", "probe") for k in ("count", "background", "shape", "colour", "size",
                                                     "position", "relation", "mean", "binding",
                                                     "shape_one", "shape_two")),
}


def test_cli_end_to_end_and_schema(tiny_model, scorer_and_probe, tmp_path, capsys):
    scorer, probe = scorer_and_probe
    out = tmp_path / "scores.json"
    argv = ["--model", str(tiny_model[0]), "--model", str(tiny_model[1]), "--data", "shapes",
            "--metrics", "fid,fd_domain,kid,alignment,attributes", "--num", "12", "--batch", "5", "--seed", "7",
            "--scorer", str(scorer), "--probe", str(probe), "--cache-dir", str(tmp_path / "cache"),
            "--json", str(out), "--device", "cpu", "--quiet"]
    rc, stdout, stderr = _run(argv, capsys)
    assert rc == 0, stderr
    payload = json.loads(out.read_text())
    # The stable schema.
    assert tuple(payload) == cli.TOP_KEYS and payload["schema"] == "spikegan-eval/2"
    assert payload["metrics"] == ["fid", "fd_domain", "kid", "alignment", "attributes"]
    assert payload["settings"]["seed"] == 7 and payload["data"] == {"path": "shapes", "num_ref": 12}
    assert len(payload["rows"]) == 2
    for row, model in zip(payload["rows"], tiny_model):
        assert tuple(row) == cli.ROW_KEYS
        assert row["model"] == str(model) and row["images"] is None
        assert row["resolution"] == 16 and row["num_images"] == 12
        assert row["seeds"] == {"first": 7, "count": 12}
        assert set(row["values"]) == VALUE_KEYS
        assert set(row["weights"]) == {"inception", "alignment_scorer", "attribute_probe"}
        assert row["weights"]["alignment_scorer"]["sha256"] == sha256_file(scorer / "scorer.safetensors")
        assert len(row["model_sha256"]) == 64 and row["seconds"]["total"] > 0
        assert row["values"]["fid"] > 0 and 0 <= row["values"]["r_precision"] <= 1
    # Two different models, two different scores; the table has one line per model.
    assert payload["rows"][0]["values"]["fid"] != payload["rows"][1]["values"]["fid"]
    lines = stdout.splitlines()
    assert lines[0].split()[:4] == ["model", "fid", "fd_domain", "kid"]
    assert lines[2].startswith(str(tiny_model[0])) and lines[3].startswith(str(tiny_model[1]))

    # Deterministic: the same command gives the same values (reference stats now from the cache).
    rc, _, _ = _run(argv, capsys)
    again = json.loads(out.read_text())
    assert [r["values"] for r in again["rows"]] == [r["values"] for r in payload["rows"]]


def test_compute_matches_cli_and_generation_is_per_seed(tiny_model, tmp_path):
    from gan.model import load_model

    model, tok = load_model(tiny_model[0])
    ds = ShapesDataset(16)
    values = metrics.compute(["fid"], model, tok, ds, num=6, seed=0, batch=4, cache_dir=str(tmp_path),
                             extractor=TinyFeatures())
    assert set(values) == {"fid"}
    values2 = metrics.compute(["fid"], model, tok, ds, num=6, seed=0, batch=6, cache_dir=str(tmp_path),
                              extractor=TinyFeatures())
    assert values2["fid"] == pytest.approx(values["fid"], rel=1e-6)
    prompts = [ds[i]["text"] for i in range(4)]
    together = torch.cat(list(metrics.generate(model, tok, prompts, [10, 11, 12, 13], batch=4)))
    alone = torch.cat([next(metrics.generate(model, tok, [p], [s])) for p, s in zip(prompts, [10, 11, 12, 13])])
    assert together.dtype == torch.uint8 and together.shape == (4, 3, 16, 16)
    assert (together.int() - alone.int()).abs().max() <= 1  # batch composition changes nothing
    other = next(metrics.generate(model, tok, prompts[:1], [99]))
    assert not torch.equal(other, alone[:1])
    # emphasis=False reads a caption as training does; the default applies the emphasis syntax.
    from data import to_uint8
    from gan.pipeline import seed_latents

    caption = "a (red) circle"
    with torch.no_grad():
        code = model.encoder(tok([caption], emphasis=False))
        want = to_uint8(model.generator(seed_latents([7], model.generator.z_dim), code, noise_mode="const"))
    assert torch.equal(next(metrics.generate(model, tok, [caption], [7], emphasis=False)), want)
    assert not torch.equal(next(metrics.generate(model, tok, [caption], [7])), want)


def test_cut_reference_captions_are_reported_once(tiny_model, tmp_path):
    from encoders.tokenizer import PromptCutWarning
    from gan.model import load_model

    model, tok = load_model(tiny_model[0])
    tok.max_length = 4  # every shapes caption is longer
    logs = []
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        metrics.compute(["fid"], model, tok, ShapesDataset(16), num=6, seed=0, batch=4, cache_dir=str(tmp_path),
                        extractor=TinyFeatures(), log=logs.append)
    assert not [w for w in seen if issubclass(w.category, PromptCutWarning)]
    assert [m.split(";")[0] for m in logs if "max_length" in m] == [
        "6 of 6 captions are longer than max_length=4 tokens and lose their last tokens"]


def test_snapshot_callback(tiny_model, tmp_path):
    cb = metrics.snapshot_callback(["fid", "kid"], ShapesDataset(16), num=4, batch=4, cache_dir=str(tmp_path),
                                   extractor=TinyFeatures())
    out = cb(tiny_model[0], 0.5)
    assert set(out) == {"fid", "kid", "kid_std"} and all(isinstance(v, float) for v in out.values())


def test_scorer_cache_key_follows_the_data():
    from eval.alignment import ScorerConfig

    cfg = ScorerConfig(text="tower")
    ex = TinyFeatures()
    key, count = fitted.scorer_cache_key(ShapesDataset(16, seed=0), 16, 8, ex, cfg)
    assert count == 8
    assert key == fitted.scorer_cache_key(ShapesDataset(16, seed=0), 16, 8, ex, cfg)[0]
    assert key != fitted.scorer_cache_key(ShapesDataset(16, seed=1), 16, 8, ex, cfg)[0]  # other images
    assert key != fitted.scorer_cache_key(ShapesDataset(16, seed=0), 16, 9, ex, cfg)[0]  # count
    assert key != fitted.scorer_cache_key(ShapesDataset(32, seed=0), 32, 8, ex, cfg)[0]  # resolution
    assert key != fitted.scorer_cache_key(ShapesDataset(16, seed=0), 16, 8, ex, dataclasses.replace(cfg, steps=3))[0]


def test_fit_scorer_caches(tmp_path):
    from eval.alignment import ScorerConfig

    cfg = ScorerConfig(text="tower", steps=3, batch=8, embed_dim=8, hidden_dim=16, tower_dim=8)
    s1, f1 = fitted.fit_scorer(ShapesDataset(16), 16, 24, TinyFeatures(), cfg=cfg, cache_dir=tmp_path)
    stamp = (f1 / "scorer.safetensors").stat().st_mtime_ns
    s2, f2 = fitted.fit_scorer(ShapesDataset(16), 16, 24, TinyFeatures(), cfg=cfg, cache_dir=tmp_path)
    assert f1 == f2 and (f2 / "scorer.safetensors").stat().st_mtime_ns == stamp
    assert s2.info["report"]["heldout"] == s1.info["report"]["heldout"]
    _, f3 = fitted.fit_scorer(ShapesDataset(16, seed=5), 16, 24, TinyFeatures(), cfg=cfg, cache_dir=tmp_path)
    assert f3 != f1


@pytest.mark.skipif(not ALEXNET.is_file(), reason="shared AlexNet trunk not present")
def test_lpips_subcommand_and_diversity(tiny_model, tmp_path, capsys):
    from eval.lpips import distance_between_files

    rng = np.random.default_rng(0)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(a)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(b)
    rc, out, err = _run(["lpips", str(a), str(a), "--lpips-backbone", str(ALEXNET)], capsys)
    assert rc == 0 and out.strip() == "Distance: 0.000"
    rc, out, err = _run(["lpips", str(a), str(b), "--lpips-backbone", str(ALEXNET)], capsys)
    expected = distance_between_files(a, b, backbone=ALEXNET)
    assert rc == 0 and out.strip() == f"Distance: {expected:.3f}" and expected > 0.05
    rc, out, err = _run(["lpips", str(a), str(tmp_path / "missing.png")], capsys)
    assert rc == 2 and "missing.png" in err

    rc, out, err = _run(["--model", str(tiny_model[0]), "--data", "shapes", "--metrics", "lpips_diversity",
                         "--num", "4", "--lpips-prompts", "2", "--lpips-seeds", "2", "--quiet",
                         "--lpips-backbone", str(ALEXNET), "--json", str(tmp_path / "l.json"), "--device", "cpu"], capsys)
    assert rc == 0, err
    row = json.loads((tmp_path / "l.json").read_text())["rows"][0]
    assert set(row["values"]) == {"lpips_diversity"} and row["values"]["lpips_diversity"] > 0
    assert row["weights"]["lpips_backbone"]["file"] == str(ALEXNET)


def _folder_dataset(root):
    root.mkdir()
    rng = np.random.default_rng(0)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": f"a red circle number {i}"}) + "\n")
    return root


def test_errors_name_the_option_or_file(tiny_model, tmp_path, capsys):
    base = ["--model", str(tiny_model[0]), "--data", "shapes", "--num", "4", "--quiet", "--device", "cpu",
            "--cache-dir", str(tmp_path / "c")]
    cases = [
        (["--model", str(tmp_path / "nope"), "--data", "shapes"], "--model"),
        ([*base, "--metrics", "fid,bogus"], "bogus"),
        ([*base, "--prompts", str(tmp_path / "none.txt")], "none.txt"),
        (["--model", str(tiny_model[0]), "--data", str(tmp_path / "nodata")], "--data"),
        ([*base, "--metrics", "clip_score"], "--clip-weights"),
        # Without the clip extra the error names it; with it, the missing weights file.
        ([*base, "--metrics", "clip_score", "--clip-weights", str(tmp_path / "w.pt")],
         "w.pt" if importlib.util.find_spec("open_clip") else "open_clip"),
        ([*base, "--metrics", "attributes", "--prompts", str(tmp_path / "p.txt")], "--prompts"),
        ([*base, "--metrics", "attributes", "--data", str(_folder_dataset(tmp_path / "folder"))], "--data shapes"),
        ([*base, "--metrics", "alignment", "--scorer", str(tmp_path)], "--scorer"),
    ]
    (tmp_path / "p.txt").write_text("a red circle\n\n")
    for argv, needle in cases:
        rc, out, err = _run(argv, capsys)
        assert rc == 2 and needle in err, (argv, err)
        assert err.startswith("error: ")


def test_prompts_file_and_folder_data(tiny_model, tmp_path, capsys):
    folder = _folder_dataset(tmp_path / "folder")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na blue square\n")
    rc, out, err = _run(["--model", str(tiny_model[0]), "--data", str(folder), "--metrics", "fid,kid",
                         "--num", "6", "--prompts", str(prompts), "--quiet", "--device", "cpu",
                         "--cache-dir", str(tmp_path / "c"), "--json", str(tmp_path / "o.json")], capsys)
    assert rc == 0, err
    payload = json.loads((tmp_path / "o.json").read_text())
    assert payload["settings"]["prompts"] == str(prompts)
    assert payload["rows"][0]["values"]["fid"] > 0


# --- fd_domain and folders of images (--images) -------------------------------------------


def naive_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 sqrtm(S_a S_b)), from numpy and scipy alone."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


def shapes_folder(root, *, resolution: int, num: int, seed: int):
    """`num` shapes images (PNG) with their captions in metadata.jsonl: another system's outputs."""
    root.mkdir()
    ds = ShapesDataset(resolution, seed=seed)
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(num):
            item = ds[i]
            Image.fromarray(item["image"].permute(1, 2, 0).numpy()).save(root / f"{i:02d}.png")
            f.write(json.dumps({"file_name": f"{i:02d}.png", "text": item["text"]}) + "\n")
    return root


def domain_embeddings(scorer_dir, images) -> np.ndarray:
    """The scorer's image embeddings [N, E] of uint8 images [N, 3, R, R] (TinyFeatures underneath)."""
    from eval.alignment import AlignmentScorer

    scorer = AlignmentScorer.load(scorer_dir)
    with torch.no_grad():
        return scorer.embed_images(TinyFeatures()(images)).double().numpy()


def test_fd_domain_is_the_frechet_distance_of_the_scorers_image_embeddings(tiny_model, scorer_and_probe, tmp_path):
    from gan.model import load_model

    scorer_dir, _ = scorer_and_probe
    model, tok = load_model(tiny_model[0])
    ref = ShapesDataset(16)
    values = metrics.compute(["fd_domain", "fid"], model, tok, ref, num=10, num_ref=12, seed=3, batch=4,
                             cache_dir=str(tmp_path), extractor=TinyFeatures(), scorer=str(scorer_dir))
    assert list(values) == ["fd_domain", "fid"]
    prompts = [ref[i]["text"] for i in range(10)]
    generated = torch.cat(list(metrics.generate(model, tok, prompts, list(range(3, 13)), emphasis=False)))
    reals = torch.stack([ref[i]["image"] for i in range(12)])
    want = naive_frechet(domain_embeddings(scorer_dir, generated), domain_embeddings(scorer_dir, reals))
    assert values["fd_domain"] == pytest.approx(want, rel=1e-6) and values["fd_domain"] > 0
    assert values["fid"] == pytest.approx(naive_frechet(TinyFeatures()(generated).double().numpy(),
                                                        TinyFeatures()(reals).double().numpy()), rel=1e-6)


def test_images_folder_is_scored_like_a_model(scorer_and_probe, tmp_path, capsys):
    from data.folder import FolderDataset
    from eval.alignment import AlignmentScorer, score
    from eval.fid import kid

    scorer_dir, _ = scorer_and_probe
    other = shapes_folder(tmp_path / "other", resolution=32, num=9, seed=4)  # read at 16 px below
    same = shapes_folder(tmp_path / "same", resolution=16, num=8, seed=0)  # the reference's own first 8
    out = tmp_path / "scores.json"
    rc, stdout, err = _run(["--images", str(other), "--images", str(same), "--resolution", "16", "--data", "shapes",
                            "--num", "8", "--scorer", str(scorer_dir), "--cache-dir", str(tmp_path / "c"),
                            "--json", str(out), "--device", "cpu", "--quiet"], capsys)
    assert rc == 0, err
    payload = json.loads(out.read_text())
    assert payload["metrics"] == ["fid", "fd_domain", "kid", "alignment"]  # the default
    rows = payload["rows"]
    assert [r["images"] for r in rows] == [str(other), str(same)] and all(tuple(r) == cli.ROW_KEYS for r in rows)
    assert all(r["model"] is None and r["seeds"] is None and r["resolution"] == 16 for r in rows)
    assert [r["num_images"] for r in rows] == [8, 8]  # --num caps the folder of 9
    assert set(rows[0]["values"]) == {"fid", "fd_domain", "kid", "kid_std", "r_precision", "cosine",
                                      "r_precision_real", "cosine_real", "candidates"}
    assert set(rows[0]["weights"]) == {"inception", "alignment_scorer"}
    assert str(other) in stdout.splitlines()[2]

    # The folder's values, computed directly: its first 8 images read at 16 px, their captions.
    folder = FolderDataset(other, resolution=16)
    images = torch.stack([folder[i]["image"] for i in range(8)])
    captions = [folder.entries[i].texts[0] for i in range(8)]
    reals = torch.stack([ShapesDataset(16)[i]["image"] for i in range(8)])
    f_gen, f_ref = TinyFeatures()(images), TinyFeatures()(reals)
    values = rows[0]["values"]
    assert values["fid"] == pytest.approx(naive_frechet(f_gen.double().numpy(), f_ref.double().numpy()), rel=1e-6)
    assert values["kid"] == kid(f_gen.numpy(), f_ref.numpy(), seed=0)[0]
    assert values["fd_domain"] == pytest.approx(naive_frechet(domain_embeddings(scorer_dir, images),
                                                              domain_embeddings(scorer_dir, reals)), rel=1e-6)
    assert values["r_precision"] == score(AlignmentScorer.load(scorer_dir), f_gen, captions)["r_precision"]
    # The reference's own images score (close to) zero: the folder is read back bit for bit.
    assert abs(rows[1]["values"]["fid"]) < 1e-4 and abs(rows[1]["values"]["fd_domain"]) < 1e-4


def test_images_folder_errors_name_the_file_or_option(scorer_and_probe, tmp_path, capsys):
    scorer_dir, _ = scorer_and_probe
    bare = tmp_path / "bare"
    bare.mkdir()
    Image.new("RGB", (16, 16), (200, 0, 0)).save(bare / "0.png")
    Image.new("RGB", (16, 16), (0, 0, 200)).save(bare / "1.png")
    folder = shapes_folder(tmp_path / "folder", resolution=16, num=4, seed=0)
    base = ["--data", "shapes", "--num", "4", "--scorer", str(scorer_dir), "--quiet", "--device", "cpu",
            "--cache-dir", str(tmp_path / "c")]
    cases = [
        (["--images", str(bare), *base], f"--images {bare}: no image has a caption: {bare / 'metadata.jsonl'} is missing"),
        (["--images", str(tmp_path / "none"), *base], "--images"),
        (["--images", str(folder), *base, "--metrics", "fid,attributes"], "--metrics: attributes"),
        (["--images", str(folder), *base, "--metrics", "lpips_diversity"], "--metrics: lpips_diversity"),
        (base, "give --model DIR"),
    ]
    for argv, needle in cases:
        rc, out, err = _run(argv, capsys)
        assert rc == 2 and err.startswith("error: ") and needle in err, (argv, err)


def test_data_seed_picks_the_reference_scenes(tiny_model, scorer_and_probe, tmp_path, capsys, monkeypatch):
    import data

    first = [cli.open_reference("shapes", 16, seed)[0]["attributes"] for seed in (0, 0, 3)]
    assert first[0] == first[1] != first[2]
    seeds, open_dataset = [], data.open_dataset
    monkeypatch.setattr(data, "open_dataset", lambda *a, **kw: seeds.append(kw["seed"]) or open_dataset(*a, **kw))
    out = tmp_path / "scores.json"
    rc, _, stderr = _run(["--model", str(tiny_model[0]), "--data", "shapes", "--metrics", "attributes", "--num", "4",
                          "--data-seed", "3", "--probe", str(scorer_and_probe[1]), "--json", str(out), "--device", "cpu",
                          "--quiet"], capsys)
    assert rc == 0, stderr
    assert seeds == [3] and json.loads(out.read_text())["settings"]["data_seed"] == 3


def test_saved_images_read_back_as_a_folder_give_the_models_scores(tiny_model, scorer_and_probe, tmp_path, capsys):
    scorer_dir, _ = scorer_and_probe
    saved = tmp_path / "gen"
    base = ["--data", "shapes", "--metrics", "fid,fd_domain,kid,alignment", "--num", "9", "--batch", "4",
            "--scorer", str(scorer_dir), "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--quiet"]
    rc, _, err = _run(["--model", str(tiny_model[0]), "--seed", "5", "--save-images", str(saved), *base,
                       "--json", str(tmp_path / "model.json")], capsys)
    assert rc == 0, err
    rows = [json.loads(line) for line in (saved / "metadata.jsonl").read_text().splitlines()]
    ref = ShapesDataset(16)
    assert [r["file_name"] for r in rows] == [f"{i:05d}.png" for i in range(9)]
    assert [r["text"] for r in rows] == [ref[i]["text"] for i in range(9)] and [r["seed"] for r in rows] == list(range(5, 14))
    from gan.model import load_model

    model, tok = load_model(tiny_model[0])
    want = torch.cat(list(metrics.generate(model, tok, [r["text"] for r in rows], list(range(5, 14)), emphasis=False)))
    got = torch.stack([torch.from_numpy(np.array(Image.open(saved / r["file_name"]))).permute(2, 0, 1) for r in rows])
    assert torch.equal(got, want)
    rc, _, err = _run(["--images", str(saved), *base, "--json", str(tmp_path / "folder.json")], capsys)
    assert rc == 0, err
    as_model = json.loads((tmp_path / "model.json").read_text())["rows"][0]["values"]
    as_folder = json.loads((tmp_path / "folder.json").read_text())["rows"][0]["values"]
    # The same images, captions and features: the same numbers (KID's float32 sums to rounding).
    assert as_folder["kid"] == pytest.approx(as_model["kid"], rel=1e-6)
    assert as_folder["kid_std"] == pytest.approx(as_model["kid_std"], abs=1e-6)
    exact = lambda v: {k: x for k, x in v.items() if not k.startswith("kid")}  # noqa: E731
    assert exact(as_folder) == exact(as_model)
    # A folder already holding files, or two models, is refused before any work.
    for argv, needle in [(["--model", str(tiny_model[0]), "--save-images", str(saved)], "not an empty folder"),
                         (["--model", str(tiny_model[0]), "--model", str(tiny_model[1]), "--save-images",
                           str(tmp_path / "new")], "one --model, got 2")]:
        rc, _, err = _run([*argv, *base], capsys)
        assert rc == 2 and err.startswith("error: --save-images") and needle in err, err
