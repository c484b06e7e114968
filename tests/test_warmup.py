"""The contrastive encoder warm-up (gan/warmup.py): the loss against a naive reference, the image
tower's shapes, determinism per seed, and that it learns to match captions to images."""
import math

import pytest
import torch
import torch.nn.functional as F

from data import to_float
from data.shapes import ShapesDataset
from encoders import build_encoder, make_tokenizer
from gan.config import preset
from gan.loss import LossConfig, distinct_pairs
from gan.training import make_loader
from encoders import WordTokenizer
from encoders.code import SpikeCode
from gan.warmup import ImageTextScorer, ImageTower, WarmupConfig, WordSwaps, clip_loss, warm_up_encoder


def naive_clip_loss(img, txt, scale, distinct, hard=None):
    """Per row and per column: -log(exp(own) / sum over own + distinct others), averaged; a valid
    hard negative joins its own image's row."""
    sim = [[scale * F.cosine_similarity(img[i], txt[j], dim=0) for j in range(len(txt))] for i in range(len(img))]
    n, total = len(img), 0.0
    for i in range(n):
        row = [sim[i][j] for j in range(n) if j == i or distinct[i, j]]
        if hard is not None and hard[1][i]:
            row.append(scale * F.cosine_similarity(img[i], hard[0][i], dim=0))
        col = [sim[j][i] for j in range(n) if j == i or distinct[j, i]]
        total += -(sim[i][i] - torch.logsumexp(torch.stack(row), 0)) / 2
        total += -(sim[i][i] - torch.logsumexp(torch.stack(col), 0)) / 2
    return total / n


def test_clip_loss_matches_naive_reference():
    g = torch.Generator().manual_seed(0)
    img, txt = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    txt[4] = txt[1]  # two identical captions: neither is the other's negative
    codes = txt.clone()
    distinct = distinct_pairs(codes)
    assert not distinct[1, 4] and not distinct[4, 1]
    log_scale = torch.tensor(1.3)
    loss, logits = clip_loss(img, txt, log_scale, distinct)
    torch.testing.assert_close(loss, naive_clip_loss(img, txt, log_scale.exp(), distinct), rtol=1e-5, atol=1e-6)
    assert logits.shape == (6, 6) and torch.isinf(logits[1, 4]) and torch.isfinite(logits.diagonal()).all()


def test_clip_loss_with_hard_negatives_matches_naive_reference():
    g = torch.Generator().manual_seed(1)
    img, txt, neg = (torch.randn(5, 8, generator=g) for _ in range(3))
    distinct, log_scale = distinct_pairs(txt), torch.tensor(0.7)
    valid = torch.tensor([True, False, True, True, False])
    loss, logits = clip_loss(img, txt, log_scale, distinct, (neg, valid))
    torch.testing.assert_close(loss, naive_clip_loss(img, txt, log_scale.exp(), distinct, (neg, valid)),
                               rtol=1e-5, atol=1e-6)
    assert logits.shape == (5, 5)
    none_valid = clip_loss(img, txt, log_scale, distinct, (neg, torch.zeros(5, dtype=torch.bool)))[0]
    torch.testing.assert_close(none_valid, clip_loss(img, txt, log_scale, distinct)[0])


