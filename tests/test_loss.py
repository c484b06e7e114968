"""GAN loss phases and the EMA, checked on tiny stand-in networks against naive formulas."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from encoders.code import SpikeCode
from gan.ema import EMA, ema_beta
from encoders.tokenizer import TokenBatch
from gan.contrastive import contrastive_loss, distinct_pairs
from gan.loss import GANLoss, LossConfig, mode_seeking_loss, paired_rows, word_loss, word_targets


class TinyG(nn.Module):
    """Stand-in for encoder + generator: code = embedding of a per-prompt id."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 4)
        self.to_img = nn.Linear(4 + 3, 3 * 4 * 4)
        self.register_buffer("w_avg", torch.zeros(4))

    def forward(self, z, ids):
        if isinstance(ids, TokenBatch):  # prompt id = first token
            ids = ids.ids[:, 0] % 5
        pooled = self.embed(ids)  # [B, 4]
        code = SpikeCode(pooled, pooled[:, None], torch.ones(len(ids), 1, dtype=torch.bool))
        img = torch.tanh(self.to_img(torch.cat([z, pooled], 1))).view(-1, 3, 4, 4)
        return img, code


class TinyD(nn.Module):
    def __init__(self):
        super().__init__()
        self.feat = nn.Linear(48, 4)
        self.out = nn.Linear(4, 1)
        self.word_head = nn.Linear(4, VOCAB)

    def forward(self, img, pooled, *, pairs=False, words=False):
        h = torch.relu(self.feat(img.flatten(1)))
        if pairs:
            logits = self.out(h) + h @ pooled.T  # [B, B]
        else:
            logits = self.out(h)[:, 0] + (h * pooled).sum(1)  # projection discriminator
        return (logits, self.word_head(h)) if words else logits


VOCAB = 7  # word head outputs of TinyD: <pad>, <unk> and five words


def tokens(rows):
    """A TokenBatch of id lists (words and weights are placeholders)."""
    return TokenBatch.from_lists(rows, [[1.0] * len(r) for r in rows], [["w"] * len(r) for r in rows])


@pytest.fixture
def nets():
    torch.manual_seed(0)
    return TinyG(), TinyD()


def test_distinct_pairs_skips_identical_captions():
    pooled = torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [2.0, 2.0]])
    assert distinct_pairs(pooled).tolist() == [
        [False, False, True, True],
        [False, False, True, True],
        [True, True, False, True],
        [True, True, True, False],
    ]


def test_contrastive_loss_matches_naive_softmax_over_distinct_captions():
    scores = torch.randn(4, 4)
    distinct = distinct_pairs(torch.tensor([[1.0, 0], [1.0, 0], [0, 1.0], [2.0, 2.0]]))
    want = []
    for i in range(4):
        cols = [j for j in range(4) if j == i or distinct[i, j]]
        want.append(-(scores[i, i] - torch.logsumexp(scores[i, cols], dim=0)))
    torch.testing.assert_close(contrastive_loss(scores, distinct), torch.stack(want).mean())


def test_g_main_contrastive_term(nets):
    G, D = nets
    z, ids = torch.randn(4, 3), torch.tensor([0, 1, 1, 3])
    loss, stats = GANLoss(cfg=LossConfig(contrastive_weight=0.5), augment=None)("Gmain", G=G, D=D, z=z, batch=ids)
    img, code = G(z, ids)
    p = code.pooled.detach()
    scores = torch.stack([torch.stack([D(img[i:i + 1], p[j:j + 1])[0] for j in range(4)]) for i in range(4)])
    want = F.softplus(-scores.diagonal()).mean() + 0.5 * contrastive_loss(scores, distinct_pairs(p))
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(stats["loss/G_contrastive"], contrastive_loss(scores, distinct_pairs(p)).detach())
    loss.backward()
    assert G.to_img.weight.grad.abs().sum() > 0


def as_code(pooled):
    """A SpikeCode of pooled codes, each with one token (itself)."""
    return SpikeCode(pooled, pooled[:, None], torch.ones(len(pooled), 1, dtype=torch.bool))


