"""The palette and sketch of a training image, for models that take guides (encoders/guides.py).

- shapes: from the scene's ground truth. The palette is its colours (the objects' and the
  background's) ordered by area; the sketch is its objects' coverage masks (white on black),
  blurred and cut to the grid.
- any other image: the palette is its dominant colours (k-means in Lab), the sketch the image
  blurred and cut to the grid (data.colour). A prepared set stores both (prepare_dataset), so
  they are computed once; sets prepared before guides existed get them computed on load.

GuidedDataset adds them to a dataset's items:
  "palette"          float [colours, 3] RGB in [0, 1], empty slots 0
  "palette_weights"  float [colours], 1 for a colour, 0 for an empty slot
  "sketch"           float [3, grid, grid] in [0, 1]
"""
from __future__ import annotations

import re

import numpy as np
import torch
from torch.utils.data import Dataset

from .colour import dominant_colours, sketch_grid
from .shapes import BACKGROUNDS, COLOURS, PLACE_PHRASES, Scene, object_mask


# Colour words a caption may name, by family: a palette override swaps each for another of its family.
COLOUR_FAMILIES = (tuple(COLOURS), tuple(BACKGROUNDS))
_COLOUR_WORD = re.compile(r"\b(" + "|".join(w for family in COLOUR_FAMILIES for w in family) + r")\b")


def override_colour_words(text: str, generator: torch.Generator) -> str:
    """The caption with each colour word swapped for another of its family (COLOUR_FAMILIES), drawn
    from `generator`: the wrong caption a palette overrides in training (TrainConfig.palette_override).
    A caption that names no colour comes back as it is."""
    def swap(match: re.Match) -> str:
        family = next(f for f in COLOUR_FAMILIES if match.group(1) in f)
        others = [w for w in family if w != match.group(1)]
        return others[int(torch.randint(len(others), (), generator=generator))]

    return _COLOUR_WORD.sub(swap, text)


_PLACE = re.compile(r"\b(" + "|".join(PLACE_PHRASES.values()) + r")\b")


def override_place(text: str, generator: torch.Generator) -> str:
    """The caption with its lone object's place ("on the left") swapped for another, drawn from
    `generator`: the wrong caption a sketch overrides in training (TrainConfig.sketch_override).
    Two-object captions name a relation, which a sketch of grey blobs cannot settle, and come back
    as they are, as does a caption that names no place."""
    def swap(match: re.Match) -> str:
        others = [p for p in PLACE_PHRASES.values() if p != match.group(1)]
        return others[int(torch.randint(len(others), (), generator=generator))]

    return _PLACE.sub(swap, text)


def scene_palette(scene: Scene, resolution: int) -> torch.Tensor:
    """The scene's colours, RGB float [K, 3] in [0, 1], largest area first (K = objects + 1)."""
    areas = [(float(object_mask(resolution, o.shape, o.size, o.position, o.size_weight).alpha.sum()), COLOURS[o.colour])
             for o in scene.objects]
    areas.append((resolution**2 - sum(a for a, _ in areas), BACKGROUNDS[scene.background]))
    ranked = sorted(areas, key=lambda pair: -pair[0])  # stable: ties keep the scene's order
    return torch.tensor([rgb for _, rgb in ranked], dtype=torch.float32) / 255


def scene_mask(scene: Scene, resolution: int) -> torch.Tensor:
    """Coverage of all the scene's objects, float [R, R] in [0, 1] (objects never overlap)."""
    mask = torch.zeros(resolution, resolution)
    for o in scene.objects:
        m = object_mask(resolution, o.shape, o.size, o.position, o.size_weight)
        h, w = m.alpha.shape
        mask[m.y0 : m.y0 + h, m.x0 : m.x0 + w] += torch.from_numpy(np.array(m.alpha))
    return mask.clamp(0, 1)


def scene_sketch(scene: Scene, resolution: int, grid: int) -> torch.Tensor:
    """The scene's object masks as a grey sketch [3, grid, grid] in [0, 1] (1 = object)."""
    return sketch_grid(scene_mask(scene, resolution)[None].expand(3, -1, -1), grid)


def image_palette(image: torch.Tensor, colours: int) -> torch.Tensor:
    """An image's dominant colours: uint8 [3, H, W] -> RGB float [K, 3], K <= colours."""
    return dominant_colours(image, colours)[0]


def image_sketch(image: torch.Tensor, grid: int) -> torch.Tensor:
    """uint8 [3, H, W] -> [3, grid, grid] in [0, 1]."""
    return sketch_grid(image.float() / 255, grid)


def palette_slots(palette: torch.Tensor, colours: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[K, 3] -> (colours padded with zeros to [colours, 3], weights [colours]: 1 for a colour)."""
    k = min(len(palette), colours)
    out, weights = torch.zeros(colours, 3), torch.zeros(colours)
    out[:k], weights[:k] = palette[:k], 1.0
    return out, weights


def hex_colours(palette: torch.Tensor) -> list[str]:
    """RGB float [K, 3] in [0, 1] -> ['#rrggbb', ...] (how a prepared set stores a palette)."""
    return ["#" + "".join(f"{v:02x}" for v in (c * 255).round().int().tolist()) for c in palette]


def from_hex(colours: list[str]) -> torch.Tensor:
    """['#rrggbb', ...] -> RGB float [K, 3] in [0, 1]."""
    return torch.tensor([[int(c[i : i + 2], 16) for i in (1, 3, 5)] for c in colours], dtype=torch.float32) / 255


class GuidedDataset(Dataset):
    """A dataset whose items also carry their palette and sketch (module docstring)."""

    def __init__(
        self,
        dataset: Dataset,  # Items {"image": uint8 [3, R, R], "text", "index"} (+ "attributes" for shapes).
        *,
        colours: int,  # Palette slots; 0 = no palette.
        grid: int,  # Side of the sketch grid; 0 = no sketch.
    ) -> None:
        if colours < 0 or grid < 0 or not (colours or grid):
            raise ValueError(f"GuidedDataset needs palette slots or a sketch grid, got colours={colours}, grid={grid}")
        self.dataset, self.colours, self.grid = dataset, colours, grid

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):  # captions(), report, resolution, ... of the wrapped dataset
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        image = item["image"]
        if image.dtype != torch.uint8:
            image = ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        stored = self.dataset.stored_guides(item["index"]) if hasattr(self.dataset, "stored_guides") else {}
        scene = Scene.from_dict(item["attributes"]) if "attributes" in item else None
        if self.colours:
            if scene is not None:
                palette = scene_palette(scene, image.shape[-1])
            elif stored.get("palette") is not None:
                palette = from_hex(stored["palette"])
            else:
                palette = image_palette(image, self.colours)
            item["palette"], item["palette_weights"] = palette_slots(palette, self.colours)
        if self.grid:
            if scene is not None:
                item["sketch"] = scene_sketch(scene, image.shape[-1], self.grid)
            elif stored.get("sketch") is not None and stored["sketch"].shape[-1] == self.grid:
                item["sketch"] = stored["sketch"]
            else:
                item["sketch"] = image_sketch(image, self.grid)
        return item
