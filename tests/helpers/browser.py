"""A real browser for the report-page tests: the system Chromium (``apt-get install chromium``) driven by
Playwright (the ``test`` extra). Without either the test skips and says which is missing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_path() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


@contextmanager
def chromium_page() -> Iterator[Any]:
    """A Playwright page in headless Chromium; skips (loudly, with the reason) when there is none."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("BROWSER TEST SKIPPED: playwright is not installed (pip install -e '.[test]')")
    executable = chromium_path()
    if executable is None:
        pytest.skip("BROWSER TEST SKIPPED: no Chromium on PATH (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--allow-file-access-from-files"])
        try:
            yield browser.new_page()
        finally:
            browser.close()
