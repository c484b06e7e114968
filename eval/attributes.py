"""Attribute accuracy on the shapes domain: a probe classifier reads scenes back from images.

The probe is a small CNN trained on procedural images (`data.shapes`), whose ground truth is
exact. It predicts, per image: the number of objects, the background, and for each object slot
its shape, colour, size and position. Slots are canonical, because an image cannot tell "a red
circle left of a blue square" from "a blue square right of a red circle": slot A is the only
object, or the left / top one of two; slot B the right / bottom one.

Generated images are scored against the ground truth of the scene their prompt was written
from, counting only what the caption mentions (`attributes["mentioned"]`: a caption that does
not name the size cannot be wrong about it). The relation of a two-object prompt holds when
the probe sees the right layout (A left or top) and at least one object's colour in the slot
the relation puts it (the two colours always differ, so swapped objects fail).
The probe's accuracy on held-out real images, by the same rule, is the ceiling (~100 %).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from data.files import atomic_write, atomic_write_text
from data.shapes import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, ShapesDataset

PROBE_CONFIG = "probe.json"
PROBE_WEIGHTS = "probe.safetensors"
FORMAT = "spikegan-attribute-probe/1"  # Bumped whenever the saved layout or architecture changes.

# Heads of the probe: name -> class names. Slot A / B as in the module docstring.
HEADS: dict[str, tuple[str, ...]] = {
    "count": ("1", "2"),
    "background": tuple(BACKGROUNDS),
    **{f"{slot}_{attr}": values for slot in ("a", "b") for attr, values in (
        ("shape", SHAPES), ("colour", tuple(COLOURS)), ("size", tuple(SIZES)), ("position", tuple(POSITIONS)))},
}
OBJECT_ATTRIBUTES = ("shape", "colour", "size", "position")
# Reported accuracies, in table order; attr_mean averages these.
REPORTED = ("count", "background", "shape", "colour", "size", "position", "relation")
# Also reported, outside the mean (which stays comparable with figures measured before it):
# "binding", a two-object scene with each colour on its own object's side. "relation" counts one
# colour in place as enough, so a generator that places the colours by a fixed rule of its own,
# whatever the caption's order, passes it half the time; binding shows that (right as often as
# swapped, about 0.34 each, on shapes32 after 50 kimg). "shape_one" and "shape_two" split shape by
# the scene's object count: shapes32 drew a lone object's shape far more often right (.88 against
# .62 of 400, 2026-12-07), so the count is where shape goes wrong.
EXTRA = ("binding", "shape_one", "shape_two")
IGNORE = -100  # F.cross_entropy's ignore_index: a head with no truth for this image.


# ----------------------------------------------------------------------------------------
# Ground truth <-> head targets.


def canonical_objects(attributes: dict) -> list[dict]:
    """The scene's objects in slot order: [A] or [A, B] (A = left or top of two)."""
    objects = list(attributes["objects"])
    if len(objects) == 2 and objects[0]["position"] in ("right", "bottom"):
        objects = objects[::-1]
    return objects


def targets(attributes: dict) -> dict[str, int]:
    """Scene attributes (data.shapes.scene_attributes) -> class index per head (IGNORE = none)."""
    objects = canonical_objects(attributes)
    out = {name: IGNORE for name in HEADS}
    out["count"] = len(objects) - 1
    out["background"] = HEADS["background"].index(attributes["background"])
    for slot, obj in zip(("a", "b"), objects):
        for attr in OBJECT_ATTRIBUTES:
            out[f"{slot}_{attr}"] = HEADS[f"{slot}_{attr}"].index(obj[attr])
    return out


def target_tensor(attributes: Sequence[dict]) -> torch.Tensor:
    """[N, num_heads] long, columns in HEADS order."""
    return torch.tensor([[targets(a)[h] for h in HEADS] for a in attributes], dtype=torch.long)


