"""Validate an image–caption dataset and write it in the prepared (preprocessed) format.

    python scripts/prepare_data.py SRC --resolution R --out DIR [--fit crop|pad] [--background R,G,B]
    python scripts/prepare_data.py shapes --count N --resolution R --out DIR [--seed S]

SRC is a folder or .zip of images with captions (metadata.jsonl or .txt files), or
"shapes". DIR receives images.npy, captions.jsonl, report.json and dataset.json; it loads
with data.open_dataset(DIR, resolution=R).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository's packages importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data import EmptyDatasetError, prepare_dataset  # noqa: E402


def parse_background(text: str) -> tuple[int, int, int]:
    try:
        rgb = tuple(int(v) for v in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
        raise argparse.ArgumentTypeError(f"--background needs R,G,B with values in 0..255, got {text!r}")
    return rgb  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", metavar="SRC", help="folder or .zip of images with captions, or 'shapes'")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--resolution", required=True, type=int, help="output side in pixels")
    p.add_argument("--fit", choices=("crop", "pad"), default="crop", help="centre-crop or pad to square")
    p.add_argument("--background", type=parse_background, default=(255, 255, 255),
                   help="R,G,B under transparent pixels and padding (default 255,255,255)")
    p.add_argument("--min-size", type=int, default=16, help="skip images whose shorter side is smaller")
    p.add_argument("--caption-column", default="text", help="metadata.jsonl key of the caption(s)")
    p.add_argument("--count", type=int, default=None, help="number of scenes (SRC 'shapes' only)")
    p.add_argument("--seed", type=int, default=0, help="seed of the scenes (SRC 'shapes' only)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: up to 4)")
    p.add_argument("--sketch-grid", type=int, default=8,
                   help="grid of the sketch stored per image for models with guides (folder sources; default 8)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    src = args.src
    if src != "shapes":
        if not Path(src).exists():
            parser.error(f"SRC {src!r} does not exist (expected a folder, a .zip, or 'shapes')")
        if not (Path(src).is_dir() or src.lower().endswith(".zip")):
            parser.error(f"SRC {src!r} is neither a folder nor a .zip file")
        if args.count is not None:
            parser.error("--count applies only to SRC 'shapes'")
    elif args.count is None or args.count < 1:
        parser.error("SRC 'shapes' needs --count N (a positive number of scenes)")
    if args.resolution < 1:
        parser.error(f"--resolution must be a positive number of pixels, got {args.resolution}")
    if src == "shapes" and not 16 <= args.resolution <= 256:
        parser.error(f"--resolution must be in 16..256 for 'shapes', got {args.resolution}")
    if args.min_size < 1:
        parser.error(f"--min-size must be >= 1, got {args.min_size}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {str(args.out)!r} exists and is not a directory")
    if args.sketch_grid < 1:
        parser.error(f"--sketch-grid must be >= 1, got {args.sketch_grid}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")

    folder_kwargs = {} if src == "shapes" else dict(
        fit=args.fit, background=args.background, min_size=args.min_size,
        caption_column=args.caption_column)
    try:
        report = prepare_dataset(src, args.out, resolution=args.resolution, count=args.count,
                                 seed=args.seed, workers=args.workers, sketch_grid=args.sketch_grid, **folder_kwargs)
    except EmptyDatasetError as e:
        print(f"error: {e}\nreport: {args.out / 'report.json'}", file=sys.stderr)
        return 1
    except (FileExistsError, NotADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{src} -> {args.out} at {args.resolution} px: {report.summary()}")
    for s in report.skipped[:10]:
        print(f"  skipped {s.file}: {s.reason} ({s.detail})")
    if len(report.skipped) > 10:
        print(f"  ... {len(report.skipped) - 10} more in {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
