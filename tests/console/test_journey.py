"""The operator journey in a real browser (Debian's Chromium, driven by Playwright): a fleet
admin imports an export; an engineer defines an update, uploads its file and releases it; a
campaign manager previews the targeting, creates a campaign with the wizard and submits it; a
second manager approves it; it is launched, vehicles update and the progress chart moves
without a reload; it is paused and resumed; the report is downloaded; a viewer is offered no
action. Every screen is saved under test-output/console/.

The vehicles are the simulator's (`otacm.simulator`): provisioned with `otacm vehicles credentials`,
they poll, verify, download, install and report over HTTP like real ones.
"""

from __future__ import annotations

import asyncio
import csv
import io
import re
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import Engine, select
from typer.testing import CliRunner

from otacm.app import create_app
from otacm.campaigns import engine as rollout_engine
from otacm.campaigns.models import Campaign, Deployment
from otacm.cli import app
from otacm.config import Settings
from otacm.console import dashboard
from otacm.db import make_session_factory, make_write_session_factory, unit_of_work
from otacm.fleet.models import Ecu
from otacm.security.tuf.setup import initialise_keys_and_repository
from otacm.simulator.fleet import Fleet, FleetOptions, FleetResult
from otacm.simulator.records import read_records
from otacm.simulator.vehicle import DrivingPattern
from tests.builders import jsonl, vehicle
from tests.conftest import TEST_PASSWORD
from tests.console.browser import (
    DESKTOP,
    TABLET,
    assert_chart,
    assert_fits,
    chart_facts,
    log_in,
    log_out,
    new_page,
    screenshot,
)
from tests.console.conftest import add_user
from tests.live_server import LiveServer, quiet_settings

VEHICLES = 24
NEW_VERSION = "4.2.0"


@pytest.fixture
def console_url(live_server: LiveServer, settings: Settings, engine: Engine) -> Iterator[str]:
    # The engine does not tick by itself: the test opens waves when it wants them open.
    with live_server.mount(create_app(quiet_settings(settings), engine)) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    # The dashboard keeps costly figures a while; here every view counts again.
    monkeypatch.setattr(dashboard, "FLEET_MAX_AGE", timedelta(0))
    monkeypatch.setattr(dashboard, "COMPLIANCE_MAX_AGE", timedelta(0))


@pytest.fixture
def operators(engine: Engine, settings: Settings) -> None:
    for name, role in (
        ("fiona", "fleet_admin"),
        ("erik", "engineer"),
        ("carla", "campaign_manager"),
        ("marco", "campaign_manager"),
        ("vera", "viewer"),
    ):
        add_user(engine, name, role)
    initialise_keys_and_repository(settings, None, engine=engine)


def export_file(tmp_path: Path) -> Path:
    """An export of VEHICLES good vehicles and one with a malformed VIN (its line rejected)."""
    records = [vehicle(n) for n in range(1, VEHICLES + 1)]
    records.insert(5, vehicle(500, vin="NOT-A-VIN"))
    path = tmp_path / "plant-export.jsonl"
    path.write_bytes(jsonl(records))
    return path


def import_fleet(page: Page, tmp_path: Path) -> None:
    log_in(page, "fiona", TEST_PASSWORD)
    page.goto("/fleet/imports")
    screenshot(page, "01-imports")
    page.get_by_label("Export file").set_input_files(export_file(tmp_path))
    page.get_by_role("button", name="Import").click()
    page.wait_for_url(re.compile(r"/fleet/imports/\d+"))
    expect(page.get_by_role("heading", name=re.compile("Rejected records \\(1\\)"))).to_be_visible()
    rejected = page.locator("table").last
    expect(rejected).to_contain_text("6")  # the line number of the bad record
    expect(rejected).to_contain_text("NOT-A-VIN")
    screenshot(page, "02-import-report")
    page.goto("/fleet")
    expect(page.locator("tbody tr")).to_have_count(VEHICLES)
    page.get_by_label("Query").fill("model==Aurora;ecu.BCM.software_version==4.1*")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("tbody tr")).to_have_count(VEHICLES)
    screenshot(page, "03-fleet")
    page.locator("tbody tr a").first.click()
    expect(page.get_by_role("heading", name="ECUs and installed software")).to_be_visible()
    screenshot(page, "04-vehicle")
    log_out(page)


