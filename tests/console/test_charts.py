"""Charts and layout in a real browser: the targeting preview's reason chart and breakdowns
draw one series per reason, the dashboard's charts draw, no page is wider than a laptop or a
tablet window, forms are reached by keyboard, and pages read without JavaScript."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, expect
from sqlalchemy import Engine

from otacm.app import create_app
from otacm.config import Settings
from otacm.db import make_session_factory, unit_of_work
from tests.conftest import TEST_PASSWORD
from tests.console.browser import (
    DESKTOP,
    TABLET,
    assert_chart,
    assert_fits,
    log_in,
    new_page,
    screenshot,
)
from tests.console.conftest import add_user
from tests.live_server import LiveServer, quiet_settings
from tests.targeting.test_preview import add_ecu, add_update, add_vehicle


@pytest.fixture
def console_url(live_server: LiveServer, settings: Settings, engine: Engine) -> Iterator[str]:
    with unit_of_work(make_session_factory(engine)) as session:
        add_update(session, 1, version="4.1.0")
        for n in range(30):
            # Three reasons: eligible (on 4.0.0), already up to date (4.1.0), no BCM at all.
            vehicle = add_vehicle(session, n, model=("Nordra", "Castellan")[n % 2])
            if n % 3 == 0:
                add_ecu(session, vehicle, "BCM", software_version="4.0.0")
            elif n % 3 == 1:
                add_ecu(session, vehicle, "BCM", software_version="4.1.0")
            else:
                add_ecu(session, vehicle, "BMS")
    add_user(engine, "carla", "campaign_manager")
    with live_server.mount(create_app(quiet_settings(settings), engine)) as url:
        yield url


def test_the_preview_charts_draw_a_series_per_reason(
    browser: Browser,
    console_url: str,
) -> None:
    for size, viewport in (("desktop", DESKTOP), ("tablet", TABLET)):
        page = new_page(browser, console_url, viewport)
        log_in(page, "carla", TEST_PASSWORD)
        page.goto("/targeting?update=1")
        expect(page.locator("#eligible")).to_have_text("10")
        reasons = assert_chart(page, "chart-reasons", series=1)
        assert sorted(reasons["values"][0]) == [10, 10, 10]
        model = assert_chart(page, "chart-model", series=3)
        assert model["points"] == 2  # Castellan, Nordra
        assert_fits(page)
        screenshot(page, f"targeting-reasons-{size}")
        page.close()


def test_the_admins_screens_fit_and_pass_the_accessibility_rules(
    browser: Browser, console_url: str, engine: Engine
) -> None:
    """Screens the journey does not take a screenshot of: users, tokens, alerts, the wizard's
    first step; each is checked with axe-core by `screenshot`."""
    add_user(engine, "ada", "admin")
    for size, viewport in (("desktop", DESKTOP), ("tablet", TABLET)):
        page = new_page(browser, console_url, viewport)
        log_in(page, "ada", TEST_PASSWORD)
        for path, name in (
            ("/admin/users", "users"),
            ("/tokens", "tokens"),
            ("/alerts", "alerts"),
            ("/campaigns/new?update=1", "wizard-updates"),
            ("/fleet?q=model%3D%3DNordra", "fleet-query"),
        ):
            page.goto(path)
            assert_fits(page)
            screenshot(page, f"admin-{name}-{size}")
        page.close()


def test_keyboard_alone_reaches_and_submits_a_form(
    browser: Browser,
    console_url: str,
) -> None:
    page = new_page(browser, console_url)
    page.goto("/login")  # the user name has the focus
    page.keyboard.type("carla")
    page.keyboard.press("Tab")
    page.keyboard.type(TEST_PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{console_url}/")
    page.keyboard.press("Tab")  # the skip link comes first, then the navigation
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "otacm"
    # Every input of the wizard's first step has a label that names it.
    page.goto("/campaigns/new")
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll(
                     "main input:not([type=hidden]), main select, main textarea")]
                 .filter(e => !e.labels || e.labels.length === 0).map(e => e.name)"""
    )
    assert unlabelled == []
    page.close()


def test_pages_read_without_javascript(browser: Browser, console_url: str) -> None:
    context = browser.new_context(base_url=console_url, java_script_enabled=False)
    page = context.new_page()
    log_in(page, "carla", TEST_PASSWORD)
    page.goto("/targeting?update=1")
    page.get_by_role("link", name="Show the preview").click()
    expect(page.get_by_role("rowheader", name="no matching ecu")).to_be_visible()
    page.goto("/campaigns/new?update=1")
    page.get_by_label("Campaign name").fill("No script campaign")
    page.get_by_label("Issue category").select_option("feature")
    page.get_by_role("button", name="Next: Targets").click()
    page.get_by_role("button", name="Count the eligible vehicles").click()
    expect(page.locator("#live-count strong")).to_have_text("10")
    screenshot(page, "no-javascript-wizard-count", accessible=False)
    context.close()
