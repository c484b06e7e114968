"""The GAN objective, by named phase (StyleGAN2-ADA's `StyleGAN2Loss` layout).

Phases the training loop calls:
  Gmain  non-saturating logistic loss for G (and, through G's use of the code, the text
         encoder): softplus(-D(aug(G(z, c)), c)), plus contrastive_weight * the contrastive
         term on fakes, diversity_weight * the mode-seeking term, word_weight * the word term
         on fakes and sketch_weight * the sketch term.
  Dmain  softplus(D(aug(fake), c)) + softplus(-D(aug(real), c))
         + match_weight * mean over i != j of softplus(D(aug(real_i), c_j))   (matching-aware:
         a real image under another image's caption counts as fake, so D must read the caption)
         + contrastive_weight * the contrastive term on reals
         + word_weight * the word term on reals.
  Dreg   lazy R1 on reals: gamma / 2 * ||grad_x D(aug(x), c)||^2, multiplied by
         r1_interval because it runs only every r1_interval steps.

The text encoder sits inside G (one module, G's optimiser) and learns through its surrogate
gradients from the Gmain loss. D always receives a *detached* code: if the G loss could move the
code inside D's projection, the encoder would win by shifting codes toward what D calls real
instead of by changing images.

The matching-aware and contrastive terms score every image of the batch under every caption of
the batch from one D forward (`D(img, pooled, pairs=True)`, a [B, B] matrix whose diagonal is the
usual logit). Pairs whose captions code identically are neither mismatches nor negatives.

- Contrastive term (XMC-GAN): -log softmax_j(D(x_i, c_j))[i], on D's projection scores. On
  reals it teaches D to tell captions apart; on fakes it pulls G toward *its* caption.
- Mode-seeking term (MSGAN, Mao et al. 2019): the G phase draws the first half of its captions
  twice, with two latents, and adds 1 / (mean|G(z1, c) - G(z2, c)| / mean|z1 - z2| + 1e-5).
- Word term (AC-GAN's auxiliary classifier with a caption's words as labels): a linear layer on
  D's features predicts which vocabulary words the caption contains; D learns it on reals, G on
  fakes, and G's half counts only the caption's own words (a caption silent about the background
  is no claim that there is none).
- Sketch term (needs G's layout map, gan/layout.py): G's image average-pooled to the map's size
  is pulled by L1 toward a frozen copy of the warmed map's sketch of its caption, on the cells
  where the sketch draws an object.
- Palette and sketch overrides (TrainConfig.palette_override, sketch_override): where a training
  caption's colour words (or its lone object's place) were swapped while the image keeps its
  palette (or sketch), G and D are conditioned on the swapped caption, but the word and sketch
  terms take their targets from the caption the image shows (`content`), so the guide, not the
  words, decides.

What each term measured is in docs/experiments.md.

Callables the loss runs (the loop hands in DDP-wrapped or plain modules per phase):
  G(z [B, z_dim], batch) -> (img [B, 3, R, R], code SpikeCode)
  D(img [B, 3, R, R], pooled [N, C], pairs=False, words=False) -> logits [B] (pairs=True: [B, N];
      words=True: (logits, word_logits [B, V])).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from encoders.code import SpikeCode
from encoders.tokenizer import PAD_ID, UNK_ID, TokenBatch
from gan.augment import AugmentPipe
from gan.contrastive import contrastive_loss, distinct_pairs
from gan.layout import LayoutTeacher, border_colour

PHASES = ("Gmain", "Dmain", "Dreg")


@dataclass
class LossConfig:
    """Weights of the loss terms."""

    r1_gamma: float = 1.0  # R1 weight gamma; 0 = no R1.
    r1_interval: int = 16  # Lazy regularisation: R1 every this many steps (scaled up to match).
    match_weight: float = 1.0  # Weight of the matching-aware (mismatched caption) term in D.
    contrastive_weight: float = 0.0  # Weight of the image-caption contrastive term (D on reals, G on fakes).
    diversity_weight: float = 0.0  # Weight of the mode-seeking term in G (two latents per caption).
    word_weight: float = 0.0  # Weight of the word term (D's word classifier: trained on reals, G on fakes).
    # Weight of the sketch term: L1 between G's image, average-pooled to R x R, and the warmed
    # layout map's frozen sketch of its caption (gan.layout.LayoutTeacher), on the sketch's objects.
    sketch_weight: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def paired_rows(batch_size: int) -> list[int]:
    """Rows for the mode-seeking G batch: the first half twice (an odd last row is kept), so
    rows i and i + batch_size // 2 share a caption."""
    half = batch_size // 2
    return list(range(half)) * 2 + list(range(2 * half, batch_size))


