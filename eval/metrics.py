"""A registry of named metrics (as StyleGAN's metric_main), each returning a dict of numbers.

    values = eval.metrics.compute(["fid", "alignment"], model, tokenizer, dataset, num=1000)
    result = eval.metrics.evaluate_images(["fid", "fd_domain"], folder, dataset, MetricOptions())

Protocol (COCO FID-30k style): image i is generated from prompt i and seed `seed + i`, where
the prompts are the reference set's captions in order (one image per caption), or a prompt
list cycled to `num`. A folder of images with captions (`evaluate_images`, another system's
outputs) is scored the same way, image i with its first caption. Images stream through in
batches: one pass feeds every frozen network the chosen metrics need (Inception features,
the attribute probe, CLIP), so scoring N images never holds N images in memory.

Metrics:
- fid, kid: clean-fid's FID and KID against cached reference statistics (`eval.fid`).
- fd_domain: the Frechet distance in the domain scorer's image embeddings (the alignment
  scorer's image head), beside FID: a domain-trained feature space rather than ImageNet's.
- lpips_diversity: mean pairwise LPIPS between seeds of the same prompt (`eval.lpips`).
- alignment: R-precision and cosine of a contrastive scorer trained on the reference set's
  real pairs, beside the same on held-out real pairs (`eval.alignment`).
- attributes: probe accuracy per attribute on the shapes domain (`eval.attributes`).
- clip_score: CLIPScore (100 * max(cos, 0)) with user-supplied open_clip weights (`eval.clip`).
- emphasis, order, energy: what the spikes carry and cost (`eval.emphasis`, `eval.order`, `eval.energy`).
- variety: how much the seeds of one prompt vary the background and sizes it leaves free, against
  real scenes of the same prompts (`eval.variety`, shapes).
- palette, sketch: adherence to the guides of a model trained with them (`eval.guides`); image i gets
  the palette of reference item i + palette_shift (0: its own) or the sketch of item i, not both.
- palette_conflict: the palette against the caption (shapes): image i gets the palette of its scene
  with every colour swapped for one the scene does not use (`eval.guides.conflicting_scene`). On
  the scene's object pixels (its ground-truth masks), each pixel shows the nearest of the swapped
  and the caption's object colours when within ΔE palette_tolerance. palette_wins / palette_caption_wins:
  share of images with more object pixels showing the palette's / the caption's colours (ties count
  for neither); palette_conflict_images: images scored.
- sketch_conflict: the sketch against the caption (shapes): image i gets the sketch of its scene
  moved where the caption does not put it (`eval.guides.conflicting_place`: a lone object to
  another place, a pair's relation turned a quarter). sketch_wins / sketch_caption_wins: share of
  images whose object mask (`eval.guides.object_masks`) has a higher IoU with the sketch's layout
  / the caption's (ties count for neither); sketch_conflict_iou: mean IoU with the sketch's layout.

The scorer and the probe are fitted on demand and cached by `eval.fitted`.
"""
from __future__ import annotations

import dataclasses
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from data.files import atomic_write_text, sha256_file
from encoders.tokenizer import cut_report, cuts_reported


class MetricError(ValueError):
    """A metric cannot run with what it was given; the message names the option or file."""


# ----------------------------------------------------------------------------------------
# Generation.


@torch.no_grad()
def generate(model, tokenizer, prompts: Sequence[str], seeds: Sequence[int], *, batch: int = 32,
             device: str | torch.device = "cpu", psi: float = 1.0, noise_mode: str = "const",
             emphasis: bool = True, guides=None) -> Iterator[torch.Tensor]:
    """Image i from (prompts[i], seeds[i]), in batches: yields uint8 [b, 3, R, R] on the CPU.

    model: gan.model.TextToImage (eval mode); z of seed s is `seed_latents([s])` (N(0, I) from
    torch.Generator().manual_seed(s), the sampling pipeline's rule), so an image depends on its
    prompt and seed only. emphasis=False reads the prompts literally, as training reads captions
    ("cocos (keeling) islands flag" is a caption, not an emphasis of "keeling"). guides: an
    encoders.guides.Guides with one row per image, or None."""
    from data import to_uint8
    from gan.pipeline import seed_latents

    if len(prompts) != len(seeds):
        raise ValueError(f"generate: {len(prompts)} prompts but {len(seeds)} seeds")
    if batch < 1:
        raise ValueError(f"--batch must be >= 1, got {batch}")
    z_dim = int(model.generator.z_dim)
    for lo in range(0, len(prompts), batch):
        tokens = tokenizer(list(prompts[lo : lo + batch]), emphasis=emphasis)
        if guides is not None:
            tokens = tokens.with_guides(guides.index(slice(lo, lo + batch)))
        tokens = tokens.to(device)
        code = model.encoder(tokens)
        z = seed_latents(seeds[lo : lo + batch], z_dim).to(device)  # [b, z_dim]
        img = model.generator(z, code, psi=psi, noise_mode=noise_mode)  # [b, 3, R, R] float ~[-1, 1]
        yield to_uint8(img).cpu()


