"""Contrastive warm-up of the text encoder on the training pairs, before the GAN starts.

StyleGAN-T and GALIP condition on a CLIP text encoder, pre-trained to put what an image shows
first. Ours starts from random weights, and its pooled code then weighs what the words look like
(phrasing, word order) as much as what the image shows; G can follow only the strong directions
of the code. So the warm-up trains the encoder CLIP-style on the dataset's own pairs, briefly:

    image   -> ImageTower -> normalise --.
                                          > logit_scale * cosine [B, B] -> symmetric cross-entropy
    caption -> encoder    -> pooled code -> normalise

Each image must pick its caption from the batch, and each caption its image (captions that code
identically are no negatives). The loss reads the pooled code itself, with no text head between,
so the code becomes the joint space. The GAN then trains the encoder further at `encoder_lr_mult`
(0 freezes it, as shapes32 does).

With G's layout map (gan/layout.py) the warm-up also teaches the map to sketch the real image
from the caption's tokens (`warm_up_encoder`), then trains it alone on the warmed encoder's frozen
tokens for `layout_kimg` more (`warm_up_layout`): it learns to bind words to places only after
thousands of steps.

The warm-up runs once, at the start of a fresh or fine-tuned run, before the networks are
wrapped for multi-process training. There each process takes a share of every batch: the codes
and image embeddings are gathered, so every process computes the whole batch's contrastive loss,
and the gradients are summed (one process on the whole batch takes the same steps). A resumed run
loads the warmed encoder from its state and skips it. What it measured is in
docs/experiments.md.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from data import to_float
from encoders.encoder import CodeNorm
from gan.contrastive import clip_loss, distinct_pairs
from gan.layout import LayoutSketch, LayoutTeacher, PromptLayout, sketch_error
from gan.signals import catch_stop_signals
from gan.stream import make_loader


@dataclass
class WarmupConfig:
    kimg: float = 0.0  # Image-caption pairs shown, in thousands; 0 = no warm-up.
    batch: int = 64  # Pairs per step (each image's negatives are the batch's other captions).
    lr: float = 1e-3  # Adam learning rate of the encoder, the image tower, the temperature and the layout.
    # Pairs (thousands) on which G's layout map, if any, then trains alone on the warmed encoder's frozen tokens.
    layout_kimg: float = 0.0
    # A guided model's layout map reads each pair's palette and sketch too (dropped and overriding the
    # caption as in training), so it learns to place what the sketch shows before the GAN starts.
    guides: bool = False


class ImageTower(nn.Module):
    """Stride-2 3x3 convs with ReLU from R x R down to 4 x 4, flattened, then Linear (a flat
    head keeps where things are, which a global pool would lose)."""

    def __init__(self, *, resolution: int, out_features: int, width: int = 32, max_width: int = 256) -> None:
        super().__init__()
        layers, cin = [], 3
        for i in range(int(math.log2(resolution)) - 2):
            cout = min(width * 2**i, max_width)
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.ReLU()]
            cin = cout
        self.convs = nn.Sequential(*layers)
        self.cell_channels = cin
        self.head = nn.Linear(cin * 16, out_features)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """[B, 3, R, R] -> [B, out_features]."""
        return self.head(self.cells(img).flatten(1))

    def cells(self, img: torch.Tensor) -> torch.Tensor:
        """[B, 3, R, R] -> the 4x4 features the head reads, [B, cell_channels, 4, 4]."""
        return self.convs(img)


class ImageTextScorer(nn.Module):
    """The warm-up's image side: an ImageTower and CLIP's learnable temperature. Called with
    images and their captions' pooled codes, it returns (CLIP's loss, the [B, B] logits); captions
    that code identically are no negatives. gather: the batch is split over processes, and
    gather(rows) joins every process's rows (GatherRows.apply), so each process computes the loss
    of the whole batch."""

    def __init__(self, *, resolution: int, code_dim: int) -> None:
        super().__init__()
        self.image = ImageTower(resolution=resolution, out_features=code_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    def forward(self, img: torch.Tensor, pooled: torch.Tensor,
                gather: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        img_emb = self.image(img)
        if gather is not None:
            img_emb, pooled = gather(img_emb), gather(pooled)
        return clip_loss(img_emb, pooled, self.logit_scale, distinct_pairs(pooled.detach()))


class GatherRows(torch.autograd.Function):
    """Every process's rows [b, ...] joined in rank order, [world * b, ...]. For a loss that every
    process computes alike from the joined rows: the gradient of its own rows is its slice of the
    joined rows' gradient, so summing the parameters' gradients over the processes gives the
    gradient of the whole batch."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, rows.contiguous())
        ctx.rows = slice(dist.get_rank() * len(rows), (dist.get_rank() + 1) * len(rows))
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad[ctx.rows]