def define_and_release(page: Page, tmp_path: Path) -> int:
    log_in(page, "erik", TEST_PASSWORD)
    page.goto("/updates/new")
    page.get_by_label("Name", exact=True).fill("BCM interior light fix")
    page.get_by_label("Software version").fill("4.2.0")
    page.get_by_label("ECU type").fill("bcm")
    page.get_by_label("Software part number").fill("5Q0937084AC")
    page.get_by_label("Communication protocol").select_option("CAN")
    # The category is left out: the error stands next to it and the rest is kept.
    page.get_by_role("button", name="Create the draft").click()
    expect(page.locator("#category-error")).to_be_visible()
    expect(page.get_by_label("Software part number")).to_have_value("5Q0937084AC")
    expect(page.get_by_label("Category")).to_have_attribute("aria-invalid", "true")
    screenshot(page, "05-update-form-error")
    page.get_by_label("Category").select_option("bug_fix")
    page.get_by_label("Compatible models").fill("Aurora")
    page.get_by_label("electric", exact=True).check()
    page.get_by_label("Hardware part numbers").fill("5Q0937084")
    page.get_by_label("Hardware versions").fill("B1, B2")
    page.get_by_label("Applicable installed versions").fill("4.1.0")
    page.get_by_label("Estimated install time (minutes)").fill("12")
    page.get_by_label("Release notes").fill("Fixes the interior light staying on.")
    page.get_by_label("Support contact").fill("bcm-team@example.com")
    page.get_by_label("Purpose of the update").fill("Correct the interior light timeout.")
    page.get_by_label("Affected systems and functions").fill("interior lighting")
    page.get_by_label("Execution conditions").fill("Parked, ignition off.")
    page.get_by_label("Verification and validation report").fill("VV-BCM-042")
    page.get_by_label("Engineering confirms the update is safe and secure").check()
    page.get_by_role("button", name="Create the draft").click()
    page.wait_for_url(re.compile(r"/updates/\d+\?done=created"))
    update_id = int(re.findall(r"/updates/(\d+)", page.url)[0])
    expect(page.locator(".warning")).to_contain_text("artifacts")  # what release still needs

    firmware = tmp_path / "bcm-4.2.0.bin"
    firmware.write_bytes(b"\x7fBCM" * 300_000)
    page.get_by_label("File", exact=True).set_input_files(firmware)
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(re.compile(r"done=uploaded"))
    expect(page.locator("table").first).to_contain_text("bcm-4.2.0.bin")
    screenshot(page, "06-update-draft")

    page.get_by_role("link", name="Release…").click()
    expect(
        page.get_by_role("heading", name=re.compile("Release BCM interior light fix"))
    ).to_be_visible()
    screenshot(page, "07-release-confirm")
    page.get_by_role("button", name="Release and sign").click()
    page.wait_for_url(re.compile(r"done=released"))
    expect(page.locator(".tag.released")).to_be_visible()
    screenshot(page, "08-update-released")
    page.goto("/updates?group=ecu_type")
    expect(page.get_by_role("heading", name="ECU type: BCM")).to_be_visible()
    screenshot(page, "09-catalog")
    log_out(page)
    return update_id


