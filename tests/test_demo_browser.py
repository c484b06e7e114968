"""The demo page in a real browser: headless system Chromium driven by Playwright, a live server, a tiny model.

Without Chromium or Playwright the test skips on a developer machine, saying why; with CI set
(CI=true, as CI services set it) it fails instead, so CI cannot pass it by skipping.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from gan.demo import DemoLimits, create_app, running_server
from scripts.demo_screenshot import animate, chromium_page, find_chromium, generate, open_demo

pytestmark = pytest.mark.usefixtures("one_thread")

# Draws an <img> at its natural size onto a canvas and returns its RGBA bytes: pixels as the page has them.
READ_PIXELS = """async (img) => {
  await img.decode();
  const c = document.createElement("canvas");
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(img, 0, 0);
  return {width: c.width, height: c.height, data: Array.from(ctx.getImageData(0, 0, c.width, c.height).data)};
}"""

NATURAL_WIDTH = "async (img) => { await img.decode(); return img.naturalWidth; }"


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}; CI must run the browser test (.ci/run installs Chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright is not installed (pip install -e .[test])")
    path = find_chromium()
    if path is None:
        _missing("no Chromium at /usr/bin/chromium or on PATH (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def page(chromium, tiny_pipe):
    with running_server(create_app(tiny_pipe, limits=DemoLimits(max_running=1, max_waiting=4))) as url, \
            chromium_page(chromium) as page:
        open_demo(page, url)
        yield page


def page_pixels(page, selector: str) -> np.ndarray:
    """[H, W, 3] uint8: the RGB pixels of the image `selector` as drawn in the page."""
    got = page.eval_on_selector(selector, READ_PIXELS)
    return np.array(got["data"], dtype=np.uint8).reshape(got["height"], got["width"], 4)[..., :3]


def test_generate_in_the_browser(page, tiny_pipe):
    generate(page, "a red circle", seed=4, count=2)
    assert page.locator("#images img.tile").count() == 2
    red = page_pixels(page, "#images img.tile >> nth=0")
    assert red.shape == (16, 16, 3)
    assert np.abs(red.astype(int) - np.asarray(tiny_pipe("a red circle", 4)[0])).max() <= 1  # what the model made
    assert page.locator("#images figcaption >> nth=1").inner_text() == "seed 5"
    # The prompt's spike raster and the first image's attention maps are shown.
    assert page.locator("#raster").is_visible() and page.eval_on_selector("#raster", NATURAL_WIDTH) > 100
    assert page.locator("#attention").is_visible() and "seed 4" in page.inner_text("#attention-seed")
    assert page.get_attribute("#download-grid", "href").startswith("data:image/png;base64,")

    generate(page, "a blue square left of a green triangle", seed=4, count=2)
    blue = page_pixels(page, "#images img.tile >> nth=0")
    assert np.abs(blue.astype(int) - red.astype(int)).max() > 10, "two prompts drew the same image"

    # Clicking the second image shows its attention maps.
    page.evaluate("document.getElementById('attention-seed').textContent = ''")
    page.click("#images img.tile >> nth=1")
    page.wait_for_function("document.getElementById('attention-seed').textContent.includes('seed 5')")
    assert page.get_attribute("#download-image", "download") == "spikegan-seed5.png"


def test_bad_prompt_shows_its_error_beside_the_prompt(page):
    page.fill("#prompt", "a (red circle")
    page.click("#generate")
    error = page.locator("#prompt-error")
    error.wait_for(state="visible")
    assert "unbalanced '(' is never closed at position 2" in error.inner_text()
    assert page.inner_text("#prompt-error mark") == "("
    # The server keeps serving: a corrected prompt generates, and the error goes away.
    generate(page, "a red circle", seed=0, count=1)
    assert not error.is_visible() and page.locator("#images img.tile").count() == 1


def test_interpolation_animation(page):
    animate(page, "a red circle", "a blue square", frames=3)
    assert page.eval_on_selector("#walk", NATURAL_WIDTH) == 16
    assert "6 frames" in page.inner_text("#walk-info")


@pytest.mark.parametrize("ci, outcome", [("", pytest.skip.Exception), ("false", pytest.skip.Exception),
                                         ("true", pytest.fail.Exception), ("1", pytest.fail.Exception)])
def test_missing_browser_skips_on_a_desk_and_fails_in_ci(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="no Chromium"):
        _missing("no Chromium at /usr/bin/chromium")