def new_sketch(layout: PromptLayout, device: torch.device | str = "cpu") -> LayoutSketch:
    """A fresh LayoutSketch head for `layout`, drawn on a forked RNG: the encoder's warm-up draws
    what it draws without it."""
    with torch.random.fork_rng(devices=[]):
        return LayoutSketch(layout.channels).to(device)


def warm_up_encoder(encoder: nn.Module, batches: Iterator[dict], tokenizer, cfg: WarmupConfig, *,
                    resolution: int, device: torch.device | str = "cpu",
                    should_stop: Callable[[], bool] | None = None, layout: PromptLayout | None = None,
                    sketch: LayoutSketch | None = None, emphasis: bool = False, world: int = 1) -> dict[str, float]:
    """Train `encoder` in place for cfg.kimg thousand pairs drawn from `batches` (collated batches
    of cfg.batch pairs, e.g. the training loop's `make_loader` stream). Returns the last step's
    loss and in-batch retrieval accuracy (image -> caption), the steps and the seconds.
    `should_stop` is asked before every step; when it says True the warm-up ends there
    ("warmup/steps" counts the steps taken). With `layout` (G's PromptLayout) and its `sketch`
    head (a fresh one when None), both train in place too: the map of each caption's tokens (detached: this loss leaves
    the encoder alone) must give the real image average-pooled to the map's size
    (gan.layout.sketch_error, "warmup/layout_error"). emphasis: read the captions' emphasis syntax
    (a dataset whose captions are written in it, as shapes with emphasised sizes). world > 1:
    `batches` are this process's shares of cfg.batch; the codes and image embeddings are gathered
    (every process computes the whole batch's loss), and the gradients summed over the processes."""
    scorer = ImageTextScorer(resolution=resolution, code_dim=encoder.code_dim).to(device)
    params = [*[p for p in encoder.parameters() if p.requires_grad], *scorer.image.parameters()]
    if layout is not None:
        sketch = sketch if sketch is not None else new_sketch(layout, device)
        params += [*layout.parameters(), *sketch.parameters()]
    # The temperature acts on the joined rows only: its gradient is the whole batch's on every process.
    opt = torch.optim.Adam([*params, scorer.logit_scale], lr=cfg.lr)
    steps = max(1, round(cfg.kimg * 1000 / cfg.batch))
    was_training = encoder.training
    encoder.train()
    norms = [m for m in encoder.modules() if isinstance(m, CodeNorm)]
    was_synced = [m.synced for m in norms]
    for m in norms:
        m.synced = world > 1  # the pooled code's statistics over the whole batch
    start = time.time()
    loss = logits = layout_error = None
    done = 0
    for _ in range(steps):
        if should_stop is not None and should_stop():
            break
        batch = next(batches)
        code = encoder(tokenizer(batch["text"], emphasis=emphasis).to(device))
        images = to_float(batch["image"]).to(device)
        loss, logits = scorer(images, code.pooled, gather=GatherRows.apply if world > 1 else None)
        total = loss
        if layout is not None:
            layout_error = sketch_error(sketch(layout(code.tokens.detach(), code.mask)), images,
                                        over_processes=world > 1)
            total = loss + layout_error
        opt.zero_grad(set_to_none=True)
        total.backward()
        if world > 1:
            sum_over_processes([p.grad for p in params if p.grad is not None])
        opt.step()
        done += 1
    for m, synced in zip(norms, was_synced):
        m.synced = synced
    encoder.train(was_training)
    stats = {"warmup/steps": done, "warmup/seconds": round(time.time() - start, 1)}
    if logits is not None:
        labels = torch.arange(len(logits), device=logits.device)
        stats["warmup/loss"] = float(loss.detach())
        stats["warmup/accuracy"] = float((logits.detach().argmax(dim=1) == labels).float().mean())
    if layout_error is not None:
        stats["warmup/layout_error"] = whole_batch(layout_error.detach(), world)
    return stats


