"""The `order` metric (shapes domain): does word order decide the layout?

Each of ORDER_SCENES two-object prompts is written three ways, with the same words:
  original   "a red circle left of a blue square"
  exchanged  "a blue square left of a red circle"    (the objects' words exchanged)
  relation   "a red circle right of a blue square"   (the relation word turned round)
and drawn on ORDER_SEEDS fixed seeds. An image follows its wording when the attribute probe
(eval.attributes) sees two objects with each named colour on the side the wording puts it
(the probe's "binding" rule). A generator that reads the words but not their order draws the
original and the exchanged wording alike, so at most one of the two follows its wording.

JSON keys:
  order_original, order_exchanged, order_relation   share of images that follow their wording
  order_mean                                        the mean of those three
  order_exchanged_as_original                       share of exchanged-wording images laid out as
                                                    the original wording says (the order ignored)
  order_images                                      images drawn per wording
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from data.shapes import (BACKGROUNDS, COLOURS, RELATIONS, SHAPES, SIZES, Scene, ShapeObject, caption_scene,
                         scene_attributes)
from eval.attributes import HEADS, attribute_hits
from eval.metrics import Context, ctx_probe, register

if TYPE_CHECKING:
    from eval.emphasis import Draw

ORDER_SCENES = 64  # two-object scenes
ORDER_SEEDS = 4  # seeds per wording
WORDINGS = ("original", "exchanged", "relation")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

# predict(uint8 images [N, 3, R, R]) -> [N, len(HEADS)] class indices (AttributeProbe.predict).
Predict = Callable[[torch.Tensor], torch.Tensor]


def placed(a: ShapeObject, b: ShapeObject, relation: str, background: str) -> Scene:
    """The scene "a <relation> b", the objects where the relation puts them."""
    pa, pb = RELATIONS[relation]
    return Scene(background, (ShapeObject(a.shape, a.colour, a.size, pa), ShapeObject(b.shape, b.colour, b.size, pb)),
                 relation)


def order_scenes(num: int = ORDER_SCENES) -> list[dict[str, Scene]]:
    """`num` two-object scenes, each as its three wordings (WORDINGS -> Scene): colour pairs,
    shapes, sizes, relations and backgrounds in turn."""
    colours, relations, backgrounds, sizes = list(COLOURS), list(RELATIONS), list(BACKGROUNDS), list(SIZES)
    out = []
    for i in range(num):
        ca = colours[i % len(colours)]
        cb = colours[(i + 1 + (i // len(colours)) % (len(colours) - 1)) % len(colours)]  # never ca
        a = ShapeObject(SHAPES[i % len(SHAPES)], ca, sizes[i % 2], "left")  # positions set by `placed`
        b = ShapeObject(SHAPES[(i + 2) % len(SHAPES)], cb, sizes[(i // 2) % 2], "right")
        rel = relations[i % len(relations)]
        bg = backgrounds[i % len(backgrounds)]
        out.append({"original": placed(a, b, rel, bg), "exchanged": placed(b, a, rel, bg),
                    "relation": placed(a, b, OPPOSITE[rel], bg)})
    return out


def caption(scene: Scene) -> str:
    """The domain's shortest two-object caption of `scene`: "a red circle left of a blue square"."""
    return caption_scene(scene, np.random.default_rng(0), template=0, with_size=(False, False)).caption


def follows(pred: torch.Tensor, scene: Scene, resolution: int) -> bool:
    """Whether predicted heads (one row, HEADS order) show `scene`'s two colours where it puts them."""
    ex = caption_scene(scene, np.random.default_rng(0), template=0, with_size=(False, False))
    hits = attribute_hits(dict(zip(HEADS, pred.tolist())), scene_attributes(scene, resolution, ex.mentioned))
    return bool(hits["binding"][0])


def measure_order(draw: Draw, predict: Predict, resolution: int, *, seed: int = 0, scenes: int = ORDER_SCENES,
                  seeds: int = ORDER_SEEDS) -> dict[str, float | int]:
    """The order figures (module docstring) of the images `draw` makes, read by `predict`."""
    sets = order_scenes(scenes)
    jobs = [(i, w, seed + s) for i in range(len(sets)) for w in WORDINGS for s in range(seeds)]
    images = draw([caption(sets[i][w]) for i, w, _ in jobs], [s for _, _, s in jobs])
    assert images.dtype == torch.uint8 and images.shape[0] == len(jobs), (images.dtype, images.shape)
    pred = predict(images)  # [N, heads]
    hits: dict[str, list[bool]] = {w: [] for w in (*WORDINGS, "exchanged_as_original")}
    for row, (i, w, _) in zip(pred, jobs):
        hits[w].append(follows(row, sets[i][w], resolution))
        if w == "exchanged":
            hits["exchanged_as_original"].append(follows(row, sets[i]["original"], resolution))
    share = {w: float(np.mean(h)) for w, h in hits.items()}
    return {**{f"order_{w}": share[w] for w in WORDINGS}, "order_mean": float(np.mean([share[w] for w in WORDINGS])),
            "order_exchanged_as_original": share["exchanged_as_original"], "order_images": len(sets) * seeds}


@register("order", images=False)
def order(ctx: Context) -> dict:
    """Share of two-object images whose layout follows the wording, and its word-exchanged twins (probe)."""
    from eval.emphasis import drawer  # imported here: eval.metrics imports both modules

    return measure_order(drawer(ctx), ctx_probe(ctx).predict, ctx.resolution, seed=ctx.opts.seed)
