"""The `variety` metric (shapes domain): do the seeds of one prompt vary what the prompt leaves free?

A shapes caption may leave the background and the objects' sizes unnamed ("a red circle left of a
blue square"); the domain then draws them uniformly, so the seeds of such a prompt should show every
background and both sizes. Everything else a caption fixes (shape, colour, place), and the domain
renders a scene exactly, so background and size are all a seed can rightly change.

VARIETY_PROMPTS prompts, half one-object and half two-object, none naming a background or a size,
are drawn on VARIETY_SEEDS seeds each, and the attribute probe (eval.attributes) reads each image's
background and object sizes. Per prompt and free attribute: the entropy of the values its seeds
show, divided by the log of the number of options (0: every seed the same; 1: uniform). Sizes
average over the prompt's objects (the probe's slots). The same is measured on real scenes: per
prompt, VARIETY_SEEDS scenes with the free attributes drawn uniformly, rendered and read by the
same probe: what a perfect generator shows with that many seeds.

JSON keys:
  variety_background, variety_size            normalised entropy over the seeds, mean over prompts
  variety_background_real, variety_size_real  the same on real scenes of the same prompts
  variety_images                              images drawn
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from data.shapes import (BACKGROUNDS, COLOURS, POSITIONS, RELATIONS, SHAPES, SIZES, Scene, ShapeObject, caption_scene,
                         render_scene_chw)
from eval.attributes import HEADS
from eval.metrics import Context, ctx_probe, register

if TYPE_CHECKING:
    from eval.emphasis import Draw

VARIETY_PROMPTS = 32  # half one-object, half two-object
VARIETY_SEEDS = 8  # seeds per prompt
BACKGROUNDS_LIST, SIZES_LIST = tuple(BACKGROUNDS), tuple(SIZES)

# predict(uint8 images [N, 3, R, R]) -> [N, len(HEADS)] class indices (AttributeProbe.predict).
Predict = Callable[[torch.Tensor], torch.Tensor]


def variety_scenes(num: int = VARIETY_PROMPTS) -> list[Scene]:
    """`num` scenes whose captions name no background and no size: shapes, colours, places and
    relations in turn (background and sizes here are placeholders, drawn per seed)."""
    colours, places, relations = list(COLOURS), list(POSITIONS), list(RELATIONS)
    bg, size = next(iter(BACKGROUNDS)), next(iter(SIZES))
    scenes = []
    for i in range(num):
        ca = colours[i % len(colours)]
        if i % 2 == 0:
            scenes.append(Scene(bg, (ShapeObject(SHAPES[i % len(SHAPES)], ca, size, places[(i // 2) % len(places)]),)))
        else:
            cb = colours[(i + 3) % len(colours)]  # never ca
            pa, pb = RELATIONS[rel := relations[(i // 2) % len(relations)]]
            scenes.append(Scene(bg, (ShapeObject(SHAPES[i % len(SHAPES)], ca, size, pa),
                                     ShapeObject(SHAPES[(i + 2) % len(SHAPES)], cb, size, pb)), rel))
    return scenes


def caption(scene: Scene) -> str:
    """The domain's caption of `scene` naming neither background nor sizes (template 0)."""
    return caption_scene(scene, np.random.default_rng(0), template=0,
                         with_size=(False,) * len(scene.objects)).caption


def free_draw(scene: Scene, rng: np.random.Generator) -> Scene:
    """`scene` with its background and sizes drawn uniformly, as the domain draws what a caption leaves free."""
    objects = tuple(ShapeObject(o.shape, o.colour, SIZES_LIST[rng.integers(len(SIZES))], o.position)
                    for o in scene.objects)
    return Scene(BACKGROUNDS_LIST[rng.integers(len(BACKGROUNDS))], objects, scene.relation)


def normalised_entropy(values: list[int], options: int) -> float:
    """Entropy of the values' frequencies over log(options): 0 when all agree, 1 when uniform."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / np.log(options))


def variety_of(pred: torch.Tensor, scenes: list[Scene], seeds: int) -> tuple[float, float]:
    """(background, size) variety of predictions [len(scenes) * seeds, heads], prompt-major."""
    names = list(HEADS)
    bg_col = names.index("background")
    size_cols = [names.index("a_size"), names.index("b_size")]
    bg, size = [], []
    for p, scene in enumerate(scenes):
        rows = pred[p * seeds : (p + 1) * seeds]
        bg.append(normalised_entropy(rows[:, bg_col].tolist(), len(BACKGROUNDS)))
        size.append(np.mean([normalised_entropy(rows[:, c].tolist(), len(SIZES))
                             for c in size_cols[: len(scene.objects)]]))
    return float(np.mean(bg)), float(np.mean(size))


def measure_variety(draw: Draw, predict: Predict, resolution: int, *, seed: int = 0,
                    prompts: int = VARIETY_PROMPTS, seeds: int = VARIETY_SEEDS) -> dict[str, float | int]:
    """The variety figures (module docstring) of the images `draw` makes, read by `predict`."""
    if seeds < 2:
        raise ValueError(f"variety needs at least 2 seeds per prompt, got {seeds}")
    scenes = variety_scenes(prompts)
    images = draw([caption(s) for s in scenes for _ in range(seeds)],
                  [seed + k for _ in scenes for k in range(seeds)])
    assert images.dtype == torch.uint8 and images.shape[0] == len(scenes) * seeds, (images.dtype, images.shape)
    rng = np.random.default_rng(seed)
    real = torch.from_numpy(np.stack([render_scene_chw(free_draw(s, rng), resolution)
                                      for s in scenes for _ in range(seeds)]))
    bg, size = variety_of(predict(images), scenes, seeds)
    bg_real, size_real = variety_of(predict(real), scenes, seeds)
    return {"variety_background": bg, "variety_size": size, "variety_background_real": bg_real,
            "variety_size_real": size_real, "variety_images": len(images)}


@register("variety", images=False)
def variety(ctx: Context) -> dict:
    """How much the seeds of one prompt vary the background and sizes it leaves free, against real scenes (probe)."""
    from eval.emphasis import drawer  # imported here: eval.metrics imports both modules

    return measure_variety(drawer(ctx), ctx_probe(ctx).predict, ctx.resolution, seed=ctx.opts.seed)