def warm_up_layout(encoder: nn.Module, layout: PromptLayout, sketch: LayoutSketch, batches: Iterator[dict],
                   tokens_of: Callable[[dict, int], Any], cfg: WarmupConfig, *, device: torch.device | str = "cpu",
                   should_stop: Callable[[], bool] | None = None, world: int = 1) -> dict[str, float]:
    """Train `layout` and its `sketch` head alone, in place, for cfg.layout_kimg thousand pairs on
    the frozen encoder's tokens (the encoder in eval mode: its running statistics stay);
    tokens_of(batch, step) gives a batch's TokenBatch. Returns the steps taken and the last step's
    sketch error. world > 1: `batches` are this process's shares of cfg.batch, and the gradients
    are summed over the processes, so every one takes the step one process would take on the whole."""
    params = [*layout.parameters(), *sketch.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    was_training = encoder.training
    encoder.eval()
    done, layout_error = 0, None
    for step in range(max(1, round(cfg.layout_kimg * 1000 / cfg.batch))):
        if should_stop is not None and should_stop():
            break
        batch = next(batches)
        with torch.no_grad():
            code = encoder(tokens_of(batch, step).to(device))
        layout_error = sketch_error(sketch(layout(code.tokens, code.mask)), to_float(batch["image"]).to(device),
                                    over_processes=world > 1)
        opt.zero_grad(set_to_none=True)
        layout_error.backward()
        if world > 1:
            sum_over_processes([p.grad for p in params])
        opt.step()
        done += 1
    encoder.train(was_training)
    stats = {"warmup/layout_steps": done}
    if layout_error is not None:
        stats["warmup/layout_error"] = whole_batch(layout_error.detach(), world)
    return stats


def whole_batch(error: torch.Tensor, world: int) -> float:
    """A sketch error of the whole batch from this process's share (the shares' errors sum to it)."""
    if world > 1:
        dist.all_reduce(error)
    return float(error)


def sum_over_processes(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor by its sum over the processes, in one all-reduce."""
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
        t.copy_(part.view_as(t))


def run_warmup(cfg: WarmupConfig, encoder: nn.Module, dataset, tokenizer, *, seed: int, workers: int,
               resolution: int, device, any_process_stopped: Callable[[dict], bool],
               layout: PromptLayout | None = None, emphasis: bool = False,
               guided: tuple[Any, Callable[[dict, int], Any]] | None = None, rank: int = 0, world: int = 1,
               ) -> tuple[dict, LayoutTeacher | None, str | None]:
    """Both warm-up phases under the stop signals: (their log record, the warmed layout's frozen
    sketch (None without a layout), the signal's name if a process was stopped, else None).
    guided = (the dataset with guides, tokens_of(batch, step)): the layout phase goes on with the
    same pairs carrying their palette and sketch, coded by tokens_of (cfg.guides). Process `rank`
    of `world` (a collective call when world > 1) takes its share of every batch: the pairs one
    process would draw, dealt round robin; the processes' gradients are summed."""
    if cfg.batch % world:
        raise ValueError(f"the warm-up's batch of {cfg.batch} does not divide into {world} processes")
    share = cfg.batch // world
    pairs = iter(make_loader(dataset, batch_gpu=share, rank=rank, world=world, seed=seed, start=0, workers=workers))
    sketch = new_sketch(layout, device) if layout is not None else None
    start = time.time()
    with catch_stop_signals() as stop:
        def should_stop() -> bool:
            return any_process_stopped(stop)

        warm = warm_up_encoder(encoder, pairs, tokenizer, cfg, resolution=resolution, device=device,
                               should_stop=should_stop, layout=layout, sketch=sketch, emphasis=emphasis, world=world)
        if layout is not None and cfg.layout_kimg > 0 and not should_stop():
            def tokens_of(batch: dict, step: int):
                return tokenizer(batch["text"], emphasis=emphasis)

            if guided is not None:  # the same stream of pairs from where the encoder's phase left it
                del pairs
                pairs = iter(make_loader(guided[0], batch_gpu=share, rank=rank, world=world, seed=seed,
                                         start=warm["warmup/steps"] * share, workers=workers))
                tokens_of = guided[1]
            warm.update(warm_up_layout(encoder, layout, sketch, pairs, tokens_of, cfg, device=device,
                                       should_stop=should_stop, world=world))
    warm["warmup/seconds"] = round(time.time() - start, 1)
    del pairs
    stopped = any_process_stopped(stop)
    teacher = LayoutTeacher(copy.deepcopy(layout), sketch) if layout is not None else None
    return warm, teacher, (stop["signal"] or "signal") if stopped else None
