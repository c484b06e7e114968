"""G's prompt layout map (gan/layout.py): a naive reference, padding, empty captions, gradients,
its place in G, its warm-up and its optimiser group, and the configuration errors."""
import math

import pytest
import torch

from encoders import EncoderConfig
from encoders.code import SpikeCode
from gan.config import GeneratorConfig, ModelConfig
from gan.presets import preset
from gan.generator import Generator
from gan.layout import PromptLayout
from gan.model import TextToImage
from gan.train_config import TrainConfig, check_config, resolve_config
from gan.training import make_optimizers
from gan.warmup import WarmupConfig, run_warmup, warm_up_encoder
from tests.test_warmup import fresh_encoder, pairs, tiny_setup  # noqa: F401 (a fixture)


def live_layout(seed: int = 0, **kw) -> PromptLayout:
    """A PromptLayout whose zero-initialised output conv and positions hold random weights."""
    torch.manual_seed(seed)
    layout = PromptLayout(8, 6, resolution=4, max_tokens=7, heads=2, **kw).eval()
    with torch.no_grad():
        layout.proj.weight.normal_()
        layout.proj.bias.normal_()
        layout.pos.normal_()
    return layout


def naive_layout(layout: PromptLayout, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One caption at a time, on its real tokens alone; the cells' attention written out by hand."""
    ctx, att = layout.context, layout.attend
    d, h = tokens.shape[-1], att.num_heads
    wq, wk, wv = att.in_proj_weight.split(d)
    bq, bk, bv = att.in_proj_bias.split(d)
    out = []
    for b in range(len(tokens)):
        n = int(mask[b].sum())
        if n == 0:
            out.append(torch.zeros(layout.channels, layout.resolution, layout.resolution))
            continue
        t = tokens[b : b + 1, :n] + layout.pos[:n]
        t = ctx(t)[0]  # [n, d], no padding to mask
        q, k, v = layout.queries @ wq.T + bq, t @ wk.T + bk, t @ wv.T + bv
        heads = []
        for i in range(h):
            s = slice(i * d // h, (i + 1) * d // h)
            a = (q[:, s] @ k[:, s].T / math.sqrt(d // h)).softmax(dim=-1)
            heads.append(a @ v[:, s])
        cells = torch.cat(heads, dim=1) @ att.out_proj.weight.T + att.out_proj.bias  # [R*R, d]
        R = layout.resolution
        out.append(layout.proj(cells.T.reshape(1, d, R, R))[0])
    return torch.stack(out)


def test_layout_equals_a_naive_loop_and_ignores_padding():
    layout = live_layout()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randn(4, 6, 8, generator=g)
    mask = torch.arange(6)[None] < torch.tensor([6, 3, 1, 0])[:, None]
    with torch.no_grad():
        got = layout(tokens, mask)
        torch.testing.assert_close(got, naive_layout(layout, tokens, mask), atol=1e-5, rtol=1e-5)
        junk = torch.where(mask[..., None], tokens, torch.randn(4, 6, 8, generator=g) * 100)
        torch.testing.assert_close(layout(junk, mask), got)  # padding holds anything
    assert got.shape == (4, 6, 4, 4) and torch.isfinite(got).all()
    assert torch.equal(got[3], torch.zeros(6, 4, 4))  # a caption without tokens draws nothing
    assert not torch.allclose(got[0], got[0].flip(-1))  # cells differ from each other


def test_word_order_changes_the_map():
    """The map reads the tokens in order: the same words reversed draw another map."""
    layout = live_layout()
    tokens = torch.randn(1, 5, 8, generator=torch.Generator().manual_seed(2))
    mask = torch.ones(1, 5, dtype=torch.bool)
    with torch.no_grad():
        assert not torch.allclose(layout(tokens, mask), layout(tokens.flip(1), mask), atol=1e-4)


def test_layout_refuses_long_captions_and_bad_heads():
    layout = live_layout()
    with pytest.raises(ValueError, match="generator.max_tokens"):
        layout(torch.zeros(1, 8, 8), torch.ones(1, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match="heads"):
        PromptLayout(8, 6, resolution=4, max_tokens=7, heads=3)


def tiny_g(**kw) -> GeneratorConfig:
    return GeneratorConfig(**{**preset("tiny").generator.__dict__, **kw})


def test_g_with_a_fresh_layout_draws_what_g_without_draws():
    """The map's output conv starts at zero, so a fresh layout leaves G's image as it was."""
    torch.manual_seed(0)
    G = Generator(tiny_g(layout_resolution=8)).eval()
    plain = Generator(tiny_g(layout_resolution=0)).eval()
    plain.load_state_dict({k: v for k, v in G.state_dict().items() if ".layout." not in k})
    g = torch.Generator().manual_seed(3)
    code = SpikeCode(torch.randn(2, 32, generator=g), torch.randn(2, 5, 32, generator=g),
                     torch.tensor([[True] * 5, [True, True, False, False, False]]))
    z = torch.randn(2, 32, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(G(z, code, noise_mode="const"), plain(z, code, noise_mode="const"))
        G.synthesis.layout.proj.weight.normal_()
        assert not torch.allclose(G(z, code, noise_mode="const"), plain(z, code, noise_mode="const"))


def test_gradients_reach_every_layout_parameter_through_g():
    torch.manual_seed(0)
    G = Generator(tiny_g(layout_resolution=8))
    with torch.no_grad():
        G.synthesis.layout.proj.weight.normal_()
    g = torch.Generator().manual_seed(4)
    code = SpikeCode(torch.randn(3, 32, generator=g), torch.randn(3, 4, 32, generator=g), torch.ones(3, 4, dtype=torch.bool))
    G(torch.randn(3, 32, generator=g), code).square().mean().backward()
    for name, p in G.synthesis.layout.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_layout_config_errors():
    for kw, match in ((dict(layout_resolution=6), "layout_resolution"), (dict(layout_resolution=32), "layout_resolution"),
                      (dict(layout_resolution=2), "layout_resolution"), (dict(max_tokens=0), "max_tokens"),
                      (dict(layout_resolution=8, attn_heads=3), "attn_heads")):
        with pytest.raises(ValueError, match=match):
            tiny_g(**kw)
    cfg = preset("tiny")
    with pytest.raises(ValueError, match="generator.max_tokens"):
        ModelConfig(name="x", resolution=16, encoder=EncoderConfig(**{**cfg.encoder.to_dict(), "max_length": 9}),
                    generator=tiny_g(layout_resolution=8, max_tokens=8), discriminator=cfg.discriminator)


def test_warm_up_trains_the_layout_and_leaves_the_encoder_as_without(tiny_setup):  # noqa: F811
    """With a layout, the warm-up trains it to sketch the real image (its weights move, the L1 is
    reported), and the encoder ends exactly where a warm-up without the layout leaves it."""
    dataset, cfg, tokenizer = tiny_setup
    warm = WarmupConfig(kimg=0.048, batch=16)
    encoders, layout = [], None
    for with_layout in (False, True):
        enc = fresh_encoder(cfg, tokenizer)
        torch.manual_seed(5)
        layout = PromptLayout(cfg.code_dim, 16, resolution=8, max_tokens=cfg.max_length, heads=2)
        before = {k: v.clone() for k, v in layout.state_dict().items()}
        torch.manual_seed(123)
        stats = warm_up_encoder(enc, pairs(dataset, warm, 0), tokenizer, warm, resolution=16,
                                layout=layout if with_layout else None)
        encoders.append(enc.state_dict())
        assert ("warmup/layout_error" in stats) == with_layout
    assert math.isfinite(stats["warmup/layout_error"])
    assert all(not torch.equal(before[k], v) for k, v in layout.state_dict().items())  # every tensor trained
    assert all(torch.equal(encoders[0][k], encoders[1][k]) for k in encoders[0])


def test_the_layout_then_trains_alone_on_the_frozen_encoder(tiny_setup):  # noqa: F811
    """warmup.layout_kimg: after the warm-up's steps, the layout takes that many pairs more on its
    own; the encoder ends where the warm-up alone leaves it, the layout where the warm-up leaves it
    plus those steps (so it differs from a warm-up without them)."""
    dataset, cfg, tokenizer = tiny_setup
    ends = []
    for layout_kimg in (0.0, 0.032):
        warm = WarmupConfig(kimg=0.048, batch=16, layout_kimg=layout_kimg)
        enc = fresh_encoder(cfg, tokenizer)
        torch.manual_seed(5)
        layout = PromptLayout(cfg.code_dim, 16, resolution=8, max_tokens=cfg.max_length, heads=2)
        torch.manual_seed(123)
        stats, _, _ = run_warmup(warm, enc, dataset, tokenizer, seed=0, workers=0, resolution=16, device="cpu",
                                 any_process_stopped=lambda stop: False, layout=layout)
        assert stats["warmup/steps"] == 3 and stats.get("warmup/layout_steps", 0) == (2 if layout_kimg else 0)
        ends.append((enc.state_dict(), {k: v.clone() for k, v in layout.state_dict().items()}))
    assert all(torch.equal(ends[0][0][k], ends[1][0][k]) for k in ends[0][0])
    assert all(not torch.equal(ends[0][1][k], ends[1][1][k]) for k in ends[0][1])
    with pytest.raises(ValueError, match="--warmup-layout-kimg"):
        check_config(resolve_config("tiny", warmup={"layout_kimg": -1}))


def test_the_layout_has_its_own_adam_group_with_momentum():
    from gan.discriminator import Discriminator

    cfg = preset("tiny")
    torch.manual_seed(0)
    model, D = TextToImage(cfg.replace(vocab_size=20)), Discriminator(cfg.discriminator)
    g_opt, _ = make_optimizers(TrainConfig(preset="tiny", layout_lr=3e-4), model, D)
    layout_ids = {id(p) for p in model.generator.synthesis.layout.parameters()}
    groups = [{id(p) for p in g["params"]} for g in g_opt.param_groups]
    assert sum(len(g) for g in groups) == len(set().union(*groups))  # no parameter in two groups
    assert set().union(*groups) == {id(p) for p in model.parameters()}  # and none left out
    (own,) = [g for g in g_opt.param_groups if {id(p) for p in g["params"]} == layout_ids]
    assert own["lr"] == 3e-4 and own["betas"] == (0.9, 0.999)
    assert all(g["betas"] == (0.0, 0.99) for g in g_opt.param_groups if g is not own)


def test_the_run_keeps_a_frozen_copy_of_the_warmed_layout_and_its_sketch(tiny_setup):  # noqa: F811
    """run_warmup's teacher: the layout as the warm-up left it and the sketch head it trained
    through (its L1 on a batch is the warm-up's), frozen, and not G's map: training G's map after
    the warm-up leaves it as it was."""
    from gan.layout import LayoutTeacher

    dataset, cfg, tokenizer = tiny_setup
    torch.manual_seed(5)
    layout = PromptLayout(cfg.code_dim, 16, resolution=8, max_tokens=cfg.max_length, heads=2)
    warm, teacher, stopped = run_warmup(WarmupConfig(kimg=0.032, batch=16), fresh_encoder(cfg, tokenizer), dataset,
                                        tokenizer, seed=0, workers=0, resolution=16, device="cpu",
                                        any_process_stopped=lambda stop: False, layout=layout)
    assert stopped is None and isinstance(teacher, LayoutTeacher) and not teacher.training
    warmed = {k: v.clone() for k, v in layout.state_dict().items()}
    assert all(torch.equal(warmed[k], v) for k, v in teacher.layout.state_dict().items())
    assert all(not p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        for p in layout.parameters():  # G's map trains on in the GAN
            p.add_(1.0)
    assert all(torch.equal(warmed[k], v) for k, v in teacher.layout.state_dict().items())
    saved = LayoutTeacher.like(layout)
    saved.load_state_dict(teacher.state_dict())  # what a resumed run loads
    code = fresh_encoder(cfg, tokenizer)(tokenizer(["a red circle"], emphasis=False))
    torch.testing.assert_close(saved(code.tokens, code.mask), teacher(code.tokens, code.mask))
    assert teacher(code.tokens, code.mask).shape == (1, 3, 8, 8)


def test_sketch_error_equals_a_naive_loop():
    """Squared error per cell against the image pooled to R x R, cells showing an object (colour
    away from the mean of the border pixels) weighted 1 + object_weight, weights of mean 1."""
    from gan.layout import sketch_error

    g = torch.Generator().manual_seed(0)
    images = torch.full((2, 3, 8, 8), -1.0)
    images[0, :, 2:4, 4:8] = torch.tensor([1.0, -1.0, -1.0])[:, None, None]  # a red object on black
    images[1] = torch.rand(3, 8, 8, generator=g) * 2 - 1
    drawn = torch.randn(2, 3, 4, 4, generator=g)
    num = den = 0.0
    for b in range(2):
        ring = [images[b, :, y, x] for y in range(8) for x in range(8) if y in (0, 7) or x in (0, 7)]
        bg = torch.stack(ring).mean(0)
        for i in range(4):
            for j in range(4):
                cell = images[b, :, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean(dim=(1, 2))
                w = 1 + 3.0 * float((cell - bg).abs().sum() > 0.1)
                num += w * ((drawn[b, :, i, j] - cell) ** 2).sum()
                den += w * 3
    want = num / den
    torch.testing.assert_close(sketch_error(drawn, images, object_weight=3.0), torch.as_tensor(want))
    plain = (drawn - torch.nn.functional.adaptive_avg_pool2d(images, 4)) ** 2
    torch.testing.assert_close(sketch_error(drawn, images, object_weight=0.0), plain.mean())


def test_the_encoder_text_path_and_guides_have_their_own_rates():
    """encoder_lr_mult scales the text path, guide_lr_mult the palette and sketch paths."""
    import dataclasses

    from gan.discriminator import Discriminator

    cfg = preset("tiny")
    cfg = cfg.replace(vocab_size=20, encoder=dataclasses.replace(cfg.encoder, palette=True, sketch_grid=2))
    torch.manual_seed(0)
    model, D = TextToImage(cfg), Discriminator(cfg.discriminator)
    g_opt, _ = make_optimizers(TrainConfig(preset="tiny", g_lr=0.1, encoder_lr_mult=0.5, guide_lr_mult=0.25), model, D)
    guides = {id(p) for p in model.encoder.guides.parameters()}
    text = {id(p) for p in model.encoder.parameters()} - guides
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in g_opt.param_groups}
    assert guides and by_lr[0.1 * 0.25] == guides and by_lr[0.1 * 0.5] == text
