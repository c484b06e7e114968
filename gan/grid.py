"""Image grids, GIFs, tensor <-> PIL conversion and seed-range parsing for sampling."""
from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import PIL.Image
import torch

from data import to_uint8

# torch.Generator.manual_seed accepts 0 .. 2**64 - 1.
MAX_SEED = 2**64 - 1

_RANGE = re.compile(r"^(\d+)-(\d+)$")


class SeedRangeError(ValueError):
    """A seed list such as "0-7" or "1,3,5-9" that does not parse."""


def parse_seeds(text: str, *, option: str = "--seeds") -> list[int]:
    """Parse "0-7", "1,3,5-9" or "42" into seeds, in the order written (ranges inclusive).

    Raises SeedRangeError naming the option and the part that is wrong.
    """
    if not text or not text.strip():
        raise SeedRangeError(f"{option}: empty seed list (write e.g. 0-7 or 1,3,5-9)")
    seeds: list[int] = []
    for part in text.split(","):
        p = part.strip()
        if not p:
            raise SeedRangeError(f"{option}: empty item in {text!r} (stray comma?)")
        m = _RANGE.match(p)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if lo > hi:
                raise SeedRangeError(f"{option}: range {p!r} runs backwards ({lo} > {hi}); write {hi}-{lo}")
            if hi - lo >= 1_000_000:
                raise SeedRangeError(f"{option}: range {p!r} holds {hi - lo + 1} seeds; at most 1000000")
            values = range(lo, hi + 1)
        elif p.isdigit():
            values = range(int(p), int(p) + 1)
        else:
            raise SeedRangeError(
                f"{option}: {p!r} is neither a seed (a non-negative integer) nor a range a-b")
        if values[-1] > MAX_SEED:
            raise SeedRangeError(f"{option}: seed in {p!r} exceeds {MAX_SEED}")
        seeds.extend(values)
    return seeds


def to_pil(images: torch.Tensor) -> list[PIL.Image.Image]:
    """[B, 3, H, W] float in [-1, 1] -> B RGB PIL images, quantised by data.to_uint8."""
    assert images.ndim == 4 and images.shape[1] == 3, images.shape
    return [PIL.Image.fromarray(a.numpy(), "RGB") for a in to_uint8(images).permute(0, 2, 3, 1).cpu()]  # [H, W, 3] each


def from_pil(image: PIL.Image.Image, *, resolution: int | None = None) -> torch.Tensor:
    """An image -> [1, 3, R, R] float in [-1, 1], RGB, resized (Lanczos) to `resolution` if given."""
    image = image.convert("RGB")
    if resolution is not None and image.size != (resolution, resolution):
        image = image.resize((resolution, resolution), PIL.Image.LANCZOS)
    a = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())  # [H, W, 3]
    return (a.permute(2, 0, 1)[None].float() / 127.5 - 1.0)


def image_grid(images: Sequence[PIL.Image.Image], *, rows: int, cols: int, gap: int = 0,
               background: tuple[int, int, int] = (255, 255, 255)) -> PIL.Image.Image:
    """Lay `rows * cols` equal-size images out row-major (image i at row i // cols, column i % cols).

    gap: pixels of `background` between tiles (0 = tiles touch, so tile (r, c) is exactly the
    image's pixels at [r*H : (r+1)*H, c*W : (c+1)*W]).
    """
    if len(images) != rows * cols:
        raise ValueError(f"image_grid: {len(images)} images do not fill {rows} rows x {cols} columns")
    if rows < 1 or cols < 1:
        raise ValueError(f"image_grid: need at least one row and column, got {rows} x {cols}")
    w, h = images[0].size
    for i, im in enumerate(images):
        if im.size != (w, h):
            raise ValueError(f"image_grid: image {i} is {im.size}, image 0 is {(w, h)}")
    grid = PIL.Image.new("RGB", (cols * w + (cols - 1) * gap, rows * h + (rows - 1) * gap), background)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        grid.paste(im.convert("RGB"), (c * (w + gap), r * (h + gap)))
    return grid


