"""A screenshot of the web demo in headless Chromium: prompt, image grid, spike raster, attention.

    python scripts/demo_screenshot.py --model runs/shapes32/model --out docs/demo.png \\
        --prompt "a red circle left of a blue square" --seed 0 --count 6

It serves the model on a free local port, drives Debian's system Chromium with Playwright
(`pip install -e .[test]`; Playwright's own browser download is not needed), generates, waits
for the attention maps of the first image (after an interpolation to --prompt-b) and saves a
full-page PNG. The browser helpers here
are shared with tests/test_demo_browser.py.
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

CHROMIUM = "/usr/bin/chromium"
# A fresh, quiet, sandbox-free headless browser that reaches nothing but the local server.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000  # the longest a page step may take (a CPU generation under load)


def find_chromium(path: str | None = None) -> str | None:
    """The Chromium executable: `path`, else /usr/bin/chromium, else `chromium` on PATH; None if absent."""
    for candidate in (path, CHROMIUM, shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@contextlib.contextmanager
def chromium_page(executable: str, *, width: int = 1280, height: int = 900) -> Iterator:
    """A Playwright page in headless `executable` with a fresh profile; closed on exit."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="spikegan-chromium-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": width, "height": height})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            context.close()


def open_demo(page, url: str) -> None:
    """Load the demo page and wait until it has read the model's info."""
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")


def generate(page, prompt: str, *, seed: int | None = 0, count: int | None = None) -> None:
    """Type `prompt`, set the seed and count, press Generate and wait for the new images' attention maps."""
    page.fill("#prompt", prompt)
    if count is not None:
        page.fill("#count", str(count))
    if seed is not None:
        page.fill("#seed", str(seed))
    page.set_checked("#random-seed", seed is None)
    page.evaluate("document.getElementById('attention-section').hidden = true")
    page.click("#generate")
    page.wait_for_selector("#attention-section:not([hidden])")


def animate(page, prompt: str, prompt_b: str, *, frames: int = 12) -> None:
    """Type both prompts, press Animate and wait for the interpolation GIF."""
    page.fill("#prompt", prompt)
    page.fill("#prompt-b", prompt_b)
    page.fill("#frames", str(frames))
    page.evaluate("document.getElementById('walk-section').hidden = true")
    page.click("#animate")
    page.wait_for_selector("#walk-section:not([hidden])")


def screenshot(model: str, out: Path, *, prompt: str, prompt_b: str, seed: int, count: int, chromium: str) -> Path:
    """Serve `model`; in the browser animate `prompt` -> `prompt_b`, then generate `prompt`; save a
    full-page screenshot to `out`."""
    from gan.demo import create_app, running_server

    with running_server(create_app(model)) as url, chromium_page(chromium) as page:
        open_demo(page, url)
        page.fill("#seed", str(seed))
        animate(page, prompt, prompt_b)
        generate(page, prompt, seed=seed, count=count)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="demo_screenshot", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, metavar="DIR", help="model directory")
    p.add_argument("--out", default="docs/demo.png", help="PNG to write (default docs/demo.png)")
    p.add_argument("--prompt", default="a red circle left of a blue square", help="the prompt to type")
    p.add_argument("--prompt-b", default="a green triangle above a yellow star", help="the interpolation's second prompt")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--count", type=int, default=6, help="images to generate")
    p.add_argument("--chromium", default=None, help=f"Chromium executable (default {CHROMIUM})")
    args = p.parse_args(argv)
    chromium = find_chromium(args.chromium)
    if chromium is None:
        p.error(f"--chromium: no Chromium at {args.chromium or CHROMIUM} (apt-get install chromium)")
    if args.seed < 0 or args.count < 1:
        p.error(f"--seed must be >= 0 and --count >= 1, got {args.seed} and {args.count}")
    from gan.pipeline import ModelDirError

    try:
        print(screenshot(args.model, Path(args.out), prompt=args.prompt, prompt_b=args.prompt_b, seed=args.seed, count=args.count,
                         chromium=chromium))
    except ModelDirError as e:
        print(f"demo_screenshot: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
