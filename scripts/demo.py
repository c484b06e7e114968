"""A local web demo of a saved model (also installed as `spikegan-demo`).

    spikegan-demo --model runs/shapes32/model            # then open http://127.0.0.1:7860
    spikegan-demo --model M --port 8000 --max-images 8 --max-running 2

It serves one page (prompt, seeds, truncation, image grid, spike raster, per-word attention
maps, an interpolation GIF, PNG downloads) from gan.demo. The server binds 127.0.0.1 unless
--host says otherwise; it loads only safetensors model directories.
"""
from __future__ import annotations

import argparse
import sys

from gan.demo import DEFAULT_HOST, DEFAULT_PORT, DemoLimits

LIMIT_FLAGS = {  # flag -> DemoLimits field
    "--max-images": "max_images",
    "--max-prompt-chars": "max_prompt_chars",
    "--max-frames": "max_frames",
    "--max-running": "max_running",
    "--max-waiting": "max_waiting",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spikegan-demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (config.json, model.safetensors, tokenizer.json)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    defaults = DemoLimits()
    helps = {"max_images": "images per request", "max_prompt_chars": "characters per prompt",
             "max_frames": "interpolation frames per transition", "max_running": "generations running at once",
             "max_waiting": "requests waiting behind those (more are refused)"}
    for flag, field in LIMIT_FLAGS.items():
        p.add_argument(flag, type=int, default=getattr(defaults, field),
                       help=f"{helps[field]} (default {getattr(defaults, field)})")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate; errors name the flag (argparse exits with status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port: must lie in 1..65535, got {args.port}")
    for flag, field in LIMIT_FLAGS.items():
        low = DemoLimits.lowest(field)
        if getattr(args, field) < low:
            parser.error(f"{flag}: must be >= {low}, got {getattr(args, field)}")
    args.limits = DemoLimits(**{field: getattr(args, field) for field in LIMIT_FLAGS.values()})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from gan.demo import create_app, serve
    from gan.pipeline import ModelDirError

    try:
        app = create_app(args.model, limits=args.limits, device=args.device)
    except ModelDirError as e:
        print(f"spikegan-demo: error: {e}", file=sys.stderr)
        return 1
    print(f"spikegan-demo: serving {args.model} on http://{args.host}:{args.port}", flush=True)
    serve(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
