"""Resumable training state: written whole or not at all, the last N kept.

A state directory `OUT/checkpoints/state-<nimg>/` holds
  - what `accelerator.save_state` writes: the prepared networks (safetensors), the
    optimisers, the gradient scaler and Accelerate's RNG record;
  - `ema.safetensors`: the EMA generator + text encoder;
  - `sketch.safetensors` (runs with the sketch term): the warmed layout map's frozen sketch;
  - `rng-<rank>.safetensors` + `rng-<rank>.json`: every process's torch / CUDA / NumPy /
    Python RNG state (restored after Accelerate's, so resume does not depend on pickles);
  - `tokenizer.json` and `trainer.json`: images seen, step, augmentation p, ADA
    accumulators, non-finite counters, the resolved configs.
Every process writes into `.tmp-state-<nimg>/`; when all are done the main process renames
it into place with os.replace, so a crash mid-write leaves the previous state whole (and a
half-written `.tmp-*` is ignored and overwritten by the next save).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

STATE_RE = re.compile(r"^state-(\d{10})$")
TRAINER_FILE = "trainer.json"
EMA_FILE = "ema.safetensors"
SKETCH_FILE = "sketch.safetensors"
TOKENIZER_FILE = "tokenizer.json"


class CheckpointError(ValueError):
    """A resume target that does not exist or is not a complete state."""


def state_name(nimg: int) -> str:
    return f"state-{nimg:010d}"


def list_states(ckpt_dir: str | Path) -> list[Path]:
    """Complete state directories in `ckpt_dir`, oldest first."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    found = [p for p in ckpt_dir.iterdir() if STATE_RE.match(p.name) and (p / TRAINER_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def resolve_resume(target: str, out: str | Path) -> Path:
    """`latest` -> the newest state of OUT/checkpoints; a run directory -> its newest state;
    a state directory -> itself. Raises CheckpointError naming --resume otherwise."""
    if target == "latest":
        states = list_states(Path(out) / "checkpoints")
        if not states:
            raise CheckpointError(f"--resume latest: no saved state in {Path(out) / 'checkpoints'}")
        return states[-1]
    path = Path(target)
    if (path / TRAINER_FILE).is_file():
        return path
    for ckpt_dir in (path / "checkpoints", path):
        states = list_states(ckpt_dir)
        if states:
            return states[-1]
    raise CheckpointError(f"--resume {target}: not a state directory (no {TRAINER_FILE}) and no "
                          f"state-* directories under {path} or {path / 'checkpoints'}")


# ---------------------------------------------------------------------------------------------
# RNG states as safetensors + JSON (no pickles).

def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """This process's RNG states: (tensors, JSON-able rest)."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(np_keys.astype(np.int64))}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    meta = {"numpy": [np_kind, int(np_pos), int(np_has_gauss), float(np_gauss)],
            "python": [py_version, list(py_internal), py_gauss]}
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, pos, has_gauss, gauss = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = meta["python"]
    random.setstate((version, tuple(internal), py_gauss))


def _save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path))


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------

def save_training_state(
    ckpt_dir: str | Path,  # OUT/checkpoints.
    *,
    nimg: int,  # Images seen; names the state.
    accelerator,  # The run's accelerate.Accelerator (every process calls this function).
    ema_state: dict[str, torch.Tensor],  # EMA model state_dict.
    trainer: dict[str, Any],  # JSON-able loop state (nimg, step, augment p, counters, configs).
    tokenizer,  # Has .save(path).
    keep: int,  # Newest states kept; older ones are deleted after the new one is in place.
    sketch_state: dict[str, torch.Tensor] | None = None,  # The sketch term's frozen layout, if the run has one.
) -> Path:
    """Write a complete state atomically; returns its final path. Collective: call on all ranks."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / state_name(nimg)
    tmp = ckpt_dir / f".tmp-{final.name}"
    if accelerator.is_main_process:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)  # leftover of a crash mid-write
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    tensors, meta = rng_state()
    rank = accelerator.process_index
    save_file(tensors, str(tmp / f"rng-{rank}.safetensors"))
    _write_json(tmp / f"rng-{rank}.json", meta)
    if accelerator.is_main_process:
        _save_tensors(ema_state, tmp / EMA_FILE)
        if sketch_state is not None:
            _save_tensors(sketch_state, tmp / SKETCH_FILE)
        tokenizer.save(tmp / TOKENIZER_FILE)
        _write_json(tmp / TRAINER_FILE, trainer)  # written last: its presence marks a whole state
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        old = None
        if final.exists():  # same nimg saved twice (e.g. interrupted right after a snapshot)
            old = final.with_name(f".old-{final.name}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old)
        for stale in list_states(ckpt_dir)[:-keep] if keep > 0 else []:
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return final


def read_trainer(state_dir: str | Path) -> dict[str, Any]:
    """The loop state of a state directory (no tensors loaded)."""
    path = Path(state_dir) / TRAINER_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the training state: {e}") from e


def load_training_state(state_dir: str | Path, *, accelerator) -> dict[str, torch.Tensor]:
    """Restore networks, optimisers and RNG states into the prepared objects of `accelerator`
    and return the EMA state_dict. Call on all ranks after accelerator.prepare."""
    state_dir = Path(state_dir)
    accelerator.load_state(str(state_dir))
    rank = accelerator.process_index
    rng_file = state_dir / f"rng-{rank}.safetensors"
    if not rng_file.is_file():
        raise CheckpointError(f"{rng_file}: missing; the state was saved by fewer processes "
                              f"than this run's {accelerator.num_processes}")
    set_rng_state(load_file(str(rng_file)), json.loads((state_dir / f"rng-{rank}.json").read_text()))
    return load_file(str(state_dir / EMA_FILE))


def load_sketch_state(state_dir: str | Path) -> dict[str, torch.Tensor]:
    """The sketch term's frozen layout saved with a state; CheckpointError when the run had none."""
    path = Path(state_dir) / SKETCH_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the run in {state_dir} was started without the sketch term "
                              f"(--sketch-weight 0), so it cannot be resumed with it")
    return load_file(str(path))