def save_gif(frames: Sequence[PIL.Image.Image], path: str | Path, *, fps: float = 12.0,
             loop: int = 0) -> Path:
    """Write an animated GIF (loop=0: forever). Returns the path."""
    if not frames:
        raise ValueError(f"save_gif: no frames for {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gif_bytes(frames, fps=fps, loop=loop))
    return path


def gif_bytes(frames: Sequence[PIL.Image.Image], *, fps: float = 12.0, loop: int = 0) -> bytes:
    """An animated GIF file's bytes (loop=0: forever), one frame per image."""
    if not frames:
        raise ValueError("gif_bytes: no frames")
    first, *rest = [f.convert("RGB") for f in frames]
    buf = io.BytesIO()
    first.save(buf, format="GIF", save_all=True, append_images=rest, duration=max(1, round(1000 / fps)),
               loop=loop, optimize=False)
    return buf.getvalue()


def png_bytes(image: PIL.Image.Image) -> bytes:
    """A PNG file's bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def pil_resize_matrix(in_size: int, out_size: int, resample: int = PIL.Image.BICUBIC) -> torch.Tensor:
    """[out_size, in_size] float32 M with M @ v == PIL's float ("F") resize of the line v.

    PIL resizes separably and linearly, so resizing an [H, W] float image to [H', W'] is
    M_h @ x @ M_w.T: a differentiable twin of PIL's resize (and of clean-fid's "clean" resize,
    which resizes each channel as a float PIL image). Column i is PIL's resize of the unit
    vector e_i (a 1-pixel-high image; a height kept at 1 is left unchanged).
    """
    cols = []
    for i in range(in_size):
        e = np.zeros((1, in_size), np.float32)
        e[0, i] = 1.0
        cols.append(np.asarray(PIL.Image.fromarray(e, mode="F").resize((out_size, 1), resample=resample))[0])
    return torch.from_numpy(np.stack(cols, axis=1).astype(np.float32))  # [out, in]


def resize_like_pil(images: torch.Tensor, size: int, resample: int = PIL.Image.BICUBIC) -> torch.Tensor:
    """[B, C, H, W] float -> [B, C, size, size], as PIL's float resize of each channel, differentiably."""
    B, C, H, W = images.shape
    mh = pil_resize_matrix(H, size, resample).to(images)  # [size, H]
    mw = pil_resize_matrix(W, size, resample).to(images)  # [size, W]
    return mh @ images @ mw.T  # [B, C, size, size]


def grid_prompts(prompts: Sequence[str], captions: list[str], rows: int) -> list[str]:
    """The fixed prompts of a training run's sample grid: `prompts`, or `rows` distinct captions spread
    evenly over the dataset's order (its first ones are often alike: emoji's are ten keycaps)."""
    if prompts:
        return list(prompts)
    distinct = list(dict.fromkeys(captions))
    n = min(rows, len(distinct))
    return [distinct[i * len(distinct) // n] for i in range(n)]


@torch.no_grad()
def render_grid(model: torch.nn.Module, tokenizer, prompts: list[str], seeds: list[int], *, device,
                emphasis: bool = True) -> Any:
    """PIL grid: one row per prompt (its text in a left margin), one column per latent seed;
    EMA model, constant noise, 32 px and smaller tiles doubled (nearest) for legibility.
    emphasis=False reads the prompts literally (dataset captions, as training reads them)."""
    import PIL.ImageDraw

    was_training = model.training
    model.eval()
    z_dim = model.generator.z_dim
    z = torch.cat([torch.randn(1, z_dim, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(device)
    tokens = tokenizer([p for p in prompts for _ in seeds], emphasis=emphasis).to(device)  # row-major: prompt, seed
    img = model.generator(z.repeat(len(prompts), 1), model.encoder(tokens), noise_mode="const")
    rows = to_pil(img.float())
    model.train(was_training)
    scale = 2 if rows[0].size[0] <= 32 else 1
    if scale > 1:
        rows = [im.resize((im.size[0] * scale, im.size[1] * scale), PIL.Image.NEAREST) for im in rows]
    grid = image_grid(rows, rows=len(prompts), cols=len(seeds), gap=2)
    margin = 300
    canvas = PIL.Image.new("RGB", (grid.size[0] + margin, grid.size[1]), (255, 255, 255))
    canvas.paste(grid, (margin, 0))
    draw = PIL.ImageDraw.Draw(canvas)
    tile = rows[0].size[1] + 2
    for r, prompt in enumerate(prompts):
        draw.text((4, r * tile + tile // 2 - 6), prompt[:48], fill=(0, 0, 0))
    return canvas
