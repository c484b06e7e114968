"""The GAN objective, by named phase (StyleGAN2-ADA's `StyleGAN2Loss` layout).

Phases the training loop calls:
  Gmain  non-saturating logistic loss for G (and, through G's use of the code, the text
         encoder): softplus(-D(aug(G(z, c)), c)), plus contrastive_weight * the contrastive
         term on fakes, diversity_weight * the mode-seeking term, word_weight * the word term
         on fakes, guide_weight * the guide term and sketch_weight * the sketch term (below).
  Dmain  softplus(D(aug(fake), c)) + softplus(-D(aug(real), c))
         + match_weight * mean over i != j of softplus(D(aug(real_i), c_j))   (matching-aware:
         a real image under another image's caption counts as fake, so D must read the caption)
         + contrastive_weight * the contrastive term on reals
         + word_weight * the word term on reals.
  Dreg   lazy R1 on reals: gamma / 2 * ||grad_x D(aug(x), c)||^2, multiplied by
         r1_interval because it runs only every r1_interval steps.

How the text encoder trains: it sits inside G (one module with G's optimiser) and learns
through its surrogate gradients from the Gmain loss, via the mapping network and the
cross-attention that read the code. D always receives a *detached* code: if the G
loss could also move the code inside D's projection head, the encoder would win the G loss
by shifting codes toward what D calls real instead of by changing images, a shortcut that
chases D and does not improve samples. D's view of a caption is therefore whatever the
encoder currently says, and the matching-aware term keeps D conditioning on it.

The matching-aware and contrastive terms score every image of the batch under every caption
of the batch from one D forward (`D(img, pooled, pairs=True)`, a [B, B] matrix whose diagonal
is the usual logit), so B - 1 mismatched captions per real image cost no extra D pass. Pairs
whose captions code identically are neither mismatches nor negatives.

Contrastive term (XMC-GAN's image-text contrastive loss, on D's own projection scores):
cross-entropy of each image's row of scores against its own caption, -log softmax_j(D(x_i,
c_j))[i]. On reals it teaches D's projection to tell the captions apart; on fakes it gives G a
gradient toward *its* caption and away from the batch's others, a conditioning signal that
does not wait for D's realism verdict to depend on the caption (measured on shapes32 at 20
kimg: attribute accuracy for object count 0.76 -> 0.81, position 0.63 -> 0.69).

Mode-seeking term (MSGAN, Mao et al. 2019): with diversity_weight > 0 the G phase draws the
first half of its captions twice, with two latents each, and adds 1 / (mean|G(z1, c) - G(z2, c)|
/ mean|z1 - z2| + 1e-5): two seeds of one prompt that give one image cost G a lot. Strong
conditioning pulls a conditional GAN toward one image per prompt (the contrastive term and a
higher learning rate took shapes32's LPIPS diversity from 0.12 to 0.06 at 20 kimg). In pixels,
the cheapest way for two seeds to differ is a flat background flip (white vs black: a distance of
2 over most of the image), even when the caption names the background. Measured on the shapes32
main job (word weight 3) with each image's per-channel mean removed before the distance
(patched in for the measurement): background accuracy 0.50 -> 0.94, but LPIPS diversity 0.22 ->
0.05 and FID 170 -> 243. So most of the diversity the term buys there is background flips. The
distance between the images' horizontal and vertical pixel differences (edges: a flat flip costs
only the object's outline; word weight 6, term weight 0.03 / 0.1, seed 0) did the same: LPIPS
diversity 0.18 -> 0.02, FID 171 -> 222 / 221, and no image had a black background any more (asked
black, 32 of 32 seeds came out white). The term stays in pixels.

Word term (AC-GAN's auxiliary classifier, with a caption's words as its labels): D's word
classifier (`discriminator.word_head`: one linear layer on D's own features, or a small CNN of
its own) predicts, for every vocabulary entry, whether the image's caption contains it; the loss
is the binary cross-entropy summed over the vocabulary and divided by the caption's number of
distinct words. D learns it on reals only (a classifier that never sees fakes cannot be steered
by G) and G on fakes, against their own captions. Unlike the projection, which scores a learnt
code of the whole caption, it asks about each word separately.

G's half counts only the caption's own words (`word_loss(..., negatives=False)`): a caption that
does not name the background or the size is silent about them, not a claim that the image has
none, so G is not pushed away from every word its caption lacks (on reals, D's classifier gives
a named grey background p = 0.5, the share of captions that name it). The main job, two seeds,
G's half with the negatives -> without: FID 179.3 / 186.9 -> 170.3 / 174.8, KID 0.110 / 0.118 ->
0.102 / 0.108, LPIPS diversity 0.16 / 0.15 -> 0.22 / 0.16, mean attribute accuracy 0.70 / 0.73 ->
0.69 / 0.74 (seed 1 through scripts/train.py --seed 1 with the main job's scoring).

shapes32 trains with weight 6, the trunk head and a D twice as wide as G (its figures are in
gan/config.py and gan/training.py; weight 3 -> 6 took the mean attribute accuracy over three
seeds 0.71 -> 0.74 and background 0.60 -> 0.73, FID 176 -> 180). Measured first at weight 3 with
the earlier D, half as wide (32 / 64 channels; trunk head, no blur), 50 kimg at 1 thread, without
the term in brackets:
- shape accuracy 0.43 / 0.47 / 0.43 for seeds 0 / 1 / 2 [0.29 / 0.37 for seeds 0 / 1], the
  highest of any setting;
- mean attribute accuracy 0.73 / 0.69 / 0.66 [0.68 / 0.69]: background (0.81 / 0.52 / 0.62) and
  colour (0.58 / 0.60 / 0.35) swing from snapshot to snapshot;
- the main job: shape 0.31 -> 0.47, background 0.77 -> 0.53, mean 0.689 -> 0.683, FID 174 -> 192,
  LPIPS diversity 0.17 -> 0.16, 17:43 -> 19:12;
- with G's half of the term off (D learns the words on reals; G is judged only through the
  projection; seed 0, patched in for the test): shape 0.44, background 0.51, mean 0.65. So the
  trade comes from what D's features learn, not from G fooling the classifier.
The grids show why the shape figure overstates what one sees: objects carry textures that the
classifier (and the attribute probe, a CNN too) reads as a triangle or a star, grey backgrounds
come out blotched, and a two-object row swapped its objects. With D twice as wide the objects
come out clean, flat backgrounds return in two runs of three (background 0.71 at 40 kimg and
0.86 in one-thread runs, 0.48 in the main job), and the two-object rows keep their order: shapes32
uses that setting.
Earlier, with the WordNet head and a D with blur, the classifier named the shape of real
one-object images 88 % of the time, yet G's shapes stayed at chance; weight 10 made G paint
textures that fool the classifier.

Guide term (StyleGAN-T's CLIP guidance, with the warm-up's own two towers for CLIP): the image
tower and temperature that the contrastive warm-up trained against the encoder (gan/warmup.py),
frozen, score G's images (not augmented) against the batch's pooled codes; the term is the
warm-up's CLIP loss, each fake picking its caption from the batch and each caption its fake.
Unlike D, the scorer never sees fakes, so its opinion of what a "star" looks like does not move
while G learns; unlike the word term's classifier it reads the same code that G does. Measured
on shapes32 (D without blur, R1 gamma 0.1, 50 kimg, seed 0): shape accuracy 0.31 -> 0.37 (weight 1) and 0.40
(weight 4), colour 0.50 -> 0.59 / 0.54, but background 0.80 -> 0.47 / 0.50 (white backgrounds
came out grey or black), mean 0.67 -> 0.66 / 0.63; so shapes32 leaves it off.

With the warm-up's word-region term (`warmup.word_region`) the guide also reads each caption's
tokens against its image's cells, and it scores each fake against its caption's hard-negative
copy of the kind the warm-up used, drawn for the guide even when D has none. Warmed up with
exchange negatives, it prefers a real two-object image's own caption to the exchanged copy 0.92 of
the time; the pooled scorer 0.52. In the GAN (shapes32 as the main job, 50 kimg), G's images
for 1000 two-object captions satisfy it more and more (own over exchanged, by the guide, 0.59 /
0.66 / 0.72 at 20 / 40 / 50 kimg, weight 3), but the attribute probe sees no binding:
attr_binding 0.35 (the main job) -> 0.37 (weight 1) / 0.37 (weight 3). So G learns what the
frozen scorer rewards without drawing it (translating G's images and the warm-up's by up to 3 px,
a scratch patch: attr_binding 0.34, shape 0.53 -> 0.32). The rest moved unevenly between seeds:
- weight 1, seed 0: mean attribute accuracy 0.752 -> 0.747, FID 170.7 -> 170.4, LPIPS
  diversity 0.18 -> 0.14;
- weight 3, seed 0: mean 0.779, background 0.77 -> 0.99, FID 155.8, LPIPS diversity 0.10;
- weight 3, seed 1 (its own main job: 0.756, FID 175.4, LPIPS 0.14): mean 0.773, background
  0.94, but FID 218.2 and LPIPS diversity 0.075 (fewer images per prompt).
shapes32 leaves it off.

Sketch term (`sketch_weight`, needs G's layout map, gan/layout.py): the run keeps a frozen copy of
the map and its sketch head as the warm-up left them (gan.layout.LayoutTeacher), and G's image,
average-pooled to the map's R x R, is pulled by L1 toward the copy's sketch of its caption over
the cells where the sketch draws an object: what colour goes where, held still while G's own map
goes on training with the GAN. It asks G for the binding directly, which D does not (below): at
weight 16 shapes32's attr_binding went 0.35 -> 0.89 (figures in gan/layout.py).

Hard negatives (`hard_negatives`, NegCLIP's idea applied to D): in-batch captions usually differ
from an image's own in several attributes at once, so D can reject them on the easiest one
(colour) and never learn to check the rest. With this on, each caption also comes with a copy
made from it (gan.warmup.WordSwaps): "replace" swaps one word for another word the dataset uses
between the same two neighbours ("a red [circle] on" -> "a red [star] on"); "exchange" lets two
of its own words trade places ("a [red] circle left of a [blue] square" -> "a [blue] circle left
of a [red] square"), the same bag of words bound the other way. D scores each real image under
its own copy from the same forward as the batch's captions (the pairs matrix grows by B
columns): the mismatch term counts it as fake (its own mean, times match_weight), and it is one
more negative in D's contrastive row on reals and in G's on fakes. The loop codes the copies in
a forward of their own, so CodeNorm standardises them with their own batch's statistics, not the
real captions'. Measured on shapes32, 50 kimg, seed 0:
- "replace" (with the warm-up's too; narrow D, before the word term): shape accuracy 0.29 -> 0.32,
  mean 0.68 -> 0.69, but D's choice of the right shape among five captions for a real image was no
  better at 20 kimg (0.35 against 0.37 at 30 kimg without), and the deterministic main job fell
  (mean 0.689 -> 0.652, FID 174 -> 196, LPIPS diversity 0.17 -> 0.11, 17.9 -> 20.1 s/kimg).
- "exchange", against the shapes32 main job: G places two objects' colours by a rule of its own
  (red left of or above blue, for both word orders and all four relations), so a two-object scene
  has its colours on the right sides as often as swapped (0.34 / 0.34 of 400; eval's attr_binding
  0.349). With exchanged captions as D's negatives, D's loss on them stayed at 0.40-0.44 from 1 to 50
  kimg (it never learnt to reject them) and nothing changed: right / swapped 0.35 / 0.34,
  attr_binding 0.328, mean 0.752 -> 0.745, FID 170.7 -> 187.9. With the warm-up's exchange
  negatives too: 0.31 / 0.35, attr_binding 0.332, mean 0.688, FID 203.8. The pooled code does
  hold what is needed: from the warmed-up encoder's codes of 5000 two-object captions, an MLP
  reads the first-named colour of 1000 others 0.92 of the time, the relation 0.998, and whether
  the first-named object is the left / top one 0.93; but the left object's colour, which needs
  the three together, only 0.55 (0.5 is a coin between the two colours).
So shapes32 leaves both off.

Callables the loss runs (the loop hands in DDP-wrapped or plain modules per phase):
  G(z [B, z_dim], batch) -> (img [B, 3, R, R], code SpikeCode)
  D(img [B, 3, R, R], pooled [B, C], tokens=, mask=, pairs=False) -> logits [B]  (pairs=True:
      N prompts' codes, [B, N]; words=True: (logits, word_logits [B, V])); the loss hands D each
      prompt's whole SpikeCode, detached.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

from encoders.code import SpikeCode
from encoders.tokenizer import PAD_ID, UNK_ID, TokenBatch
from gan.augment import AugmentPipe
from gan.layout import LayoutTeacher, border_colour

PHASES = ("Gmain", "Dmain", "Dreg")
HARD_NEGATIVES = ("off", "replace", "exchange")  # kinds of hard-negative caption (gan.warmup.WordSwaps)


def hard_negative_kind(value: str | bool, option: str) -> str:
    """A hard-negative setting as one of HARD_NEGATIVES; True / False (how configs written before
    "exchange" existed say it) read as "replace" / "off"."""
    if isinstance(value, bool):
        return "replace" if value else "off"
    if value not in HARD_NEGATIVES:
        raise ValueError(f"{option} must be one of {HARD_NEGATIVES}, got {value!r}")
    return value


@dataclass
class LossConfig:
    """Weights of the loss terms."""

    r1_gamma: float = 1.0  # R1 weight gamma; 0 = no R1.
    r1_interval: int = 16  # Lazy regularisation: R1 every this many steps (scaled up to match).
    match_weight: float = 1.0  # Weight of the matching-aware (mismatched caption) term in D.
    contrastive_weight: float = 0.0  # Weight of the image-caption contrastive term (D on reals, G on fakes).
    diversity_weight: float = 0.0  # Weight of the mode-seeking term in G (two latents per caption).
    word_weight: float = 0.0  # Weight of the word term (D's word classifier: trained on reals, G on fakes).
    guide_weight: float = 0.0  # Weight of the guide term (the warm-up's frozen image tower scores G's fakes).
    # Weight of the sketch term: L1 between G's image, average-pooled to R x R, and the warmed
    # layout map's frozen sketch of its caption (gan.layout.LayoutTeacher), on the sketch's objects.
    sketch_weight: float = 0.0
    # Negative captions made from each caption (gan.warmup.WordSwaps) that join the mismatch and
    # contrastive terms: "off", "replace" (one word replaced) or "exchange" (two words trade places).
    hard_negatives: str = "off"

    def __post_init__(self) -> None:
        if self.r1_gamma < 0:
            raise ValueError(f"loss.r1_gamma must be >= 0, got {self.r1_gamma}")
        if self.r1_interval < 1:
            raise ValueError(f"loss.r1_interval must be >= 1, got {self.r1_interval}")
        if self.match_weight < 0:
            raise ValueError(f"loss.match_weight must be >= 0, got {self.match_weight}")
        if self.contrastive_weight < 0:
            raise ValueError(f"loss.contrastive_weight must be >= 0, got {self.contrastive_weight}")
        if self.diversity_weight < 0:
            raise ValueError(f"loss.diversity_weight must be >= 0, got {self.diversity_weight}")
        if self.word_weight < 0:
            raise ValueError(f"loss.word_weight must be >= 0, got {self.word_weight}")
        if self.guide_weight < 0:
            raise ValueError(f"loss.guide_weight must be >= 0, got {self.guide_weight}")
        if self.sketch_weight < 0:
            raise ValueError(f"loss.sketch_weight must be >= 0, got {self.sketch_weight}")
        self.hard_negatives = hard_negative_kind(self.hard_negatives, "loss.hard_negatives")

    def to_dict(self) -> dict:
        return asdict(self)


def distinct_pairs(pooled: torch.Tensor) -> torch.Tensor:
    """[B, C] codes -> [B, B] bool, True where prompts i and j code differently (the diagonal,
    and two identical captions, are no mismatch)."""
    return (pooled[:, None, :] - pooled[None, :, :]).abs().amax(dim=2) > 1e-6


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
    """Rows of a TokenBatch (or of any tensor batch)."""
    return batch.index(rows) if isinstance(batch, TokenBatch) else batch[torch.tensor(rows)]


def sketch_loss(img: torch.Tensor, sketch: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """Mean |img average-pooled to the sketch's R x R - sketch| over the cells where the sketch
    draws an object: its colour differs from the mean of the sketch's border cells by more than
    `threshold` summed over RGB in [-1, 1]. The background, which a caption may leave unnamed (the
    sketch then paints the average one), is left to D. 0 when no cell shows an object."""
    objects = (sketch - border_colour(sketch)).abs().sum(dim=1, keepdim=True) > threshold
    error = (F.adaptive_avg_pool2d(img, sketch.shape[-1]) - sketch).abs() * objects
    return error.sum() / (3 * objects.sum()).clamp(min=1)


def mask_identical_captions(pair_logits: torch.Tensor, distinct: torch.Tensor) -> torch.Tensor:
    """[B, B] logits with -inf where two different rows' captions code identically (neither is
    the other's negative); the diagonal is kept."""
    keep = distinct | torch.eye(len(distinct), dtype=torch.bool, device=distinct.device)
    return pair_logits.float().masked_fill(~keep, float("-inf"))


