"""Sampling from a saved model: prompts + seeds -> images, like a diffusers pipeline.

    pipe = Pipeline.from_pretrained("runs/shapes32/model")
    images = pipe(["a (red:1.4) circle", "a blue square"], seeds=[0, 1, 2])   # 6 PIL images
    images = pipe(["a circle"], [0], palette="#ff0000,#0000ff:1.5", sketch="layout.png")  # with guides

Images come prompt-major: image i is prompt i // len(seeds) with seed i % len(seeds), so a
grid with one row per prompt and one column per seed is `image_grid(images, rows=P, cols=S)`.
The latent z of a seed is `torch.randn(1, z_dim, generator=torch.Generator().manual_seed(seed))`
drawn on the CPU, and each prompt is encoded on its own, so an image depends on its prompt
and seed only, never on what else shares its batch. A palette and a sketch (encoders/guides.py), for
a model trained with them, guide every image of a call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import PIL.Image
import torch
import torch.nn.functional as F

from encoders import SpikeCode
from encoders.guides import Guides, Palette, check_guides, parse_palette
from gan.grid import image_grid, to_pil

Truncation = Literal["prompt", "global"]
NoiseMode = Literal["const", "random", "none"]
MODEL_FILES = ("config.json", "model.safetensors", "tokenizer.json")
TRUNCATION_SAMPLES = 256  # latents per prompt mean w, as gan.generator.MappingNetwork's default


class ModelDirError(RuntimeError):
    """A model directory that is missing files or whose files do not load."""


def check_model_dir(path: str | Path) -> Path:
    """Raise ModelDirError naming the first missing file of a model directory; return the path."""
    path = Path(path)
    if not path.is_dir():
        raise ModelDirError(f"{path}: not a model directory (expected a folder with {', '.join(MODEL_FILES)})")
    for name in MODEL_FILES:
        if not (path / name).is_file():
            raise ModelDirError(f"{path / name}: missing; a model directory holds {', '.join(MODEL_FILES)}")
    with open(path / "model.safetensors", "rb") as f:
        head = f.read(4)
    # Name the usual mistake: a pickle (or torch.save's zip of pickles) saved under this name.
    if head[:1] == b"\x80" or head == b"PK\x03\x04":
        kind = "a torch.save zip archive" if head == b"PK\x03\x04" else "a Python pickle"
        raise ModelDirError(f"{path / 'model.safetensors'}: is {kind}, not safetensors; refusing to load it "
                            "(unpickling runs code from the file). Export the model with gan.model.save_model")
    return path


def seed_latents(seeds: Sequence[int], z_dim: int) -> torch.Tensor:
    """[S, z_dim] float32 on the CPU; row i is N(0, I) drawn from a generator seeded with seeds[i]."""
    rows = [torch.randn(1, z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.cat(rows) if rows else torch.zeros(0, z_dim)


@dataclass
class Latents:
    """What the generator sees for a set of images, before synthesis.

    ws:   [B, num_ws, w_dim] intermediate latents (one w per synthesis layer).
    code: SpikeCode with batch B (tokens feed cross-attention in synthesis).
    """

    ws: torch.Tensor
    code: SpikeCode


class Pipeline:
    """A text-to-image model with its tokenizer on one device, in eval mode, without gradients."""

    def __init__(
        self,
        *,
        model: torch.nn.Module,  # gan.model.TextToImage with .encoder and .generator.
        tokenizer,               # The tokenizer saved with the model (prompts -> TokenBatch).
        device: str | torch.device = "cpu",  # Where the networks run; latents are drawn on the CPU.
    ) -> None:
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> Pipeline:
        """Load a model directory (config.json, model.safetensors, tokenizer.json) strictly.

        Only safetensors and JSON are read, so nothing in the files can execute. Raises
        ModelDirError naming the file for a missing or damaged file or a config that does not
        match the weights.
        """
        from gan.model import load_model

        path = check_model_dir(path)
        try:
            model, tokenizer = load_model(path, device="cpu")
        except ModelDirError:
            raise
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            # load_model's message names the file; keep it whole.
            raise ModelDirError(f"cannot load the model in {path}: {e}") from e
        return cls(model=model, tokenizer=tokenizer, device=device)

    # ----------------------------------------------------------------------------------------
    # Properties of the loaded model.

    @property
    def generator(self) -> torch.nn.Module:
        return self.model.generator

    @property
    def encoder(self) -> torch.nn.Module:
        return self.model.encoder

    @property
    def resolution(self) -> int:
        return int(self.generator.resolution)

    @property
    def z_dim(self) -> int:
        return int(self.generator.z_dim)

    @property
    def num_ws(self) -> int:
        return int(self.generator.num_ws)

    # ----------------------------------------------------------------------------------------
    # Building blocks: encode, latents, mapping, synthesis.

    def guides(self, palette: str | Palette | None = None, sketch=None) -> Guides | None:
        """One image's guides from a palette ('#ff0000,#0000ff:1.5' or a Palette) and a sketch (an
        image file, PIL image, array or tensor; encoders.guides.load_sketch), or None without either.
        Raises GuideError for bad input and for guides this model was not trained with."""
        if palette is None and sketch is None:
            return None
        cfg = self.encoder.cfg
        if isinstance(palette, str):
            palette = parse_palette(palette)
        check_guides(cfg, Guides.build(1, palette=palette) if palette is not None else None)
        if sketch is not None and not cfg.sketch_grid:
            check_guides(cfg, Guides.build(1, sketch=torch.zeros(1, 3, 1, 1)))  # the refusal, before reading a file
        return Guides.build(1, palette=palette, sketch=sketch, grid=cfg.sketch_grid)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], guides: Guides | None = None) -> SpikeCode:
        """Prompts (emphasis syntax allowed) -> SpikeCode with batch len(prompts) on the device;
        `guides` (one image's, see `guides`) guide every prompt.

        Each prompt is encoded alone, so its code does not depend on the others' lengths.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        unique = list(dict.fromkeys(prompts))
        codes = SpikeCode.cat([self.encoder(self.tokenizer([p]).with_guides(guides).to(self.device)) for p in unique])
        return codes if len(unique) == len(prompts) else codes.index([unique.index(p) for p in prompts])

    def latents(self, seeds: Sequence[int]) -> torch.Tensor:
        """[S, z_dim] on the device, one row per seed (see seed_latents)."""
        return seed_latents(seeds, self.z_dim).to(self.device)

    @torch.no_grad()
    def mapping(self, z: torch.Tensor, code: SpikeCode, *, psi: float = 1.0,
                truncation: Truncation = "prompt") -> torch.Tensor:
        """z [B, z_dim], code with batch B -> ws [B, num_ws, w_dim].

        truncation "prompt" pulls w towards the prompt's mean w (conditional truncation, as
        StyleGAN-T); "global" towards the unconditional w_avg. psi=1 leaves w as mapped.
        """
        _check_truncation(psi, truncation)
        return self.generator.mapping(z, code.pooled, psi=psi, truncation=truncation)

    @torch.no_grad()
    def synthesize(self, ws: torch.Tensor, code: SpikeCode, *, noise_mode: NoiseMode = "const",
                   batch: int = 16, noise_seed: int = 0) -> torch.Tensor:
        """ws [B, num_ws, w_dim], code with batch B -> images [B, 3, R, R] float in about [-1, 1].

        noise_mode "random" draws the per-pixel noise from a private RNG seeded with
        noise_seed + chunk index (the global RNG is left alone), so a call repeats exactly.
        """
        _check_noise_mode(noise_mode)
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        out = []
        for k, lo in enumerate(range(0, ws.shape[0], batch)):
            idx = list(range(lo, min(lo + batch, ws.shape[0])))
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(noise_seed + k)
                out.append(self.generator.synthesis(ws[idx], code.index(idx), noise_mode=noise_mode))
        return torch.cat(out)

    def prepare(self, prompts: Sequence[str] | str, seeds: Sequence[int] | int, *, psi: float = 1.0,
                truncation: Truncation = "prompt", palette: str | Palette | None = None, sketch=None) -> Latents:
        """Every prompt with every seed (prompt-major) -> Latents with batch P * S; the palette and
        sketch, if given, guide every image (see `guides`)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        seeds = [seeds] if isinstance(seeds, int) else list(seeds)
        if not prompts or not seeds:
            raise ValueError(f"need at least one prompt and one seed, got {len(prompts)} and {len(seeds)}")
        codes = self.encode(prompts, self.guides(palette, sketch))    # [P]
        z = self.latents(seeds)                                        # [S, z_dim]
        P, S = len(prompts), len(seeds)
        rows = torch.arange(P).repeat_interleave(S).tolist()           # prompt of each image
        code = codes.index(rows)                                       # [P*S]
        _check_truncation(psi, truncation)
        ws = self.mapping(z.repeat(P, 1), code)                        # [P*S, num_ws, w_dim], untruncated
        if psi != 1.0:
            # G.mapping would average 256 latents per image for its prompt's mean w; the mean
            # depends on the prompt only, so compute it once per prompt and truncate here.
            if truncation == "prompt":
                target = self.generator.prompt_mean_w(codes.pooled, num=TRUNCATION_SAMPLES)[rows]  # [P*S, w_dim]
            else:
                target = self.generator.w_avg[None].expand(P * S, -1)
            ws = torch.lerp(target[:, None, :].to(ws.dtype).expand_as(ws), ws, psi)
        return Latents(ws=ws, code=code)

    @torch.no_grad()
    def prompt_w_stats(self, code: SpikeCode, *, num: int = TRUNCATION_SAMPLES) -> tuple[torch.Tensor, float]:
        """code with batch 1 -> (mean w [1, num_ws, w_dim], spread of w).

        The mean is the generator's prompt_mean_w over `num` fixed latents (with num=256 the
        centre of conditional truncation); the spread is sqrt(E ||w - mean||^2) over the same
        latents (StyleGAN2's w_std, which scales the projector's exploration noise).
        """
        assert code.batch_size == 1, code.batch_size
        mean = self.generator.prompt_mean_w(code.pooled, num=num)              # [1, w_dim]
        z = torch.randn(num, self.z_dim, generator=torch.Generator(device=self.device).manual_seed(0),
                        device=self.device)
        w = self.generator.mapping(z, code.pooled.expand(num, -1))[:, 0]        # [num, w_dim]
        std = float((w - mean).square().sum(dim=1).mean().sqrt())
        return mean[:, None, :].expand(-1, self.num_ws, -1).contiguous(), std

    # ----------------------------------------------------------------------------------------
    # The one-call API.

    def __call__(
        self,
        prompts: Sequence[str] | str,
        seeds: Sequence[int] | int,
        *,
        psi: float = 1.0,
        truncation: Truncation = "prompt",
        noise_mode: NoiseMode = "const",
        batch: int = 16,
        output_type: Literal["pil", "pt"] = "pil",
        palette: str | Palette | None = None,
        sketch=None,
    ) -> list[PIL.Image.Image] | torch.Tensor:
        """Generate one image per (prompt, seed), prompt-major, guided by the palette and sketch
        if given (a model trained with them; see `guides`).

        Returns P * S PIL images, or with output_type="pt" a float tensor [P*S, 3, R, R] in
        about [-1, 1] on the device.
        """
        if output_type not in ("pil", "pt"):
            raise ValueError(f"output_type must be 'pil' or 'pt', got {output_type!r}")
        lat = self.prepare(prompts, seeds, psi=psi, truncation=truncation, palette=palette, sketch=sketch)
        images = self.synthesize(lat.ws, lat.code, noise_mode=noise_mode, batch=batch)
        return images if output_type == "pt" else to_pil(images)


    # ----------------------------------------------------------------------------------------
    # StyleGAN's visualisations: interpolation and style mixing.

    @torch.no_grad()
    def interpolate(
        self,
        prompts: Sequence[str] | str,
        seeds: Sequence[int] | int,
        *,
        frames: int = 16,
        psi: float = 1.0,
        truncation: Truncation = "prompt",
        noise_mode: NoiseMode = "const",
        batch: int = 16,
        loop: bool = True,
    ) -> list[PIL.Image.Image]:
        """Frames of a walk through the keyframes (every prompt with every seed, prompt-major).

        Between keyframes a and b, frame t in [0, 1) has w = lerp(w_a, w_b, t) and the spike
        code lerp(code_a, code_b, t) (pooled code and token codes); frame t = 0 is keyframe a. `frames` per transition;
        loop=True walks back from the last keyframe to the first (a seamless GIF), else the
        last keyframe ends the walk.
        """
        if frames < 1:
            raise ValueError(f"frames per transition must be >= 1, got {frames}")
        keys = self.prepare(prompts, seeds, psi=psi, truncation=truncation)
        K = keys.ws.shape[0]
        if K < 2:
            raise ValueError("interpolation needs at least two keyframes: give two prompts or two seeds")
        pairs = [(k, (k + 1) % K) for k in range(K if loop else K - 1)]
        ws, codes = [], []
        for a, b in pairs:
            code_a, code_b = keys.code.index([a]), keys.code.index([b])
            for i in range(frames):
                t = i / frames
                ws.append(torch.lerp(keys.ws[a], keys.ws[b], t))
                # lerp pads the shorter token sequence with masked-in zeros, which
                # cross-attention sees; at t = 0 the keyframe's own code keeps the frame exact.
                codes.append(code_a if i == 0 else code_a.lerp(code_b, t))
        if not loop:
            ws.append(keys.ws[K - 1])
            codes.append(keys.code.index([K - 1]))
        images = self.synthesize(torch.stack(ws), SpikeCode.cat(codes), noise_mode=noise_mode, batch=batch)
        return to_pil(images)

    def default_coarse_layers(self) -> int:
        """How many leading ws count as coarse in style mixing: those of the 4x4 and 8x8 blocks,
        as StyleGAN's coarse styles (above 8 px: 5 ws for a "skip" generator, 3 for "orig")."""
        blocks = self.generator.synthesis.blocks
        k = sum(b.num_ws for b in blocks if b.resolution <= 8)
        return k if k < self.num_ws else max(1, self.num_ws // 2)

    @torch.no_grad()
    def style_mix(
        self,
        prompt: str,
        row_seeds: Sequence[int],
        col_seeds: Sequence[int],
        *,
        coarse_layers: int | None = None,
        psi: float = 1.0,
        truncation: Truncation = "prompt",
        noise_mode: NoiseMode = "const",
        batch: int = 16,
    ) -> PIL.Image.Image:
        """StyleGAN's style-mixing figure for one prompt.

        Top row: the column seeds' images; left column: the row seeds' images; cell (r, c):
        coarse styles (ws[:coarse_layers]) from row seed r, fine styles from column seed c.
        Returns a grid of (1 + len(row_seeds)) x (1 + len(col_seeds)) tiles, top-left blank.
        """
        k = self.default_coarse_layers() if coarse_layers is None else coarse_layers
        if not 0 < k < self.num_ws:
            raise ValueError(f"coarse layers must lie in 1..{self.num_ws - 1} (the model has {self.num_ws} ws), got {k}")
        if not row_seeds or not col_seeds:
            raise ValueError("style mixing needs at least one row seed and one column seed")
        seeds = list(row_seeds) + list(col_seeds)
        lat = self.prepare([prompt], seeds, psi=psi, truncation=truncation)  # [R+C]
        R, C = len(row_seeds), len(col_seeds)
        w_row, w_col = lat.ws[:R], lat.ws[R:]
        mixed = w_col[None].repeat(R, 1, 1, 1)                       # [R, C, num_ws, w_dim]
        mixed[:, :, :k] = w_row[:, None, :k]
        ws = torch.cat([lat.ws, mixed.flatten(0, 1)])                # [R + C + R*C, num_ws, w_dim]
        code = lat.code.index([0] * ws.shape[0])
        tiles = to_pil(self.synthesize(ws, code, noise_mode=noise_mode, batch=batch))
        rows_img, cols_img, cells = tiles[:R], tiles[R:R + C], tiles[R + C:]
        blank = PIL.Image.new("RGB", tiles[0].size, (255, 255, 255))
        layout = [blank, *cols_img]
        for r in range(R):
            layout += [rows_img[r], *cells[r * C:(r + 1) * C]]
        return image_grid(layout, rows=R + 1, cols=C + 1)

    # ----------------------------------------------------------------------------------------
    # How spikes shape the image: spike rasters and cross-attention maps.

    @torch.no_grad()
    def raster(self, prompt: str) -> PIL.Image.Image:
        """The spike raster of one prompt: the input spike train and every spiking layer,
        time across, neurons down, token windows labelled with their words."""
        from encoders import spike_raster

        batch = self.tokenizer([prompt]).to(self.device)
        _, trains = self.encoder.run(batch)                      # name -> [T, 1, N]
        return spike_raster({k: v[:, 0] for k, v in trains.items()}, words=batch.words[0],
                            steps_per_token=self.encoder.cfg.steps_per_token, title=prompt)

    def write_raster(self, prompt: str, path: str | Path) -> Path:
        """Save raster(prompt) as a PNG; returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.raster(prompt).save(path)
        return path

    @torch.no_grad()
    def attention_maps(self, prompt: str, seed: int, *, psi: float = 1.0, truncation: Truncation = "prompt",
                       noise_mode: NoiseMode = "const") -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """Where each word of the prompt is looked at while generating (prompt, seed).

        Returns (image [1, 3, R, R], words (L), maps [L, R, R]): the cross-attention weight of
        each pixel on each token, averaged over heads, upsampled bilinearly from each attention
        layer's resolution to R and averaged over layers. At every pixel the L maps sum to 1.
        """
        G = self.generator
        layers = G.attention_layers()
        if not layers:
            raise ValueError("this model has no cross-attention layers (generator.attn_resolutions is empty)")
        lat = self.prepare([prompt], [seed], psi=psi, truncation=truncation)
        G.record_attention(True)
        try:
            image = self.synthesize(lat.ws, lat.code, noise_mode=noise_mode)
            weights = [layer.last_attention for layer in layers]
        finally:
            G.record_attention(False)
        maps = []
        for a in weights:                                        # [1, heads, H*W, L]
            HW, L = a.shape[2], a.shape[3]
            side = math.isqrt(HW)
            assert side * side == HW, a.shape
            m = a[0].mean(dim=0).T.reshape(L, 1, side, side)     # [L, 1, H, W]
            maps.append(F.interpolate(m.float(), size=(self.resolution,) * 2, mode="bilinear", align_corners=False))
        words = self.tokenizer([prompt]).words[0]
        maps_t = torch.stack(maps).mean(dim=0)[:, 0]             # [L, R, R]
        assert maps_t.shape[0] == len(words), (maps_t.shape, words)
        return image, words, maps_t

    def attention_panel(self, prompt: str, seed: int, *, columns: int | None = None, **gen) -> PIL.Image.Image:
        """The image followed by one panel per word: its cross-attention map over the image
        (each map on its own colour scale; the title gives the word's mean attention share).

        columns: panels per row (None = all in one row); more panels wrap onto further rows.
        """
        from matplotlib.figure import Figure

        from encoders.raster import figure_image

        image, words, maps = self.attention_maps(prompt, seed, **gen)
        rgb = to_pil(image)[0]
        gray = rgb.convert("L")
        n = len(words) + 1
        if columns is not None and columns < 1:
            raise ValueError(f"attention_panel: columns must be >= 1, got {columns}")
        cols = n if columns is None else min(columns, n)
        rows = -(-n // cols)
        fig = Figure(figsize=(1.6 * cols, 2.0 * rows))
        axes = fig.subplots(rows, cols, squeeze=False).ravel()
        axes[0].imshow(rgb, interpolation="nearest")
        axes[0].set_title(f"seed {seed}", fontsize=8)
        for ax, word, m in zip(axes[1:], words, maps):
            # Each word's map on its own scale (as DAAM shows them); the title gives its share
            # of the attention, averaged over the image.
            ax.imshow(gray, cmap="gray", interpolation="nearest")
            ax.imshow(m.cpu().numpy(), cmap="jet", alpha=0.55, vmin=float(m.min()), vmax=float(m.max()) + 1e-8,
                      interpolation="bilinear")
            ax.set_title(f"{word} {float(m.mean()):.2f}", fontsize=8)
        for ax in axes:
            ax.axis("off")
        fig.suptitle(prompt, fontsize=8)
        fig.tight_layout()
        return figure_image(fig, dpi=100)


def _check_truncation(psi: float, truncation: str) -> None:
    if truncation not in ("prompt", "global"):
        raise ValueError(f"truncation must be 'prompt' or 'global', got {truncation!r}")
    if not 0.0 <= psi <= 2.0:
        raise ValueError(f"truncation psi must lie in [0, 2], got {psi}")


def _check_noise_mode(noise_mode: str) -> None:
    if noise_mode not in ("const", "random", "none"):
        raise ValueError(f"noise_mode must be 'const', 'random' or 'none', got {noise_mode!r}")