def preview_and_create(page: Page, update_id: int) -> int:
    log_in(page, "carla", TEST_PASSWORD)
    page.goto("/targeting")
    page.get_by_label(re.compile("BCM interior light fix")).check()
    page.get_by_label("Query").fill("model==Aurora")
    page.get_by_role("button", name="Preview").click()
    expect(page.locator("#eligible")).to_have_text(str(VEHICLES))
    assert_chart(page, "chart-reasons", series=1)
    assert_chart(page, "chart-model", series=1)  # one reason: eligible
    screenshot(page, "10-targeting")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the eligible vehicles (CSV)").click()
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(rows) == VEHICLES and {r["reason"] for r in rows} == {"eligible"}

    page.get_by_role("link", name="Start a campaign with this selection").click()
    page.get_by_label("Campaign name").fill("BCM light fix EU")
    page.get_by_label("Issue category").select_option("bug_fix")
    expect(page.get_by_label(re.compile("BCM interior light fix"))).to_be_checked()
    screenshot(page, "11-wizard-updates")
    page.get_by_role("button", name=re.compile("^Next")).click()
    expect(page.get_by_label("Query")).to_have_value("model==Aurora")
    expect(page.locator("#live-count strong")).to_have_text(str(VEHICLES))
    # The count follows the inputs without a reload.
    page.get_by_label("Query").fill("model==Aurora;vin==WXAAB12C*")
    page.get_by_label("Query").press("Tab")
    expect(page.locator("#live-count")).to_contain_text("of")
    page.get_by_label("Query").fill("model==Aurora")
    page.get_by_label("Query").press("Tab")
    expect(page.locator("#live-count strong")).to_have_text(str(VEHICLES))
    screenshot(page, "12-wizard-targets")
    page.get_by_role("button", name=re.compile("^Next")).click()
    page.get_by_label("Wave steps").fill("50%, 100%")
    page.get_by_label("Soak time (minutes)").fill("0")
    page.get_by_label("Wave steps").fill("half")  # an error next to its input, input kept
    page.get_by_role("button", name=re.compile("^Next")).click()
    expect(page.locator("[id='rollout-waves-steps-error']")).to_be_visible()
    expect(page.get_by_label("Soak time (minutes)")).to_have_value("0")
    screenshot(page, "13-wizard-rollout-error")
    page.get_by_label("Wave steps").fill("50%, 100%")
    page.get_by_role("button", name=re.compile("^Next")).click()
    page.get_by_label("Priority (1–1000)").fill("700")
    page.get_by_label("Excluded countries").fill("CH")
    screenshot(page, "14-wizard-schedule")
    page.get_by_role("button", name=re.compile("^Next")).click()
    notice = page.locator("fieldset").first
    notice.get_by_label("Expected duration (minutes)").fill("12")
    notice.get_by_label("Purpose").fill("Fixes the interior light.")
    notice.get_by_label("What changes").fill("The light turns off after 10 minutes.")
    notice.get_by_label("Instructions").fill("Park the car and switch the ignition off.")
    screenshot(page, "15-wizard-notice")
    page.get_by_role("button", name=re.compile("^Next")).click()
    expect(page.locator("#exact-count")).to_have_text(str(VEHICLES))
    screenshot(page, "16-wizard-review")
    page.get_by_role("button", name="Submit for approval").click()
    page.wait_for_url(re.compile(r"/campaigns/\d+\?done=submitted"))
    campaign_id = int(re.findall(r"/campaigns/(\d+)", page.url)[0])
    # Four eyes: its author is offered no decision.
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    expect(page.get_by_text("another campaign manager decides")).to_be_visible()
    log_out(page)
    return campaign_id


def approve(page: Page, campaign_id: int) -> None:
    log_in(page, "marco", TEST_PASSWORD)
    page.goto("/campaigns?state=pending_approval")
    page.get_by_role("link", name="BCM light fix EU").click()
    expect(page.locator("#exact-count")).to_have_text(str(VEHICLES))
    screenshot(page, "17-approval")
    page.get_by_label("Comment").fill("Checked the preview: Aurora only.")
    page.get_by_role("button", name="Approve").click()
    page.wait_for_url(re.compile(r"done=approved"))
    expect(page.locator("#campaign-state")).to_have_text("approved")
    log_out(page)


