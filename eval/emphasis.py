"""The `emphasis` metric (shapes domain): does a word's emphasis weight move what the word names?

Each of EMPHASIS_PROMPTS one-object prompts ("a large red circle on the left on a grey background")
is drawn on EMPHASIS_SEEDS fixed seeds with one object word emphasised, `(red:w)` or `(large:w)`,
for w in WEIGHTS. A series is one (prompt, word, seed) as w rises. From the pixels (each pixel
takes the nearest colour of the domain's palette, data.shapes):
  colour word  prominence = the share of the object's pixels (those nearest an object colour)
               nearest the named colour;
  size word    prominence = the object's area (share of the image), negated for "small".

JSON keys (means over series; `_colour` / `_size` over one word kind):
  emphasis_spearman[_colour|_size]          Spearman correlation of weight and prominence
                                            (a series whose prominence never changes counts 0)
  emphasis_change_per_unit[_colour|_size]   mean absolute pixel change (pixels in [0, 1]) along
                                            the weights, per unit of weight: no effect gives 0
  emphasis_seed_change                      the same mean absolute change between two seeds of
                                            one prompt at weight 1: the scale to read it against
  emphasis_series                           series measured
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from data.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Scene, ShapeObject, caption_scene
from eval.metrics import Context, generate, register

WEIGHTS = (0.5, 0.8, 1.0, 1.25, 1.6, 2.0)
EMPHASIS_PROMPTS = 16  # one-object prompts, two per object colour
EMPHASIS_SEEDS = 4  # seeds per prompt and word
# The palette: object colours first, then backgrounds. [P, 3]
PALETTE = torch.tensor([*COLOURS.values(), *BACKGROUNDS.values()], dtype=torch.float32)
OBJECT_COLOURS = len(COLOURS)

# draw(prompts, seeds) -> uint8 images [N, 3, R, R]: image i from (prompts[i], seeds[i]).
Draw = Callable[[Sequence[str], Sequence[int]], torch.Tensor]


def drawer(ctx: Context) -> Draw:
    """The model of `ctx` as a Draw, reading emphasis syntax (also used by the order metric)."""
    def draw(prompts: Sequence[str], seeds: Sequence[int]) -> torch.Tensor:
        return torch.cat(list(generate(ctx.model, ctx.tokenizer, list(prompts), list(seeds), batch=ctx.opts.batch,
                                       device=ctx.opts.device, psi=ctx.opts.psi, emphasis=True)))
    return draw


@dataclass(frozen=True)
class Series:
    """One object word of one prompt, drawn on one seed at every weight."""

    prompts: tuple[str, ...]  # the prompt at each of WEIGHTS
    word: str  # the emphasised word: an object colour, "small" or "large"
    kind: str  # "colour" or "size"
    seed: int


def emphasise(caption: str, word: str, weight: float) -> str:
    """The caption with its (first, whole) `word` written `(word:weight)`."""
    words = caption.split(" ")
    if word not in words:
        raise ValueError(f"emphasise: {word!r} is not a word of {caption!r}")
    i = words.index(word)
    words[i] = f"({word}:{weight:g})"
    return " ".join(words)


def emphasis_prompts(num: int = EMPHASIS_PROMPTS) -> list[tuple[str, ShapeObject]]:
    """`num` one-object captions of the domain's fullest one-object template, naming the size,
    with their object: colours, shapes, sizes, places and backgrounds in turn."""
    colours, backgrounds, positions = list(COLOURS), list(BACKGROUNDS), list(POSITIONS)
    out = []
    for i in range(num):
        size = list(SIZES)[(i + i // len(colours)) % len(SIZES)]  # each colour small once and large once
        obj = ShapeObject(SHAPES[i % len(SHAPES)], colours[i % len(colours)], size, positions[i % len(positions)])
        scene = Scene(backgrounds[i % len(backgrounds)], (obj,))
        example = caption_scene(scene, np.random.default_rng(i), template=1, with_size=(True,))
        out.append((example.caption, obj))
    return out


def emphasis_series(*, seed: int, prompts: int = EMPHASIS_PROMPTS, seeds: int = EMPHASIS_SEEDS) -> list[Series]:
    """Every (prompt, word, seed) series: the colour word and the size word of each prompt."""
    out = []
    for caption, obj in emphasis_prompts(prompts):
        for word, kind in ((obj.colour, "colour"), (obj.size, "size")):
            texts = tuple(emphasise(caption, word, w) for w in WEIGHTS)
            out.extend(Series(texts, word, kind, seed + s) for s in range(seeds))
    return out


def palette_index(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] -> [N, H, W] long: each pixel's nearest PALETTE entry (RGB distance)."""
    x = images.float().permute(0, 2, 3, 1)  # [N, H, W, 3]
    d = (x.unsqueeze(-2) - PALETTE).square().sum(-1)  # [N, H, W, P]
    return d.argmin(-1)