def attribute_hits(pred: dict[str, int], attributes: dict) -> dict[str, list[bool]]:
    """Which mentioned attributes of one scene the predicted heads get right.

    pred: head -> predicted class index. Returns reported name -> list of hits (an attribute
    may be counted once per object, or not at all when the caption does not mention it)."""
    objects = canonical_objects(attributes)
    mentioned = attributes.get("mentioned") or {}
    # The mentioned flags follow the caption's object order; map them to the canonical slots.
    flags = list(mentioned.get("objects") or [{a: True for a in OBJECT_ATTRIBUTES} for _ in objects])
    if len(objects) == 2 and attributes["objects"][0]["position"] in ("right", "bottom"):
        flags = flags[::-1]
    t = targets(attributes)
    hits: dict[str, list[bool]] = {name: [] for name in REPORTED + EXTRA}
    hits["count"].append(pred["count"] == t["count"])
    if mentioned.get("background", True):
        hits["background"].append(pred["background"] == t["background"])
    for slot, flag in zip(("a", "b"), flags):
        for attr in OBJECT_ATTRIBUTES:
            if flag.get(attr, True):
                hits[attr].append(pred[f"{slot}_{attr}"] == t[f"{slot}_{attr}"])
    hits["shape_one" if len(objects) == 1 else "shape_two"] = list(hits["shape"])
    if len(objects) == 2 and mentioned.get("relation", True):
        layout = pred["a_position"] == t["a_position"] and pred["b_position"] == t["b_position"]
        placed = pred["a_colour"] == t["a_colour"] or pred["b_colour"] == t["b_colour"]
        hits["relation"].append(bool(layout and placed and pred["count"] == 1))
        bound = pred["a_colour"] == t["a_colour"] and pred["b_colour"] == t["b_colour"]
        hits["binding"].append(bool(bound and pred["count"] == 1))
    return hits


def accuracy(predictions: torch.Tensor, attributes: Sequence[dict]) -> dict[str, float | None]:
    """predictions [N, num_heads] class indices (HEADS order) vs N scenes' attributes ->
    reported name -> accuracy over the mentioned instances (None where there were none)."""
    assert predictions.ndim == 2 and predictions.shape == (len(attributes), len(HEADS)), predictions.shape
    total: dict[str, list[bool]] = {name: [] for name in REPORTED + EXTRA}
    for row, attrs in zip(predictions.tolist(), attributes):
        for name, h in attribute_hits(dict(zip(HEADS, row)), attrs).items():
            total[name].extend(h)
    return {name: (sum(h) / len(h) if h else None) for name, h in total.items()}


# ----------------------------------------------------------------------------------------
# The probe.


@dataclass
class ProbeConfig:
    """The probe CNN and its training on procedural shapes."""

    resolution: int = 32  # Image side the probe reads (the generator's resolution).
    channels: int = 16  # Width of the first conv stage (doubles per downsampling, up to 128).
    hidden: int = 128  # Width of the layer before the heads.
    train_images: int = 10000  # Procedural training images (rendered once, kept in memory).
    steps: int = 1000  # Optimizer steps.
    batch: int = 64  # Images per step.
    lr: float = 3e-3  # Peak Adam learning rate (one-cycle schedule).
    data_seed: int = 1000  # ShapesDataset seed of the training images (the reference set uses 0).
    heldout_images: int = 1000  # Held-out real images for the probe's own accuracy.
    heldout_seed: int = 2000  # ShapesDataset seed of the held-out images.
    seed: int = 0  # Initialisation and batch order.

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"ProbeConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


