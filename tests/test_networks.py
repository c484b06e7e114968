"""Generator and discriminator: shapes, truncation, noise, gradients to the code, attention."""
import pytest
import torch
import torch.nn.functional as F

from encoders.code import SpikeCode
from gan import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig
from gan.presets import PRESETS, preset
from gan.layers import EqualLinear

C = 16


def tiny_cfgs(resolution=16, **g):
    gcfg = GeneratorConfig(
        resolution=resolution, c_dim=C, z_dim=12, w_dim=24, channel_base=128, channel_max=16,
        attn_resolutions=(8,), attn_heads=2, **g,
    )
    dcfg = DiscriminatorConfig(resolution=resolution, c_dim=C, channel_base=128, channel_max=16)
    return gcfg, dcfg


def make_code(B=4, L=5, *, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    pooled = torch.randn(B, C, generator=g).requires_grad_(requires_grad)
    tokens = torch.randn(B, L, C, generator=g).requires_grad_(requires_grad)
    mask = torch.arange(L).expand(B, L) < torch.randint(1, L + 1, (B, 1), generator=g)
    return SpikeCode(pooled, tokens, mask)


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    gcfg, dcfg = tiny_cfgs()
    return Generator(gcfg).eval(), Discriminator(dcfg).eval()


@pytest.mark.parametrize("resolution", [16, 32, 64])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("architecture", ["skip", "orig"])
def test_output_shapes(resolution, channels_last, architecture):
    torch.manual_seed(0)
    gcfg, dcfg = tiny_cfgs(resolution, channels_last=channels_last, architecture=architecture)
    G, D = Generator(gcfg), Discriminator(dcfg)
    code = make_code(3)
    ws = G.mapping(torch.randn(3, 12), code.pooled)
    per_block = 3 if architecture == "skip" else 2  # two convs (+ a toRGB)
    assert ws.shape == (3, gcfg.num_ws, 24)
    assert G.num_ws == gcfg.num_ws == 2 + per_block * (len(gcfg.block_resolutions) - 1)
    img = G.synthesis(ws, code)
    assert img.shape == (3, 3, resolution, resolution) and torch.isfinite(img).all()
    assert D(img, code.pooled).shape == (3,)


def test_channels_last_equals_contiguous():
    torch.manual_seed(0)
    gcfg, dcfg = tiny_cfgs(32)
    G, D = Generator(gcfg).eval(), Discriminator(dcfg).eval()
    G2, D2 = Generator(tiny_cfgs(32, channels_last=False)[0]).eval(), Discriminator(dcfg).eval()
    G2.load_state_dict(G.state_dict())
    D2.load_state_dict(D.state_dict())
    D2.cfg = DiscriminatorConfig(**{**dcfg.__dict__, "channels_last": False})
    code, z = make_code(2), torch.randn(2, 12)
    a, b = G(z, code, noise_mode="const"), G2(z, code, noise_mode="const")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(D(a, code.pooled), D2(a, code.pooled), atol=1e-5, rtol=1e-5)


def test_orig_architecture_is_skip_with_only_the_last_torgb():
    """"orig" draws with the last resolution's toRGB alone: the same as "skip" whose other toRGB
    layers output zero (the same w reaches every layer, so the extra w slots do not matter)."""
    torch.manual_seed(0)
    G = Generator(tiny_cfgs(32, architecture="orig")[0]).eval()
    assert [b.torgb is not None for b in G.synthesis.blocks] == [False, False, False, True]
    Gs = Generator(tiny_cfgs(32)[0]).eval()
    missing, unexpected = Gs.load_state_dict(G.state_dict(), strict=False)
    assert not unexpected and missing and all(".torgb." in k for k in missing)
    with torch.no_grad():
        for block in Gs.synthesis.blocks[:-1]:
            for p in block.torgb.parameters():
                p.zero_()
    code, z = make_code(2), torch.randn(2, 12)
    torch.testing.assert_close(G(z, code, noise_mode="const"), Gs(z, code, noise_mode="const"), atol=1e-6, rtol=1e-6)


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="generator.architecture must be one of"):
        tiny_cfgs(architecture="resnet")


