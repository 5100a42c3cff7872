"""The web page in a real browser: Playwright drives the system's Chromium (no browser
download) against a server on 127.0.0.1: it lists the models, streams text, draws a grid with
progress, and Stop ends a long request, which also stops the server's work."""

import os
import shutil
import time
from pathlib import Path

import pytest

from aigc_cli.serve.background import background

from .test_serve import state

CHROMIUM = (
    os.environ.get("AIGC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
)
WHY = "no Chromium: `make chromium` (CI runs it), or set AIGC_CHROMIUM to its path"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason=WHY)]
# Headless, and none of Chromium's own calls home (this machine has no network to answer).
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        # The page's CSP forbids eval, which Playwright's wait_for_function uses.
        context = browser.new_context(viewport={"width": 1100, "height": 800}, bypass_csp=True)
        yield context.new_page()
        browser.close()


def generate(page, model: str, fields: dict[str, str]) -> None:
    """Pick the model, fill the form, press Generate and wait until the page says done."""
    page.select_option("#model", model)
    for selector, value in fields.items():
        page.fill(selector, value)
    page.click("#go")
    page.wait_for_function("document.getElementById('status').textContent == 'done'")


def test_the_page_streams_text_draws_a_grid_and_stops(page, tmp_path):
    served = state()
    shots = Path(os.environ.get("AIGC_SCREENSHOTS", tmp_path))
    with background(served) as url:
        page.goto(url + "/")
        page.wait_for_function("document.querySelectorAll('#model option').length == 2")
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        generate(page, "gpt", {"#prompt": "Once", "#max_tokens": "60", "#text_seed": "3"})
        text = page.inner_text("#text")
        assert text.startswith("Once") and len(text) > 10

        generate(page, "diffusion", {"#n": "6", "#steps": "8", "#image_seed": "1"})
        assert page.locator("#grid img").count() == 6
        assert page.get_attribute("#progress", "value") == "8"
        page.screenshot(path=str(shots / "serve-page.png"))

        page.select_option("#model", "gpt")
        page.fill("#max_tokens", "1024")
        page.click("#go")
        page.wait_for_function("document.getElementById('text').textContent.length > 8")
        page.click("#stop")
        page.wait_for_function("document.getElementById('status').textContent == 'stopped'")
        deadline = time.monotonic() + 5
        while served.models["gpt"].worker.busy and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not served.models["gpt"].worker.busy  # the server stopped decoding too

        page.fill("#max_tokens", "0")
        page.click("#go")
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "max_tokens" in page.inner_text("#error")
        assert not errors, errors
