"""Alignment scorer mechanics on small stand-in features (no Inception, no downloads)."""

import pytest
import torch
import torch.nn.functional as F

from eval import alignment as al


def test_r_precision_perfect_and_shuffled():
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(500, 32, generator=g), dim=-1)
    perfect = al.r_precision(emb, emb, candidates=100, seed=0)
    assert perfect == {"r_precision": 1.0, "candidates": 100}
    shuffled = al.r_precision(emb, emb[torch.randperm(500, generator=g)], candidates=100, seed=0)
    assert shuffled["r_precision"] < 0.05  # chance is 1 / 100


def test_r_precision_matches_naive_reference():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(40, 8, generator=g), torch.randn(40, 8, generator=g)
    txt = 0.7 * img + txt  # partly aligned
    # With as many candidates as pairs, every other caption is a distractor: no randomness.
    out = al.r_precision(img, txt, candidates=40)
    sims = F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    naive = sum(all(sims[i, i] > sims[i, j] for j in range(40) if j != i) for i in range(40)) / 40
    assert out["candidates"] == 40 and out["r_precision"] == naive
    assert 0 < naive < 1


def test_r_precision_never_uses_a_copy_of_the_true_caption():
    # Two pairs share a caption with identical text embeddings: a strict rank would tie if the
    # copy were drawn as a distractor.
    emb = torch.eye(4)
    caps = ["a", "a", "b", "c"]
    txt = emb.clone()
    txt[1] = txt[0]
    img = txt.clone()
    out = al.r_precision(img, txt, caps, candidates=100)
    assert out == {"r_precision": 1.0, "candidates": 3}


def test_info_nce_matches_cross_entropy_and_handles_duplicates():
    g = torch.Generator().manual_seed(2)
    a, b = F.normalize(torch.randn(6, 4, generator=g), dim=-1), F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    logits = 10 * a @ b.t()
    ref = (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6))) / 2
    assert torch.allclose(al.info_nce(a, b, 10.0), ref)
    assert torch.allclose(al.info_nce(a, b, 10.0, torch.arange(6)), ref)
    # Duplicate captions: the targets spread evenly over all pairs of the same caption.
    groups = torch.tensor([0, 0, 1, 2, 1, 3])
    naive = 0.0
    for lg in (logits, logits.t()):
        for i in range(6):
            pos = [j for j in range(6) if groups[j] == groups[i]]
            naive += -sum(lg[i].log_softmax(0)[j] for j in pos) / len(pos) / 12
    assert torch.allclose(al.info_nce(a, b, 10.0, groups), naive)


COLOURS = ["red", "green", "blue", "yellow", "purple", "cyan"]
SHAPES = ["circle", "square", "triangle", "star", "cross"]


def _stand_in_pairs(n: int, seed: int, dim: int = 64):
    """Captions from a small grammar; 'image features' = a fixed random map of the attributes
    plus noise (a stand-in for Inception pool features)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(len(COLOURS) + len(SHAPES) + 2, dim, generator=torch.Generator().manual_seed(99))
    captions, feats = [], []
    for _ in range(n):
        c = int(torch.randint(len(COLOURS), (1,), generator=g))
        s = int(torch.randint(len(SHAPES), (1,), generator=g))
        big = int(torch.randint(2, (1,), generator=g))
        captions.append(f"a {'big' if big else 'small'} {COLOURS[c]} {SHAPES[s]}")
        v = basis[c] + basis[len(COLOURS) + s] + basis[-2 + big] + 0.3 * torch.randn(dim, generator=g)
        feats.append(v.relu())  # pool features are non-negative
    return torch.stack(feats), captions


def test_train_scorer_lowers_loss_and_aligns_heldout_pairs():
    feats, caps = _stand_in_pairs(400, seed=0)
    cfg = al.ScorerConfig(text="tower", steps=150, batch=64, embed_dim=32, hidden_dim=64, tower_dim=32, lr=3e-3)
    scorer, report = al.train_scorer(feats, caps, cfg)
    assert report["loss_last"] < 0.5 * report["loss_first"]
    assert report["num_train"] == 320 and report["num_heldout"] == 80
    # At most 60 distinct captions exist, so fewer than 100 candidates are ranked.
    assert report["heldout"]["candidates"] <= 60
    assert report["heldout"]["r_precision"] > 0.8
    assert report["heldout"]["cosine"] > 0.5
    # Shuffled pairs score near chance.
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(3))
    shuffled = al.score(scorer, feats[perm], caps)
    assert shuffled["r_precision"] < 0.2


def test_scorer_save_load_roundtrip(tmp_path):
    feats, caps = _stand_in_pairs(60, seed=1, dim=16)
    cfg = al.ScorerConfig(text="tower", steps=5, batch=16, embed_dim=8, hidden_dim=16, tower_dim=8)
    scorer, _ = al.train_scorer(feats, caps, cfg)
    scorer.save(tmp_path, info={"key": "x"})
    loaded = al.AlignmentScorer.load(tmp_path)
    assert loaded.info == {"key": "x"}
    assert torch.equal(loaded.embed_texts(caps[:5]), scorer.embed_texts(caps[:5]))
    assert torch.equal(loaded.embed_images(feats[:5]), scorer.embed_images(feats[:5]))
    with pytest.raises(FileNotFoundError, match="scorer.safetensors"):
        (tmp_path / "scorer.safetensors").unlink()
        al.AlignmentScorer.load(tmp_path)


def test_text_tower_is_order_aware():
    tower = al.TextTower(vocab=["red", "circle", "left", "of", "blue", "square"], dim=8)
    a, b = tower(["red circle left of blue square", "blue square left of red circle"])
    assert not torch.allclose(a, b)
    ids, mask = tower.ids(["red zebra", ""])
    assert ids.tolist() == [[2, al.TextTower.UNK], [al.TextTower.UNK, 0]] and mask.tolist() == [[True, True], [True, False]]


def test_minilm_embedder_offline_and_normalised(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = al.MiniLMSentenceEmbedder()
    out = emb(["a red circle", "a red circle", "a blue square"])
    assert out.shape == (3, 384)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(out[0], out[1])
    assert float(out[0] @ out[2]) < 0.99


def test_minilm_embedder_matches_sentence_transformers():
    import sentence_transformers as st
    caps = ["a red circle on the left", "a large blue square left of a small green star on a white background"]
    ref = st.SentenceTransformer(str(al.minilm_model_dir()), device="cpu").encode(caps, normalize_embeddings=True)
    assert torch.allclose(al.MiniLMSentenceEmbedder()(caps), torch.from_numpy(ref), atol=1e-5)


def test_train_scorer_with_frozen_minilm(tmp_path):
    feats, caps = _stand_in_pairs(300, seed=4)
    cfg = al.ScorerConfig(text="minilm", steps=100, batch=64, embed_dim=32, hidden_dim=64, lr=3e-3)
    scorer, report = al.train_scorer(feats, caps, cfg)
    assert report["config"]["text"] == "minilm" and scorer.tower is None
    assert report["loss_last"] < 0.5 * report["loss_first"]
    assert report["heldout"]["r_precision"] > 0.5
    # MiniLM weights stay out of the scorer's files; loading rebuilds the embedder.
    scorer.save(tmp_path)
    loaded = al.AlignmentScorer.load(tmp_path)
    assert not any(k.startswith("text_embedder") for k in loaded.state_dict())
    assert torch.allclose(loaded.embed_texts(caps[:3]), scorer.embed_texts(caps[:3]), atol=1e-6)
