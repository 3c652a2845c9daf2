"""Browser tests' tools: Debian's Chromium driven by Playwright, the console on a live server,
screenshots under the test output directory, and checks that charts really drew.

Chromium is Debian's (`scripts/test` installs the `chromium` package); Playwright's own browser
downloads are not used. `OTACM_TEST_CHROMIUM` names another binary. Screenshots go to
`test-output/console/` (git-ignored), or under `OTACM_TEST_OUTPUT`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = os.environ.get("OTACM_TEST_CHROMIUM", "/usr/bin/chromium")
OUTPUT = Path(os.environ.get("OTACM_TEST_OUTPUT", "test-output")) / "console"
DESKTOP = {"width": 1280, "height": 800}
TABLET = {"width": 768, "height": 1024}


def launched_browser() -> Iterator[Browser]:
    """Chromium for a test session (the `browser` fixture of tests/console/conftest.py)."""
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}: scripts/test installs Debian's chromium")
        pytest.skip(f"no Chromium at {CHROMIUM} (scripts/test installs Debian's chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()


def new_page(browser: Browser, base_url: str, viewport: dict[str, int] = DESKTOP) -> Page:
    context = browser.new_context(base_url=base_url, viewport=viewport)  # type: ignore[arg-type]
    context.set_default_timeout(15_000)
    return context.new_page()


# axe-core, the accessibility rules engine, from the console's npm install (a devDependency:
# installed by `npm ci`, never served).
AXE = Path(__file__).parents[2] / "otacm/console/assets/node_modules/axe-core/axe.min.js"
# WCAG 2.1 levels A and AA: names and labels, contrast, landmarks, keyboard focus order.
_AXE_RUN = """
async () => {
  const result = await axe.run(document, {runOnly: {type: "tag",
                                                    values: ["wcag2a", "wcag2aa", "wcag21aa"]}});
  return result.violations.map(v => ({rule: v.id, impact: v.impact, help: v.help,
                                      nodes: v.nodes.slice(0, 5).map(n => n.target.join(" "))}));
}
"""


def assert_accessible(page: Page) -> None:
    """No WCAG 2.1 A or AA violation that axe-core finds on the page as it is now."""
    if not page.evaluate("() => typeof axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    violations = page.evaluate(_AXE_RUN)
    assert violations == [], f"{page.url}: {violations}"


def screenshot(page: Page, name: str, *, accessible: bool = True) -> Path:
    """A full-page screenshot `test-output/console/NAME.png`, after checking the screen with
    axe-core (`accessible=False` where scripts are off)."""
    if accessible:
        assert_accessible(page)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def log_in(page: Page, name: str, password: str) -> None:
    page.goto("/login")
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r".*/$"))


def log_out(page: Page) -> None:
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r".*/login$"))


# How many pixels of a canvas are drawn on (not transparent), and the chart's series.
_CHART_FACTS = """
id => {
  const canvas = document.getElementById(id);
  const chart = window.otacmCharts && window.otacmCharts.get(id);
  if (!canvas || !chart) return null;
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let drawn = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) drawn++;
  return {drawn: drawn, series: chart.data.datasets.length,
          points: chart.data.labels.length,
          values: chart.data.datasets.map(d => d.data)};
}
"""


def chart_facts(page: Page, canvas_id: str) -> dict[str, Any]:
    """Waits until the chart is drawn, then its facts: pixels drawn, series, points, values."""
    page.wait_for_function("id => window.otacmCharts && window.otacmCharts.has(id)", arg=canvas_id)
    facts: dict[str, Any] = page.evaluate(_CHART_FACTS, canvas_id)
    return facts


def assert_chart(page: Page, canvas_id: str, series: int) -> dict[str, Any]:
    facts = chart_facts(page, canvas_id)
    assert facts["series"] == series, facts
    assert facts["drawn"] > 500, f"{canvas_id} drew {facts['drawn']} pixels"
    return facts


def assert_fits(page: Page) -> None:
    """Nothing sticks out sideways: the page is no wider than the window."""
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{page.url} is {overflow}px wider than the window"
