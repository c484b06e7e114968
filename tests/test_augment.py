"""Differentiable augmentation and ADA's p adjustment: exact checks on small inputs."""
import pytest
import torch
import torch.nn.functional as F

from gan.augment import AugmentConfig, AugmentPipe, adjust_p, cutout_mask, reflect_index, translate


def _naive_translate(x, shift, pad_mode):
    """Per-image reference: pad each axis by the largest shift, then crop the shifted window."""
    out = []
    H, W = x.shape[2:]
    my, mx = int(shift[:, 0].abs().max()), int(shift[:, 1].abs().max())
    mode = "reflect" if pad_mode == "reflect" else "constant"
    for img, (dy, dx) in zip(x, shift.tolist()):
        padded = F.pad(img[None], (mx, mx, my, my), mode=mode)[0]
        out.append(padded[:, my - dy:my - dy + H, mx - dx:mx - dx + W])
    return torch.stack(out)


@pytest.mark.parametrize("pad_mode", ["reflect", "zeros"])
def test_translate_matches_naive_reference(pad_mode):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 8, 7, generator=g)
    shift = torch.tensor([[0, 0], [1, -2], [-3, 3], [6, -6], [-7, 5]] if pad_mode == "zeros" else [[0, 0], [1, -2], [-3, 3], [5, -6], [-7, 4]])
    got = translate(x, shift, pad_mode=pad_mode)
    want = _naive_translate(x, shift, pad_mode)
    assert torch.equal(got, want)


def test_reflect_index_mirrors_without_repeating_edge():
    i = torch.arange(-4, 9)
    assert reflect_index(i, 5).tolist() == [4, 3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0]


def test_cutout_mask_square_clipped_at_border():
    m = cutout_mask(torch.tensor([[2, 2], [0, 4]]), 2, 5, 5)[:, 0]
    want0 = torch.ones(5, 5, dtype=torch.bool)
    want0[1:3, 1:3] = False
    want1 = torch.ones(5, 5, dtype=torch.bool)
    want1[0:1, 3:5] = False  # rows -1..0 clipped to 0
    assert torch.equal(m[0], want0) and torch.equal(m[1], want1)


def test_p_zero_is_identity_and_off_mode_forces_zero():
    x = torch.randn(4, 3, 8, 8)
    pipe = AugmentPipe(cfg=AugmentConfig(p_init=0.0))
    assert pipe(x) is x
    assert AugmentPipe(cfg=AugmentConfig(mode="off", p_init=0.7)).p == 0.0


def test_seeded_deterministic_and_differentiable():
    pipe = AugmentPipe(cfg=AugmentConfig(p_init=1.0))
    x = torch.randn(6, 3, 16, 16, requires_grad=True)
    a = pipe(x, generator=torch.Generator().manual_seed(3))
    b = pipe(x, generator=torch.Generator().manual_seed(3))
    c = pipe(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    (a * torch.randn_like(a)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_each_op_applies_per_image_with_probability_p():
    # Only brightness on: an image changes iff its coin came up; the fraction follows p.
    cfg = AugmentConfig(p_init=0.3, saturation=0, contrast=0, translation=0, cutout=0)
    x = torch.zeros(4000, 3, 2, 2)
    y = AugmentPipe(cfg=cfg)(x, generator=torch.Generator().manual_seed(0))
    changed = (y != x).flatten(1).any(1).float().mean().item()
    assert 0.27 < changed < 0.33
    # Unchanged images are untouched exactly, changed ones move by the same shift everywhere.
    per_image = y.flatten(1)
    assert torch.equal(per_image.amax(1), per_image.amin(1))
    assert per_image.abs().max() <= cfg.brightness


def test_colour_ops_match_formulas():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 4, 4, generator=g) * 2 - 1
    cfg = AugmentConfig(p_init=1.0, brightness=0, contrast=0, translation=0, cutout=0)
    gen = torch.Generator().manual_seed(5)
    y = AugmentPipe(cfg=cfg)(x, generator=gen)
    gen = torch.Generator().manual_seed(5)
    factor = 1 + (torch.rand(3, generator=gen) * 2 - 1) * cfg.saturation
    grey = x.mean(1, keepdim=True)
    torch.testing.assert_close(y, grey + (x - grey) * factor[:, None, None, None])


def test_adjust_p_moves_toward_target_and_clamps():
    # D over-confident (rt > target): more augmentation by num_images / (speed * 1000).
    assert adjust_p(0.5, rt=0.9, target=0.6, num_images=64, speed_kimg=0.64) == pytest.approx(0.6)
    assert adjust_p(0.5, rt=0.1, target=0.6, num_images=64, speed_kimg=0.64) == pytest.approx(0.4)
    assert adjust_p(0.5, rt=0.6, target=0.6, num_images=64, speed_kimg=0.64) == 0.5
    assert adjust_p(0.99, rt=1.0, target=0.6, num_images=640, speed_kimg=0.1) == 1.0
    assert adjust_p(0.01, rt=-1.0, target=0.6, num_images=640, speed_kimg=0.1) == 0.0


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="augment.mode"):
        AugmentConfig(mode="sometimes")
    with pytest.raises(ValueError, match="augment.p_init"):
        AugmentConfig(p_init=1.5)