class SimulatedFleet:
    """The import's vehicles, provisioned as a factory would (`otacm vehicles credentials --all
    --keys`) and run by the simulator over HTTP in a thread of their own (the page keeps the
    main thread), until every deployment of the campaign has succeeded."""

    def __init__(self, settings: Settings, engine: Engine, url: str, tmp_path: Path) -> None:
        records = tmp_path / "credentials.jsonl"
        made = CliRunner().invoke(
            app,
            ["vehicles", "credentials", "--all", "--keys", "-o", str(records)]
            + ["--database-url", settings.resolved_database_url()],
        )
        assert made.exit_code == 0, made.output
        self.engine = engine
        # A compressed clock: polls, trips and installs take milliseconds of real time.
        options = FleetOptions(
            failure_rate=0.0, postpone_rate=0.0, decline_rate=0.0, offline_rate=0.0,
            interruption_rate=0.0, install_s=(1.0, 5.0), time_scale=0.001,
            driving=DrivingPattern(mean_trip_s=120.0, battery_at_start=(50.0, 100.0)),
            duration_s=180.0, seed=3, work_dir=tmp_path / "vehicles", start_rate=None,
            live=False,
        )  # fmt: skip
        self.fleet = Fleet(list(read_records(records)), url, options)
        self.result: list[FleetResult] = []
        self.thread = threading.Thread(target=self._run, name="simulated-fleet", daemon=True)

    def _run(self) -> None:
        self.result.append(asyncio.run(self.fleet.run(self._all_succeeded)))

    def _all_succeeded(self, _: object) -> bool:
        with unit_of_work(make_session_factory(self.engine)) as session:
            states = set(session.scalars(select(Deployment.state)))
        return states == {"succeeded"}

    def __enter__(self) -> SimulatedFleet:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if not self.result:  # a failure on the page: the vehicles stop too
            self.fleet.stop()
        self.thread.join(timeout=30)

    def finish(self) -> FleetResult:
        self.thread.join(timeout=60)
        assert self.result, "the simulated fleet did not stop"
        result = self.result[0]
        assert result.stopped_because == "the stop condition was met", result.as_json()
        assert result.crashed == {}
        return result