# ----------------------------------------------------------------------------------------
# Options and the shared context of one evaluation.


@dataclass
class MetricOptions:
    """What every metric of one evaluation shares."""

    num: int = 1000  # Images generated (image i: prompt i, seed `seed + i`); of a folder, the first `num` scored.
    seed: int = 0  # First seed.
    batch: int = 32  # Images per generator / feature-network call.
    device: str = "cpu"  # Where the networks run.
    prompts: list[str] | None = None  # Prompts cycled to `num`; None = the reference captions.
    psi: float = 1.0  # Truncation psi (1 = none).
    num_ref: int | None = None  # Reference images for FID/KID; None = `num`.
    cache_dir: str | None = None  # Cache of reference stats, scorers, probes; None = $SPIKEGAN_CACHE or ~/.cache/spikegan.
    lpips_backbone: str | None = None  # AlexNet trunk file for LPIPS; None = torchvision cache / $SPIKEGAN_LPIPS_BACKBONE.
    lpips_prompts: int = 32  # Prompts for lpips_diversity (the first ones).
    lpips_seeds: int = 4  # Seeds per prompt for lpips_diversity.
    lpips_min_size: int = 64  # Smaller images are upsampled (bilinear) for AlexNet.
    scorer: str | None = None  # Trained alignment scorer folder; None = the cached one (trained on demand).
    scorer_num: int = 2000  # Real pairs the on-demand scorer trains on (20 % held out).
    scorer_text: str = "auto"  # Scorer text features: "minilm", "tower", "auto".
    probe: str | None = None  # Trained attribute probe folder; None = the cached one (trained on demand).
    clip_weights: str | None = None  # open_clip checkpoint for clip_score.
    clip_arch: str = "ViT-B-32"  # open_clip architecture of those weights.
    palette_tolerance: float = 15.0  # palette: CIE76 ΔE within which a pixel shows a palette colour.
    palette_shift: int = 0  # palette: image i gets the palette of reference item i + this (0 = its own).
    save_images: str | None = None  # Folder the generated images go to as PNGs + metadata.jsonl; None = not kept.
    extractor: Any = None  # Image features uint8 [B,3,H,W] -> [B,D]; None = InceptionFeatures (tests inject stand-ins).
    text_embedder: Any = None  # Frozen sentence embedder captions -> [N,384]; None = MiniLM when needed.
    log: Callable[[str], None] | None = None  # Progress messages.