def mode_seeking_loss(img: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """1 / (mean|img1 - img2| / mean|z1 - z2| + 1e-5) over the pairs (i, i + B // 2)."""
    half = img.shape[0] // 2
    ratio = (img[:half] - img[half:2 * half]).float().abs().mean() / (z[:half] - z[half:2 * half]).abs().mean()
    return 1 / (ratio + 1e-5)


def take_rows(batch: Any, rows: list[int]) -> Any:
    """Rows of a TokenBatch or SpikeCode (or of any tensor batch)."""
    return batch.index(rows) if isinstance(batch, (TokenBatch, SpikeCode)) else batch[torch.tensor(rows)]


def sketch_loss(img: torch.Tensor, sketch: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """Mean |img average-pooled to the sketch's R x R - sketch| over the cells where the sketch
    draws an object: its colour differs from the mean of the sketch's border cells by more than
    `threshold` summed over RGB in [-1, 1]. The background, which a caption may leave unnamed (the
    sketch then paints the average one), is left to D. 0 when no cell shows an object."""
    objects = (sketch - border_colour(sketch)).abs().sum(dim=1, keepdim=True) > threshold
    error = (F.adaptive_avg_pool2d(img, sketch.shape[-1]) - sketch).abs() * objects
    return error.sum() / (3 * objects.sum()).clamp(min=1)


def word_targets(tokens: TokenBatch, num_classes: int) -> torch.Tensor:
    """[B, num_classes] multi-hot: 1 where vocabulary entry v occurs in prompt b; padding and
    <unk> are never targets."""
    targets = torch.zeros(len(tokens), num_classes, device=tokens.ids.device)
    targets.scatter_(1, tokens.ids, tokens.mask.float())  # padding writes 0 to PAD_ID only
    targets[:, [PAD_ID, UNK_ID]] = 0
    return targets


def word_loss(word_logits: torch.Tensor, targets: torch.Tensor, *, negatives: bool = True) -> torch.Tensor:
    """Mean over images of the binary cross-entropy summed over the vocabulary (negatives=False:
    over the caption's own words only), divided by the image's number of target words."""
    bce = F.binary_cross_entropy_with_logits(word_logits.float(), targets, reduction="none")
    bce = (bce if negatives else bce * targets).sum(dim=1)
    return (bce / targets.sum(dim=1).clamp(min=1)).mean()


class GANLoss:
    """Computes each phase's loss tensor and its statistics; the caller runs backward."""

    def __init__(
        self,
        *,
        cfg: LossConfig,  # Term weights.
        augment: AugmentPipe | None,  # Applied to every image D sees; None = no augmentation.
        teacher: LayoutTeacher | None = None,  # The warmed layout's frozen sketch, for the sketch term.
    ) -> None:
        if cfg.sketch_weight > 0 and teacher is None:
            raise ValueError("loss.sketch_weight > 0 needs the warmed layout's sketch (teacher=...)")
        self.teacher = teacher if cfg.sketch_weight > 0 else None
        self.cfg = cfg
        self.augment = augment

    def run_D(self, D: Callable, img: torch.Tensor, code: SpikeCode, *, pairs: bool = False,
              words: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.augment is not None:
            img = self.augment(img)
        out = D(img, code.pooled, pairs=pairs, words=words)
        logits = out[0] if words else out
        assert logits.shape == ((img.shape[0], code.batch_size) if pairs else (img.shape[0],)), logits.shape
        return out

    def __call__(self, phase: str, **inputs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Dispatch by phase name; returns (loss scalar, detached statistics)."""
        if phase == "Gmain":
            return self.g_main(**inputs)
        if phase == "Dmain":
            return self.d_main(**inputs)
        if phase == "Dreg":
            return self.d_reg(**inputs)
        raise ValueError(f"unknown loss phase {phase!r}; expected one of {PHASES}")

    def g_main(self, *, G: Callable, D: Callable, z: torch.Tensor, batch: Any, content: Any = None,
               content_code: SpikeCode | None = None):
        """content / content_code: the tokens and code of the captions the images should show where
        a palette overrides the caption's colour words (word and sketch targets); None = batch's."""
        diversity = self.cfg.diversity_weight > 0 and z.shape[0] >= 2
        if diversity:
            rows = paired_rows(z.shape[0])
            batch, content, content_code = (None if x is None else take_rows(x, rows) for x in (batch, content, content_code))
        img, code = G(z, batch)
        cond = code.detach()  # D's view of the prompts
        content = batch if content is None else content
        shown = cond if content_code is None else content_code
        contrastive, words = self.cfg.contrastive_weight > 0, self.cfg.word_weight > 0
        scores = self.run_D(D, img, cond, pairs=contrastive, words=words)
        if words:
            scores, word_logits = scores
        logits = scores.diagonal() if contrastive else scores
        loss = F.softplus(-logits).mean()
        stats = {"loss/G": loss.detach(), "scores/fake_G": logits.detach().mean()}
        if contrastive:
            loss_con = contrastive_loss(scores, distinct_pairs(cond.pooled))
            loss = loss + self.cfg.contrastive_weight * loss_con
            stats["loss/G_contrastive"] = loss_con.detach()
        if diversity:
            loss_div = mode_seeking_loss(img, z)
            loss = loss + self.cfg.diversity_weight * loss_div
            stats["loss/G_mode_seeking"] = loss_div.detach()
        if words:
            loss_word = word_loss(word_logits, word_targets(content, word_logits.shape[1]), negatives=False)
            loss = loss + self.cfg.word_weight * loss_word
            stats["loss/G_word"] = loss_word.detach()
        if self.teacher is not None:
            loss_sketch = sketch_loss(img, self.teacher(shown.tokens, shown.mask))
            loss = loss + self.cfg.sketch_weight * loss_sketch
            stats["loss/G_sketch"] = loss_sketch.detach()
        # The encoder's spike statistics (firing rate, spikes and synaptic operations per prompt).
        stats.update({f"spikes/{k}": v.detach().float().mean() for k, v in code.stats.items()})
        return loss, stats

    def d_main(self, *, G: Callable, D: Callable, z: torch.Tensor, batch: Any, real: torch.Tensor, content: Any = None):
        """content: the tokens of the captions the real images show (word targets); None = batch."""
        with torch.no_grad():
            fake, code = G(z, batch)
        cond = code.detach()
        pairs = self.cfg.match_weight > 0 or self.cfg.contrastive_weight > 0
        words = self.cfg.word_weight > 0
        fake_logits = self.run_D(D, fake.detach(), cond)
        real_scores = self.run_D(D, real, cond, pairs=pairs, words=words)
        if words:
            real_scores, word_logits = real_scores
        real_logits = real_scores.diagonal() if pairs else real_scores
        loss_fake = F.softplus(fake_logits).mean()
        loss_real = F.softplus(-real_logits).mean()
        loss = loss_fake + loss_real
        stats = {
            "loss/D_fake": loss_fake.detach(),
            "loss/D_real": loss_real.detach(),
            "scores/fake": fake_logits.detach().mean(),
            "scores/real": real_logits.detach().mean(),
            # ADA's r_t numerator and denominator (summed, so they gather exactly).
            "ada/sign_sum": real_logits.detach().sign().sum(),
            "ada/count": torch.tensor(float(real.shape[0]), device=real.device),
        }
        distinct = distinct_pairs(cond.pooled) if pairs else None
        if self.cfg.match_weight > 0:
            w = distinct.to(real_scores.dtype)
            n = w.sum().clamp(min=1)
            loss_mis = (F.softplus(real_scores) * w).sum() / n
            loss = loss + self.cfg.match_weight * loss_mis
            stats["loss/D_mismatch"] = loss_mis.detach()
            stats["scores/mismatch"] = ((real_scores * w).sum() / n).detach()
        if self.cfg.contrastive_weight > 0:
            loss_con = contrastive_loss(real_scores, distinct)
            loss = loss + self.cfg.contrastive_weight * loss_con
            stats["loss/D_contrastive"] = loss_con.detach()
        if words:
            loss_word = word_loss(word_logits, word_targets(batch if content is None else content, word_logits.shape[1]))
            loss = loss + self.cfg.word_weight * loss_word
            stats["loss/D_word"] = loss_word.detach()
        stats["loss/D"] = loss.detach()
        return loss, stats

    def d_reg(self, *, D: Callable, real: torch.Tensor, code: SpikeCode):
        real = real.detach().requires_grad_(True)
        words = self.cfg.word_weight > 0
        logits = self.run_D(D, real, code.detach(), words=words)
        if words:  # the word classifier joins the graph below, as DDP expects
            logits, word_logits = logits
            logits = logits + (word_logits * 0).sum(dim=1)
        (grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        penalty = grad.float().square().sum(dim=(1, 2, 3))  # [B]
        loss = penalty.mean() * (self.cfg.r1_gamma / 2) * self.cfg.r1_interval
        # `logits * 0` keeps every D parameter in the graph (DDP expects a gradient for each).
        loss = loss + (logits * 0).sum()
        return loss, {"loss/r1": penalty.detach().mean()}
