"""CLIPScore with user-supplied open_clip weights (the optional extra `spikegan[clip]`).

Nothing is downloaded: the checkpoint is a local file the user names with --clip-weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from data.files import sha256_file


class ClipScorer:
    """An open_clip model from a local checkpoint: score(uint8 images [B,3,H,W], B prompts) ->
    [B] CLIPScore = 100 * max(cosine, 0) (torchmetrics' definition), on the CPU.

    Raises ImportError without open_clip_torch and FileNotFoundError for a missing checkpoint."""

    def __init__(
        self,
        weights: str | Path,  # open_clip checkpoint file.
        *,
        arch: str,  # open_clip architecture of those weights, e.g. "ViT-B-32".
        device: str,  # Where the model runs.
    ):
        try:
            import open_clip
        except ImportError as e:
            raise ImportError("clip_score needs the optional extra open_clip_torch (`pip install spikegan[clip]`) "
                              "and a local checkpoint given with --clip-weights PATH") from e
        if not Path(weights).is_file():
            raise FileNotFoundError(f"--clip-weights {weights}: no such file")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(weights), device=device)
        self.model.eval()
        self.tokenize = open_clip.get_tokenizer(arch)
        self.device = device
        self.weights_file = str(weights)
        self.weights_sha256 = sha256_file(weights)

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        from PIL import Image

        pil = [Image.fromarray(im.permute(1, 2, 0).numpy()) for im in images]  # [H, W, 3] each
        x = torch.stack([self.preprocess(p) for p in pil]).to(self.device)
        img = F.normalize(self.model.encode_image(x).float(), dim=-1)  # [B, E]
        txt = F.normalize(self.model.encode_text(self.tokenize(list(prompts)).to(self.device)).float(), dim=-1)
        return (100 * (img * txt).sum(-1).clamp_min(0)).cpu()