def test_fused_modconv_generator_matches_default():
    torch.manual_seed(0)
    G = Generator(tiny_cfgs()[0]).eval()
    Gf = Generator(tiny_cfgs(fused_modconv=True)[0]).eval()
    Gf.load_state_dict(G.state_dict())
    code, z = make_code(2), torch.randn(2, 12)
    torch.testing.assert_close(G(z, code, noise_mode="const"), Gf(z, code, noise_mode="const"), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_build_with_consistent_shapes(name):
    cfg = preset(name)
    assert cfg.generator.c_dim == cfg.encoder.code_dim == cfg.discriminator.c_dim
    gcfg = cfg.generator
    assert gcfg.channels(4) == min(gcfg.channel_base // 4, gcfg.channel_max)
    if cfg.resolution > 64:  # constructing is enough for the big ones (a forward costs seconds)
        torch.manual_seed(0)
        with torch.device("meta"):
            G, D = Generator(gcfg), Discriminator(cfg.discriminator)
        assert G.num_ws == gcfg.num_ws
        return
    torch.manual_seed(0)
    G, D = Generator(gcfg).eval(), Discriminator(cfg.discriminator).eval()
    code = SpikeCode(torch.randn(1, gcfg.c_dim), torch.randn(1, 3, gcfg.c_dim), torch.ones(1, 3, dtype=torch.bool))
    with torch.no_grad():
        img = G(torch.randn(1, gcfg.z_dim), code)
        assert img.shape == (1, 3, cfg.resolution, cfg.resolution)
        assert D(img, code.pooled).shape == (1,)


@pytest.mark.parametrize("code_in_w", [0, 8])
def test_psi_zero_gives_the_mean(code_in_w):
    torch.manual_seed(0)
    G = Generator(tiny_cfgs(code_in_w=code_in_w)[0]).eval()
    code, z = make_code(3), torch.randn(3, 12)
    with torch.no_grad():
        G.mapping.w_avg.copy_(torch.randn(24))
        ws = G.mapping(z, code.pooled, psi=0.0, truncation="global")
        assert torch.equal(ws, G.w_avg.expand(3, G.num_ws, 24))
        ws = G.mapping(z, code.pooled, psi=0.0, truncation="prompt")
        target = G.prompt_mean_w(code.pooled)
        assert torch.equal(ws, target.unsqueeze(1).expand(3, G.num_ws, 24))
        # The prompt mean is deterministic and differs between prompts.
        assert torch.equal(target, G.prompt_mean_w(code.pooled))
        assert (target[0] - target[1]).abs().max() > 1e-3
        # Per prompt it equals a brute-force mean over the same fixed latents.
        gen = torch.Generator().manual_seed(0)
        zs = torch.randn(256, 12, generator=gen)
        brute = G.mapping(zs, code.pooled[1:2].expand(256, C))[:, 0].mean(0)
        torch.testing.assert_close(target[1], brute, atol=1e-5, rtol=1e-5)
        # psi = 0.5 lies half way.
        half = G.mapping(z, code.pooled, psi=0.5, truncation="prompt")
        full = G.mapping(z, code.pooled)
        torch.testing.assert_close(half, 0.5 * (full + target.unsqueeze(1)))
    with pytest.raises(ValueError, match="truncation"):
        G.mapping(z, code.pooled, psi=0.5, truncation="nope")


def test_code_in_w_embeds_the_code_past_the_mlp():
    torch.manual_seed(0)
    G = Generator(tiny_cfgs(code_in_w=8)[0])
    code = make_code(2, requires_grad=True)
    w = G.mapping(torch.randn(2, 12), code.pooled, update_w_avg=False)[:, 0]  # [2, 24]
    w2 = G.mapping(torch.randn(2, 12), code.pooled, update_w_avg=False)[:, 0]
    assert w.shape == (2, 24)
    assert torch.equal(w[:, 16:], w2[:, 16:]) and not torch.allclose(w[:, :16], w2[:, :16])  # z moves the MLP part only
    assert torch.allclose(w[:, 16:].square().mean(dim=1), torch.ones(2), atol=1e-4)  # normalised like the MLP inputs
    w[:, 16:].sum().backward()
    assert code.pooled.grad.abs().sum() > 0 and G.mapping.code_to_w.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="generator.code_in_w"):
        tiny_cfgs(code_in_w=24)


def test_w_avg_tracks_only_in_training_mode():
    torch.manual_seed(0)
    G = Generator(tiny_cfgs()[0])
    code, z = make_code(4), torch.randn(4, 12)
    G.eval()
    G.mapping(z, code.pooled)
    assert torch.equal(G.w_avg, torch.zeros(24))
    G.train()
    w = G.mapping(z, code.pooled)[:, 0]
    torch.testing.assert_close(G.w_avg, w.detach().mean(0) * (1 - 0.995))
    G.mapping(z, code.pooled, update_w_avg=False)
    torch.testing.assert_close(G.w_avg, w.detach().mean(0) * (1 - 0.995))


def test_noise_modes(nets):
    G, _ = nets
    for layer in G.modules():
        if hasattr(layer, "noise_strength"):
            layer.noise_strength.data.fill_(0.5)
    code, z = make_code(2), torch.randn(2, 12)
    with torch.no_grad():
        a, b = G(z, code, noise_mode="const"), G(z, code, noise_mode="const")
        assert torch.equal(a, b)
        none = G(z, code, noise_mode="none")
        r1, r2 = G(z, code, noise_mode="random"), G(z, code, noise_mode="random")
        assert not torch.equal(r1, r2) and not torch.equal(a, r1) and not torch.equal(none, a)
        with pytest.raises(ValueError, match="noise_mode"):
            G(z, code, noise_mode="bogus")
    for layer in G.modules():
        if hasattr(layer, "noise_strength"):
            layer.noise_strength.data.zero_()
    with torch.no_grad():  # "none" adds no noise at all: it is G with every noise strength at zero
        torch.testing.assert_close(none, G(z, code, noise_mode="random"), atol=0, rtol=0)
    # const noise buffers travel with the state dict.
    assert any(k.endswith("noise_const") for k in G.state_dict())


def test_gradients_reach_the_code_through_g_and_d(nets):
    G, D = nets
    code = make_code(4, requires_grad=True)
    img = G(torch.randn(4, 12), code)
    D(img, code.pooled).sum().backward()
    assert code.pooled.grad is not None and code.pooled.grad.abs().sum() > 0
    real = [i for i in range(4) if code.mask[i].any()]
    assert code.tokens.grad[code.mask].abs().sum() > 0
    assert (code.tokens.grad[~code.mask] == 0).all()  # padding gets no gradient
    # Through D alone (the projection), with real images.
    code2 = make_code(4, requires_grad=True)
    D(torch.randn(4, 3, 16, 16), code2.pooled).sum().backward()
    assert code2.pooled.grad.abs().sum() > 0
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad), real