def test_g_main_is_nonsaturating_and_d_code_is_detached(nets):
    G, D = nets
    z, ids = torch.randn(4, 3), torch.tensor([0, 1, 2, 3])
    loss, stats = GANLoss(cfg=LossConfig(), augment=None)("Gmain", G=G, D=D, z=z, batch=ids)
    img, code = G(z, ids)
    want = F.softplus(-D(img, code.pooled)).mean()
    torch.testing.assert_close(loss, want)
    loss.backward()
    # The encoder (embedding) trains only through the generator's use of the code: compare
    # with the gradient when D's code input is a constant.
    g_embed = G.embed.weight.grad.clone()
    G.zero_grad()
    pooled_const = G.embed(ids).detach()
    img, _ = G(z, ids)
    F.softplus(-D(img, pooled_const)).mean().backward()
    torch.testing.assert_close(g_embed, G.embed.weight.grad)
    assert g_embed.abs().sum() > 0
    assert set(stats) == {"loss/G", "scores/fake_G"}


def test_g_main_mode_seeking_pairs_two_latents_per_caption(nets):
    G, D = nets
    z, ids = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 4])
    assert paired_rows(5) == [0, 1, 0, 1, 4]
    loss, stats = GANLoss(cfg=LossConfig(diversity_weight=0.5), augment=None)("Gmain", G=G, D=D, z=z, batch=ids)
    pair_ids = ids[[0, 1, 0, 1, 4]]
    img, code = G(z, pair_ids)
    # Naive: per pair, then MSGAN's ratio of mean image distance to mean latent distance.
    d_img = torch.stack([(img[i] - img[i + 2]).abs().mean() for i in range(2)]).mean()
    d_z = torch.stack([(z[i] - z[i + 2]).abs().mean() for i in range(2)]).mean()
    want = F.softplus(-D(img, code.pooled)).mean() + 0.5 / (d_img / d_z + 1e-5)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(stats["loss/G_mode_seeking"], mode_seeking_loss(img, z).detach())
    # Identical images for one caption cost the most: the loss falls as the pair differs more.
    same = torch.zeros(4, 3, 4, 4)
    apart = torch.cat([torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)])
    assert mode_seeking_loss(same, z[:4]) > mode_seeking_loss(apart, z[:4])


def test_d_main_matches_formula_with_matching_aware_and_contrastive_terms(nets):
    G, D = nets
    z, ids = torch.randn(4, 3), torch.tensor([0, 0, 2, 3])  # prompts 0 and 1 identical
    real = torch.rand(4, 3, 4, 4) * 2 - 1
    loss_fn = GANLoss(cfg=LossConfig(match_weight=0.5, contrastive_weight=0.25), augment=None)
    loss, stats = loss_fn("Dmain", G=G, D=D, z=z, batch=ids, real=real)
    with torch.no_grad():
        fake, code = G(z, ids)
        p = code.pooled
        # Naive: score every real image under every caption, one pair at a time.
        scores = torch.stack([torch.stack([D(real[i:i + 1], p[j:j + 1])[0] for j in range(4)]) for i in range(4)])
        mis = [scores[i, j] for i in range(4) for j in range(4) if ids[i] != ids[j]]  # 10 mismatched pairs
        assert len(mis) == 10
        want = (F.softplus(D(fake, p)).mean() + F.softplus(-D(real, p)).mean()
                + 0.5 * F.softplus(torch.stack(mis)).mean()
                + 0.25 * contrastive_loss(scores, distinct_pairs(p)))
    torch.testing.assert_close(loss.detach(), want)
    loss.backward()
    assert G.embed.weight.grad is None and G.to_img.weight.grad is None  # G untouched by D loss
    assert D.feat.weight.grad.abs().sum() > 0
    assert stats["ada/count"].item() == 4
    assert stats["ada/sign_sum"].item() == D(real, p).sign().sum().item()
    assert {"loss/D_mismatch", "loss/D_contrastive"} <= set(stats)


