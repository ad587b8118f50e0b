"""Headless Chromium for the browser tests: Debian's ``chromium`` driven by Playwright.

Playwright's own browser download is not used (CI installs Debian's package,
see .ci/run); one browser per test module keeps the suite fast.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.helpers import wait_for

CHROMIUM = os.environ.get("PUSHQ_TEST_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]


@contextmanager
def chromium(user_data_dir: Path) -> Iterator[Any]:
    """A persistent (fresh-profile) headless Chromium context; closed, with its browser, on exit."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium; .ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir), executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(15_000)
        try:
            yield context
        finally:
            context.close()


def wait_in_browser(page: Any, predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll ``predicate`` while letting Playwright process browser events (CDP events arrive meanwhile)."""
    return wait_for(predicate, timeout, sleep=lambda seconds: page.wait_for_timeout(seconds * 1000))


_PIXEL_STATS = """async (dataUrl) => {
  const image = new Image();
  image.src = dataUrl;
  await image.decode();
  const canvas = new OffscreenCanvas(image.width, image.height);
  const context = canvas.getContext('2d');
  context.drawImage(image, 0, 0);
  const pixels = context.getImageData(0, 0, image.width, image.height).data;
  let sum = 0, sumOfSquares = 0;
  const colors = new Set();
  for (let i = 0; i < pixels.length; i += 4) {
    const luma = 0.299 * pixels[i] + 0.587 * pixels[i + 1] + 0.114 * pixels[i + 2];
    sum += luma; sumOfSquares += luma * luma;
    if (colors.size < 10000) colors.add((pixels[i] << 16) | (pixels[i + 1] << 8) | pixels[i + 2]);
  }
  const n = pixels.length / 4;
  const mean = sum / n;
  return {width: image.width, height: image.height, mean, variance: sumOfSquares / n - mean * mean, colors: colors.size};
}"""


def pixel_stats(context: Any, png: Path) -> dict[str, float]:
    """Size, mean and variance of the luma, and distinct colours of a PNG, decoded by the browser's own decoder."""
    page = context.new_page()
    try:
        data_url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
        return page.evaluate(_PIXEL_STATS, data_url)
    finally:
        page.close()