def prominence(images: torch.Tensor, word: str, kind: str) -> torch.Tensor:
    """How much of what `word` names each image shows: uint8 [N, 3, H, W] -> [N] float.

    colour: share of the object pixels nearest the named colour (0 with no object pixels);
    size: object pixels over all pixels, negated for "small"."""
    idx = palette_index(images)
    on_object = idx < OBJECT_COLOURS
    objects = on_object.flatten(1).sum(1).float()  # [N]
    if kind == "colour":
        named = (idx == list(COLOURS).index(word)).flatten(1).sum(1).float()
        return named / objects.clamp(min=1)
    if kind == "size":
        area = objects / idx[0].numel()
        return -area if word == "small" else area
    raise ValueError(f"prominence: kind must be 'colour' or 'size', got {kind!r}")


def ranks(x: Sequence[float]) -> np.ndarray:
    """1-based ranks of x, ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty(len(x))
    out[np.argsort(x, kind="stable")] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        out[x == v] = out[x == v].mean()
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); 0 when either side is constant."""
    rx, ry = ranks(x), ranks(y)
    if np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def change_per_unit(images: torch.Tensor, weights: Sequence[float]) -> float:
    """Mean absolute pixel change (pixels in [0, 1]) between consecutive weights, summed along
    the weights and divided by their span: uint8 [W, 3, H, W'] in weight order -> float."""
    x = images.float() / 255
    steps = (x[1:] - x[:-1]).abs().flatten(1).mean(1)  # [W - 1]
    return float(steps.sum()) / (max(weights) - min(weights))


def measure_emphasis(draw: Draw, *, seed: int = 0, prompts: int = EMPHASIS_PROMPTS,
                     seeds: int = EMPHASIS_SEEDS) -> dict[str, float | int]:
    """The emphasis figures (module docstring) of the images `draw` makes."""
    series = emphasis_series(seed=seed, prompts=prompts, seeds=seeds)
    images = draw([p for s in series for p in s.prompts], [s.seed for s in series for _ in WEIGHTS])
    n = len(WEIGHTS)
    assert images.dtype == torch.uint8 and images.shape[0] == len(series) * n, (images.dtype, images.shape)
    rho: dict[str, list[float]] = {"colour": [], "size": []}
    change: dict[str, list[float]] = {"colour": [], "size": []}
    for i, s in enumerate(series):
        imgs = images[i * n : (i + 1) * n]  # [W, 3, R, R], weights rising
        rho[s.kind].append(spearman(WEIGHTS, prominence(imgs, s.word, s.kind).tolist()))
        change[s.kind].append(change_per_unit(imgs, WEIGHTS))
    at_one = images[WEIGHTS.index(1.0) :: n]  # [series, 3, R, R] weight 1; seeds of a prompt's word are adjacent
    same_prompt = [i for i in range(len(series) - 1) if series[i].prompts == series[i + 1].prompts]
    seed_change = [float((at_one[i].float() - at_one[i + 1].float()).abs().mean() / 255) for i in same_prompt]
    out: dict[str, float | int] = {
        "emphasis_spearman": float(np.mean(rho["colour"] + rho["size"])),
        "emphasis_spearman_colour": float(np.mean(rho["colour"])),
        "emphasis_spearman_size": float(np.mean(rho["size"])),
        "emphasis_change_per_unit": float(np.mean(change["colour"] + change["size"])),
        "emphasis_change_per_unit_colour": float(np.mean(change["colour"])),
        "emphasis_change_per_unit_size": float(np.mean(change["size"])),
        "emphasis_seed_change": float(np.mean(seed_change)) if seed_change else 0.0,
        "emphasis_series": len(series),
    }
    return out


@register("emphasis", images=False)
def emphasis(ctx: Context) -> dict:
    """Spearman of emphasis weight vs what the word names, and image change per unit weight (shapes)."""
    return measure_emphasis(drawer(ctx), seed=ctx.opts.seed)
