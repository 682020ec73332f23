"""An HTML report opened in a real headless Chromium, as the report tests read it: what the page shows
(counts, figures with their captions), the images that did not decode, what it fetched, and console errors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROME_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync")
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="needs /usr/bin/chromium and /usr/bin/chromedriver (Debian packages chromium, chromium-driver; "
           "`make test` installs them when run as root)")
READ_PAGE = r"""
    const images = [...document.images];
    return {
      counts: {
        tables: document.querySelectorAll("table").length,
        plots: document.querySelectorAll("figure.plot img").length,
        examples: document.querySelectorAll("figure.example img").length,
        sections: document.querySelectorAll("section").length,
      },
      figures: [...document.querySelectorAll("figure")].map(f => {
        const text = (f.querySelector("figcaption")?.textContent ?? "").trim();
        const title = (f.querySelector("figcaption b")?.textContent ?? "").trim();
        return {kind: f.className, images: f.querySelectorAll("img").length, title: title,
                caption: text.slice(title.length).replace(/^[.\s]+/, "")};
      }),
      broken: images.filter(i => !(i.complete && i.naturalWidth > 0 && i.width > 0)).map(i => i.alt),
      fetched: performance.getEntriesByType("resource").map(e => e.name),
    };"""


@dataclass
class RenderedPage:
    """What Chromium made of a page: element counts, each figure's class, image count, title (the bold start of
    its caption) and caption text after the title, the alt texts of images that did not decode, the resources
    it fetched and the SEVERE console entries."""

    counts: dict[str, int]
    figures: list[dict[str, Any]]
    broken: list[str]
    fetched: list[str]
    console_errors: list[dict[str, Any]]


def render_in_chromium(page: Path, profile: Path, screenshot: Path | None = None) -> RenderedPage:
    """Open ``page`` in headless Chromium (user profile in ``profile``), read it, and save a screenshot."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the dev extra")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.set_window_size(1280, 1000)
        driver.get(page.as_uri())
        read = driver.execute_script(READ_PAGE)
        if screenshot is not None:
            driver.save_screenshot(str(screenshot))
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    finally:
        driver.quit()
    return RenderedPage(**read, console_errors=errors)
