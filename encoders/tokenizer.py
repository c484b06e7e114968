"""Tokenizers: prompts -> TokenBatch (ids, mask, emphasis weights), saved as tokenizer.json."""
from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from data.files import atomic_write_text

import torch

from .guides import Guides
from .prompt import parse_prompt

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
TOKENIZER_FILE = "tokenizer.json"

_WORD = re.compile(r"\w+|[^\w\s]")  # runs of letters/digits, or single punctuation marks


@dataclass
class TokenBatch:
    """A batch of tokenized prompts, left-aligned, padded to the longest prompt.

    ids:     [B, L] long, PAD_ID (0) at padding.
    mask:    [B, L] bool, True where a real token stands (a prefix of each row).
    weights: [B, L] float emphasis weight per token (0 at padding).
    words:   the token strings per prompt (len(words[b]) == mask[b].sum()).
    guides:  the prompts' palettes and sketches (encoders.guides.Guides, B rows), or None.
    """

    ids: torch.Tensor
    mask: torch.Tensor
    weights: torch.Tensor
    words: list[list[str]]
    guides: Guides | None = None

    def __post_init__(self) -> None:
        assert self.ids.ndim == 2 and self.ids.shape == self.mask.shape == self.weights.shape, (
            self.ids.shape, self.mask.shape, self.weights.shape)
        assert len(self.words) == self.ids.shape[0], (len(self.words), self.ids.shape)
        assert self.guides is None or len(self.guides) == len(self.words), (len(self.guides), len(self.words))

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def lengths(self) -> torch.Tensor:
        """[B] long number of real tokens per prompt."""
        return self.mask.sum(dim=1)

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.ids.to(device), self.mask.to(device), self.weights.to(device), self.words,
                          None if self.guides is None else self.guides.to(device))

    def with_guides(self, guides: Guides | None) -> TokenBatch:
        """The same prompts with these guides (B rows, or None)."""
        return TokenBatch(self.ids, self.mask, self.weights, self.words, guides)

    def index(self, idx: Sequence[int] | slice) -> TokenBatch:
        """Rows `idx` of the batch."""
        rows = list(range(len(self)))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        return TokenBatch(self.ids[rows], self.mask[rows], self.weights[rows], [self.words[i] for i in rows],
                          None if self.guides is None else self.guides.index(rows))

    @staticmethod
    def cat(batches: Sequence[TokenBatch]) -> TokenBatch:
        """The rows of several batches in order, padded to the longest (guides in all or in none)."""
        L = max(b.ids.shape[1] for b in batches)
        if any(b.guides is None for b in batches) and not all(b.guides is None for b in batches):
            raise ValueError("TokenBatch.cat: some batches have guides and some do not")

        def pad(t: torch.Tensor, value) -> torch.Tensor:
            return torch.nn.functional.pad(t, (0, L - t.shape[1]), value=value)

        return TokenBatch(torch.cat([pad(b.ids, PAD_ID) for b in batches]),
                          torch.cat([pad(b.mask, False) for b in batches]),
                          torch.cat([pad(b.weights, 0.0) for b in batches]),
                          [w for b in batches for w in b.words],
                          None if batches[0].guides is None else Guides.cat([b.guides for b in batches]))

    @staticmethod
    def from_lists(ids: list[list[int]], weights: list[list[float]], words: list[list[str]]) -> TokenBatch:
        """Pad per-prompt lists into a batch; L = longest prompt (at least 1 so shapes stay valid)."""
        B = len(ids)
        L = max([len(row) for row in ids] + [1])
        ids_t = torch.full((B, L), PAD_ID, dtype=torch.long)
        weights_t = torch.zeros(B, L)
        mask = torch.zeros(B, L, dtype=torch.bool)
        for b, (row, w) in enumerate(zip(ids, weights)):
            ids_t[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            weights_t[b, : len(row)] = torch.tensor(w, dtype=torch.float32)
            mask[b, : len(row)] = True
        return TokenBatch(ids_t, mask, weights_t, [list(w) for w in words])


def split_words(text: str) -> list[str]:
    """Lower-case and split into words and single punctuation marks ("Red, big" -> red , big)."""
    return _WORD.findall(text.lower())


def weighted_words(prompt: str, *, emphasis: bool = True) -> list[tuple[str, float]]:
    """The prompt's lower-case words and punctuation with their emphasis weights.

    emphasis=False reads the text literally (brackets become punctuation, weight 1), which is
    what raw dataset captions want; emphasis=True applies the prompt syntax (parse_prompt).
    """
    chunks = parse_prompt(prompt) if emphasis else [(prompt, 1.0)]
    return [(word, weight) for chunk, weight in chunks for word in split_words(chunk)]


class PromptCutWarning(UserWarning):
    """A prompt longer than the tokenizer's max_length lost its last tokens."""


def truncate(prompt: str, row: list, max_length: int) -> list:
    """Cut a token row to max_length, with a warning that names the prompt."""
    if len(row) > max_length:
        warnings.warn(
            f"prompt cut to max_length={max_length} tokens ({len(row) - max_length} dropped): {prompt!r}",
            PromptCutWarning, stacklevel=3,
        )
        return row[:max_length]
    return row


def cut_report(tokenizer, captions: Sequence[str]) -> str | None:
    """One line on the captions (read literally) longer than the tokenizer's max_length, or None
    when every one fits: how many, and the longest with its length in tokens."""
    lengths = [tokenizer.length(text, emphasis=False) for text in captions]
    cut = sum(n > tokenizer.max_length for n in lengths)
    if not cut:
        return None
    longest, text = max(zip(lengths, captions), key=lambda pair: pair[0])
    return (f"{cut} of {len(captions)} captions are longer than max_length={tokenizer.max_length} tokens and lose "
            f"their last tokens; the longest has {longest}: {text!r}")


@contextmanager
def cuts_reported() -> Iterator[None]:
    """Silence PromptCutWarning inside: for dataset captions whose cuts cut_report has counted
    once, instead of one warning per caption."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PromptCutWarning)
        yield


class WordTokenizer:
    """Word-level vocabulary built from captions: `<pad>`=0, `<unk>`=1, then words by
    frequency (ties alphabetical). Calling it on prompts gives a TokenBatch."""

    type_name = "word"

    def __init__(
        self,
        *,
        vocab: list[str],  # token strings; vocab[0] must be <pad> and vocab[1] <unk>
        max_length: int = 16,  # longest prompt in tokens; longer prompts are cut with a warning
        min_freq: int = 1,  # a word needs this many occurrences to enter the vocabulary (build/extend)
    ) -> None:
        if vocab[:2] != [PAD, UNK]:
            raise ValueError(f"vocab must start with {PAD!r}, {UNK!r}, got {vocab[:2]}")
        if len(set(vocab)) != len(vocab):
            raise ValueError("vocab has duplicate entries")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if min_freq < 1:
            raise ValueError(f"min_freq must be >= 1, got {min_freq}")
        self.vocab = list(vocab)
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.max_length = max_length
        self.min_freq = min_freq

    @classmethod
    def build(cls, captions: Iterable[str], *, min_freq: int = 1, max_length: int = 16) -> WordTokenizer:
        """Vocabulary of every word seen at least `min_freq` times in `captions` (read literally)."""
        tok = cls(vocab=[PAD, UNK], max_length=max_length, min_freq=min_freq)
        tok.extend(captions)
        return tok

    def extend(self, captions: Iterable[str]) -> list[str]:
        """Add the new words of `captions` (at least min_freq times); old ids stay. Returns them."""
        counts = Counter(w for text in captions for w in split_words(text))
        new = sorted((w for w, c in counts.items() if c >= self.min_freq and w not in self.index),
                     key=lambda w: (-counts[w], w))
        for w in new:
            self.index[w] = len(self.vocab)
            self.vocab.append(w)
        return new

    def __len__(self) -> int:
        return len(self.vocab)

    def length(self, prompt: str, *, emphasis: bool = True) -> int:
        """Tokens of `prompt` before the cut to max_length."""
        return len(weighted_words(prompt, emphasis=emphasis))

    def encode(self, prompt: str, *, emphasis: bool = True) -> tuple[list[int], list[float], list[str]]:
        """One prompt -> (ids, weights, words), cut to max_length."""
        pairs = truncate(prompt, weighted_words(prompt, emphasis=emphasis), self.max_length)
        ids = [self.index.get(w, UNK_ID) for w, _ in pairs]
        return ids, [w for _, w in pairs], [w for w, _ in pairs]

    def __call__(self, prompts: Sequence[str] | str, *, emphasis: bool = True) -> TokenBatch:
        """Tokenize prompts (emphasis syntax applies unless emphasis=False) into a TokenBatch."""
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = [self.encode(p, emphasis=emphasis) for p in prompts]
        return TokenBatch.from_lists([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i != PAD_ID)

    def to_dict(self) -> dict:
        return {"type": self.type_name, "version": 1, "max_length": self.max_length,
                "min_freq": self.min_freq, "vocab": self.vocab}

    @classmethod
    def from_dict(cls, d: dict) -> WordTokenizer:
        return cls(vocab=list(d["vocab"]), max_length=int(d["max_length"]), min_freq=int(d.get("min_freq", 1)))

    def save(self, path: str | os.PathLike) -> Path:
        """Write tokenizer.json (into `path` when it is a directory); atomic. Returns the file."""
        return save_json(self.to_dict(), path)


def save_json(payload: dict, path: str | os.PathLike) -> Path:
    """Write `payload` to `path` (or `path`/tokenizer.json for a directory) atomically."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(path, json.dumps(payload, indent=1))


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer.json (or a directory holding one); dispatches on its "type"."""
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == WordTokenizer.type_name:
        return WordTokenizer.from_dict(d)
    if kind == "minilm":
        from .minilm import MiniLMTokenizer

        return MiniLMTokenizer.from_dict(d)
    raise ValueError(f"{path}: unknown tokenizer type {kind!r} (expected 'word' or 'minilm')")
