"""How closely generated images follow their guides (encoders/guides.py): palette and sketch adherence.

- palette: of the palette's colours, the share present in the image (at least `min_share` of its
  pixels within ΔE `tolerance`, CIE76 in Lab), and the share of the image's pixels farther than
  `tolerance` from every palette colour.
- palette against caption (shapes): a scene's colours swapped for others of the domain
  (conflicting_scene), and of its objects' pixels the share showing a colour of the swap and the
  share showing one of the scene's own (conflict_shares).
- sketch: on shapes, the IoU of the image's object mask (pixels whose colour is far from the
  image's border colour) with the scene's; otherwise the mean colour error per cell between the
  image's sketch and the guiding one (RGB in [0, 1]).
"""
from __future__ import annotations

import dataclasses

import torch

from data.colour import delta_e, sketch_grid, srgb_to_lab
from data.shapes import BACKGROUNDS, COLOURS, POSITIONS, RELATIONS, Scene

OBJECT_THRESHOLD = 0.25  # an object pixel differs from the border colour by this much, summed over RGB in [0, 1]


def colour_distance(images: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """images uint8 [B, 3, H, W], colours RGB [B, K, 3] in [0, 1] -> CIE76 ΔE [B, HW, K], each pixel to each colour."""
    lab = srgb_to_lab(images.float().div(255).flatten(2).transpose(1, 2))  # [B, HW, 3]
    return delta_e(lab[:, :, None], srgb_to_lab(colours.float())[:, None])


def palette_adherence(images: torch.Tensor, palette: torch.Tensor, weights: torch.Tensor, *, tolerance: float = 15.0,
                      min_share: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """images uint8 [B, 3, H, W], palette RGB [B, K, 3] in [0, 1], weights [B, K] (0 = empty slot)
    -> (coverage [B]: share of the palette's colours present; outside [B]: share of pixels far from all)."""
    dist = colour_distance(images, palette)  # [B, HW, K]
    real = weights > 0  # [B, K]
    near = (dist <= tolerance).float().mean(dim=1)  # [B, K] share of pixels near each colour
    coverage = ((near >= min_share) & real).sum(dim=1) / real.sum(dim=1).clamp(min=1)
    far = dist.masked_fill(~real[:, None], float("inf")).min(dim=2).values > tolerance  # [B, HW]
    return coverage.float(), far.float().mean(dim=1)


def conflicting_scene(scene: Scene, index: int) -> Scene:
    """The scene with each colour swapped for one it does not use: object k takes the (index + k)-th
    of the remaining object colours (COLOURS order), the background the index-th of the other
    backgrounds. Shapes, sizes and positions stay, so the swap's palette ranks as the scene's does."""
    free = [c for c in COLOURS if c not in {o.colour for o in scene.objects}]
    others = [b for b in BACKGROUNDS if b != scene.background]
    objects = tuple(dataclasses.replace(o, colour=free[(index + k) % len(free)]) for k, o in enumerate(scene.objects))
    return Scene(others[index % len(others)], objects, scene.relation)


def conflicting_place(scene: Scene, index: int) -> Scene:
    """The scene moved where its caption does not put it: a lone object to the index-th of the other
    places; a pair's relation turned a quarter (left of / right of against above / below, the
    index-th of the two), which a sketch of grey blobs shows. Everything else stays."""
    if len(scene.objects) == 1:
        others = [p for p in POSITIONS if p != scene.objects[0].position]
        return dataclasses.replace(scene, objects=(dataclasses.replace(scene.objects[0], position=others[index % len(others)]),))
    horizontal = scene.relation in ("left of", "right of")
    turned = ("above", "below") if horizontal else ("left of", "right of")
    relation = turned[index % 2]
    objects = tuple(dataclasses.replace(o, position=p) for o, p in zip(scene.objects, RELATIONS[relation]))
    return Scene(scene.background, objects, relation)


def object_colours(scene: Scene) -> torch.Tensor:
    """The colours of the scene's objects, RGB [2, 3] in [0, 1]; one object's colour is repeated
    (the same set for a nearest-colour test)."""
    rgb = [COLOURS[o.colour] for o in scene.objects]
    return torch.tensor((rgb * 2)[:2], dtype=torch.float32) / 255


def conflict_shares(images: torch.Tensor, masks: torch.Tensor, palette: torch.Tensor, caption: torch.Tensor, *,
                    tolerance: float = 15.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Of the objects' pixels, the share showing a palette colour and the share showing a caption colour.

    images uint8 [B, 3, H, W], masks bool [B, H, W] (the objects' pixels, none empty), palette and
    caption RGB [B, K, 3] in [0, 1] -> (palette share [B], caption share [B]). A pixel shows the
    colour nearest to it among both sets when within ΔE `tolerance`; a tie shows neither (so a
    pixel counts once even where a palette and a caption colour are closer than 2 tolerance)."""
    to_palette = colour_distance(images, palette).min(dim=2).values  # [B, HW]
    to_caption = colour_distance(images, caption).min(dim=2).values  # [B, HW]
    objects = masks.flatten(1)  # [B, HW]
    count = objects.sum(dim=1).clamp(min=1)
    shows_palette = objects & (to_palette <= tolerance) & (to_palette < to_caption)
    shows_caption = objects & (to_caption <= tolerance) & (to_caption < to_palette)
    return shows_palette.sum(dim=1) / count, shows_caption.sum(dim=1) / count


def object_masks(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> bool [B, H, W]: pixels whose colour is far from the mean border colour."""
    from gan.layout import border_colour

    x = images.float() / 255
    return (x - border_colour(x)).abs().sum(dim=1) > OBJECT_THRESHOLD


def mask_iou(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """bool [B, H, W] x2 -> IoU [B] (1 where both are empty)."""
    inter = (predicted & target).flatten(1).sum(dim=1).float()
    union = (predicted | target).flatten(1).sum(dim=1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def sketch_cell_error(images: torch.Tensor, sketches: torch.Tensor) -> torch.Tensor:
    """uint8 [B, 3, H, W], sketches [B, 3, g, g] in [0, 1] -> mean |image's sketch - sketch| per cell [B]."""
    g = sketches.shape[-1]
    drawn = torch.stack([sketch_grid(im.float() / 255, g) for im in images])
    return (drawn - sketches.float()).abs().mean(dim=(1, 2, 3))