def contrastive_loss(pair_logits: torch.Tensor, distinct: torch.Tensor,
                     hard: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean over rows of -log softmax(row)[i] over the row's own caption and its distinct
    captions (an identical caption elsewhere in the batch is left out, not a negative). `hard` =
    (logits [B] of each image under its own hard-negative caption, valid [B]): one more column."""
    logits = mask_identical_captions(pair_logits, distinct)
    if hard is not None:
        hard_logits, valid = hard
        logits = torch.cat([logits, hard_logits.float().masked_fill(~valid, float("-inf"))[:, None]], dim=1)
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def split_hard(scores: torch.Tensor, hard: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """D's [B, B (+ B)] pair scores -> ([B, B] in-batch scores, [B] each image under its own
    hard-negative caption, or None)."""
    B = scores.shape[0]
    return (scores[:, :B], scores[:, B:].diagonal()) if hard else (scores, None)


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
        guide: Callable | None = None,  # The frozen warm-up scorer (gan.warmup.ImageTextScorer) for the guide term.
        # (batch, kind) -> (SpikeCode of its captions' hard-negative copies of that kind, detached;
        # valid [B] bool). Needed by loss.hard_negatives and by a guide warmed up with them.
        hard_negatives: Callable | None = None,
        teacher: LayoutTeacher | None = None,  # The warmed layout's frozen sketch, for the sketch term.
    ) -> None:
        if cfg.guide_weight > 0 and guide is None:
            raise ValueError("loss.guide_weight > 0 needs the warm-up's image tower (guide=...)")
        if cfg.sketch_weight > 0 and teacher is None:
            raise ValueError("loss.sketch_weight > 0 needs the warmed layout's sketch (teacher=...)")
        self.teacher = teacher if cfg.sketch_weight > 0 else None
        self.cfg = cfg
        self.augment = augment
        self.guide = guide if cfg.guide_weight > 0 else None
        # The guide scores G's images as the warm-up trained it: with its kind of hard negatives.
        self.guide_negatives = getattr(self.guide, "hard_negatives", "off")
        if (cfg.hard_negatives != "off" or self.guide_negatives != "off") and hard_negatives is None:
            raise ValueError("loss.hard_negatives (or a guide warmed up with hard negatives) needs the swapped "
                             "captions' codes (hard_negatives=...)")
        self.hard_negatives = hard_negatives

    def run_D(self, D: Callable, img: torch.Tensor, code: SpikeCode, *, pairs: bool = False,
              words: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.augment is not None:
            img = self.augment(img)
        out = D(img, code.pooled, tokens=code.tokens, mask=code.mask, pairs=pairs, words=words)
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

    def g_main(self, *, G: Callable, D: Callable, z: torch.Tensor, batch: Any):
        diversity = self.cfg.diversity_weight > 0 and z.shape[0] >= 2
        if diversity:
            batch = take_rows(batch, paired_rows(z.shape[0]))
        img, code = G(z, batch)
        cond = code.detach()  # D's view of the prompts
        pooled = cond.pooled
        contrastive, words, guide = (self.cfg.contrastive_weight > 0, self.cfg.word_weight > 0,
                                     self.cfg.guide_weight > 0)
        hard = contrastive and self.cfg.hard_negatives != "off"  # they join G's contrastive rows
        distinct = distinct_pairs(pooled) if contrastive or guide else None
        if hard:
            hard_code, hard_valid = self.hard_negatives(batch, self.cfg.hard_negatives)
        scores = self.run_D(D, img, SpikeCode.cat([cond, hard_code]) if hard else cond, pairs=contrastive,
                            words=words)
        if words:
            scores, word_logits = scores
        scores, hard_logits = split_hard(scores, hard)
        logits = scores.diagonal() if contrastive else scores
        loss = F.softplus(-logits).mean()
        stats = {"loss/G": loss.detach(), "scores/fake_G": logits.detach().mean()}
        if contrastive:
            loss_con = contrastive_loss(scores, distinct, (hard_logits, hard_valid) if hard else None)
            loss = loss + self.cfg.contrastive_weight * loss_con
            stats["loss/G_contrastive"] = loss_con.detach()
        if diversity:
            loss_div = mode_seeking_loss(img, z)
            loss = loss + self.cfg.diversity_weight * loss_div
            stats["loss/G_mode_seeking"] = loss_div.detach()
        if words:
            loss_word = word_loss(word_logits, word_targets(batch, word_logits.shape[1]), negatives=False)
            loss = loss + self.cfg.word_weight * loss_word
            stats["loss/G_word"] = loss_word.detach()
        if guide:
            guide_hard = None
            if self.guide_negatives != "off":
                same = hard and self.guide_negatives == self.cfg.hard_negatives
                guide_hard = (hard_code, hard_valid) if same else self.hard_negatives(batch, self.guide_negatives)
            loss_guide, _ = self.guide(img, cond, distinct, guide_hard)
            loss = loss + self.cfg.guide_weight * loss_guide
            stats["loss/G_guide"] = loss_guide.detach()
        if self.teacher is not None:
            loss_sketch = sketch_loss(img, self.teacher(cond.tokens, cond.mask))
            loss = loss + self.cfg.sketch_weight * loss_sketch
            stats["loss/G_sketch"] = loss_sketch.detach()
        # The encoder's spike statistics (firing rate, spikes and synaptic operations per prompt).
        stats.update({f"spikes/{k}": v.detach().float().mean() for k, v in code.stats.items()})
        return loss, stats

    def d_main(self, *, G: Callable, D: Callable, z: torch.Tensor, batch: Any, real: torch.Tensor):
        with torch.no_grad():
            fake, code = G(z, batch)
        cond = code.detach()
        pooled = cond.pooled
        pairs = self.cfg.match_weight > 0 or self.cfg.contrastive_weight > 0
        hard = pairs and self.cfg.hard_negatives != "off"
        words = self.cfg.word_weight > 0
        if hard:
            hard_code, hard_valid = self.hard_negatives(batch, self.cfg.hard_negatives)
        fake_logits = self.run_D(D, fake.detach(), cond)
        real_scores = self.run_D(D, real, SpikeCode.cat([cond, hard_code]) if hard else cond, pairs=pairs,
                                 words=words)
        if words:
            real_scores, word_logits = real_scores
        real_scores, hard_logits = split_hard(real_scores, hard)
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
        distinct = distinct_pairs(pooled) if pairs else None
        if self.cfg.match_weight > 0:
            w = distinct.to(real_scores.dtype)
            n = w.sum().clamp(min=1)
            loss_mis = (F.softplus(real_scores) * w).sum() / n
            loss = loss + self.cfg.match_weight * loss_mis
            stats["loss/D_mismatch"] = loss_mis.detach()
            stats["scores/mismatch"] = ((real_scores * w).sum() / n).detach()
            if hard:  # a real image under its own caption with one word swapped counts as fake too
                v = hard_valid.to(hard_logits.dtype)
                loss_hard = (F.softplus(hard_logits) * v).sum() / v.sum().clamp(min=1)
                loss = loss + self.cfg.match_weight * loss_hard
                stats["loss/D_hard_mismatch"] = loss_hard.detach()
                stats["scores/hard_mismatch"] = ((hard_logits * v).sum() / v.sum().clamp(min=1)).detach()
        if self.cfg.contrastive_weight > 0:
            loss_con = contrastive_loss(real_scores, distinct, (hard_logits, hard_valid) if hard else None)
            loss = loss + self.cfg.contrastive_weight * loss_con
            stats["loss/D_contrastive"] = loss_con.detach()
        if words:
            loss_word = word_loss(word_logits, word_targets(batch, word_logits.shape[1]))
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