class Context:
    """One model, or one folder of captioned images, scored against one reference set: lazily
    built shared pieces, weights used."""

    def __init__(self, model, tokenizer, dataset, opts: MetricOptions, *, images=None):
        if opts.num < 2:
            raise MetricError(f"--num must be >= 2, got {opts.num}")
        self.model, self.tokenizer, self.dataset, self.opts = model, tokenizer, dataset, opts
        self.images = images  # data.FolderDataset scored instead of a model's images, or None
        self.resolution = int(model.cfg.resolution if images is None else images.resolution)
        self.weights: dict[str, dict] = {}  # name -> {"file", "sha256"}
        self.seconds: dict[str, float] = {}
        self._items: list[dict] | None = None
        self._prompts: list[str] | None = None
        self._extractor = None
        self.generated: dict[str, Any] = {}  # consumer name -> result of the generation pass
        self.nets: dict[str, Any] = {}  # trained / loaded networks: "scorer", "probe", "clip"

    def log(self, msg: str) -> None:
        if self.opts.log is not None:
            self.opts.log(msg)

    # -- prompts -----------------------------------------------------------------------------

    def reference_items(self, num: int) -> list[dict]:
        """Text and attributes of the first `num` reference items (cycled if the set is smaller)."""
        if self._items is None or len(self._items) < num:
            n = len(self.dataset)
            if n == 0:
                raise MetricError("the reference set (--data) is empty")
            self._items = [{k: v for k, v in self.dataset[i % n].items() if k in ("text", "attributes")}
                           for i in range(num)]
        return self._items[:num]

    def prompts(self) -> list[str]:
        """Prompt of each generated image (of a folder: each image's first caption): [num] strings."""
        if self._prompts is None:
            if self.images is not None:
                self._prompts = [self.images.entries[i].texts[0] for i in range(self.opts.num)]
            elif self.opts.prompts is not None:
                if not self.opts.prompts:
                    raise MetricError("--prompts: the file has no prompts")
                self._prompts = [self.opts.prompts[i % len(self.opts.prompts)] for i in range(self.opts.num)]
            else:
                self._prompts = [it["text"] for it in self.reference_items(self.opts.num)]
        return self._prompts

    def seeds(self) -> list[int]:
        return [self.opts.seed + i for i in range(self.opts.num)]

    @property
    def emphasis(self) -> bool:
        """User prompts (--prompts) take emphasis syntax; the reference captions are read
        literally, as training reads them."""
        return self.opts.prompts is not None

    def prompt_attributes(self, metric: str = "attributes") -> list[dict]:
        """The scene of each prompt (shapes), or a MetricError naming `metric`."""
        if self.opts.prompts is not None:
            raise MetricError(f"{metric}: prompts from --prompts have no known scenes; use --data shapes "
                              "without --prompts")
        items = self.reference_items(self.opts.num)
        if any("attributes" not in it for it in items):
            raise MetricError(f"{metric}: the reference set has no ground-truth attributes; use --data shapes")
        return [it["attributes"] for it in items]

    # -- frozen networks -----------------------------------------------------------------------

    @property
    def extractor(self):
        if self._extractor is None:
            if self.opts.extractor is not None:
                self._extractor = self.opts.extractor
            else:
                from eval.features import InceptionFeatures

                self._extractor = InceptionFeatures(self.opts.device, batch=self.opts.batch)
            self.record("inception", self._extractor)
        return self._extractor

    def record(self, name: str, obj, file_attr: str = "weights_file", sha_attr: str = "weights_sha256") -> None:
        """Note a weights file used (objects without one, e.g. test stand-ins, are named by class)."""
        f = getattr(obj, file_attr, None)
        sha = getattr(obj, sha_attr, None)
        if f is not None and sha is None and Path(f).is_file():
            sha = sha256_file(f)
        self.weights[name] = {"file": str(f) if f is not None else f"<{type(obj).__qualname__}>", "sha256": sha}

    def reference_stats(self, num: int):
        from eval.fid import reference_stats

        t = time.perf_counter()
        ref = reference_stats(self.dataset, self.resolution, num, self.extractor, self.opts.cache_dir,
                              batch=self.opts.batch)
        self.seconds["reference"] = self.seconds.get("reference", 0.0) + time.perf_counter() - t
        return ref

    # -- the generation pass -------------------------------------------------------------------

    def image_batches(self) -> Iterator[torch.Tensor]:
        """The scored images in order, uint8 [b, 3, R, R] batches: generated from (prompt, seed)
        pairs, or read from the folder."""
        if self.images is not None:
            from eval.features import iterate_batches

            yield from iterate_batches(self.images, self.opts.batch, limit=self.opts.num)
            return
        prompts = self.prompts()
        quiet = nullcontext()
        if not self.emphasis:  # reference captions: their cuts are reported once, not one by one
            if report := cut_report(self.tokenizer, list(dict.fromkeys(prompts))):
                self.log(report)
            quiet = cuts_reported()
        with quiet:
            yield from generate(self.model, self.tokenizer, prompts, self.seeds(), batch=self.opts.batch,
                                device=self.opts.device, psi=self.opts.psi, emphasis=self.emphasis)

    def run_generation(self, consumers: dict[str, "Consumer"]) -> None:
        """One pass over the scored images feeding each consumer's batches; results land in
        self.generated[name]."""
        todo = {k: c for k, c in consumers.items() if k not in self.generated}
        if not todo:
            return
        t = time.perf_counter()
        verb = "reading" if self.images is not None else "generating"
        self.log(f"{verb} {self.opts.num} images for {', '.join(todo)}")
        states = {k: c.start(self) for k, c in todo.items()}
        for images in self.image_batches():
            for k, c in todo.items():
                c.update(states[k], images)
        for k, c in todo.items():
            self.generated[k] = c.finish(states[k])
        self.seconds["generation_pass"] = time.perf_counter() - t


@dataclass
class Consumer:
    """What a metric needs from the generated images, accumulated batch by batch."""

    start: Callable[[Context], Any]
    update: Callable[[Any, torch.Tensor], None]
    finish: Callable[[Any], Any]


def _inception_consumer() -> Consumer:
    def start(ctx):
        return {"ctx": ctx, "feats": []}

    def update(state, images):
        state["feats"].append(np.asarray(state["ctx"].extractor(images), dtype=np.float32))

    return Consumer(start, update, lambda s: np.concatenate(s["feats"]))


def _probe_consumer() -> Consumer:
    def start(ctx):
        return {"probe": ctx_probe(ctx), "pred": []}

    def update(state, images):
        state["pred"].append(state["probe"].predict(images))

    return Consumer(start, update, lambda s: torch.cat(s["pred"]))


def _clip_consumer() -> Consumer:
    def start(ctx):
        return {"clip": ctx_clip(ctx), "ctx": ctx, "scores": [], "offset": 0}

    def update(state, images):
        clip, prompts = state["clip"], state["ctx"].prompts()
        lo = state["offset"]
        state["scores"].append(clip.score(images, prompts[lo : lo + len(images)]))
        state["offset"] += len(images)

    return Consumer(start, update, lambda s: torch.cat(s["scores"]))


