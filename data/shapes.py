"""The built-in procedural domain: coloured shapes on a plain background, with exact truth.

A scene is a background colour and one or two objects. An object has a shape, a colour, a
size and a position; two objects stand in a relation (`objects[0] <relation> objects[1]`,
e.g. "left of"), and their positions follow from it, so the relation always holds in the
pixels: the two objects' boxes never overlap along the relation's axis.

Rendering is exact and deterministic: anti-aliased coverage masks are computed once per
(resolution, shape, size, position) by 8x8 (4x4 above 64 px) supersampling and cached;
an image is the background blended with each object's colour through its mask, so every
fully covered pixel (the object's centre included) holds the object's colour exactly.

The vocabulary is small and fixed so that a small GAN learns it at 32 px: 5 shapes,
8 object colours, 3 background colours (never an object colour), 2 sizes, 5 positions,
4 relations; captions come from several templates and phrasings.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass, field

import numpy as np
import torch

from .batch import to_float
from .captioned import ImageDtype
from .report import ScanReport

SHAPES = ("circle", "square", "triangle", "star", "cross")
# Object colours: apart in hue and lightness, so they stay distinct at 16 px.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 40),
    "orange": (250, 140, 0),
    "yellow": (245, 225, 30),
    "green": (30, 160, 60),
    "cyan": (40, 210, 230),
    "blue": (30, 60, 210),
    "purple": (130, 40, 170),
    "pink": (250, 130, 200),
}
# Background colours: disjoint from COLOURS, so an object never vanishes into the background.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "grey": (120, 120, 120),
}
# Object radius as a fraction of the image side (half the extent of its bounding box).
SIZES: dict[str, float] = {"small": 0.14, "large": 0.22}
# An emphasised size word raises its size's distance from the medium radius (their geometric
# mean) to the power of its weight: "(large:2)" is larger than "large", "(small:2)" smaller,
# "(large:0.5)" nearer medium. MAX_RADIUS keeps every object inside the image (centres at 0.25).
MEDIUM_RADIUS, MAX_RADIUS = math.sqrt(SIZES["small"] * SIZES["large"]), 0.25
# Weights an emphasised training caption gives its size word: 2^(k/4), k = -4..4 but 0.
EMPHASIS_WEIGHTS = tuple(round(2 ** (k / 4), 2) for k in range(-4, 5) if k != 0)
# Object centre as (x, y) fractions of the image side; y grows downwards.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
# relation -> (position of the subject objects[0], position of the reference objects[1]).
RELATIONS: dict[str, tuple[str, str]] = {
    "left of": ("left", "right"),
    "right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}
MIN_RESOLUTION, MAX_RESOLUTION = 16, 256
INFINITE_LENGTH = 1 << 20  # len() of an unbounded ShapesDataset (~36k distinct scenes exist).


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene."""

    shape: str  # One of SHAPES.
    colour: str  # One of COLOURS.
    size: str  # One of SIZES.
    position: str  # One of POSITIONS.
    size_weight: float = 1.0  # Emphasis of the size word, in (0, 10]; the radius follows object_radius.

    def __post_init__(self) -> None:
        for name, value, allowed in (("shape", self.shape, SHAPES), ("colour", self.colour, COLOURS),
                                     ("size", self.size, SIZES), ("position", self.position, POSITIONS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {sorted(allowed)}")
        if not 0 < self.size_weight <= 10:
            raise ValueError(f"size_weight must lie in (0, 10], got {self.size_weight!r}")


@dataclass(frozen=True)
class Scene:
    """A background and one or two objects; with two, `objects[0] <relation> objects[1]`."""

    background: str  # One of BACKGROUNDS.
    objects: tuple[ShapeObject, ...]  # One or two objects.
    relation: str | None = None  # One of RELATIONS when there are two objects, else None.

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; expected one of {sorted(BACKGROUNDS)}")
        if len(self.objects) == 1:
            if self.relation is not None:
                raise ValueError("a one-object scene has no relation")
        elif len(self.objects) == 2:
            if self.relation not in RELATIONS:
                raise ValueError(f"unknown relation {self.relation!r}; expected one of {sorted(RELATIONS)}")
            a, b = self.objects
            if (a.position, b.position) != RELATIONS[self.relation]:
                raise ValueError(f"{self.relation!r} needs positions {RELATIONS[self.relation]}, "
                                 f"got ({a.position!r}, {b.position!r})")
            if a.colour == b.colour:
                raise ValueError("the two objects of a scene have different colours")
        else:
            raise ValueError(f"a scene has one or two objects, got {len(self.objects)}")

    def to_dict(self) -> dict:
        return {"background": self.background, "relation": self.relation,
                "objects": [{"shape": o.shape, "colour": o.colour, "size": o.size, "position": o.position,
                             "size_weight": o.size_weight} for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        objects = tuple(ShapeObject(**{k: o[k] for k in ("shape", "colour", "size", "position")},
                                    size_weight=o.get("size_weight", 1.0)) for o in d["objects"])
        return cls(background=d["background"], objects=objects, relation=d.get("relation"))


# --- geometry ------------------------------------------------------------------------

def _polygon_inside(u: np.ndarray, v: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test, vectorised over points. verts: [K, 2] (u, v)."""
    inside = np.zeros(u.shape, dtype=bool)
    for (u1, v1), (u2, v2) in zip(verts, np.roll(verts, -1, axis=0)):
        if v1 == v2:
            continue
        crosses = (v1 > v) != (v2 > v)
        u_at = (u2 - u1) * (v - v1) / (v2 - v1) + u1
        inside ^= crosses & (u < u_at)
    return inside


def _star_vertices(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points  # first point straight up
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


_TRIANGLE = np.array([[0.0, -0.86], [1.0, 0.86], [-1.0, 0.86]])  # pointing up, box-centred
_STAR = _star_vertices()


def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Whether points (u, v), in units of the object radius around its centre (v down),
    lie inside `shape`. Every shape fits in [-1, 1]^2 and contains (0, 0)."""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.86
    if shape == "triangle":
        return _polygon_inside(u, v, _TRIANGLE)
    if shape == "star":
        return _polygon_inside(u, v, _STAR)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.33) & (av <= 0.95)) | ((av <= 0.33) & (au <= 0.95))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


@dataclass(frozen=True)
class Mask:
    """Coverage of one object, stored in its bounding window of the image."""

    y0: int  # First row of the window.
    x0: int  # First column of the window.
    alpha: np.ndarray  # float32 [H, W] coverage in [0, 1].
    centre: tuple[float, float]  # Object centre (x, y) in pixels.
    bbox: tuple[int, int, int, int]  # [x0, y0, x1, y1) of the pixels with any coverage.


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, int) or not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"shapes resolution must be an int in {MIN_RESOLUTION}..{MAX_RESOLUTION}, "
                         f"got {resolution!r}")


def _pixel_centre(fraction: float, resolution: int) -> float:
    """The pixel centre nearest `fraction` of the side (mirror-symmetric for left/right and
    top/bottom), so that the pixel under an object's centre is fully covered."""
    if fraction <= 0.5:
        return math.floor(fraction * resolution) + 0.5
    return resolution - math.floor((1.0 - fraction) * resolution) - 0.5


def object_radius(size: str, weight: float = 1.0) -> float:
    """Radius (fraction of the side) of a `size` object whose size word has emphasis `weight`."""
    if weight == 1.0:
        return SIZES[size]
    return min(MEDIUM_RADIUS * (SIZES[size] / MEDIUM_RADIUS) ** weight, MAX_RADIUS)


@functools.lru_cache(maxsize=None)
def object_mask(resolution: int, shape: str, size: str, position: str, size_weight: float = 1.0) -> Mask:
    """Anti-aliased coverage of one object (cached per resolution; computed once)."""
    _check_resolution(resolution)
    ss = 8 if resolution <= 64 else 4  # supersampling factor per axis
    radius = object_radius(size, size_weight) * resolution  # pixels
    cx, cy = (_pixel_centre(f, resolution) for f in POSITIONS[position])
    x0, y0 = max(0, math.floor(cx - radius)), max(0, math.floor(cy - radius))
    x1, y1 = min(resolution, math.ceil(cx + radius)), min(resolution, math.ceil(cy + radius))
    sub = (np.arange(ss) + 0.5) / ss
    xs = (np.arange(x0, x1)[:, None] + sub[None, :]).reshape(-1)  # [W*ss] sample x
    ys = (np.arange(y0, y1)[:, None] + sub[None, :]).reshape(-1)  # [H*ss] sample y
    u = (xs[None, :] - cx) / radius
    v = (ys[:, None] - cy) / radius
    inside = shape_inside(shape, *np.broadcast_arrays(u, v))  # [H*ss, W*ss]
    h, w = y1 - y0, x1 - x0
    alpha = inside.reshape(h, ss, w, ss).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)  # [H, W]
    alpha.setflags(write=False)
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    bbox = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
    return Mask(y0=y0, x0=x0, alpha=alpha, centre=(cx, cy), bbox=bbox)


