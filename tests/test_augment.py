"""Differentiable augmentation and ADA's p adjustment: exact checks on small inputs."""
import pytest
import torch
import torch.nn.functional as F

from gan.augment import (
    DIFFAUGMENT,
    AugmentConfig,
    AugmentPipe,
    adjust_p,
    cutout_mask,
    reflect_index,
    scale_contrast,
    scale_saturation,
    shift_brightness,
    translate,
)


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


# --- DiffAugment (Zhao et al. 2020) -------------------------------------------------------------

def _zhao_translation(x, tx, ty):
    """DiffAugment's rand_translation for given integer shifts tx [B] (rows), ty [B] (columns)."""
    B, _, H, W = x.shape
    gb, gx, gy = torch.meshgrid(torch.arange(B), torch.arange(H), torch.arange(W), indexing="ij")
    gx = torch.clamp(gx + tx.view(B, 1, 1) + 1, 0, H + 1)
    gy = torch.clamp(gy + ty.view(B, 1, 1) + 1, 0, W + 1)
    x_pad = F.pad(x, [1, 1, 1, 1])
    return x_pad.permute(0, 2, 3, 1)[gb, gx, gy].permute(0, 3, 1, 2)


def _zhao_cutout(x, offset_x, offset_y, size):
    """DiffAugment's rand_cutout for given square centres (offset_x rows, offset_y columns)."""
    B, _, H, W = x.shape
    mask = torch.ones(B, H, W)
    for b in range(B):
        rows = torch.clamp(torch.arange(size) + offset_x[b] - size // 2, 0, H - 1)
        cols = torch.clamp(torch.arange(size) + offset_y[b] - size // 2, 0, W - 1)
        mask[b, rows[:, None], cols[None, :]] = 0
    return x * mask[:, None]


def test_diffaugment_ops_match_zhaos_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    r = torch.rand(4, generator=g)
    per_image = lambda f: torch.stack([f(img, v) for img, v in zip(x, r)])  # noqa: E731
    torch.testing.assert_close(shift_brightness(x, r - 0.5), per_image(lambda img, v: img + (v - 0.5)))
    torch.testing.assert_close(scale_saturation(x, r * 2),
                               per_image(lambda img, v: (img - img.mean(0)) * (v * 2) + img.mean(0)))
    torch.testing.assert_close(scale_contrast(x, r + 0.5),
                               per_image(lambda img, v: (img - img.mean()) * (v + 0.5) + img.mean()))
    t = torch.tensor([[0, 0], [1, -1], [-2, 2], [1, 0]])  # up to 8 / 8 + 1 pixels
    assert torch.equal(translate(x, -t, pad_mode="zeros"), _zhao_translation(x, t[:, 0], t[:, 1]))
    centre = torch.tensor([[0, 0], [3, 8], [8, 5], [4, 4]])  # size 4: centres run over 0..8
    assert torch.equal(x * cutout_mask(centre, 4, 8, 8), _zhao_cutout(x, centre[:, 0], centre[:, 1], 4))


def test_diffaugment_pipe_is_seeded_differentiable_and_always_on():
    pipe = AugmentPipe(cfg=AugmentConfig(**DIFFAUGMENT))
    x = (torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1).requires_grad_(True)
    a = pipe(x, generator=torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, pipe(x, generator=torch.Generator().manual_seed(1)))
    assert not torch.equal(a, pipe(x, generator=torch.Generator().manual_seed(2)))
    torch.manual_seed(5)
    b = pipe(x)
    torch.manual_seed(5)
    assert torch.equal(b, pipe(x))  # the global seed fixes it too
    assert all(not torch.equal(ai, xi) for ai, xi in zip(a, x))  # every image changed
    (a * torch.randn_like(a)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def _one_op(**on):
    off = dict(brightness=0, saturation=0, contrast=0, translation=0, cutout=0)
    return AugmentPipe(cfg=AugmentConfig(**{**DIFFAUGMENT, **off, **on}))


def test_diffaugment_draws_zhaos_ranges():
    gen = torch.Generator().manual_seed(0)
    n = 4000
    delta = _one_op(brightness=0.5)(torch.zeros(n, 3, 2, 2), generator=gen)[:, 0, 0, 0]
    assert -0.5 <= delta.min() < -0.49 and 0.49 < delta.max() < 0.5
    x = torch.tensor([1.0, -1.0, 0.0]).view(1, 3, 1, 1).expand(n, 3, 2, 2)  # grey 0: output = factor * x
    factor = _one_op(saturation=1.0)(x, generator=gen)[:, 0, 0, 0]
    assert 0 <= factor.min() < 0.01 and 1.99 < factor.max() < 2
    x = torch.tensor([1.0, -1.0]).repeat(2).view(1, 1, 2, 2).expand(n, 3, 2, 2)  # mean 0
    factor = _one_op(contrast=0.5)(x, generator=gen)[:, 0, 0, 0]
    assert 0.5 <= factor.min() < 0.51 and 1.49 < factor.max() < 1.5
    # 16 px: shifts of -2..2 pixels, each about 1/5 of the time, zeros shifted in.
    rows = _one_op(translation=0.125)(torch.ones(n, 1, 16, 16), generator=gen)[:, 0, :, 8]  # [n, 16]
    dy = (rows[:, 0] == 0) * (16 - rows.sum(1)) - (rows[:, -1] == 0) * (16 - rows.sum(1))
    counts = torch.bincount((dy + 2).long(), minlength=5).float() / n
    assert counts.numel() == 5 and ((counts - 0.2).abs() < 0.03).all()
    # 4 px, a 2x2 cutout: centres 0..4, so a lone first row and a lone last row are cut equally often.
    cut = _one_op(cutout=0.5)(torch.ones(n, 1, 4, 4), generator=gen)[:, 0]
    cut_rows = (cut == 0).any(dim=2)  # [n, 4]
    first_only = (cut_rows.sum(1) == 1) & cut_rows[:, 0]
    last_only = (cut_rows.sum(1) == 1) & cut_rows[:, 3]
    assert abs(first_only.float().mean() - 0.2) < 0.03 and abs(last_only.float().mean() - 0.2) < 0.03