def _save_consumer() -> Consumer:
    """The generated images as <i>.png in opts.save_images, listed with their prompt and seed in a
    metadata.jsonl that `--images` (or another system's scorer) reads back bit for bit."""
    def start(ctx):
        folder = Path(ctx.opts.save_images)
        folder.mkdir(parents=True, exist_ok=True)
        return {"folder": folder, "prompts": ctx.prompts(), "seeds": ctx.seeds(), "rows": []}

    def update(state, images):
        rows = state["rows"]
        for img in images:
            i = len(rows)
            name = f"{i:05d}.png"
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(state["folder"] / name)
            rows.append({"file_name": name, "text": state["prompts"][i], "seed": state["seeds"][i]})

    def finish(state):
        lines = "".join(json.dumps(r) + "\n" for r in state["rows"])
        return atomic_write_text(state["folder"] / "metadata.jsonl", lines)

    return Consumer(start, update, finish)


CONSUMERS: dict[str, Callable[[], Consumer]] = {
    "inception": _inception_consumer, "probe": _probe_consumer, "clip": _clip_consumer, "save": _save_consumer}


# ----------------------------------------------------------------------------------------
# The registry.


@dataclass
class Metric:
    fn: Callable[[Context], dict]
    needs: tuple[str, ...]  # Generation-pass consumers (CONSUMERS keys) it reads.
    scorer: bool = False  # Whether it uses the domain scorer (built before the pass, so that errors come first).
    images: bool = True  # Whether it can score a folder of images (False: it needs the model or the prompts' scenes).
    doc: str = ""


_REGISTRY: dict[str, Metric] = {}


