"""Decode any image file into a square 8-bit RGB array at a chosen resolution.

One path serves scanning (validation), loading and preparing: `open_checked` reads the
header and rejects decompression bombs and too-small images before any pixel is decoded,
`to_rgb` turns every PIL mode into RGB (alpha composited onto a background colour),
`fit_square` centre-crops or pads, and `resize` resamples with Lanczos (area-correct when
shrinking).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")

Fit = Literal["crop", "pad"]


class ImageRejected(Exception):
    """An image that cannot be used; `reason` is a short stable phrase for reports."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason  # e.g. "corrupt image", "decompression bomb", "too small"
        self.detail = detail  # human-readable cause


@dataclass(frozen=True)
class ImageOptions:
    """How raw images become training images."""

    resolution: int  # Output side in pixels (square).
    fit: Fit = "crop"  # "crop": centre-crop to a square; "pad": pad with the background.
    background: tuple[int, int, int] = (255, 255, 255)  # RGB that alpha is composited onto.
    min_size: int = 16  # Shorter side below this many pixels is rejected as "too small".
    max_pixels: int = 89_478_485  # More pixels is a "decompression bomb" (PIL's default; PIL itself refuses > 2x its limit).

    def __post_init__(self) -> None:
        if not (isinstance(self.resolution, int) and self.resolution >= 1):
            raise ValueError(f"resolution must be a positive int, got {self.resolution!r}")
        if self.fit not in ("crop", "pad"):
            raise ValueError(f"fit must be 'crop' or 'pad', got {self.fit!r}")
        if len(self.background) != 3 or not all(0 <= int(c) <= 255 for c in self.background):
            raise ValueError(f"background must be three ints in 0..255, got {self.background!r}")


def open_checked(data: bytes, opts: ImageOptions) -> Image.Image:
    """Open an encoded image and check its header; pixels are not decoded yet.

    Raises ImageRejected("corrupt image" | "decompression bomb" | "too small").
    """
    try:
        with warnings.catch_warnings():
            # our own max_pixels decides below; PIL still refuses > 2 * Image.MAX_IMAGE_PIXELS
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageRejected("decompression bomb", str(e)) from None
    except Image.UnidentifiedImageError:
        raise ImageRejected("corrupt image", "not a recognised image format") from None
    except Exception as e:  # PIL raises many types for undecodable input; the cause is kept.
        raise ImageRejected("corrupt image", f"{type(e).__name__}: {e}") from None
    w, h = img.size
    if w * h > opts.max_pixels:
        raise ImageRejected("decompression bomb", f"{w}x{h} = {w * h} pixels > {opts.max_pixels}")
    if min(w, h) < opts.min_size:
        raise ImageRejected("too small", f"{w}x{h}, shorter side < min_size {opts.min_size}")
    return img


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Any PIL mode -> uint8 [H, W, 3]. Alpha (RGBA, LA, P with transparency) is composited
    onto `background`; 16/32-bit grayscale is scaled (not clipped) to 8 bits; CMYK, YCbCr,
    palette and 1-bit are converted by PIL."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img, dtype=np.int64)  # [H, W]
        if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            a = np.clip(a, 0, 65535)
        g = ((a * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "F":
        g = np.clip(np.rint(np.asarray(img, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mode in ("P", "L", "RGB") and "transparency" in img.info
    )
    if not has_alpha:
        return np.asarray(img.convert("RGB"), dtype=np.uint8)
    rgba = np.asarray(img.convert("RGBA"), dtype=np.uint32)  # [H, W, 4]
    alpha = rgba[:, :, 3:4]
    bg = np.asarray(background, dtype=np.uint32)[None, None, :]
    out = (rgba[:, :, :3] * alpha + bg * (255 - alpha) + 127) // 255
    return out.astype(np.uint8)


def fit_square(rgb: np.ndarray, fit: Fit, background: tuple[int, int, int]) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [S, S, 3]: centre crop to S = min(H, W), or pad to
    S = max(H, W) with `background`."""
    h, w, _ = rgb.shape
    if h == w:
        return rgb
    if fit == "crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return rgb[top : top + s, left : left + s]
    s = max(h, w)
    out = np.empty((s, s, 3), dtype=np.uint8)
    out[:] = np.asarray(background, dtype=np.uint8)
    top, left = (s - h) // 2, (s - w) // 2
    out[top : top + h, left : left + w] = rgb
    return out


def resize(square: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 [S, S, 3] -> uint8 [R, R, 3] with Lanczos resampling (PIL widens the kernel by
    the scale factor when shrinking, so downscaling is anti-aliased like area averaging)."""
    if square.shape[0] == resolution:
        return np.ascontiguousarray(square)
    img = Image.fromarray(np.ascontiguousarray(square), mode="RGB")
    return np.asarray(img.resize((resolution, resolution), Image.Resampling.LANCZOS))


def decode(data: bytes, opts: ImageOptions) -> np.ndarray:
    """Encoded bytes -> uint8 [R, R, 3], R = opts.resolution. EXIF orientation is applied.
    Raises ImageRejected with the reason for any unusable image."""
    img = open_checked(data, opts)
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
        rgb = to_rgb(img, opts.background)
    except Exception as e:  # truncated data, bad CRC, unsupported codec: keep the cause.
        raise ImageRejected("corrupt image", f"{type(e).__name__}: {e}") from None
    return resize(fit_square(rgb, opts.fit, opts.background), opts.resolution)


def validate(data: bytes, opts: ImageOptions) -> tuple[int, int]:
    """Fully decode once (truncation and bad checksums only show while decoding) without
    resizing; returns (width, height). Raises ImageRejected."""
    img = open_checked(data, opts)
    try:
        img.load()
    except Exception as e:
        raise ImageRejected("corrupt image", f"{type(e).__name__}: {e}") from None
    return img.size