def test_generator_ignores_padding_tokens(nets):
    G, _ = nets
    code = make_code(3, L=6, seed=3)
    code.mask[:, 4:] = False
    code.mask[:, 0] = True
    z = torch.randn(3, 12)
    with torch.no_grad():
        a = G(z, code, noise_mode="const")
        poisoned = code.tokens.clone()
        poisoned[:, 4:] = 100 * torch.randn(3, 2, C)
        b = G(z, SpikeCode(code.pooled, poisoned, code.mask), noise_mode="const")
        longer = SpikeCode.cat([code, SpikeCode(code.pooled[:1], torch.zeros(1, 9, C), torch.ones(1, 9, dtype=torch.bool))])
        c = G(torch.cat([z, z[:1]]), longer, noise_mode="const")[:3]
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-4)  # batch size changes conv kernels


def test_attention_weights_recorded_on_request(nets):
    G, _ = nets
    code = make_code(2)
    G.record_attention(True)
    with torch.no_grad():
        G(torch.randn(2, 12), code)
    layers = G.attention_layers()
    assert len(layers) == 1
    att = layers[0].last_attention
    assert att.shape == (2, 2, 64, code.tokens.shape[1])
    G.record_attention(False)
    assert layers[0].last_attention is None


def test_discriminator_matching_aware_use(nets):
    _, D = nets
    code = make_code(4)
    img = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        matched = D(img, code.pooled)
        mismatched = D(img, code.pooled[torch.tensor([1, 2, 3, 0])])
    assert matched.shape == mismatched.shape == (4,)
    assert not torch.allclose(matched, mismatched)


def test_discriminator_pairs_scores_every_image_under_every_caption(nets):
    _, D = nets
    code = make_code(4)
    img = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        pairs = D(img, code.pooled, pairs=True)
        assert pairs.shape == (4, 4)
        for k in range(4):  # one call per shift of the captions: entry [i, i - k]
            shifted = D(img, code.pooled.roll(k, dims=0))
            torch.testing.assert_close(pairs[torch.arange(4), (torch.arange(4) - k) % 4], shifted,
                                       atol=1e-5, rtol=1e-5)


def test_discriminator_word_classifier_reads_the_projected_features():
    _, dcfg = tiny_cfgs()
    torch.manual_seed(0)
    D = Discriminator(DiscriminatorConfig(**{**dcfg.__dict__, "word_classes": 9})).eval()
    feats = {}
    D.out.register_forward_hook(lambda module, inputs, output: feats.__setitem__("x", output))
    code, img = make_code(4), torch.randn(4, 3, 16, 16, requires_grad=True)
    pairs, words2 = D(img, code.pooled, pairs=True, words=True)
    logits, words = D(img, code.pooled, words=True)
    assert words.shape == (4, 9) and torch.equal(words, words2)
    torch.testing.assert_close(logits, D(img, code.pooled))
    torch.testing.assert_close(pairs.diagonal(), logits)
    assert isinstance(D.words, EqualLinear)
    torch.testing.assert_close(words, D.words(feats["x"]))
    # The head shares D's trunk: the word loss trains the convolutions the projection reads.
    words[:, 3].sum().backward()
    assert img.grad.abs().sum() > 0 and D.blocks[0].conv0.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no word classifier"):
        Discriminator(dcfg)(img, code.pooled, words=True)
    with pytest.raises(ValueError, match="word_classes"):
        DiscriminatorConfig(word_classes=-1)