def register(name: str, *, needs: tuple[str, ...] = (), scorer: bool = False, images: bool = True):
    def wrap(fn):
        _REGISTRY[name] = Metric(fn=fn, needs=needs, scorer=scorer, images=images,
                                 doc=(fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return wrap


def names() -> list[str]:
    return list(_REGISTRY)


def needs_features(metric_names: Sequence[str]) -> bool:
    """Whether any of the metrics reads Inception features of images."""
    return any("inception" in _REGISTRY[m].needs for m in metric_names if m in _REGISTRY)


def check_names(metric_names: Sequence[str]) -> list[str]:
    """Validate metric names (errors name the option and the known metrics)."""
    out = [m.strip() for m in metric_names if m.strip()]
    if not out:
        raise MetricError(f"--metrics: no metric given; known: {', '.join(_REGISTRY)}")
    unknown = [m for m in out if m not in _REGISTRY]
    if unknown:
        raise MetricError(f"--metrics: unknown metric(s) {', '.join(unknown)}; known: {', '.join(_REGISTRY)}")
    return list(dict.fromkeys(out))


def check_images_names(metric_names: Sequence[str]) -> list[str]:
    """check_names, and each metric must be able to score a folder of images."""
    out = check_names(metric_names)
    if unfit := [m for m in out if not _REGISTRY[m].images]:
        raise MetricError(f"--metrics: {', '.join(unfit)} score(s) a model, not a folder of images; "
                          f"for --images use {', '.join(m for m in _REGISTRY if _REGISTRY[m].images)}")
    return out


@register("fid", needs=("inception",))
def fid(ctx: Context) -> dict:
    """Frechet Inception distance to the reference set (clean-fid)."""
    from eval.fid import FeatureStats, frechet_distance

    ref = ctx.reference_stats(ctx.opts.num_ref or ctx.opts.num)
    gen = ctx.generated["inception"]
    stats = FeatureStats(gen.shape[1])
    stats.update(gen)
    return {"fid": frechet_distance(stats.mean(), stats.cov(), ref.mu, ref.sigma)}


@register("fd_domain", needs=("inception",), scorer=True)
def fd_domain(ctx: Context) -> dict:
    """Frechet distance between the domain scorer's image embeddings of the images and of the reference set."""
    from eval.fid import fid_from_features

    scorer = ctx_scorer(ctx).eval()
    ref = ctx.reference_stats(ctx.opts.num_ref or ctx.opts.num)
    with torch.no_grad():
        gen = scorer.embed_images(torch.from_numpy(ctx.generated["inception"])).cpu().double().numpy()  # [N, E]
        real = scorer.embed_images(torch.from_numpy(ref.features)).cpu().double().numpy()  # [N_ref, E]
    return {"fd_domain": fid_from_features(gen, real)}


@register("kid", needs=("inception",))
def kid(ctx: Context) -> dict:
    """Kernel Inception distance (clean-fid's unbiased estimate) and its spread over subsets of 1000."""
    from eval.fid import kid as kid_fn

    ref = ctx.reference_stats(ctx.opts.num_ref or ctx.opts.num)
    gen = ctx.generated["inception"]
    mean, std = kid_fn(gen, ref.features, seed=ctx.opts.seed)
    if len(gen) == len(ref.features) <= 1000:
        ctx.log(f"kid_std is 0: with {len(gen)} images a side, every subset of at most 1000 is a whole set "
                f"(a spread needs --num above 1000)")
    return {"kid": mean, "kid_std": std}


@register("lpips_diversity", images=False)
def lpips_diversity(ctx: Context) -> dict:
    """Mean pairwise LPIPS between seeds of the same prompt (low = mode collapse)."""
    from data import to_float
    from eval.lpips import LPIPS, lpips_diversity as diversity

    opts = ctx.opts
    if opts.lpips_seeds < 2:
        raise MetricError(f"lpips_diversity needs >= 2 seeds per prompt, got {opts.lpips_seeds}")
    try:
        net = LPIPS(opts.lpips_backbone).to(opts.device)
    except FileNotFoundError as e:
        raise MetricError(str(e)) from e
    ctx.record("lpips_backbone", net, "backbone_file", "backbone_sha256")
    ctx.weights["lpips_heads"] = {"file": net.heads_file, "sha256": sha256_file(net.heads_file)}
    prompts = list(dict.fromkeys(ctx.prompts()))[: opts.lpips_prompts]
    seeds = [opts.seed + j for j in range(opts.lpips_seeds)]
    groups = []
    for p in prompts:
        images = torch.cat(list(generate(ctx.model, ctx.tokenizer, [p] * len(seeds), seeds, batch=opts.batch,
                                         device=opts.device, psi=opts.psi, emphasis=ctx.emphasis)))
        x = to_float(images)  # [S, 3, R, R] in [-1, 1], quantised like saved PNGs
        if x.shape[-1] < opts.lpips_min_size:  # AlexNet's pooling needs >= ~32 px
            x = F.interpolate(x, size=(opts.lpips_min_size,) * 2, mode="bilinear", align_corners=False)
        groups.append(x)
    return {"lpips_diversity": diversity(groups, net, batch=opts.batch)}


@register("alignment", needs=("inception",), scorer=True)
def alignment(ctx: Context) -> dict:
    """R-precision and cosine of the domain scorer; *_real = on held-out real pairs (the ceiling)."""
    from eval.alignment import score

    scorer = ctx_scorer(ctx)
    out = score(scorer, torch.from_numpy(ctx.generated["inception"]), ctx.prompts(), seed=ctx.opts.seed)
    held = scorer.info.get("report", {}).get("heldout", {})
    return {"r_precision": out["r_precision"], "cosine": out["cosine"],
            "r_precision_real": held.get("r_precision"), "cosine_real": held.get("cosine"),
            "candidates": out["candidates"]}


@register("attributes", needs=("probe",), images=False)
def attributes(ctx: Context) -> dict:
    """Probe accuracy per attribute vs the prompt's scene (shapes); probe_* = on real images."""
    from eval.attributes import EXTRA, REPORTED, accuracy

    acc = accuracy(ctx.generated["probe"], ctx.prompt_attributes())
    real = ctx_probe(ctx).info.get("report", {}).get("heldout", {})
    out: dict[str, float | None] = {f"attr_{k}": acc[k] for k in REPORTED}
    out["attr_mean"] = _mean(acc[k] for k in REPORTED)
    out.update({f"attr_{k}": acc[k] for k in EXTRA})
    out.update({f"probe_{k}": real.get(k) for k in REPORTED})
    out["probe_mean"] = _mean(real.get(k) for k in REPORTED)
    out.update({f"probe_{k}": real.get(k) for k in EXTRA})  # None from a probe cached before binding existed
    return out


@register("clip_score", needs=("clip",))
def clip_score(ctx: Context) -> dict:
    """CLIPScore (torchmetrics' definition: 100 * max(cosine, 0)) with user-supplied open_clip weights."""
    return {"clip_score": float(ctx.generated["clip"].double().mean())}


def require_guides(ctx: Context, metric: str, *, palette: bool, sketch: bool) -> None:
    """A MetricError naming `metric` when the model was trained without the guides it needs."""
    cfg = ctx.model.cfg.encoder
    if palette and not cfg.palette:
        raise MetricError(f"{metric}: this model was trained without a palette input (train one with --palette on)")
    if sketch and not cfg.sketch_grid:
        raise MetricError(f"{metric}: this model was trained without a sketch input (train one with --sketch-grid 8)")


def palette_tolerance(ctx: Context) -> float:
    """--palette-tolerance, checked."""
    if not ctx.opts.palette_tolerance > 0:
        raise MetricError(f"--palette-tolerance must be > 0, got {ctx.opts.palette_tolerance}")
    return ctx.opts.palette_tolerance


def guided_reference(ctx: Context, *, palette: bool, sketch: bool):
    """The reference items with the guides the model takes (data.guides.GuidedDataset), or a
    MetricError naming the metric when the model was trained without them."""
    from data.guides import GuidedDataset
    from encoders.config import MAX_COLOURS

    require_guides(ctx, "palette" if palette else "sketch", palette=palette, sketch=sketch)
    grid = ctx.model.cfg.encoder.sketch_grid if sketch else 0
    return GuidedDataset(ctx.dataset, colours=MAX_COLOURS if palette else 0, grid=grid)


def generate_guided(ctx: Context, guides) -> torch.Tensor:
    """uint8 [num, 3, R, R]: image i from prompt i, seed `seed + i` and guides row i."""
    return torch.cat(list(generate(ctx.model, ctx.tokenizer, ctx.prompts(), ctx.seeds(), batch=ctx.opts.batch,
                                   device=ctx.opts.device, psi=ctx.opts.psi, emphasis=ctx.emphasis, guides=guides)))


@register("palette", images=False)
def palette(ctx: Context) -> dict:
    """Palette adherence: share of the palette's colours in the image, share of pixels far from all of them."""
    from encoders.guides import Guides
    from eval.guides import palette_adherence

    tolerance = palette_tolerance(ctx)
    ref, n = guided_reference(ctx, palette=True, sketch=False), ctx.opts.num
    items = [ref[(i + ctx.opts.palette_shift) % len(ref)] for i in range(n)]
    colours = torch.stack([it["palette"] for it in items])
    weights = torch.stack([it["palette_weights"] for it in items])
    images = generate_guided(ctx, Guides(colours, weights))
    coverage, outside = palette_adherence(images, colours, weights, tolerance=tolerance)
    return {"palette_coverage": float(coverage.mean()), "palette_outside": float(outside.mean())}


@register("palette_conflict", images=False)
def palette_conflict(ctx: Context) -> dict:
    """Palette against caption (shapes): share of images whose objects show the palette's colours, not the caption's."""
    from data.guides import palette_slots, scene_mask, scene_palette
    from data.shapes import Scene
    from encoders.config import MAX_COLOURS
    from encoders.guides import Guides
    from eval.guides import conflict_shares, conflicting_scene, object_colours

    require_guides(ctx, "palette_conflict", palette=True, sketch=False)
    tolerance = palette_tolerance(ctx)
    scenes = [Scene.from_dict(a) for a in ctx.prompt_attributes("palette_conflict")]
    swapped = [conflicting_scene(s, i) for i, s in enumerate(scenes)]
    slots = [palette_slots(scene_palette(s, ctx.resolution), MAX_COLOURS) for s in swapped]
    images = generate_guided(ctx, Guides(torch.stack([c for c, _ in slots]), torch.stack([w for _, w in slots])))
    masks = torch.stack([scene_mask(s, ctx.resolution) > 0.5 for s in scenes])  # [N, R, R] the caption's layout
    palette_colours = torch.stack([object_colours(s) for s in swapped])  # [N, 2, 3]
    caption_colours = torch.stack([object_colours(s) for s in scenes])  # [N, 2, 3]
    palette_share, caption_share = conflict_shares(images, masks, palette_colours, caption_colours, tolerance=tolerance)
    return {"palette_wins": float((palette_share > caption_share).float().mean()),
            "palette_caption_wins": float((caption_share > palette_share).float().mean()),
            "palette_conflict_images": len(scenes)}


@register("sketch_conflict", images=False)
def sketch_conflict(ctx: Context) -> dict:
    """Sketch against caption (shapes): share of images laid out as the sketch says, not the caption."""
    from data.guides import scene_mask, scene_sketch
    from data.shapes import Scene
    from encoders.guides import Guides
    from eval.guides import conflicting_place, mask_iou, object_masks

    require_guides(ctx, "sketch_conflict", palette=False, sketch=True)
    R, grid = ctx.resolution, ctx.model.cfg.encoder.sketch_grid
    scenes = [Scene.from_dict(a) for a in ctx.prompt_attributes("sketch_conflict")]
    moved = [conflicting_place(s, i) for i, s in enumerate(scenes)]
    sketches = torch.stack([scene_sketch(m, R, grid) for m in moved])
    images = generate_guided(ctx, Guides(sketch=sketches, sketch_mask=torch.ones(len(scenes), dtype=torch.bool)))
    drawn = object_masks(images)
    to_sketch = mask_iou(drawn, torch.stack([scene_mask(m, R) > 0.5 for m in moved]))
    to_caption = mask_iou(drawn, torch.stack([scene_mask(s, R) > 0.5 for s in scenes]))
    return {"sketch_wins": float((to_sketch > to_caption).float().mean()),
            "sketch_caption_wins": float((to_caption > to_sketch).float().mean()),
            "sketch_conflict_iou": float(to_sketch.mean()), "sketch_conflict_images": len(scenes)}


@register("sketch", images=False)
def sketch(ctx: Context) -> dict:
    """Sketch adherence: object-mask IoU on shapes, else the mean colour error per sketch cell."""
    from data.guides import scene_mask
    from data.shapes import Scene
    from encoders.guides import Guides
    from eval.guides import mask_iou, object_masks, sketch_cell_error

    ref, n = guided_reference(ctx, palette=False, sketch=True), ctx.opts.num
    items = [ref[i % len(ref)] for i in range(n)]
    sketches = torch.stack([it["sketch"] for it in items])
    images = generate_guided(ctx, Guides(sketch=sketches, sketch_mask=torch.ones(n, dtype=torch.bool)))
    out = {"sketch_cell_error": float(sketch_cell_error(images, sketches).mean())}
    if all("attributes" in it for it in items):
        target = torch.stack([scene_mask(Scene.from_dict(it["attributes"]), ctx.resolution) > 0.5 for it in items])
        out["sketch_iou"] = float(mask_iou(object_masks(images), target).mean())
    return out


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


# ----------------------------------------------------------------------------------------
# The networks a Context fits or loads, checked against the options (eval.fitted, eval.clip).


def ctx_scorer(ctx: Context):
    if "scorer" not in ctx.nets:
        from eval.alignment import AlignmentScorer, ScorerConfig
        from eval.fid import extractor_id
        from eval.fitted import fit_scorer

        opts = ctx.opts
        t = time.perf_counter()
        if opts.scorer is not None:
            if not (Path(opts.scorer) / "scorer.json").is_file():
                raise MetricError(f"--scorer {opts.scorer}: no scorer.json there (make one with `python -m eval train-scorer`)")
            scorer = AlignmentScorer.load(opts.scorer, device=opts.device, text_embedder=opts.text_embedder)
            folder = Path(opts.scorer)
            if scorer.info.get("resolution") not in (None, ctx.resolution):
                raise MetricError(f"--scorer {opts.scorer}: trained on {scorer.info['resolution']} px images, the "
                                  f"model makes {ctx.resolution} px; retrain with train-scorer --resolution {ctx.resolution}")
            if scorer.info.get("network") not in (None, extractor_id(ctx.extractor)):
                raise MetricError(f"--scorer {opts.scorer}: trained on features of network {scorer.info['network']}, "
                                  f"but this run extracts {extractor_id(ctx.extractor)}")
        else:
            ctx.log(f"alignment scorer: {opts.scorer_num} real pairs")
            scorer, folder = fit_scorer(ctx.dataset, ctx.resolution, opts.scorer_num, ctx.extractor,
                                        cfg=ScorerConfig(text=opts.scorer_text), cache_dir=opts.cache_dir,
                                        device=opts.device, batch=opts.batch, text_embedder=opts.text_embedder,
                                        log=ctx.log)
        ctx.weights["alignment_scorer"] = {"file": str(folder / "scorer.safetensors"),
                                           "sha256": sha256_file(folder / "scorer.safetensors")}
        if scorer.text_embedder is not None:
            ctx.record("minilm", scorer.text_embedder)
        ctx.seconds["scorer"] = time.perf_counter() - t
        ctx.nets["scorer"] = scorer
    return ctx.nets["scorer"]


def ctx_probe(ctx: Context):
    if "probe" not in ctx.nets:
        from eval.attributes import AttributeProbe, ProbeConfig
        from eval.fitted import fit_probe

        opts = ctx.opts
        t = time.perf_counter()
        if opts.probe is not None:
            probe, folder = AttributeProbe.load(opts.probe, device=opts.device), Path(opts.probe)
            if probe.cfg.resolution != ctx.resolution:
                raise MetricError(f"--probe {opts.probe}: trained at {probe.cfg.resolution} px, the model makes "
                                  f"{ctx.resolution} px images")
        else:
            ctx.log(f"attribute probe at {ctx.resolution} px")
            probe, folder = fit_probe(ProbeConfig(resolution=ctx.resolution), cache_dir=opts.cache_dir,
                                      device=opts.device, log=ctx.log)
        ctx.weights["attribute_probe"] = {"file": str(folder / "probe.safetensors"),
                                          "sha256": sha256_file(folder / "probe.safetensors")}
        ctx.seconds["probe"] = time.perf_counter() - t
        ctx.nets["probe"] = probe
    return ctx.nets["probe"]


def ctx_clip(ctx: Context):
    if "clip" not in ctx.nets:
        from eval.clip import ClipScorer

        if ctx.opts.clip_weights is None:
            raise MetricError("clip_score needs open_clip weights: pass --clip-weights PATH (a local open_clip "
                              "checkpoint; nothing is downloaded) and install the optional extra open_clip_torch")
        try:
            clip = ClipScorer(ctx.opts.clip_weights, arch=ctx.opts.clip_arch, device=ctx.opts.device)
        except (ImportError, FileNotFoundError) as e:
            raise MetricError(str(e)) from e
        ctx.record("clip", clip)
        ctx.nets["clip"] = clip
    return ctx.nets["clip"]


# ----------------------------------------------------------------------------------------
# Entry points.


@dataclass
class EvalResult:
    """The outcome of scoring one model."""

    values: dict[str, float | int | None]  # Flat: metric value name -> number.
    num_images: int  # Images generated for the main pass.
    seeds: dict | None  # {"first": s, "count": n}: image i used seed first + i; None for a folder of images.
    weights: dict[str, dict]  # Weight files used: name -> {"file", "sha256"}.
    seconds: dict[str, float] = field(default_factory=dict)  # Time per stage and metric, and "total".

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def evaluate(metric_names: Sequence[str], model, tokenizer, dataset, opts: MetricOptions) -> EvalResult:
    """Run the named metrics on one model (gan.model.TextToImage in eval mode) against the
    reference `dataset` (items {"image": uint8 [3,R,R], "text", ...} at the model's resolution)."""
    model.eval()
    return _evaluate(check_names(metric_names), Context(model, tokenizer, dataset, opts))


def evaluate_images(metric_names: Sequence[str], images, dataset, opts: MetricOptions) -> EvalResult:
    """Run the named metrics on a folder of captioned images (data.FolderDataset, read at the
    reference's resolution) against the reference `dataset`: the first `opts.num` images (all
    when fewer), image i with its first caption. `seeds` of the result is None."""
    metric_names = check_images_names(metric_names)
    opts = dataclasses.replace(opts, num=min(opts.num, len(images)))
    return _evaluate(metric_names, Context(None, None, dataset, opts, images=images))


def _evaluate(metric_names: list[str], ctx: Context) -> EvalResult:
    t0 = time.perf_counter()
    opts = ctx.opts
    # Build what the pass feeds first (so a missing file fails before generating).
    needs = list(dict.fromkeys(n for m in metric_names for n in _REGISTRY[m].needs))
    if "clip" in needs:
        ctx_clip(ctx)
    if "probe" in needs:
        ctx.prompt_attributes()
        ctx_probe(ctx)
    if any(_REGISTRY[m].scorer for m in metric_names):
        ctx_scorer(ctx)
    if opts.save_images is not None and ctx.images is None:
        needs.append("save")
    ctx.run_generation({n: CONSUMERS[n]() for n in needs})
    values: dict[str, Any] = {}
    for name in metric_names:
        t = time.perf_counter()
        ctx.log(f"metric {name}")
        values.update(_REGISTRY[name].fn(ctx))
        ctx.seconds[name] = time.perf_counter() - t
    ctx.seconds["total"] = time.perf_counter() - t0
    seeds = None if ctx.images is not None else {"first": opts.seed, "count": opts.num}
    return EvalResult(values=values, num_images=opts.num, seeds=seeds, weights=ctx.weights, seconds=ctx.seconds)


def compute(metric_names: Sequence[str], model, tokenizer, dataset, *, num: int = 1000, seed: int = 0,
            batch: int = 32, device: str = "cpu", **options) -> dict:
    """The named metrics' values as one flat dict of numbers (what the training loop logs at
    snapshots). `options` are further MetricOptions fields (cache_dir, lpips_backbone, ...)."""
    opts = MetricOptions(num=num, seed=seed, batch=batch, device=device, **options)
    return evaluate(metric_names, model, tokenizer, dataset, opts).values


def snapshot_callback(metric_names: Sequence[str], dataset, **compute_kwargs) -> Callable[[Path, float], dict]:
    """A `metrics_callback(model_dir, kimg) -> dict` for gan.training.train: loads the exported
    snapshot model and runs `compute` on it (only numbers are returned; None values are dropped)."""
    metric_names = check_names(metric_names)
    kwargs = dict(compute_kwargs)
    device = kwargs.get("device", "cpu")

    def callback(model_dir: Path, kimg: float) -> dict:
        from gan.model import load_model

        if kwargs.get("extractor") is None and needs_features(metric_names):
            from eval.features import InceptionFeatures

            kwargs["extractor"] = InceptionFeatures(device, batch=kwargs.get("batch", 32))  # loaded once, reused
        model, tokenizer = load_model(model_dir, device=device)
        values = compute(metric_names, model, tokenizer, dataset, **kwargs)
        return {k: v for k, v in values.items() if v is not None}

    return callback


import eval.emphasis  # noqa: E402,F401  (at the end: the spike metrics register on import)
import eval.energy  # noqa: E402,F401
import eval.order  # noqa: E402,F401
import eval.variety  # noqa: E402,F401
