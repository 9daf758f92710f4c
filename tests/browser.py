"""A real headless Chromium for page tests: Debian's `chromium` driven through its own
`chromedriver` with Selenium. Nothing is downloaded: Selenium Manager never runs (the
driver's path is given), and Chromium starts with everything that would reach out off.

`make test` installs both with apt-get where it runs as root; elsewhere the page tests
skip and say what to install.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# The machine has no internet: without these, Chromium tries (and logs) refused
# connections for updates, sync, safe browsing and the like.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests run as root in CI, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def skip_reason() -> str | None:
    """Why page tests cannot run here, or None when they can."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        return (
            f"no headless browser: {' and '.join(missing)} missing "
            "(apt-get install chromium chromium-driver; `make test` does it as root)"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


class Browser:
    """One headless Chromium with a fresh profile; `stop()` ends it and removes the profile."""

    def __init__(self, width: int = 1440, height: int = 1000) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._profile = tempfile.mkdtemp(prefix="modelwatch-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={self._profile}",
                     f"--window-size={width},{height}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
        self.driver.set_page_load_timeout(30)

    def open_operator_page(self, base_url: str, timeout: float = 15.0) -> None:
        """Open `/modelwatch/ui` and wait until its first snapshot has been drawn."""
        self.driver.get(f"{base_url.rstrip('/')}/modelwatch/ui")
        self.wait_for(
            lambda d: d.execute_script(
                "return document.getElementById('connection').dataset.state"
            ) == "live",
            timeout, "the operator page to receive its first snapshot",
        )

    def console_errors(self) -> list[dict[str, Any]]:
        """Console messages at SEVERE level since the last call (errors, failed loads,
        CSP violations, uncaught exceptions)."""
        return [e for e in self.driver.get_log("browser") if e["level"] == "SEVERE"]

    def wait_for(self, condition: Callable[[Any], Any], timeout: float, what: str) -> Any:
        """Wait until `condition(driver)` is truthy, failing with `what` on timeout."""
        from selenium.webdriver.support.ui import WebDriverWait

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(condition)
        except Exception as error:
            if type(error).__name__ != "TimeoutException":
                raise
            raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None

    def stop(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self._profile, ignore_errors=True)


def browser_or_skip() -> Browser:
    reason = skip_reason()
    if reason is not None:
        pytest.skip(reason)
    return Browser()
