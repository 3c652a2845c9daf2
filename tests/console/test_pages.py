"""The console without a browser: CSRF and permissions on every form post, errors next to
their field with the input kept, pages for every role, pagination, the static files."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from otacm.campaigns import service as campaigns
from otacm.campaigns.schemas import CampaignCreate
from otacm.db import make_session_factory, unit_of_work
from otacm.security.audit import SYSTEM
from otacm.security.permissions import Role
from otacm.targeting import service
from otacm.targeting.schemas import PreviewRequest
from tests.console.conftest import Operator
from tests.security.helpers import audit_rows
from tests.targeting.test_preview import add_ecu, add_update, add_vehicle
from tests.vehicle_api.conftest import NOTICE

# Every form post of the console, as (path, form): each must refuse a missing CSRF token.
POSTS = [
    ("/fleet/imports", {}),
    ("/fleet/vehicles/WXAAB12C0S0000010/status", {"status": "inactive", "reason": "x"}),
    ("/updates/new", {"name": "x"}),
    ("/updates/1/edit", {"name": "x"}),
    ("/updates/1/files", {}),
    ("/updates/1/files/delete", {"filename": "a.bin"}),
    ("/updates/1/release", {}),
    ("/updates/1/withdraw", {"reason": "broken"}),
    ("/campaigns/wizard", {"step": "updates"}),
    ("/campaigns/wizard/count", {}),
    ("/campaigns/1/submit", {}),
    ("/campaigns/1/decision", {"decision": "approve"}),
    ("/campaigns/1/operate/pause", {}),
    ("/campaigns/1/operate/launch", {"expected_vehicles": "1"}),
    ("/alerts/1/acknowledge", {}),
    ("/admin/users", {"name": "mallory", "role": "admin", "password": "x" * 20}),
    ("/admin/users/vera/role", {"role": "admin"}),
    ("/tokens", {"name": "x"}),
    ("/tokens/1/revoke", {}),
]
# What a viewer may not do, posted with the viewer's own valid CSRF token.
# (Viewers may count a selection's vehicles, and manage their own tokens.)
VIEWER_REFUSED = [
    p for p in POSTS if p[0] not in ("/tokens", "/tokens/1/revoke", "/campaigns/wizard/count")
]
PAGES = [
    "/",
    "/fleet",
    "/fleet/imports",
    "/updates",
    "/updates/1",
    "/targeting",
    "/targeting?update=1",
    "/campaigns",
    "/alerts",
    "/audit",
    "/tokens",
]


@pytest.fixture
def catalog(engine: Engine) -> None:
    with unit_of_work(make_session_factory(engine)) as session:
        add_update(session, 1)
        for n in range(3):
            vehicle = add_vehicle(session, n)
            add_ecu(session, vehicle, "BCM", software_version="4.0.0")


def test_a_post_without_the_sessions_csrf_token_is_refused_and_audited(
    login: Callable[..., Operator], engine: Engine, catalog: None
) -> None:
    admin = login("admin", "ada")
    for path, form in POSTS:
        for forged in ({}, {"csrf": "not-the-token"}):
            response = admin.client.post(path, data={**form, **forged}, follow_redirects=False)
            assert response.status_code == 403, (path, response.text)
            assert "CSRF token" in response.text
    refused = [r for r in audit_rows(engine) if r["outcome"] == "refused"]
    assert len(refused) == 2 * len(POSTS)
    assert {r["detail"] for r in refused} == {"no CSRF token"}
    # The header works as well as the field (htmx sends it).
    response = admin.client.post(
        "/campaigns/wizard/count", headers={"X-CSRF-Token": admin.csrf}, data={}
    )
    assert response.status_code == 200


def test_a_viewers_forged_posts_are_refused_and_audited(
    login: Callable[..., Operator], engine: Engine, catalog: None
) -> None:
    viewer = login("viewer", "vera")
    for path, form in VIEWER_REFUSED:
        response = viewer.post(path, form)
        assert response.status_code == 403, (path, response.text)
        assert "Not allowed" in response.text
    refused = [r for r in audit_rows(engine) if r["outcome"] == "refused"]
    assert len(refused) == len(VIEWER_REFUSED)
    assert all(r["actor"] == "vera" and "lacks" in r["detail"] for r in refused)


@pytest.mark.parametrize("role", [r.value for r in Role])
def test_every_role_reads_every_page_and_is_offered_only_its_actions(
    role: str, login: Callable[..., Operator], catalog: None
) -> None:
    operator = login(role)
    for page in PAGES:
        response = operator.client.get(page)
        assert response.status_code == 200, (page, response.text)
    nav = operator.client.get("/").text
    assert ('href="/admin/users"' in nav) == (role == "admin")
    updates = operator.client.get("/updates").text
    assert ("Define an update" in updates) == (role in ("admin", "engineer"))
    imports = operator.client.get("/fleet/imports").text
    assert ('action="/fleet/imports"' in imports) == (role in ("admin", "fleet_admin"))
    campaigns = operator.client.get("/campaigns").text
    assert ("New campaign" in campaigns) == (role in ("admin", "campaign_manager"))
    users = operator.client.get("/admin/users")
    assert users.status_code == (200 if role == "admin" else 403)


def test_pages_need_a_console_session(
    anonymous_client: TestClient, login: Callable[..., Operator]
) -> None:
    login("admin", "ada")
    response = anonymous_client.get("/campaigns?state=running", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fcampaigns%3Fstate%3Drunning"
    # An API token is no console session.
    response = anonymous_client.get(
        "/fleet", headers={"Authorization": "Bearer otacm_x"}, follow_redirects=False
    )
    assert response.status_code == 303


def test_logging_in_returns_to_the_page_asked_for_but_never_to_another_site(
    login: Callable[..., Operator], anonymous_client: TestClient
) -> None:
    from tests.conftest import TEST_PASSWORD
    from tests.security.helpers import login_form

    login("viewer", "vera")
    for target, expected in (("/audit?actor=x", "/audit?actor=x"), ("//evil.example", "/")):
        anonymous_client.cookies.clear()
        csrf = login_form(anonymous_client)
        response = anonymous_client.post(
            "/login",
            data={"name": "vera", "password": TEST_PASSWORD, "csrf": csrf, "next": target},
            follow_redirects=False,
        )
        assert response.status_code == 303
        assert response.headers["location"] == expected


def test_errors_stand_next_to_their_field_and_the_input_is_kept(
    login: Callable[..., Operator], catalog: None
) -> None:
    engineer = login("engineer", "erik")
    response = engineer.post(
        "/updates/new",
        {
            "name": "BCM fix",
            "version": "4.2.0",
            "ecu_type": "BCM",
            "software_part_number": "SW-9",
            "protocol": "CAN",
            "category": "bug_fix",
            "model_year_min": "2024",
            "model_year_max": "2020",
            "support.documentation_url": "not a url",
            "dependencies": "GATEWAY 3.0 4.0 5.0",
        },
    )
    assert response.status_code == 422
    page = response.text
    for field in ("model_year_max", "support-documentation_url", "dependencies"):
        assert f'id="{field}-error"' in page, field
    assert 'aria-describedby="model_year_max-error" aria-invalid="true"' in page
    assert 'value="SW-9"' in page and "not a url" in page  # kept as typed

    # A refusal from the service lands on its field too: the same version exists.
    manager = login("campaign_manager", "carla")
    response = manager.post("/campaigns/wizard", {"step": "updates", "action": "next"})
    assert response.status_code == 422
    assert 'id="name-error"' in response.text and 'id="update_ids-error"' in response.text


def test_previews_come_after_their_page(
    login: Callable[..., Operator], engine: Engine, catalog: None
) -> None:
    """A preview reads every selected vehicle (seconds on a large fleet): the targeting page and
    the wizard's review show themselves at once and fetch the preview after; without script,
    a link or a button asks for it."""
    with unit_of_work(make_session_factory(engine)) as session:
        expected = service.run_preview(session, PreviewRequest(update_ids=[1], sample_size=0))
    manager = login("campaign_manager", "carla")
    page = manager.client.get("/targeting", params={"update": "1"})
    assert page.status_code == 200
    assert 'hx-get="/targeting/preview?update=1"' in page.text
    assert 'id="eligible"' not in page.text
    assert 'href="/targeting/preview?update=1" data-no-js>Show the preview' in page.text

    fragment = manager.client.get("/targeting/preview?update=1", headers={"HX-Request": "true"})
    assert fragment.text.lstrip().startswith('<section id="preview"')
    assert "<nav" not in fragment.text
    shown = re.search(r'id="eligible">([\d,]+)<', fragment.text)
    assert shown and int(shown[1].replace(",", "")) == expected.vehicles_eligible
    whole = manager.client.get("/targeting/preview?update=1")
    assert "<nav" in whole.text and 'id="eligible"' in whole.text
    assert 'name="update" value="1" checked' in whole.text  # the form keeps the inputs

    # Inputs the page can check without reading the fleet are refused at once, next to the field.
    missing = manager.client.get("/targeting", params={"update": "99"})
    assert missing.status_code == 422 and 'id="update_ids-error"' in missing.text
    gone = manager.client.get("/targeting/preview?update=99", headers={"HX-Request": "true"})
    assert gone.status_code == 200 and "there is no software update 99" in gone.text

    draft = {"update_ids": ["1"], "selection.query": ""}
    review = manager.post(
        "/campaigns/wizard",
        {"step": "notice", "action": "goto:review", "draft": json.dumps(draft)},
    )
    assert review.status_code == 200
    assert 'id="exact-count"' not in review.text
    assert 'hx-post="/campaigns/wizard/count"' in review.text
    count = manager.post("/campaigns/wizard/count", {"step": "review", "draft": json.dumps(draft)})
    exact = re.search(r'id="exact-count">([\d,]+)<', count.text)
    assert exact and int(exact[1].replace(",", "")) == expected.vehicles_eligible
    asked = manager.post(
        "/campaigns/wizard", {"step": "review", "action": "count", "draft": json.dumps(draft)}
    )
    assert f'id="exact-count">{expected.vehicles_eligible}<' in asked.text

    # A launch's confirmation counts too: the page first, the count and the form after.
    with unit_of_work(make_session_factory(engine)) as session:
        body = {
            "name": "BCM fix", "category": "bug_fix", "urgency": "immediate",
            "update_ids": [1], "user_notice": NOTICE,
        }  # fmt: skip
        campaign_id = campaigns.create(session, SYSTEM, CampaignCreate.model_validate(body)).id
    confirm = manager.client.get(f"/campaigns/{campaign_id}/confirm/launch")
    assert 'id="affected"' not in confirm.text and 'name="expected_vehicles"' not in confirm.text
    assert f'hx-get="/campaigns/{campaign_id}/confirm/launch?counted=1"' in confirm.text
    counted = manager.client.get(f"/campaigns/{campaign_id}/confirm/launch?counted=1")
    assert f'name="expected_vehicles" value="{expected.vehicles_eligible}"' in counted.text


def test_the_fleet_search_reads_the_query_language_and_shows_its_errors(
    login: Callable[..., Operator], catalog: None
) -> None:
    viewer = login("viewer")
    found = viewer.client.get("/fleet", params={"q": "ecu.BCM.software_version==4.0*"})
    assert found.status_code == 200
    assert len(re.findall(r'href="/fleet/vehicles/', found.text)) == 3
    wrong = viewer.client.get("/fleet", params={"q": "model=Aurora"})
    assert wrong.status_code == 422
    assert 'id="q-error"' in wrong.text and "position" in wrong.text
    assert "model=Aurora" in wrong.text


def test_lists_come_a_page_at_a_time(login: Callable[..., Operator], engine: Engine) -> None:
    with unit_of_work(make_session_factory(engine)) as session:
        for n in range(120):
            add_vehicle(session, n)
    viewer = login("viewer")
    first = viewer.client.get("/fleet", params={"fuel_type": "electric"})
    vins = re.findall(r'href="/fleet/vehicles/(\w+)"', first.text)
    assert len(vins) == 50
    next_url = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert next_url is not None and "fuel_type=electric" in next_url.group(1)
    second = viewer.client.get(next_url.group(1).replace("&amp;", "&"))
    more = re.findall(r'href="/fleet/vehicles/(\w+)"', second.text)
    assert len(more) == 50 and not set(more) & set(vins)
    assert "First page" in second.text


def test_the_front_end_libraries_are_served_from_the_npm_install(
    anonymous_client: TestClient,
) -> None:
    for name, marker in (
        ("vendor/htmx.min.js", "htmx"),
        ("vendor/chart.umd.min.js", "Chart"),
        ("console.js", "otacmCharts"),
        ("console.css", "--brand"),
    ):
        response = anonymous_client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert marker in response.text
    assert anonymous_client.get("/static/../pages.py").status_code == 404
    assert anonymous_client.get("/static/vendor/htmx.js").status_code == 404
