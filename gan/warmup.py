"""Contrastive warm-up of the text encoder on the training pairs, before the GAN starts.

StyleGAN-T and GALIP condition on a CLIP text encoder, pre-trained to put what an image shows
first. Ours starts from random weights, and then its pooled code weighs what the words look like
(phrasing, word order) as much as what the image shows: on shapes32 at initialisation colour
held 13 % of the code's variance, shape 10 %, position 7 %. G can follow only the strong
directions of the code, so the warm-up trains the encoder CLIP-style on the dataset's own
image-caption pairs, briefly:

    image   -> ImageTower -> normalise --.
                                          > logit_scale * cosine [B, B] -> symmetric cross-entropy
    caption -> encoder    -> pooled code -> normalise

Each image must pick its caption from the batch, and each caption its image (CLIP's loss;
captions that code identically are left out as negatives). The loss reads the pooled code
itself, with no text head between (so the code, not a head, becomes the joint space: measured
on shapes32, 51.2 kimg, a Linear head left the code's variance shares at colour .23, position
.14, shape .14; without it .26, .13, .15 and a lower final loss, 0.06 against 0.12). The GAN then
trains the encoder further, through its surrogate gradients, at `encoder_lr_mult`. The image
side (tower and temperature, an `ImageTextScorer`) is returned too: frozen, it can score G's
images against their captions during the GAN (the guide term, gan/loss.py).

Hard negatives (`hard_negatives`, NegCLIP, Yuksekgonul et al. 2023): in-batch retrieval can be
solved on the easy attributes alone (98 % on shapes32 after 800 steps). With hard negatives each
image must also rank its caption above a copy made from it (WordSwaps): with one word replaced by
another word the dataset uses between the same two neighbours ("a red [circle] on" -> "a red
[star] on"), so the code has to tell every such word apart, and the tower to see it; or with two
of its words exchanged ("a [blue] circle left of a [red] square"), so it has to say which word
goes with which (exchange: final loss 0.036 -> 0.232 on shapes32, the GAN's figures in
gan/loss.py). Measured with replacement on shapes32 (with the two halves
then encoded in separate forwards, each standardised by its own batch): the warm-up's final
loss 0.047 -> 0.120 (the task is harder) in 1.3-2.2x the time (the swapped captions are encoded
too); after 50 kimg of GAN, shape accuracy 0.29 -> 0.34 at an unchanged mean (0.68, one seed);
the main job with it and the loss's hard negatives (gan/loss.py) fell from 0.689 to 0.652, so
shapes32 leaves it off.

The warm-up runs once, at the start of a fresh or fine-tuned run, before the networks are
wrapped for multi-process training (every process runs it alike, and DDP starts from rank 0's
weights in any case). A resumed run loads the warmed encoder from its state and skips it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from data import to_float
from encoders.code import SpikeCode
from encoders.tokenizer import TokenBatch
from gan.discriminator import WordRegion
from gan.layout import LayoutSketch, PromptLayout, sketch_error
from gan.loss import contrastive_loss, distinct_pairs, hard_negative_kind, mask_identical_captions


@dataclass
class WarmupConfig:
    kimg: float = 0.0  # Image-caption pairs shown, in thousands; 0 = no warm-up.
    batch: int = 64  # Pairs per step (each image's negatives are the batch's other captions).
    lr: float = 1e-3  # Adam learning rate of the encoder, the image tower and the temperature.
    # Each image also rejects a negative made from its caption (WordSwaps): "off", "replace" (one
    # word replaced) or "exchange" (two of its words trade places).
    hard_negatives: str = "off"
    # The scorer also reads the caption's tokens: a WordRegion (gan/discriminator.py) over the image
    # tower's 4x4 cells, with a contrastive loss of its own, so it can tell which word goes with
    # which part of the image, which no pooled code here shows (ImageTextScorer has the figures).
    word_region: bool = False
    # Pairs (thousands) on which G's layout map (gan/layout.py), if any, then trains alone on the
    # warmed encoder's frozen tokens: it learns to bind only after thousands of steps.
    layout_kimg: float = 0.0

    def __post_init__(self) -> None:
        if self.kimg < 0:
            raise ValueError(f"warmup.kimg must be >= 0, got {self.kimg}")
        if self.batch < 2:
            raise ValueError(f"warmup.batch must be >= 2 (negatives come from the batch), got {self.batch}")
        if self.lr <= 0:
            raise ValueError(f"warmup.lr must be > 0, got {self.lr}")
        if self.layout_kimg < 0:
            raise ValueError(f"warmup.layout_kimg must be >= 0, got {self.layout_kimg}")
        self.hard_negatives = hard_negative_kind(self.hard_negatives, "warmup.hard_negatives")


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
    """The warm-up's image side: an ImageTower and CLIP's learnable temperature, and with
    `word_region` a WordRegion over the tower's 4x4 cells. Called with images, their captions'
    codes and `distinct_pairs(code.pooled)`, it returns (loss, the pooled [B, B] logits): clip_loss
    on the pooled code, plus with `word_region` the same symmetric contrastive loss on the
    word-region scores. `hard` = (codes of each image's hard-negative caption, valid [B]) adds
    one column to each image's rows. `hard_negatives` records the kind the warm-up trained with,
    so that the guide term scores G's images the same way.

    The pooled code does not say which word goes with which: after the shapes32 warm-up with
    exchange negatives ("a blue circle left of a red square" for "a red circle left of a blue
    square"), the pooled scorer put a two-object image's own caption above its exchanged copy
    0.524 of the time (1000 real images). The word-region term on this tower (trained alone on real
    pairs with the main job's frozen encoder: batch 64, lr 1e-3, exchange negatives; 2000 held-out
    images) did so 0.77 after 200 steps and 0.93 after 800 (2 minutes at one thread); warmed up with
    the encoder in the shapes32 warm-up, 0.92. As the guide of the GAN it did not teach G to bind
    (gan/loss.py, the guide term).
    """

    def __init__(self, *, resolution: int, code_dim: int, word_region: bool = False, max_tokens: int = 64,
                 hard_negatives: str = "off") -> None:
        super().__init__()
        self.image = ImageTower(resolution=resolution, out_features=code_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        self.words = WordRegion(self.image.cell_channels, code_dim, max_tokens=max_tokens) if word_region else None
        self.hard_negatives = hard_negative_kind(hard_negatives, "ImageTextScorer.hard_negatives")

    def forward(self, img: torch.Tensor, code: SpikeCode, distinct: torch.Tensor,
                hard: tuple[SpikeCode, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        cells = self.image.cells(img)
        loss, logits = clip_loss(self.image.head(cells.flatten(1)), code.pooled, self.logit_scale, distinct,
                                 (hard[0].pooled, hard[1]) if hard is not None else None)
        if self.words is not None:
            pairs = self.words(cells, code.tokens, code.mask, pairs=True)
            hard_words = None
            if hard is not None:
                hard_words = (self.words(cells, hard[0].tokens, hard[0].mask, pairs=False), hard[1])
            loss = loss + (contrastive_loss(pairs, distinct, hard_words) + contrastive_loss(pairs.T, distinct)) / 2
        return loss, logits


def clip_loss(img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor, distinct: torch.Tensor,
              hard: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric InfoNCE over cosine similarities; pairs whose captions code identically
    (distinct False off the diagonal) are no negatives. `hard` = (codes [B, C] of each image's
    own hard-negative caption, valid [B] bool): one more column in each image's row (NegCLIP).
    Returns (loss, [B, B] logits)."""
    scale = logit_scale.exp().clamp(max=100)
    img_n = F.normalize(img_emb, dim=1)
    logits = mask_identical_captions(scale * (img_n @ F.normalize(txt_emb, dim=1).T), distinct)
    hard_logits = None
    if hard is not None:
        hard_emb, valid = hard
        hard_logits = (scale * (img_n * F.normalize(hard_emb, dim=1)).sum(dim=1), valid)
    return (contrastive_loss(logits, distinct, hard_logits) + contrastive_loss(logits.T, distinct)) / 2, logits


class WordSwaps:
    """Hard-negative captions, of two kinds:
    - "replace": one token replaced by another token that the corpus uses between the same two
      neighbours ("a large red [circle] on the left" -> "... red [star] on ..."): a caption with
      other words;
    - "exchange": two of the caption's own tokens trade places, each a token the corpus uses
      between the other's neighbours ("a [red] circle left of a [blue] square" -> "a [blue]
      circle left of a [red] square"): the same words, bound the other way (ARO's word-order
      negatives, Yuksekgonul et al. 2023). A bag of words cannot tell it from the caption.

    Built from token ids, so it works for any tokenizer and needs no word lists; a caption with no
    such token (or, to exchange, no such pair of different tokens) gets no hard negative (valid
    False): one-object captions on shapes have none to exchange."""

    def __init__(self, fillers: dict[tuple[int, int], tuple[int, ...]]) -> None:
        self.fillers = fillers  # (left id, right id) -> every id seen between them (-1: start, -2: end)

    @staticmethod
    def contexts(tokens: TokenBatch) -> list[list[tuple[int, int, tuple[int, int]]]]:
        """Per caption, (position, id, (left id, right id)) of each real token (-1: start, -2: end)."""
        rows = []
        for ids, n in zip(tokens.ids.tolist(), tokens.lengths.tolist()):
            ids = ids[:n]
            rows.append([(t, i, key) for t, (i, key) in enumerate(zip(ids, zip([-1] + ids[:-1], ids[1:] + [-2])))])
        return rows

    @classmethod
    def build(cls, tokenizer, captions: list[str]) -> WordSwaps:
        fillers: dict[tuple[int, int], set[int]] = {}
        for row in cls.contexts(tokenizer(captions, emphasis=False)):
            for _, i, key in row:
                fillers.setdefault(key, set()).add(i)
        return cls({k: tuple(sorted(v)) for k, v in fillers.items() if len(v) > 1})

    def __call__(self, tokens: TokenBatch, kind: str = "replace") -> tuple[TokenBatch, torch.Tensor]:
        """(the batch with one hard negative per caption, valid [B] bool); kind "replace" or
        "exchange". Draws from torch's global RNG, so a seeded run swaps alike."""
        edit = {"replace": self.replace, "exchange": self.exchange}.get(kind)
        if edit is None:
            raise ValueError(f"WordSwaps kind must be 'replace' or 'exchange', got {kind!r}")
        ids = tokens.ids.clone()
        words = [list(w) for w in tokens.words]
        valid = torch.zeros(len(tokens), dtype=torch.bool, device=ids.device)
        for b, row in enumerate(self.contexts(tokens)):
            changes = edit(row, words[b])
            for t, new_id, new_word in changes:
                ids[b, t], words[b][t] = new_id, new_word
            valid[b] = bool(changes)
        return TokenBatch(ids, tokens.mask, tokens.weights, words), valid

    def replace(self, row: list, words: list[str]) -> list[tuple[int, int, str]]:
        """One token of a caption's context row replaced: [(position, new id, new word)], or []."""
        spots = [(t, i, self.fillers[key]) for t, i, key in row if key in self.fillers]
        if not spots:
            return []
        t, old, options = spots[int(torch.randint(len(spots), ()))]
        others = [i for i in options if i != old]
        new = others[int(torch.randint(len(others), ()))]
        return [(t, new, f"<{new}>")]  # the id as its word: the tokenizer's word list is not at hand

    def exchange(self, row: list, words: list[str]) -> list[tuple[int, int, str]]:
        """Two different tokens of a caption's context row, each a filler of the other's
        neighbours, trade places: [(position, new id, new word)] twice, or []."""
        fits = self.fillers
        pairs = [(t, i, u, j) for t, i, key in row for u, j, other in row
                 if t < u and i != j and j in fits.get(key, ()) and i in fits.get(other, ())]
        if not pairs:
            return []
        t, i, u, j = pairs[int(torch.randint(len(pairs), ()))]
        return [(t, j, words[u]), (u, i, words[t])]


def new_sketch(layout: PromptLayout, device: torch.device | str = "cpu") -> LayoutSketch:
    """A fresh LayoutSketch head for `layout`, drawn on a forked RNG: the encoder's warm-up draws
    what it draws without it."""
    with torch.random.fork_rng(devices=[]):
        return LayoutSketch(layout.channels).to(device)


def warm_up_encoder(encoder: nn.Module, batches: Iterator[dict], tokenizer, cfg: WarmupConfig, *,
                    resolution: int, device: torch.device | str = "cpu", swaps: WordSwaps | None = None,
                    should_stop: Callable[[], bool] | None = None,
                    layout: PromptLayout | None = None,
                    sketch: LayoutSketch | None = None) -> tuple[dict[str, float], ImageTextScorer]:
    """Train `encoder` in place for cfg.kimg thousand pairs drawn from `batches` (collated
    batches of cfg.batch pairs, e.g. the training loop's `make_loader` stream). Returns the last
    step's loss and in-batch retrieval accuracy (image -> caption), the steps and the seconds,
    and the trained image side, frozen and in eval mode. `should_stop` is asked before every
    step; when it says True the warm-up ends there ("warmup/steps" counts the steps taken).
    With cfg.hard_negatives, `swaps` (WordSwaps.build on the dataset's captions) makes them.
    With `layout` (G's PromptLayout, gan/layout.py), it is trained in place too: through a
    LayoutSketch head, its map of each caption's tokens (detached: this loss leaves the encoder
    alone) must give the real image average-pooled to the map's size (gan.layout.sketch_error,
    "warmup/layout_error"), then for cfg.layout_kimg more pairs alone, on the warmed encoder's
    frozen tokens ("warmup/layout_steps"). `sketch` is that head (made here when None), trained
    in place: the run keeps it for the sketch term (gan.layout.LayoutTeacher)."""
    if cfg.hard_negatives != "off" and swaps is None:
        raise ValueError("warmup.hard_negatives needs the caption corpus's WordSwaps (swaps=...)")
    scorer = ImageTextScorer(resolution=resolution, code_dim=encoder.code_dim, word_region=cfg.word_region,
                             max_tokens=encoder.cfg.max_length, hard_negatives=cfg.hard_negatives).to(device)
    params = [*[p for p in encoder.parameters() if p.requires_grad], *scorer.parameters()]
    if layout is not None:
        if sketch is None:
            sketch = new_sketch(layout, device)

        def layout_error_of(code: SpikeCode, images: torch.Tensor) -> torch.Tensor:
            return sketch_error(sketch(layout(code.tokens.detach(), code.mask)), images)
        params += [*layout.parameters(), *sketch.parameters()]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    steps = max(1, round(cfg.kimg * 1000 / cfg.batch))
    was_training = encoder.training
    encoder.train()
    start = time.time()
    loss = logits = None
    done = 0
    for _ in range(steps):
        if should_stop is not None and should_stop():
            break
        batch = next(batches)
        tokens = tokenizer(batch["text"], emphasis=False)
        hard = None
        if cfg.hard_negatives != "off":  # one forward for both, so the code's batch statistics are shared
            swapped, valid = swaps(tokens, cfg.hard_negatives)
            both = encoder(TokenBatch.cat([tokens, swapped]).to(device))
            B = len(tokens)
            code, hard = both.index(slice(0, B)), (both.index(slice(B, 2 * B)), valid.to(device))
        else:
            code = encoder(tokens.to(device))
        images = to_float(batch["image"]).to(device)
        loss, logits = scorer(images, code, distinct_pairs(code.pooled.detach()), hard)
        total = loss
        if layout is not None:
            layout_error = layout_error_of(code, images)
            total = loss + layout_error
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        done += 1
    layout_done = 0
    if layout is not None and cfg.layout_kimg > 0:  # then the layout alone, on the frozen tokens
        layout_opt = torch.optim.Adam([*layout.parameters(), *sketch.parameters()], lr=cfg.lr)
        encoder.eval()  # leaves its running statistics alone
        for _ in range(max(1, round(cfg.layout_kimg * 1000 / cfg.batch))):
            if should_stop is not None and should_stop():
                break
            batch = next(batches)
            with torch.no_grad():
                code = encoder(tokenizer(batch["text"], emphasis=False).to(device))
            layout_error = layout_error_of(code, to_float(batch["image"]).to(device))
            layout_opt.zero_grad(set_to_none=True)
            layout_error.backward()
            layout_opt.step()
            layout_done += 1
    encoder.train(was_training)
    stats = {"warmup/steps": done, "warmup/seconds": round(time.time() - start, 1)}
    if layout_done:
        stats["warmup/layout_steps"] = layout_done
    if logits is not None:
        labels = torch.arange(len(logits), device=logits.device)
        stats["warmup/loss"] = float(loss.detach())
        stats["warmup/accuracy"] = float((logits.detach().argmax(dim=1) == labels).float().mean())
        if layout is not None:
            stats["warmup/layout_error"] = float(layout_error.detach())
    return stats, scorer.requires_grad_(False).eval()
