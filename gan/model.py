"""The exported text-to-image model (spiking text encoder + generator) and its files.

A model directory holds:
  config.json        ModelConfig.to_dict(): everything needed to rebuild the networks
  model.safetensors  the unwrapped, uncompiled state dict of TextToImage (never a pickle)
  tokenizer.json     the tokenizer (encoders.load_tokenizer reads it)
Loading runs no code from the files and is strict: every tensor must match the config.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

import encoders
from data.files import atomic_write, atomic_write_text
from encoders.code import SpikeCode

from .config import ModelConfig
from .generator import Generator

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


class TextToImage(nn.Module):
    """Prompt tokens -> spiking text encoder -> SpikeCode -> generator -> image [B, 3, R, R]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 1:
            raise ValueError(f"ModelConfig.vocab_size must be set from the tokenizer (len(tokenizer)), got {cfg.vocab_size}")
        self.cfg = cfg
        self.encoder = encoders.build_encoder(cfg.encoder, cfg.vocab_size)
        self.generator = Generator(cfg.generator)

    def encode(self, batch: encoders.TokenBatch) -> SpikeCode:
        """TokenBatch (ids/mask [B, L]) -> SpikeCode (pooled [B, C], tokens [B, L, C])."""
        return self.encoder(batch)

    def forward(self, z: torch.Tensor, batch: encoders.TokenBatch, **g_kwargs) -> torch.Tensor:
        """z [B, z_dim], B prompts -> images [B, 3, R, R]; g_kwargs go to Generator.forward
        (psi, truncation, noise_mode)."""
        return self.generator(z, self.encode(batch), **g_kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside torch.compile and (Distributed)DataParallel wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        else:
            return module


def clean_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict without wrapper prefixes (also those of compiled submodules), contiguous, on CPU."""
    out = {}
    for key, value in unwrap(module).state_dict().items():
        key = key.replace("_orig_mod.", "")
        while key.startswith("module."):
            key = key[len("module."):]
        out[key] = value.detach().to("cpu").contiguous()
    return out


def save_model(directory: str | os.PathLike, model: nn.Module, tokenizer) -> Path:
    """Write config.json, model.safetensors and tokenizer.json into `directory` (each atomically)."""
    model = unwrap(model)
    if not isinstance(model, TextToImage):
        raise TypeError(f"save_model needs a TextToImage, got {type(model).__name__}")
    if len(tokenizer) != model.cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} entries but ModelConfig.vocab_size is {model.cfg.vocab_size}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = clean_state_dict(model)
    atomic_write(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    atomic_write_text(directory / CONFIG_FILE, json.dumps(model.cfg.to_dict(), indent=2))
    tokenizer.save(directory / TOKENIZER_FILE)  # atomic too
    return directory


def load_config(directory: str | os.PathLike) -> ModelConfig:
    """ModelConfig from `directory`/config.json, with errors that name the file."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (a model directory holds {CONFIG_FILE}, {WEIGHTS_FILE}, {TOKENIZER_FILE})")
    try:
        return ModelConfig.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a valid model config ({type(e).__name__}: {e})") from e


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[TextToImage, object]:
    """(model in eval mode on `device`, tokenizer) from a directory written by save_model.

    Strict: the weights must match the config exactly. Only safetensors are read (no pickle).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such model directory")
    cfg = load_config(directory)
    tok_path = directory / TOKENIZER_FILE
    if not tok_path.is_file():
        raise FileNotFoundError(f"{tok_path}: missing")
    tokenizer = encoders.load_tokenizer(tok_path)
    if len(tokenizer) != cfg.vocab_size:
        raise ValueError(f"{tok_path}: {len(tokenizer)} entries, but {directory / CONFIG_FILE} says vocab_size {cfg.vocab_size}")

    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: missing")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{weights}: not a readable safetensors file ({e})") from e
    model = TextToImage(cfg)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{weights} does not match {directory / CONFIG_FILE}: missing {missing[:8]}, unexpected {unexpected[:8]}, "
            f"wrong shape {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:8]]}"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), tokenizer