def test_discriminator_blur_down_switches_every_downsampling_conv():
    torch.manual_seed(0)
    _, dcfg = tiny_cfgs()
    blurred = Discriminator(dcfg)
    plain = Discriminator(DiscriminatorConfig(**{**dcfg.__dict__, "blur_down": False}))
    plain.load_state_dict(blurred.state_dict())  # same weights: only the filtering differs
    downs = [m for m in plain.modules() if getattr(m, "down", False)]
    assert downs and not any(m.blur for m in downs)
    assert all(m.blur for m in blurred.modules() if getattr(m, "down", False))
    img, pooled = torch.randn(4, 3, 16, 16), torch.randn(4, C)
    assert plain(img, pooled).shape == (4,)
    assert not torch.allclose(plain(img, pooled), blurred(img, pooled))


@pytest.mark.parametrize("architecture", ["skip", "orig"])
def test_generator_nearest_upsampling_switches_every_upsampling(architecture, monkeypatch):
    import gan.generator

    torch.manual_seed(0)
    gcfg, _ = tiny_cfgs(architecture=architecture)
    bilinear = Generator(gcfg)
    nearest = Generator(GeneratorConfig(**{**gcfg.__dict__, "upsample": "nearest"}))
    nearest.load_state_dict(bilinear.state_dict())  # same weights: only the filter differs
    ups = [m for m in nearest.modules() if getattr(m, "up", False)]
    assert ups and all(m.upsample == "nearest" for m in ups)
    assert all(m.upsample == "bilinear" for m in bilinear.modules() if getattr(m, "up", False))
    modes = []  # the skip architecture's image upsampling follows too
    monkeypatch.setattr(gan.generator, "upsample2d",
                        lambda img, mode: modes.append(mode) or F.interpolate(img, scale_factor=2))
    z, code = torch.randn(4, gcfg.z_dim), make_code()
    out_nearest, out_bilinear = nearest(z, code, noise_mode="const"), bilinear(z, code, noise_mode="const")
    assert out_nearest.shape == out_bilinear.shape == (4, 3, 16, 16)
    assert not torch.allclose(out_nearest, out_bilinear)
    assert modes == (["nearest"] * 2 + ["bilinear"] * 2 if architecture == "skip" else [])


def test_generator_upsample_mode_is_checked():
    with pytest.raises(ValueError, match="generator.upsample"):
        tiny_cfgs(upsample="bicubic")


def test_minibatch_std_groups_consecutive_samples():
    from gan.discriminator import MinibatchStd

    x = torch.randn(8, 6, 4, 4, dtype=torch.float64)
    out = MinibatchStd(4, num_channels=2)(x)
    assert out.shape == (8, 8, 4, 4) and torch.equal(out[:, :6], x)
    for i in range(8):
        group = x[(i // 4) * 4 : (i // 4) * 4 + 4]  # (4, 6, 4, 4)
        std = group.var(dim=0, unbiased=False).add(1e-8).sqrt()  # (6, 4, 4)
        expected = std.reshape(2, 3, 4, 4).mean(dim=(1, 2, 3))
        torch.testing.assert_close(out[i, 6:, 0, 0], expected)
        assert (out[i, 6:] == out[i, 6:, :1, :1]).all()
    # Fakes and reals scored in one call equal two separate calls.
    a, b = x[:4], x[4:]
    torch.testing.assert_close(MinibatchStd(4)(x), torch.cat([MinibatchStd(4)(a), MinibatchStd(4)(b)]))
    assert MinibatchStd(4)(x[:6]).shape == (6, 7, 4, 4)  # group of 3 for a batch of 6


def test_autocast_bf16_runs_and_tracks_fp32(nets):
    G, D = nets
    code, z = make_code(4, requires_grad=True), torch.randn(4, 12)
    ref = G(z, code, noise_mode="const")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        img = G(z, code, noise_mode="const")
        logits = D(img, code.pooled)
    assert img.dtype == torch.bfloat16 and torch.isfinite(img).all()
    assert (img.float() - ref).abs().max() < 0.1 * ref.abs().max()
    logits.float().sum().backward()
    assert torch.isfinite(code.pooled.grad).all() and code.pooled.grad.abs().sum() > 0