_COLOUR_RGB = {k: np.asarray(v, dtype=np.float32)[:, None, None] for k, v in COLOURS.items()}  # [3, 1, 1]
_BACKGROUND_RGB = {k: np.asarray(v, dtype=np.float32)[:, None, None] for k, v in BACKGROUNDS.items()}


def render_scene_chw(scene: Scene, resolution: int) -> np.ndarray:
    """Scene -> uint8 [3, R, R] (the layout of dataset items). Objects never overlap."""
    _check_resolution(resolution)
    img = np.empty((3, resolution, resolution), dtype=np.float32)
    img[:] = _BACKGROUND_RGB[scene.background]
    for obj in scene.objects:
        m = object_mask(resolution, obj.shape, obj.size, obj.position, obj.size_weight)
        h, w = m.alpha.shape
        win = img[:, m.y0 : m.y0 + h, m.x0 : m.x0 + w]  # [3, h, w] view
        win += (_COLOUR_RGB[obj.colour] - win) * m.alpha  # alpha 1 gives the colour exactly
    img += 0.5  # values lie in [0, 255]: truncating x + 0.5 rounds to nearest
    return img.astype(np.uint8)


def render_scene(scene: Scene, resolution: int) -> np.ndarray:
    """Scene -> uint8 [R, R, 3] (HWC, as PIL and image files have it)."""
    return np.ascontiguousarray(render_scene_chw(scene, resolution).transpose(1, 2, 0))


