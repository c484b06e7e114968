"""Spike rasters: time across, neurons down, token windows labelled with their words."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import PIL.Image
import torch


def plot_spikes(
    path: str | os.PathLike,  # PNG to write
    trains: dict[str, torch.Tensor] | torch.Tensor,  # as spike_raster
    *,
    words: Sequence[str],
    steps_per_token: int,
    max_neurons: int = 64,
    title: str | None = None,
) -> Path:
    """Write spike_raster's picture as a PNG file; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    spike_raster(trains, words=words, steps_per_token=steps_per_token, max_neurons=max_neurons, title=title).save(path)
    return path


def spike_raster(
    trains: dict[str, torch.Tensor] | torch.Tensor,  # panel name -> spikes [T, N] of one prompt (or one [T, N])
    *,
    words: Sequence[str],  # the prompt's tokens, one per window
    steps_per_token: int,  # K, steps per token window
    max_neurons: int = 64,  # neurons shown per panel (the most active ones, in index order)
    title: str | None = None,  # figure title, e.g. the prompt
) -> PIL.Image.Image:
    """A raster picture (RGB): one panel per train; spike height (emphasis) shown by shade."""
    from matplotlib.figure import Figure

    if isinstance(trains, torch.Tensor):
        trains = {"spikes": trains}
    T = next(iter(trains.values())).shape[0]
    fig = Figure(figsize=(max(6.0, 0.12 * T + 2), 2.2 * len(trains) + 0.6))
    axes = fig.subplots(len(trains), 1, squeeze=False, sharex=True)
    vmax = max(float(t.detach().abs().max()) for t in trains.values()) or 1.0
    for ax, (name, s) in zip(axes[:, 0], trains.items()):
        s = s.detach().float().cpu()
        assert s.ndim == 2 and s.shape[0] == T, (name, s.shape, T)
        keep = s.ne(0).sum(0).argsort(descending=True)[:max_neurons].sort().values
        ax.imshow(s[:, keep].T.numpy(), aspect="auto", interpolation="nearest", cmap="Greys",
                  vmin=0, vmax=vmax, extent=(-0.5, T - 0.5, len(keep) - 0.5, -0.5))
        for i in range(len(words) + 1):
            ax.axvline(i * steps_per_token - 0.5, color="tab:red", lw=0.6, alpha=0.6)
        ax.set_ylabel(f"{name}\nneuron")
        ax.set_xlim(-0.5, T - 0.5)
    top = axes[0, 0].secondary_xaxis("top")
    top.set_xticks([(i + 0.5) * steps_per_token - 0.5 for i in range(len(words))], list(words), fontsize=8)
    axes[-1, 0].set_xlabel("time step")
    caption = f"shade = spike height (emphasis weight), darkest = {vmax:.2f}; one window of {steps_per_token} steps per token"
    fig.suptitle(f"{title}\n{caption}" if title else caption, fontsize=9)
    fig.tight_layout()
    return figure_image(fig, dpi=110)


def figure_image(fig, *, dpi: int = 100) -> PIL.Image.Image:
    """A matplotlib Figure rendered to an RGB image.

    Figures built with matplotlib.figure.Figure, not pyplot, keep no process-wide registry, so
    web-server worker threads can draw at once.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    return PIL.Image.open(buf).convert("RGB")
