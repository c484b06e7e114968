"""The projected discriminator: shapes, projection, frozen parts, state, gradients, bad input."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from gan.efficientnet import load_efficientnet_lite0
from gan.projected import ProjectedDiscriminator, ProjectedDiscriminatorConfig, RandomMixing

C_DIM = 16


@pytest.fixture(scope="module")
def backbone():
    return load_efficientnet_lite0()


def _cfg(**kw):
    return ProjectedDiscriminatorConfig(**{**dict(resolution=16, c_dim=C_DIM, backbone_resolution=32, mix_channels=8,
                                                  head_channels=16, cmap_dim=8), **kw})


def _batch(B, N=None, seed=0, R=16):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, R, R, generator=g) * 2 - 1, torch.randn(N or B, C_DIM, generator=g)


@pytest.mark.parametrize("backbone_resolution,blocks", [(32, [1, 1, 1, 1]), (64, [1, 1, 1, 1]), (128, [2, 1, 1, 1])])
def test_shapes_and_pairs_diagonal(backbone, backbone_resolution, blocks):
    torch.manual_seed(0)
    D = ProjectedDiscriminator(_cfg(backbone_resolution=backbone_resolution), backbone=backbone)
    assert [len(h.blocks) for h in D.heads] == blocks  # halving down to head_size 8, at least one block
    s = backbone_resolution // 4
    assert [tuple(f.shape) for f in D.features(_batch(3)[0])] == [
        (3, 8, s, s), (3, 8, s // 2, s // 2), (3, 16, s // 4, s // 4), (3, 32, s // 8, s // 8)]
    img, pooled = _batch(3, N=5)
    assert D(img, pooled, pairs=True).shape == (3, 5) and D(img, pooled[:3]).shape == (3,)
    D.eval()  # fixed spectral norms (training mode takes a power-iteration step per call)
    with torch.no_grad():
        torch.testing.assert_close(D(img, pooled[:3]), D(img, pooled, pairs=True)[:, :3].diagonal())


@pytest.mark.parametrize("batch_norm", [True, False])
def test_without_batch_norm_a_logit_depends_on_its_own_image_alone(backbone, batch_norm):
    torch.manual_seed(0)
    D = ProjectedDiscriminator(_cfg(batch_norm=batch_norm), backbone=backbone)  # training mode
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules()) == batch_norm
    img, pooled = _batch(4)
    state = copy.deepcopy(D.state_dict())  # spectral norm's power iteration moves on every call
    with torch.no_grad():
        whole = D(img, pooled)
        D.load_state_dict(state)
        pair = D(img[:2], pooled[:2])
    assert torch.allclose(whole[:2], pair, atol=1e-6) != batch_norm


def test_feature_sizes_round_up_like_the_backbone(backbone):
    cfg = _cfg(backbone_resolution=50)
    D = ProjectedDiscriminator(cfg, backbone=backbone)
    assert cfg.feature_sizes() == (13, 7, 4, 2)
    assert [f.shape[2] for f in D.features(_batch(2)[0])] == list(cfg.feature_sizes())


def test_pairs_entry_is_the_image_under_that_prompt(backbone):
    torch.manual_seed(0)
    D = ProjectedDiscriminator(_cfg(), backbone=backbone).eval()  # eval: batch norm per image, not per batch
    img, pooled = _batch(2, N=3)
    with torch.no_grad():
        pairs = D(img, pooled, pairs=True)
        for j in range(3):
            torch.testing.assert_close(D(img, pooled[j].expand(2, -1)), pairs[:, j])
        # logit = mean over heads of (unconditional + <features, cmap_k> / sqrt(cmap_dim))
        cmaps = D.cmap(None, pooled[:2]).view(2, 4, 8)
        outs = [head(x) for head, x in zip(D.heads, D.features(img))]
        naive = sum(o[:, 0] + (o[:, 1:] * cmaps[:, k]).sum(1) / math.sqrt(8) for k, o in enumerate(outs)) / 4
        torch.testing.assert_close(D(img, pooled[:2]), naive)


def test_only_heads_and_code_mapping_train_and_state_holds_no_backbone(backbone):
    D = ProjectedDiscriminator(_cfg(), backbone=backbone)
    names = [n for n, _ in D.named_parameters()]
    assert names and all(n.startswith(("heads.", "cmap.")) for n in names)
    state = D.state_dict()
    assert not any(k.startswith("backbone.") for k in state)  # from the weights package, never saved
    mixing = {f"mixing.{kind}{k}_{t}" for kind in ("ccm", "csm") for k in range(4) for t in ("weight", "bias")}
    assert mixing <= set(state)
    assert D.backbone._blocks[0]._depthwise_conv.weight.abs().sum() > 0  # it is still there to run


def test_mixing_is_seeded_and_resume_restores_it(backbone):
    torch.manual_seed(1)
    a = ProjectedDiscriminator(_cfg(mixing_seed=3), backbone=backbone)
    torch.manual_seed(2)  # the global RNG does not reach the mixing
    b = ProjectedDiscriminator(_cfg(mixing_seed=3), backbone=backbone)
    c = ProjectedDiscriminator(_cfg(mixing_seed=4), backbone=backbone)
    for k, v in a.mixing.state_dict().items():
        assert torch.equal(v, b.mixing.state_dict()[k]) and not torch.equal(v, c.mixing.state_dict()[k])
    c.load_state_dict(a.state_dict(), strict=True)  # a resumed run gets a's mixing back, not its config's seed
    img, pooled = _batch(2)
    a.eval(), c.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(img, pooled), c(img, pooled), atol=0, rtol=0)


def test_random_mixing_equals_naive_top_down_pyramid():
    mix = RandomMixing((3, 4, 5, 6), (2, 3, 4, 5), (2, 2, 3, 4), seed=0)
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(2, c, s, s, generator=g) for c, s in zip((3, 4, 5, 6), (8, 4, 2, 1))]
    sd = mix.state_dict()

    def conv1x1(kind, k, x):  # a 1x1 conv as a sum over input channels
        w, b = sd[f"{kind}{k}_weight"][:, :, 0, 0], sd[f"{kind}{k}_bias"]
        return torch.einsum("oi,bihw->bohw", w, x) + b[None, :, None, None]

    ccm = [conv1x1("ccm", k, f) for k, f in enumerate(feats)]
    want = [None] * 4
    want[3] = conv1x1("csm", 3, ccm[3])
    for k in (2, 1, 0):
        want[k] = conv1x1("csm", k, ccm[k] + F.interpolate(want[k + 1], scale_factor=2, mode="bilinear"))
    for got, w in zip(mix(feats), want):
        torch.testing.assert_close(got, w)
    assert all(sd[f"ccm{k}_weight"].abs().max() <= 1 / math.sqrt(c) for k, c in enumerate((3, 4, 5, 6)))


def test_gradients_reach_image_heads_and_mapping_only(backbone):
    torch.manual_seed(0)
    D = ProjectedDiscriminator(_cfg(separable=True), backbone=backbone)
    img, pooled = _batch(4)
    img.requires_grad_(True)
    frozen = {k: v.clone() for k, v in D.mixing.state_dict().items()}
    D(img, pooled, pairs=True).sum().backward()
    assert torch.isfinite(img.grad).all() and img.grad.abs().sum() > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in D.parameters())
    assert D.cmap.embed.weight.grad.abs().sum() > 0
    assert D.heads[3].out.parametrizations.weight.original.grad.abs().sum() > 0
    torch.optim.Adam(D.parameters(), lr=0.1).step()
    assert all(torch.equal(v, D.mixing.state_dict()[k]) for k, v in frozen.items())
    assert all(b.grad is None for b in D.buffers())


def test_r1_double_backward(backbone):
    torch.manual_seed(0)
    D = ProjectedDiscriminator(_cfg(), backbone=backbone)
    img, pooled = _batch(2)
    img.requires_grad_(True)
    (grad,) = torch.autograd.grad(D(img, pooled).sum(), img, create_graph=True)
    grad.square().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in D.parameters() if p.grad is not None)
    assert D.heads[0].out.parametrizations.weight.original.grad.abs().sum() > 0


@pytest.mark.parametrize("resolution,antialias", [(16, False), (64, True)])
def test_resizes_the_image_to_the_backbone(backbone, resolution, antialias):
    D = ProjectedDiscriminator(_cfg(resolution=resolution, backbone_resolution=32), backbone=backbone)
    img, _ = _batch(1, R=resolution)
    with torch.no_grad():
        resized = F.interpolate(img, size=(32, 32), mode="bilinear", antialias=antialias)
        for got, want in zip(D.features(img), D.mixing(backbone.features(resized))):
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # D's copy has batch norm folded


def test_bad_input_and_config_are_named(backbone):
    D = ProjectedDiscriminator(_cfg(), backbone=backbone)
    img, pooled = _batch(2)
    with pytest.raises(ValueError, match="no word classifier"):
        D(img, pooled, words=True)
    with pytest.raises(AssertionError):
        D(img[:, :, :8], pooled)
    with pytest.raises(ValueError, match="projected_discriminator.backbone_resolution"):
        _cfg(backbone_resolution=16)
    with pytest.raises(ValueError, match="projected_discriminator.resolution"):
        _cfg(resolution=48)
    with pytest.raises(ValueError, match="projected_discriminator.mix_channels"):
        _cfg(mix_channels=0)


def test_separates_real_shapes_from_blurred_ones(backbone):
    # A sanity check of the whole D: 40 steps of D alone, reals against 3x3-box-blurred reals.
    from data.shapes import ShapesDataset

    ds = ShapesDataset(16, seed=0, image_dtype="float32")
    imgs = torch.stack([ds[i]["image"] for i in range(128)])  # [128, 3, 16, 16]

    def blur(x):
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), torch.ones(3, 1, 3, 3) / 9, groups=3)

    torch.manual_seed(0)
    D = ProjectedDiscriminator(_cfg(mix_channels=16, head_channels=32, cmap_dim=16), backbone=backbone)
    opt = torch.optim.Adam(D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    code = torch.zeros(8, C_DIM)
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        idx = torch.randint(0, 96, (16,), generator=g)
        loss = F.softplus(-D(imgs[idx[:8]], code)).mean() + F.softplus(D(blur(imgs[idx[8:]]), code)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    D.eval()
    held_out = imgs[96:].clone().requires_grad_(True)
    real = D(held_out, torch.zeros(32, C_DIM))
    with torch.no_grad():
        fake = D(blur(imgs[96:]), torch.zeros(32, C_DIM))
    assert (real > fake).float().mean() >= 0.9  # held-out images, each above its own blurred copy
    assert ((real > 0).float().mean() + (fake < 0).float().mean()) / 2 >= 0.75
    real.sum().backward()
    assert torch.isfinite(held_out.grad).all() and held_out.grad.abs().mean() > 1e-3


def test_projected_and_pixel_sums_both_logits_and_trains_both(backbone):
    """ProjectedAndPixel's logit is the projected D's plus the residual D's, per image and per
    (image, prompt) pair; gradients reach both; the word classifier is refused."""
    from gan.config import DiscriminatorConfig
    from gan.discriminator import Discriminator, ProjectedAndPixel

    torch.manual_seed(0)
    projected = ProjectedDiscriminator(_cfg(), backbone=backbone)
    pixel = Discriminator(DiscriminatorConfig(resolution=16, c_dim=C_DIM, channel_base=128, channel_max=16))
    D = ProjectedAndPixel(projected, pixel).eval()  # eval: spectral norm's power iteration stays put
    img, pooled = _batch(4, N=3)
    torch.testing.assert_close(D(img, pooled, pairs=True), projected(img, pooled, pairs=True) + pixel(img, pooled, pairs=True))
    img, pooled = _batch(4, seed=1)
    torch.testing.assert_close(D(img, pooled), projected(img, pooled) + pixel(img, pooled))
    D.train()(img, pooled).sum().backward()
    assert projected.heads[0].out.parametrizations.weight.original.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pixel.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="no word classifier"):
        D(img, pooled, words=True)