def test_d_reg_is_lazy_r1_scaled_by_interval(nets):
    _, D = nets
    real = torch.rand(3, 3, 4, 4) * 2 - 1
    pooled = torch.randn(3, 4)
    cfg = LossConfig(r1_gamma=2.0, r1_interval=4)
    loss, stats = GANLoss(cfg=cfg, augment=None)("Dreg", D=D, real=real, code=as_code(pooled))
    # Naive: per-image gradient norms by finite loop.
    norms = []
    for i in range(3):
        x = real[i:i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(D(x, pooled[i:i + 1]).sum(), x)
        norms.append(g.square().sum())
    want = torch.stack(norms).mean() * (2.0 / 2) * 4
    torch.testing.assert_close(loss.detach(), want)
    loss.backward()
    assert D.feat.weight.grad.abs().sum() > 0  # R1 trains D through the double backward


def test_unknown_phase():
    with pytest.raises(ValueError, match="Gmain"):
        GANLoss(cfg=LossConfig(), augment=None)("Greg")


def test_ema_beta_ramp_up():
    assert ema_beta(batch_size=32, cur_nimg=10**9, ema_kimg=10, ema_rampup=0.05) == 0.5 ** (32 / 10000)
    assert ema_beta(batch_size=32, cur_nimg=6400, ema_kimg=10, ema_rampup=0.05) == 0.5 ** (32 / 320)
    assert ema_beta(batch_size=32, cur_nimg=6400, ema_kimg=10, ema_rampup=None) == 0.5 ** (32 / 10000)


def test_ema_update_matches_naive_and_copies_buffers(nets):
    G, _ = nets
    ema = EMA(source=G, ema_kimg=0.01, ema_rampup=None)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
        G.w_avg.fill_(3.0)
    beta = ema.update(G, cur_nimg=20, batch_size=10)
    assert beta == pytest.approx(0.5)
    for name, p in G.named_parameters():
        torch.testing.assert_close(ema.model.state_dict()[name], p.detach() * 0.5 + before[name] * 0.5)
    assert torch.equal(ema.model.w_avg, torch.full((4,), 3.0))
    assert not any(p.requires_grad for p in ema.model.parameters()) and not ema.model.training
    assert math.isclose(ema_beta(batch_size=10, cur_nimg=20, ema_kimg=0.01, ema_rampup=0.25), 0.25)


def test_word_targets_and_loss_match_naive():
    batch = tokens([[2, 3, 3, 1], [4], [6, 2]])  # a repeated word, <unk> (1), padding (0)
    t = word_targets(batch, VOCAB)
    assert t.tolist() == [[0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0], [0, 0, 1, 0, 0, 0, 1]]
    logits = torch.randn(3, VOCAB)
    want = []
    for b in range(3):  # naive: per image, per vocabulary entry
        bce = [-math.log(torch.sigmoid(logits[b, v])) if t[b, v] else -math.log(1 - torch.sigmoid(logits[b, v]))
               for v in range(VOCAB)]
        want.append(sum(bce) / t[b].sum().item())
    torch.testing.assert_close(word_loss(logits, t), torch.tensor(sum(want) / 3), rtol=1e-5, atol=1e-5)
    # negatives=False (G's half): only the caption's own words count.
    want = [sum(-math.log(torch.sigmoid(logits[b, v])) for v in range(VOCAB) if t[b, v]) / t[b].sum().item()
            for b in range(3)]
    torch.testing.assert_close(word_loss(logits, t, negatives=False), torch.tensor(sum(want) / 3), rtol=1e-5, atol=1e-5)
    assert word_loss(logits + 100 * (1 - t), t, negatives=False) == word_loss(logits, t, negatives=False)
    # Logits that agree with the targets cost less than logits that contradict them.
    assert word_loss(10 * (2 * t - 1), t) < 1e-3 < word_loss(-10 * (2 * t - 1), t)


def test_word_term_d_on_reals_g_on_fakes(nets):
    G, D = nets
    z, batch = torch.randn(3, 3), tokens([[2, 3], [4, 5, 6], [3]])
    real = torch.rand(3, 3, 4, 4) * 2 - 1
    cfg = LossConfig(match_weight=0.0, word_weight=0.5)
    loss_fn = GANLoss(cfg=cfg, augment=None)
    t = word_targets(batch, VOCAB)
    loss, stats = loss_fn("Dmain", G=G, D=D, z=z, batch=batch, real=real)
    with torch.no_grad():
        fake, code = G(z, batch)
        p = code.pooled
        real_logits, real_words = D(real, p, words=True)
        want = F.softplus(D(fake, p)).mean() + F.softplus(-real_logits).mean() + 0.5 * word_loss(real_words, t)
    torch.testing.assert_close(loss.detach(), want)
    torch.testing.assert_close(stats["loss/D_word"], word_loss(real_words, t))
    loss.backward()
    assert D.word_head.weight.grad.abs().sum() > 0
    D.zero_grad()

    loss, stats = loss_fn("Gmain", G=G, D=D, z=z, batch=batch)
    img, code = G(z, batch)
    logits, fake_words = D(img, code.pooled, words=True)
    torch.testing.assert_close(loss, F.softplus(-logits).mean() + 0.5 * word_loss(fake_words, t, negatives=False))
    loss.backward()
    assert G.to_img.weight.grad.abs().sum() > 0


def test_d_reg_with_word_head_keeps_r1_and_the_head_in_the_graph(nets):
    _, D = nets
    real, pooled = torch.rand(3, 3, 4, 4) * 2 - 1, torch.randn(3, 4)
    plain, _ = GANLoss(cfg=LossConfig(r1_gamma=2.0), augment=None)("Dreg", D=D, real=real, code=as_code(pooled))
    loss, _ = GANLoss(cfg=LossConfig(r1_gamma=2.0, word_weight=1.0), augment=None)("Dreg", D=D, real=real,
                                                                                  code=as_code(pooled))
    torch.testing.assert_close(loss, plain)
    loss.backward()
    assert D.word_head.weight.grad is not None  # zero, but present: DDP sees every parameter used


def test_sketch_loss_equals_a_naive_loop_over_the_object_cells():
    """L1 between the image's 4x4 blocks and the sketch's cells, over the cells whose colour is
    away from the mean of the sketch's border cells; the background cells count for nothing."""
    from gan.loss import sketch_loss

    g = torch.Generator().manual_seed(0)
    img = torch.randn(2, 3, 16, 16, generator=g)
    sketch = torch.zeros(2, 3, 4, 4)
    sketch[0, :, 1, 2] = torch.tensor([1.0, -1.0, -1.0])  # one red cell on grey
    sketch[0, :, 2, 1] = torch.tensor([0.1, 0.1, 0.1])  # a faint one: 0.3 < 0.5, background
    sketch[1] = torch.rand(3, 4, 4, generator=g) * 2 - 1
    num, den = 0.0, 0
    for b in range(2):
        ring = [sketch[b, :, i, j] for i in range(4) for j in range(4) if i in (0, 3) or j in (0, 3)]
        bg = torch.stack(ring).mean(0)
        for i in range(4):
            for j in range(4):
                if (sketch[b, :, i, j] - bg).abs().sum() > 0.5:
                    cell = img[b, :, 4 * i:4 * i + 4, 4 * j:4 * j + 4].mean(dim=(1, 2))
                    num += (cell - sketch[b, :, i, j]).abs().sum()
                    den += 3
    assert 3 < den < 2 * 16 * 3
    torch.testing.assert_close(sketch_loss(img, sketch), num / den)
    assert sketch_loss(img, torch.zeros(2, 3, 4, 4)) == 0  # nothing drawn: nothing to match


def test_sketch_term_pulls_fakes_toward_the_frozen_sketch(nets):
    """Gmain + sketch_weight * L1(G's image pooled to R x R, the teacher's sketch of its caption's
    detached tokens); the gradient reaches G, never the frozen teacher; without a teacher the
    weight is refused."""
    from gan.layout import LayoutSketch, LayoutTeacher, PromptLayout
    from gan.loss import sketch_loss

    class TwoTokens(nn.Module):  # TinyG with two tokens per caption, so the map's cells differ
        def __init__(self, g):
            super().__init__()
            self.g = g

        def forward(self, z, ids):
            img, code = self.g(z, ids)
            tokens = torch.stack([code.pooled, code.pooled.flip(1)], dim=1)
            return img, SpikeCode(code.pooled, tokens, torch.ones(len(img), 2, dtype=torch.bool))

    tiny_g, D = nets
    G = TwoTokens(tiny_g)
    torch.manual_seed(1)
    layout = PromptLayout(4, 6, resolution=4, max_tokens=3, heads=2)
    torch.nn.init.normal_(layout.proj.weight, std=3.0)
    teacher = LayoutTeacher(layout, LayoutSketch(6, hidden=5))
    z, ids = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    plain, _ = GANLoss(cfg=LossConfig(match_weight=0.0), augment=None)("Gmain", G=G, D=D, z=z, batch=ids)
    loss, stats = GANLoss(cfg=LossConfig(match_weight=0.0, sketch_weight=0.5), augment=None, teacher=teacher)(
        "Gmain", G=G, D=D, z=z, batch=ids)
    img, code = G(z, ids)
    target = teacher.sketch(teacher.layout(code.tokens.detach(), code.mask))
    assert target.abs().sum() > 0 and teacher(code.tokens, code.mask).grad_fn is None
    want = sketch_loss(img, target.detach())
    assert want > 0  # the sketch draws something here, and its term alone reaches G
    assert torch.autograd.grad(want, tiny_g.to_img.weight, retain_graph=True)[0].abs().sum() > 0
    torch.testing.assert_close(stats["loss/G_sketch"], want.detach())
    torch.testing.assert_close(loss, plain + 0.5 * want)
    G.zero_grad()
    loss.backward()
    assert tiny_g.to_img.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    with pytest.raises(ValueError, match="sketch_weight"):
        GANLoss(cfg=LossConfig(sketch_weight=1.0), augment=None)