def launch_and_watch(
    page: Page, campaign_id: int, settings: Settings, engine: Engine, url: str, tmp_path: Path
) -> None:
    write = make_write_session_factory(engine)
    log_in(page, "carla", TEST_PASSWORD)
    page.goto(f"/campaigns/{campaign_id}")
    page.get_by_role("link", name="Launch…").click()
    expect(page.locator("#affected strong")).to_have_text(str(VEHICLES))
    screenshot(page, "18-launch-confirm")
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url(re.compile(r"done=launched"))
    expect(page.locator("#campaign-state")).to_have_text("running")
    rollout_engine.tick(write, settings=settings)  # opens the first wave
    before = chart_facts(page, "chart-states")
    assert before["series"] == 6

    with SimulatedFleet(settings, engine, url, tmp_path) as fleet:
        # Half the fleet (the first wave) updates over the air while the page stays open.
        expect(page.locator("#live-succeeded")).to_have_text(str(VEHICLES // 2), timeout=60_000)
        page.wait_for_function(
            """id => { const c = window.otacmCharts.get(id);
                       const s = c.data.datasets.find(d => d.label === "succeeded");
                       return s.data[s.data.length - 1] > 0; }""",
            arg="chart-states",
        )
        after = assert_chart(page, "chart-states", series=6)
        assert after["points"] > before["points"]
        screenshot(page, "19-campaign-progress")

        page.get_by_role("link", name="Pause…").click()
        expect(page.locator("#affected strong")).to_have_text(str(VEHICLES // 2))
        screenshot(page, "20-pause-confirm")
        page.get_by_role("button", name="Pause").click()
        page.wait_for_url(re.compile(r"done=paused"))
        expect(page.locator("#campaign-state")).to_have_text("paused")
        page.get_by_role("link", name="Resume…").click()
        page.get_by_role("button", name="Resume").click()
        page.wait_for_url(re.compile(r"done=resumed"))
        expect(page.locator("#campaign-state")).to_have_text("running")

        # The first wave met its threshold: the next tick opens the second, whose vehicles
        # hear of it at their next poll.
        rollout_engine.tick(write, settings=settings)
        expect(page.locator("#live-succeeded")).to_have_text(str(VEHICLES), timeout=60_000)
        result = fleet.finish()
    screenshot(page, "21-campaign-done")
    # What the server shows is what the vehicles really have.
    truth = result.installed_versions()
    assert len(result.vehicles) == VEHICLES and result.totals.installs == VEHICLES
    with unit_of_work(make_session_factory(engine)) as session:
        rows = session.execute(select(Ecu.serial, Ecu.software_version))
        registry = {serial: version for serial, version in rows}
    assert {serial: registry[serial] for serial in truth} == truth
    assert NEW_VERSION in set(truth.values())

    page.get_by_role("link", name="Deployments").click()
    expect(page.locator("tbody tr")).to_have_count(VEHICLES)
    page.get_by_label("State").select_option("succeeded")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(VEHICLES)
    page.get_by_role("link", name="events").first.click()
    history = page.locator("section", has=page.get_by_role("heading", name="Event history"))
    expect(history.locator("tbody tr")).to_have_count(7)  # offer … manifest confirmed
    screenshot(page, "22-deployment-events")

    page.goto(f"/campaigns/{campaign_id}")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the report (CSV)").click()
    report = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert len(report) == VEHICLES
    assert {r["result"] for r in report} == {"installed"}
    log_out(page)


def viewer_sees_no_actions(browser: Browser, url: str, campaign_id: int, update_id: int) -> None:
    for size, viewport in (("desktop", DESKTOP), ("tablet", TABLET)):
        page = new_page(browser, url, viewport)
        log_in(page, "vera", TEST_PASSWORD)
        for path, name in (
            ("/", "dashboard"),
            (f"/campaigns/{campaign_id}", "campaign"),
            (f"/updates/{update_id}", "update"),
            ("/fleet/imports", "imports"),
            ("/campaigns", "campaigns"),
            ("/audit", "audit"),
        ):
            page.goto(path)
            assert_fits(page)
            screenshot(page, f"viewer-{name}-{size}")
        page.close()
    page = new_page(browser, url)
    log_in(page, "vera", TEST_PASSWORD)
    assert_chart(page, "chart-fleet-model", series=1)
    assert_chart(page, "chart-compliance", series=4)
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Users")).to_have_count(0)
    page.goto(f"/campaigns/{campaign_id}")
    expect(page.locator("#actions")).to_have_count(0)
    expect(page.get_by_role("link", name=re.compile("Pause|Cancel|Roll back|Retry"))).to_have_count(
        0
    )
    page.goto(f"/updates/{update_id}")
    expect(page.get_by_role("link", name=re.compile("Withdraw|Release|Edit"))).to_have_count(0)
    page.goto("/updates")
    expect(page.get_by_role("link", name="Define an update")).to_have_count(0)
    page.goto("/fleet/imports")
    expect(page.get_by_role("button", name="Import")).to_have_count(0)
    page.goto("/campaigns")
    expect(page.get_by_role("link", name="New campaign")).to_have_count(0)

    # A form the viewer forges into the page (with the session's own CSRF token) is refused.
    page.goto(f"/campaigns/{campaign_id}")
    page.evaluate(
        """id => {
             const form = document.createElement("form");
             form.method = "post"; form.action = `/campaigns/${id}/operate/cancel`;
             const csrf = document.createElement("input");
             csrf.name = "csrf";
             csrf.value = document.querySelector('meta[name="csrf-token"]').content;
             form.appendChild(csrf); document.body.appendChild(form); form.submit();
           }""",
        campaign_id,
    )
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    screenshot(page, "23-viewer-forged-post")
    page.close()


def test_the_operator_journey(
    browser: Browser,
    console_url: str,
    operators: None,
    settings: Settings,
    engine: Engine,
    tmp_path: Path,
) -> None:
    page = new_page(browser, console_url)
    import_fleet(page, tmp_path)
    update_id = define_and_release(page, tmp_path)
    campaign_id = preview_and_create(page, update_id)
    approve(page, campaign_id)
    launch_and_watch(page, campaign_id, settings, engine, console_url, tmp_path)
    page.close()
    viewer_sees_no_actions(browser, console_url, campaign_id, update_id)
    with unit_of_work(make_session_factory(engine)) as session:
        campaign = session.scalar(select(Campaign).where(Campaign.id == campaign_id))
        assert campaign is not None and campaign.state in ("running", "completed")