def _conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class AttributeProbe(nn.Module):
    """Conv stages down to 8x8 (spatial layout kept, positions matter), an MLP, one linear layer
    with every head's logits. `forward(images float [B,3,R,R] in [-1,1]) -> logits [B, sum(classes)]`;
    `predict(images uint8 or float) -> [B, num_heads]` class indices in HEADS order."""

    def __init__(self, cfg: ProbeConfig):
        super().__init__()
        self.cfg = cfg
        r, cin, c = cfg.resolution, 3, cfg.channels
        # Batch norm: colours and backgrounds scale an object's contrast over a wide range.
        layers: list[nn.Module] = [*_conv_bn(cin, c), *_conv_bn(c, c)]
        while r > 8:
            cout = min(2 * c, 128)
            layers += [*_conv_bn(c, cout, stride=2), *_conv_bn(cout, cout)]
            c, r = cout, r // 2
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c * r * r, cfg.hidden), nn.ReLU(),
                                  nn.Linear(cfg.hidden, sum(len(v) for v in HEADS.values())))
        self.sizes = [len(v) for v in HEADS.values()]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        assert images.ndim == 4 and images.shape[1:] == (3, self.cfg.resolution, self.cfg.resolution), images.shape
        return self.head(self.features(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor, *, batch: int = 256) -> torch.Tensor:
        """uint8 (0..255) or float ([-1, 1]) images [N,3,R,R] -> [N, num_heads] long (CPU)."""
        device = next(self.parameters()).device
        out = []
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(device)
            x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float()
            logits = self(x).split(self.sizes, dim=1)  # per head [b, classes]
            out.append(torch.stack([lg.argmax(1) for lg in logits], dim=1).cpu())
        return torch.cat(out) if out else torch.zeros(0, len(HEADS), dtype=torch.long)

    def loss(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sum over heads of the cross-entropy (IGNORE targets skipped); target [B, num_heads]."""
        logits = self(images).split(self.sizes, dim=1)
        return sum(F.cross_entropy(lg, target[:, k], ignore_index=IGNORE) for k, lg in enumerate(logits))

    def save(self, out_dir: str | Path, *, info: dict | None = None) -> None:
        """probe.json (config, heads, `info`) + probe.safetensors, each replaced atomically."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(out_dir / PROBE_WEIGHTS, lambda tmp: save_file(state, str(tmp)))
        atomic_write_text(out_dir / PROBE_CONFIG, json.dumps({"format": FORMAT, "config": self.cfg.to_dict(),
                                                               "heads": {k: list(v) for k, v in HEADS.items()},
                                                               "info": info or {}}, indent=2))

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> "AttributeProbe":
        from safetensors.torch import load_file

        path = Path(path)
        for f in (path / PROBE_CONFIG, path / PROBE_WEIGHTS):
            if not f.is_file():
                raise FileNotFoundError(f"attribute probe: missing {f}")
        meta = json.loads((path / PROBE_CONFIG).read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path / PROBE_CONFIG}: format {meta.get('format')!r}, this version reads {FORMAT!r}; retrain it")
        if meta.get("heads") != {k: list(v) for k, v in HEADS.items()}:
            raise ValueError(f"{path / PROBE_CONFIG}: the probe's heads differ from data.shapes' vocabulary; retrain it")
        probe = cls(ProbeConfig.from_dict(meta["config"]))
        probe.load_state_dict(load_file(str(path / PROBE_WEIGHTS)), strict=True)
        probe.info = meta.get("info", {})
        return probe.eval().to(device)


def render_set(resolution: int, num: int, seed: int) -> tuple[torch.Tensor, list[dict]]:
    """The first `num` procedural items of ShapesDataset(resolution, seed=seed):
    (uint8 images [num, 3, R, R], their attributes)."""
    ds = ShapesDataset(resolution, size=num, seed=seed)
    items = [ds[i] for i in range(num)]
    return torch.stack([it["image"] for it in items]), [it["attributes"] for it in items]


def train_probe(cfg: ProbeConfig, *, device: str | torch.device = "cpu",
                log: Callable[[str], None] | None = None) -> tuple[AttributeProbe, dict]:
    """Trains the probe on procedural images; returns (probe in eval mode, report with the
    held-out real accuracy per attribute)."""
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    images, attrs = render_set(cfg.resolution, cfg.train_images, cfg.data_seed)
    target = target_tensor(attrs)
    probe = AttributeProbe(cfg).to(device)
    opt = torch.optim.Adam(probe.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.steps, 1), pct_start=0.1)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    probe.train()
    for step in range(cfg.steps):
        idx = torch.randint(len(images), (cfg.batch,), generator=gen)
        x = images[idx].to(device).float() / 127.5 - 1
        loss = probe.loss(x, target[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if log is not None and (step % 250 == 0 or step == cfg.steps - 1):
            log(f"probe step {step}/{cfg.steps} loss {losses[-1]:.4f}")
    probe.eval()
    held_images, held_attrs = render_set(cfg.resolution, cfg.heldout_images, cfg.heldout_seed)
    report = {"config": cfg.to_dict(), "loss_first": losses[0] if losses else None,
              "loss_last": float(np.mean(losses[-20:])) if losses else None,
              "heldout": accuracy(probe.predict(held_images), held_attrs)}
    return probe, report
