"""A model's spike raster and emphasis strip, the pictures of docs/spikes.md.

    python scripts/spike_raster_strip.py --model runs/shapes32/model --name recurrent --out docs/pictures \\
        --prompt "a small red circle on the left on a white background" --word red --seed 0

writes <out>/<name>-raster.png (the encoder's spike trains for the prompt with --word at the
highest weight: time across, neurons down, spike height as shade) and <out>/<name>-emphasis.png
(the same seed drawn with --word's weight rising over eval.emphasis.WEIGHTS, left to right).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import PIL.Image
import PIL.ImageDraw

from eval.emphasis import WEIGHTS, emphasise

LABEL_HEIGHT = 14  # pixels of caption under each tile


def labelled_strip(images: Sequence[PIL.Image.Image], labels: Sequence[str], *, scale: int = 4) -> PIL.Image.Image:
    """Equal-size images side by side, each enlarged `scale` times (nearest) over its label."""
    if len(images) != len(labels) or not images:
        raise ValueError(f"labelled_strip: {len(images)} images, {len(labels)} labels")
    w, h = images[0].size
    tile_w, tile_h = w * scale, h * scale
    strip = PIL.Image.new("RGB", (tile_w * len(images), tile_h + LABEL_HEIGHT), (255, 255, 255))
    draw = PIL.ImageDraw.Draw(strip)
    for i, (im, label) in enumerate(zip(images, labels)):
        strip.paste(im.convert("RGB").resize((tile_w, tile_h), PIL.Image.NEAREST), (i * tile_w, 0))
        draw.text((i * tile_w + 3, tile_h + 1), label, fill=(0, 0, 0))
    return strip


def write_pictures(model: str | Path, out: str | Path, *, name: str, prompt: str, word: str, seed: int,
                   weights: Sequence[float] = WEIGHTS, device: str = "cpu") -> list[Path]:
    """The raster and the emphasis strip of one model (module docstring); returns their paths."""
    from gan.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(model, device=device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    raster = pipe.write_raster(emphasise(prompt, word, max(weights)), out / f"{name}-raster.png")
    images = pipe([emphasise(prompt, word, w) for w in weights], seeds=[seed])
    strip = out / f"{name}-emphasis.png"
    labelled_strip(images, [f"{word}:{w:g}" for w in weights]).save(strip)
    return [raster, strip]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="spike_raster_strip", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, metavar="DIR", help="model directory")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the two PNGs")
    p.add_argument("--name", required=True, help="file name prefix, e.g. the encoder kind")
    p.add_argument("--prompt", required=True, help="the prompt, without emphasis syntax")
    p.add_argument("--word", required=True, help="the word of --prompt whose weight rises")
    p.add_argument("--seed", type=int, default=0, help="the seed of every image of the strip (default 0)")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    error = None
    if args.word not in args.prompt.split(" "):
        error = f"--word {args.word!r} is not a word of --prompt {args.prompt!r}"
    elif not (Path(args.model) / "config.json").is_file():
        error = f"--model {args.model}: not a model directory (no config.json)"
    if error:
        print(f"spike_raster_strip: error: {error}", file=sys.stderr)
        return 2
    for path in write_pictures(args.model, args.out, name=args.name, prompt=args.prompt, word=args.word,
                               seed=args.seed, device=args.device):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