def naive_word_region_loss(scorer, img, code, distinct, hard):
    """The symmetric contrastive loss of the word-region scores, one image and one caption at a
    time: each image's row also holds its valid hard negative."""
    cells = scorer.image.cells(img)

    def score(i, c, j):
        return scorer.words(cells[i:i + 1], c.tokens[j:j + 1], c.mask[j:j + 1], pairs=False)[0]

    n = len(img)
    s = [[score(i, code, j) for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        row = [s[i][j] for j in range(n) if j == i or distinct[i, j]] + ([score(i, hard[0], i)] if hard[1][i] else [])
        col = [s[j][i] for j in range(n) if j == i or distinct[j, i]]
        total += -(s[i][i] - torch.logsumexp(torch.stack(row), 0)) / 2 - (s[i][i] - torch.logsumexp(torch.stack(col), 0)) / 2
    return total / n


def random_code(g, lengths, dim=8, length=5):
    mask = torch.arange(length)[None] < torch.tensor(lengths)[:, None]
    return SpikeCode(torch.randn(len(lengths), dim, generator=g), torch.randn(len(lengths), length, dim, generator=g)
                     * mask[..., None], mask)


def test_scorer_word_region_adds_its_contrastive_loss():
    """With word_region, the scorer's loss is clip_loss on the pooled code plus the word-region
    scores' own symmetric contrastive loss (naive reference); its logits stay the pooled ones."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    scorer = ImageTextScorer(resolution=16, code_dim=8, word_region=True, max_tokens=5)
    with torch.no_grad():
        scorer.words.pos.normal_()
    img = torch.randn(5, 3, 16, 16, generator=g)
    code, swapped = random_code(g, [5, 3, 4, 1, 5]), random_code(g, [5, 3, 4, 1, 2])
    code.pooled[3] = code.pooled[1]  # identical captions are no negatives, for either term
    distinct = distinct_pairs(code.pooled)
    hard = (swapped, torch.tensor([True, False, True, True, True]))
    loss, logits = scorer(img, code, distinct, hard)
    want, want_logits = clip_loss(scorer.image(img), code.pooled, scorer.logit_scale, distinct,
                                  (swapped.pooled, hard[1]))
    torch.testing.assert_close(loss, want + naive_word_region_loss(scorer, img, code, distinct, hard))
    torch.testing.assert_close(logits, want_logits)
    plain = ImageTextScorer(resolution=16, code_dim=8)
    plain.load_state_dict({k: v for k, v in scorer.state_dict().items() if not k.startswith("words.")})
    torch.testing.assert_close(plain(img, code, distinct, hard)[0], want)
    with pytest.raises(ValueError, match="ImageTextScorer.hard_negatives"):
        ImageTextScorer(resolution=16, code_dim=8, hard_negatives="shuffle")


def test_word_swaps_replace_one_word_by_one_seen_in_its_context():
    corpus = ["a red circle", "a blue circle", "a red star", "the sun"]
    tok = WordTokenizer.build(corpus)
    swaps = WordSwaps.build(tok, corpus)
    ids = {w: tok([w], emphasis=False).ids[0, 0].item() for w in ("a", "red", "blue", "circle", "star")}
    # (a, circle) frames red and blue; (red, end) frames circle and star; "a" and "the sun" have no rivals.
    assert swaps.fillers == {(ids["a"], ids["circle"]): tuple(sorted((ids["red"], ids["blue"]))),
                             (ids["red"], -2): tuple(sorted((ids["circle"], ids["star"])))}
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        batch = tok(["a red circle", "the sun"], emphasis=False)
        swapped, valid = swaps(batch)
        assert valid.tolist() == [True, False] and torch.equal(swapped.ids[1], batch.ids[1])
        assert torch.equal(swapped.mask, batch.mask) and (swapped.ids[0] != batch.ids[0]).sum() == 1
        seen.add(tok.decode(swapped.ids[0].tolist()))
    assert seen == {"a blue circle", "a red star"}


def naive_exchanges(tok, swaps, caption: str) -> set[str]:
    """Every caption made by two of `caption`'s different words trading places, where each word is
    one the corpus uses between the other's neighbours (start / end as neighbours too)."""
    words = caption.split()
    ids = [tok([w], emphasis=False).ids[0, 0].item() for w in words]
    ctx = [((ids[t - 1] if t else -1), (ids[t + 1] if t + 1 < len(ids) else -2)) for t in range(len(ids))]
    out = set()
    for t in range(len(words)):
        for u in range(t + 1, len(words)):
            if ids[t] != ids[u] and ids[u] in swaps.fillers.get(ctx[t], ()) and ids[t] in swaps.fillers.get(ctx[u], ()):
                w = list(words)
                w[t], w[u] = w[u], w[t]
                out.add(" ".join(w))
    return out


def test_word_swaps_exchange_two_of_the_captions_words():
    corpus = ["a red circle left of a blue square", "a red square left of a blue circle", "a green circle",
              "a red square above a blue square", "a blue circle"]
    tok = WordTokenizer.build(corpus)
    swaps = WordSwaps.build(tok, corpus)
    captions = ["a red circle left of a blue square", "a green circle", "a red square above a blue square"]
    torch.manual_seed(0)
    seen = [set() for _ in captions]
    for _ in range(40):
        batch = tok(captions, emphasis=False)
        swapped, valid = swaps(batch, "exchange")
        # the same words (a bag of words cannot tell them apart), two of them moved
        assert torch.equal(swapped.ids.sort(dim=1).values, batch.ids.sort(dim=1).values)
        assert torch.equal(swapped.mask, batch.mask)
        assert valid.tolist() == [True, False, True] and torch.equal(swapped.ids[1], batch.ids[1])
        for k in (0, 2):
            assert (swapped.ids[k] != batch.ids[k]).sum() == 2
            seen[k].add(tok.decode(swapped.ids[k].tolist()))
    assert seen[0] == naive_exchanges(tok, swaps, captions[0]) == {"a blue circle left of a red square",
                                                                   "a red square left of a blue circle"}
    # identical words (square, square) never trade places: that would be the caption itself
    assert seen[2] == naive_exchanges(tok, swaps, captions[2]) == {"a blue square above a red square"}
    with pytest.raises(ValueError, match="kind"):
        swaps(tok(captions, emphasis=False), "shuffle")


def test_hard_negative_settings_read_old_booleans_and_name_the_option():
    assert WarmupConfig(hard_negatives=True).hard_negatives == "replace"
    assert LossConfig(hard_negatives=False).hard_negatives == "off"
    assert LossConfig(hard_negatives="exchange").hard_negatives == "exchange"
    with pytest.raises(ValueError, match="warmup.hard_negatives"):
        WarmupConfig(hard_negatives="shuffle")
    with pytest.raises(ValueError, match="loss.hard_negatives"):
        LossConfig(hard_negatives="yes")


@pytest.mark.parametrize("resolution", [16, 32, 64])
def test_image_tower_shapes(resolution):
    tower = ImageTower(resolution=resolution, out_features=24)
    assert tower(torch.zeros(3, 3, resolution, resolution)).shape == (3, 24)


def test_warm_up_with_hard_negatives_is_deterministic_and_needs_swaps(tiny_setup):
    dataset, cfg, tokenizer = tiny_setup
    warm = WarmupConfig(kimg=0.032, batch=16, hard_negatives="exchange")
    swaps = WordSwaps.build(tokenizer, dataset.captions())
    runs = []
    for _ in range(2):
        enc = fresh_encoder(cfg, tokenizer)
        torch.manual_seed(123)
        stats, _ = warm_up_encoder(enc, pairs(dataset, warm, 0), tokenizer, warm, resolution=16, swaps=swaps)
        assert stats["warmup/steps"] == 2 and math.isfinite(stats["warmup/loss"])
        runs.append(enc.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    with pytest.raises(ValueError, match="hard_negatives"):
        warm_up_encoder(fresh_encoder(cfg, tokenizer), pairs(dataset, warm, 0), tokenizer, warm, resolution=16)


def test_warm_up_with_a_word_region_trains_it_and_returns_it(tiny_setup):
    """The warm-up's scorer gets the word-region term and its kind of hard negatives; the term's
    weights train (they move from their initial values) and the loss stays finite."""
    dataset, _, _ = tiny_setup
    cfg = preset("shapes32").encoder
    tokenizer = make_tokenizer(cfg, dataset.captions())
    warm = WarmupConfig(kimg=0.064, batch=16, hard_negatives="exchange", word_region=True)
    torch.manual_seed(0)
    stats, scorer = warm_up_encoder(fresh_encoder(cfg, tokenizer), pairs(dataset, warm, 0), tokenizer, warm,
                                    resolution=16, swaps=WordSwaps.build(tokenizer, dataset.captions()))
    assert stats["warmup/steps"] == 4 and math.isfinite(stats["warmup/loss"])
    assert scorer.words is not None and scorer.hard_negatives == "exchange"
    assert len(scorer.words.pos) == cfg.max_length and scorer.words.pos.abs().sum() > 0  # zeros at init


def test_config_errors_name_the_option():
    for kw, name in ((dict(kimg=-1), "warmup.kimg"), (dict(batch=1), "warmup.batch"), (dict(lr=0), "warmup.lr")):
        with pytest.raises(ValueError, match=name):
            WarmupConfig(**kw)


@pytest.fixture(scope="module")
def tiny_setup():
    dataset = ShapesDataset(16)
    cfg = preset("tiny").encoder
    tokenizer = make_tokenizer(cfg, dataset.captions())
    return dataset, cfg, tokenizer


def fresh_encoder(cfg, tokenizer):
    torch.manual_seed(0)
    return build_encoder(cfg, len(tokenizer))


def pairs(dataset, warm: WarmupConfig, seed: int):
    """The stream the training loop hands the warm-up: seeded shuffles, batches of warm.batch."""
    return iter(make_loader(dataset, batch_gpu=warm.batch, rank=0, world=1, seed=seed, start=0, workers=0))


def test_warm_up_is_deterministic_per_seed(tiny_setup):
    dataset, cfg, tokenizer = tiny_setup
    warm = WarmupConfig(kimg=0.048, batch=16)
    runs = []
    for seed in (0, 0, 1):
        enc = fresh_encoder(cfg, tokenizer)
        torch.manual_seed(123)  # rate-coding noise in training mode comes from the global RNG
        stats, _ = warm_up_encoder(enc, pairs(dataset, warm, seed), tokenizer, warm, resolution=16)
        assert stats["warmup/steps"] == 3 and math.isfinite(stats["warmup/loss"])
        runs.append({k: v.clone() for k, v in enc.state_dict().items()})
    before = fresh_encoder(cfg, tokenizer).state_dict()
    assert any(not torch.equal(runs[0][k], before[k]) for k in before)  # it trained the encoder
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in before)  # same seed, same weights
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in before)  # another seed, other pairs


def test_warm_up_stops_when_asked(tiny_setup):
    dataset, cfg, tokenizer = tiny_setup
    warm = WarmupConfig(kimg=0.048, batch=16)
    asked = []

    def should_stop():
        asked.append(True)
        return len(asked) > 2

    enc = fresh_encoder(cfg, tokenizer)
    stats, _ = warm_up_encoder(enc, pairs(dataset, warm, 0), tokenizer, warm, resolution=16, should_stop=should_stop)
    assert stats["warmup/steps"] == 2 and len(asked) == 3 and math.isfinite(stats["warmup/loss"])
    enc = fresh_encoder(cfg, tokenizer)
    stats, _ = warm_up_encoder(enc, pairs(dataset, warm, 0), tokenizer, warm, resolution=16, should_stop=lambda: True)
    assert stats["warmup/steps"] == 0 and "warmup/loss" not in stats
    assert all(torch.equal(v, fresh_encoder(cfg, tokenizer).state_dict()[k]) for k, v in enc.state_dict().items())


def test_warm_up_learns_to_match_captions(tiny_setup):
    """shapes32's encoder on 16 px scenes: from chance (log 16 = 2.77 per direction) to well below
    it within 150 steps of 16 pairs (measured 1.08, in-batch retrieval 0.62; 1.17 on a fresh batch)."""
    dataset, _, _ = tiny_setup
    cfg = preset("shapes32").encoder
    tokenizer = make_tokenizer(cfg, dataset.captions())
    enc = fresh_encoder(cfg, tokenizer)
    warm = WarmupConfig(kimg=2.4, batch=16)
    stats, scorer = warm_up_encoder(enc, pairs(dataset, warm, 0), tokenizer, warm, resolution=16)
    assert stats["warmup/loss"] < 0.6 * math.log(16), stats
    # The returned scorer is the trained image side, frozen: it ranks real images' captions as
    # the warm-up left it (loss on a fresh batch well under chance).
    assert not scorer.training and not any(p.requires_grad for p in scorer.parameters())
    batch = next(pairs(dataset, warm, 7))
    with torch.no_grad():
        code = enc(tokenizer(batch["text"], emphasis=False))
        loss, _ = scorer(to_float(batch["image"]), code, distinct_pairs(code.pooled))
    assert loss < 0.75 * math.log(16), float(loss)