# --- captions ------------------------------------------------------------------------

# How a one-object caption says where its object is.
PLACE_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                 "bottom": "at the bottom", "centre": "in the centre"}
_REL_SHORT = {"left of": "left of", "right of": "right of", "above": "above", "below": "below"}
_REL_LONG = {"left of": "to the left of", "right of": "to the right of", "above": "above",
             "below": "below"}
_REL_ITS = {"left of": "to its left", "right of": "to its right", "above": "above it",
            "below": "below it"}

ONE_OBJECT_TEMPLATES = (
    "a {obj} {where}",  # a small red circle on the left
    "a {obj} {where} on a {bg} background",
    "{obj}, {where}, on {bg}",
    "a {bg} background with a {obj} {where}",
)
TWO_OBJECT_TEMPLATES = (
    "a {a} {rel_short} a {b}",  # a red circle left of a large blue square
    "a {a} {rel_long} a {b} on a {bg} background",
    "{b}, {a} {rel_its}, on {bg}",  # blue square, red circle to its left, on white
    "a {b} with a {a} {rel_its}",
)


@dataclass(frozen=True)
class Example:
    """A sampled scene with its caption and what the caption mentions."""

    scene: Scene
    caption: str
    mentioned: dict = field(default_factory=dict)  # {"background": bool, "relation": bool, "objects": [{attr: bool}]}
    template: int = 0  # Index into ONE_/TWO_OBJECT_TEMPLATES.


_EMPHASISED_SIZE = re.compile(r"\((\w+):[0-9.]+\)")  # "(large:1.41)", as _object_phrase writes it


def _object_phrase(obj: ShapeObject, with_size: bool) -> str:
    if not with_size:
        return f"{obj.colour} {obj.shape}"
    size = obj.size if obj.size_weight == 1.0 else f"({obj.size}:{obj.size_weight:g})"  # prompt syntax
    return f"{size} {obj.colour} {obj.shape}"


def caption_scene(
    scene: Scene,
    rng: np.random.Generator,
    *,
    size_p: float = 0.75,  # Probability that an object's size is named.
    template: int | None = None,  # Template index; None = random.
    with_size: tuple[bool, ...] | None = None,  # Name each object's size; None = random.
) -> Example:
    """Phrase `scene` with one of ONE_/TWO_OBJECT_TEMPLATES."""
    u = rng.random(3)  # one draw serves every choice (cheap per item)
    templates = ONE_OBJECT_TEMPLATES if len(scene.objects) == 1 else TWO_OBJECT_TEMPLATES
    if template is None:
        template = min(int(u[0] * len(templates)), len(templates) - 1)
    if with_size is None:
        with_size = tuple(bool(x < size_p) for x in u[1 : 1 + len(scene.objects)])
    if len(with_size) != len(scene.objects):
        raise ValueError(f"with_size needs {len(scene.objects)} entries, got {with_size!r}")
    fmt = templates[template]
    if len(scene.objects) == 1:
        obj = scene.objects[0]
        text = fmt.format(obj=_object_phrase(obj, with_size[0]), where=PLACE_PHRASES[obj.position],
                          bg=scene.background)
        positions = [True]
    else:
        a, b = scene.objects
        rel = scene.relation
        text = fmt.format(a=_object_phrase(a, with_size[0]), b=_object_phrase(b, with_size[1]),
                          rel_short=_REL_SHORT[rel], rel_long=_REL_LONG[rel],
                          rel_its=_REL_ITS[rel], bg=scene.background)
        positions = [False, False]  # only the relation is named, not absolute positions
    mentioned = {
        "background": "{bg}" in fmt,
        "relation": scene.relation is not None,
        "objects": [{"shape": True, "colour": True, "size": s, "position": p}
                    for s, p in zip(with_size, positions)],
    }
    return Example(scene=scene, caption=text, mentioned=mentioned, template=template)


_COLOUR_NAMES, _BACKGROUND_NAMES = tuple(COLOURS), tuple(BACKGROUNDS)
_SIZE_NAMES, _POSITION_NAMES, _RELATION_NAMES = tuple(SIZES), tuple(POSITIONS), tuple(RELATIONS)


def _pick(seq: tuple[str, ...], x: float) -> str:
    return seq[min(int(x * len(seq)), len(seq) - 1)]


def sample_scene(rng: np.random.Generator, *, two_objects_p: float = 0.5) -> Scene:
    """A uniformly random scene drawn from `rng`; two objects with probability two_objects_p.
    With two objects, the relation is uniform and the colours differ."""
    u = rng.random(9)  # one draw serves every choice (cheap per item)
    background = _pick(_BACKGROUND_NAMES, u[0])
    if u[1] < two_objects_p:
        relation = _pick(_RELATION_NAMES, u[2])
        n = len(_COLOUR_NAMES)
        ca = min(int(u[3] * n), n - 1)
        cb = (ca + 1 + min(int(u[4] * (n - 1)), n - 2)) % n  # uniform over the other colours
        pa, pb = RELATIONS[relation]
        objects = (ShapeObject(_pick(SHAPES, u[5]), _COLOUR_NAMES[ca], _pick(_SIZE_NAMES, u[6]), pa),
                   ShapeObject(_pick(SHAPES, u[7]), _COLOUR_NAMES[cb], _pick(_SIZE_NAMES, u[8]), pb))
        return Scene(background, objects, relation)
    obj = ShapeObject(_pick(SHAPES, u[5]), _pick(_COLOUR_NAMES, u[3]), _pick(_SIZE_NAMES, u[6]),
                      _pick(_POSITION_NAMES, u[2]))
    return Scene(background, (obj,))


def sample_example(rng: np.random.Generator, *, two_objects_p: float = 0.5, size_p: float = 0.75,
                   emphasis_p: float = 0.0) -> Example:
    """A random scene and a caption for it, drawn from `rng`. With emphasis_p > 0, each named size
    word is emphasised with that probability, its weight uniform over EMPHASIS_WEIGHTS, and the
    object drawn at the emphasised size (object_radius)."""
    example = caption_scene(sample_scene(rng, two_objects_p=two_objects_p), rng, size_p=size_p)
    if emphasis_p <= 0:
        return example
    scene, named = example.scene, [o["size"] for o in example.mentioned["objects"]]
    u = rng.random((len(scene.objects), 2))
    objects = tuple(dataclasses.replace(o, size_weight=_pick(EMPHASIS_WEIGHTS, b)) if n and a < emphasis_p else o
                    for o, n, (a, b) in zip(scene.objects, named, u))
    if objects == scene.objects:
        return example
    emphasised = dataclasses.replace(scene, objects=objects)
    return caption_scene(emphasised, rng, template=example.template, with_size=tuple(named))


def scene_attributes(scene: Scene, resolution: int, mentioned: dict | None = None) -> dict:
    """JSON-able ground truth: the scene plus, per object, its centre (x, y) and bounding
    box [x0, y0, x1, y1) in pixels (pixels with any coverage) at `resolution`."""
    objects = []
    for obj in scene.objects:
        m = object_mask(resolution, obj.shape, obj.size, obj.position, obj.size_weight)
        objects.append({"shape": obj.shape, "colour": obj.colour, "size": obj.size, "position": obj.position,
                        "size_weight": obj.size_weight, "centre": [m.centre[0], m.centre[1]], "bbox": list(m.bbox)})
    out = {"background": scene.background, "objects": objects, "relation": scene.relation,
           "resolution": resolution}
    if mentioned is not None:
        out["mentioned"] = mentioned
    return out


def vocabulary() -> list[str]:
    """Every word any caption can contain (sorted)."""
    words: set[str] = set()
    fills = [*SHAPES, *COLOURS, *BACKGROUNDS, *SIZES, *PLACE_PHRASES.values(), *_REL_SHORT.values(),
             *_REL_LONG.values(), *_REL_ITS.values()]
    for template in ONE_OBJECT_TEMPLATES + TWO_OBJECT_TEMPLATES:
        for part in template.replace(",", " ").split():
            if not part.startswith("{"):
                words.add(part)
    for fill in fills:
        words.update(fill.split())
    return sorted(words)


# --- dataset -------------------------------------------------------------------------

class ShapesDataset(torch.utils.data.Dataset):
    """Procedural scenes; item i is a pure function of (seed, i).

    Items: {"image": uint8 [3, R, R], "text": str, "index": int,
    "attributes": scene_attributes(...) with "mentioned"}.
    """

    def __init__(
        self,
        resolution: int,  # Image side in pixels, 16..256.
        size: int | None = None,  # Number of items; None = INFINITE_LENGTH (effectively unbounded).
        seed: int = 0,  # Item i is drawn from numpy's default_rng([seed, i]).
        *,
        image_dtype: ImageDtype = "uint8",  # "uint8" or "float32" ([-1, 1]).
        two_objects_p: float = 0.5,  # Probability that a scene has two objects.
        size_p: float = 0.75,  # Probability that a caption names an object's size.
        emphasis_p: float = 0.0,  # Probability that a named size word is emphasised (sample_example).
    ) -> None:
        _check_resolution(resolution)
        if not 0 <= emphasis_p <= 1:
            raise ValueError(f"emphasis_p must lie in [0, 1], got {emphasis_p!r}")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"size must be a positive int or None, got {size!r}")
        if image_dtype not in ("uint8", "float32"):
            raise ValueError(f"image_dtype must be 'uint8' or 'float32', got {image_dtype!r}")
        self.resolution = resolution
        self.size = size
        self.seed = int(seed)
        self.image_dtype = image_dtype
        self.two_objects_p = two_objects_p
        self.size_p = size_p
        self.emphasis_p = emphasis_p
        self.report = ScanReport(kept=len(self))

    # Captions are written in prompt syntax ("a (large:1.41) red circle"): training reads them with
    # emphasis; a caption without brackets reads the same either way.
    emphasis_syntax = True

    def __len__(self) -> int:
        return INFINITE_LENGTH if self.size is None else self.size

    def example(self, index: int) -> Example:
        """The scene and caption of item `index` (no rendering)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        rng = np.random.default_rng([self.seed, int(index)])
        return sample_example(rng, two_objects_p=self.two_objects_p, size_p=self.size_p, emphasis_p=self.emphasis_p)

    def __getitem__(self, index: int) -> dict:
        ex = self.example(int(index))
        image = torch.from_numpy(render_scene_chw(ex.scene, self.resolution))  # [3, R, R]
        return {
            "image": to_float(image) if self.image_dtype == "float32" else image,
            "text": ex.caption,
            "index": int(index),
            "attributes": scene_attributes(ex.scene, self.resolution, ex.mentioned),
        }

    def captions(self, limit: int = 4096) -> list[str]:
        """Captions of the first min(len, limit) items: with the default limit every word of
        vocabulary() occurs (enough to build a tokenizer). Emphasis syntax is left out (a tokenizer reads
        captions literally)."""
        return [_EMPHASISED_SIZE.sub(r"\1", self.example(i).caption) for i in range(min(len(self), limit))]
