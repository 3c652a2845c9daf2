"""The fleet registry over HTTP: imports, search, detail, export, status, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from otacm.app import create_app
from otacm.config import Settings
from otacm.db import is_postgresql
from otacm.fleet import importer, repository
from tests.builders import csv_bytes, ecu, gz, jsonl, vehicle, vin


def upload(client: TestClient, data: bytes, **params: str) -> dict:
    response = client.post(
        "/api/v1/fleet/imports",
        content=data,
        params=params,
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 200, response.text
    return response.json()


def fleet() -> list[dict]:
    records = []
    for i in range(1, 41):
        records.append(
            vehicle(
                i,
                model="Aurora" if i % 2 else "Borealis",
                model_year=2020 + i % 5,
                fuel_type="electric" if i % 2 else "diesel",
                region="EU" if i <= 20 else "NA",
                country="DE" if i <= 20 else "US",
                vin=vin(i, "WXA" if i <= 20 else "1XA"),
                ecus=[
                    ecu(
                        f"BCM-{i}",
                        hardware_version="B2" if i % 3 else "C1",
                        software_version="4.1.0" if i % 4 else "4.10.0",
                    ),
                    ecu(f"GW-{i}", "GATEWAY", protocol="ETHERNET"),
                ],
                trim="sport" if i % 5 == 0 else "base",
            )
        )
    return records


def test_import_report_over_http(client: TestClient) -> None:
    bad = vehicle(99, region="MARS")
    report = upload(client, gz(csv_bytes([*fleet()[:3], bad])), filename="plant-7.csv.gz")
    assert report["status"] == "completed_with_rejections"
    assert report["format"] == "csv" and report["compressed"] is True
    assert report["counts"]["vehicles_created"] == 3
    assert report["rejections"] == [
        {
            "line": 8,
            "vin": bad["vin"],
            "field": "region",
            "reason": report["rejections"][0]["reason"],
        }
    ]
    assert "MARS" in report["rejections"][0]["reason"]
    again = client.get(f"/api/v1/fleet/imports/{report['id']}").json()
    assert again["counts"] == report["counts"] and again["source_name"] == "plant-7.csv.gz"
    listed = client.get("/api/v1/fleet/imports").json()["items"]
    assert [i["id"] for i in listed] == [report["id"]]
    page = client.get(f"/api/v1/fleet/imports/{report['id']}/rejections").json()
    assert [r["line"] for r in page["items"]] == [8]


def test_strict_import_over_http_takes_nothing(client: TestClient) -> None:
    report = upload(client, jsonl([vehicle(1), vehicle(2, model_year=1800)]), strict="true")
    assert report["status"] == "rejected" and report["counts"]["vehicles_created"] == 0
    assert client.get("/api/v1/vehicles").json()["items"] == []


def test_unreadable_upload_answers_422_with_the_reason(client: TestClient) -> None:
    response = client.post("/api/v1/fleet/imports", content=b"vin,model\n1,2\n")
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "import_file_invalid" and body["field"] == "engine_number"
    assert "engine_number" in body["detail"]
    empty = client.post("/api/v1/fleet/imports", content=b"")
    assert empty.status_code == 422 and "empty" in empty.json()["detail"]


@pytest.mark.parametrize("sparse_below", [1, 10**9], ids=["ecu-probe", "ecu-index"])
def test_vehicle_search_filters(
    client: TestClient, sparse_below: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both ways of searching by ECU (probing each vehicle, or collecting from the ECU index).
    monkeypatch.setattr(repository, "SPARSE_ECU_MATCHES", sparse_below)
    upload(client, jsonl(fleet()))

    def vins(**params: object) -> set[str]:
        response = client.get("/api/v1/vehicles", params={"limit": 1000, **params})
        assert response.status_code == 200, response.text
        return {v["vin"] for v in response.json()["items"]}

    everyone = {r["vin"] for r in fleet()}
    assert vins() == everyone
    assert vins(model="Aurora") == {r["vin"] for r in fleet() if r["model"] == "Aurora"}
    assert vins(model_year_min=2022, model_year_max=2023) == {
        r["vin"] for r in fleet() if 2022 <= r["model_year"] <= 2023
    }
    assert vins(fuel_type="diesel", region="NA") == {
        r["vin"] for r in fleet() if r["fuel_type"] == "diesel" and r["region"] == "NA"
    }
    assert vins(country="us") == {r["vin"] for r in fleet() if r["country"] == "US"}
    assert vins(vin_prefix="1xa") == {r["vin"] for r in fleet() if r["vin"].startswith("1XA")}
    assert vins(ecu_type="bcm", hardware_version="C1") == {
        r["vin"] for r in fleet() if r["ecus"][0]["hardware_version"] == "C1"
    }
    assert vins(software_version="4.10.0") == {
        r["vin"] for r in fleet() if r["ecus"][0]["software_version"] == "4.10.0"
    }
    # ECU conditions hold for one ECU: no GATEWAY runs 4.10.0.
    assert vins(ecu_type="GATEWAY", software_version="4.10.0") == set()
    assert vins(hardware_part_number="5Q0937084") == everyone
    assert vins(**{"attr.trim": "sport"}) == {r["vin"] for r in fleet() if r["trim"] == "sport"}


def test_vehicle_search_paginates_with_a_cursor(client: TestClient) -> None:
    upload(client, jsonl(fleet()))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/vehicles", params=params).json()
        seen += [v["vin"] for v in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [r["vin"] for r in fleet()]
    bad = client.get("/api/v1/vehicles", params={"cursor": "garbage!"})
    assert bad.status_code == 422 and bad.json()["field"] == "cursor"


def test_bad_filter_values_name_the_field(client: TestClient) -> None:
    response = client.get("/api/v1/vehicles", params={"fuel_type": "steam"})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "validation_failed" and body["field"] == "fuel_type"
    assert client.get("/api/v1/vehicles", params={"limit": 0}).json()["field"] == "limit"


def test_vehicle_detail_shows_ecus_and_history(client: TestClient) -> None:
    first = upload(client, jsonl([vehicle(1), vehicle(2)]))
    newer = vehicle(
        1,
        exported_at="2025-09-01T00:00:00Z",
        ecus=[ecu("BCM-000001", software_version="5.0.0"), ecu("BCM-000002")],
    )
    second = upload(client, jsonl([newer]))
    detail = client.get(f"/api/v1/vehicles/{vin(1).lower()}").json()
    assert detail["vin"] == vin(1)
    by_serial = {e["serial"]: e for e in detail["ecus"]}
    bcm = by_serial["BCM-000001"]
    assert bcm["software_version"] == "5.0.0" and bcm["import_id"] == second["id"]
    assert [
        (h["change"], h["software_version"], h["import_id"], h["changed_by_import_id"])
        for h in bcm["history"]
    ] == [("software", "4.1.0", first["id"], second["id"])]
    assert by_serial["BMS-000001"]["removed_at"] is not None
    moved = by_serial["BCM-000002"]
    assert moved["history"][0]["change"] == "moved"
    assert moved["history"][0]["vehicle_vin"] == vin(2)
    assert moved["history"][0]["moved_to_vin"] == vin(1)
    missing = client.get("/api/v1/vehicles/WXA00000000000000")
    assert missing.status_code == 404 and missing.json()["error"] == "vehicle_not_found"


def test_vehicle_status_is_changed_never_deleted(client: TestClient) -> None:
    upload(client, jsonl([vehicle(1)]))
    response = client.post(
        f"/api/v1/vehicles/{vin(1)}/status", json={"status": "scrapped", "reason": "written off"}
    )
    assert response.status_code == 200 and response.json()["status"] == "scrapped"
    assert client.get("/api/v1/vehicles", params={"status": "scrapped"}).json()["items"]
    assert not client.get("/api/v1/vehicles", params={"status": "active"}).json()["items"]
    bad = client.post(f"/api/v1/vehicles/{vin(1)}/status", json={"status": "gone", "reason": "x"})
    assert bad.status_code == 422 and bad.json()["field"] == "status"


def test_export_streams_the_registry(client: TestClient) -> None:
    upload(client, jsonl(fleet()[:5]))
    response = client.get("/api/v1/fleet/export", params={"format": "jsonl"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [r["vin"] for r in lines] == [r["vin"] for r in fleet()[:5]]
    assert len({r["exported_at"] for r in lines}) == 1
    as_csv = client.get("/api/v1/fleet/export", params={"format": "csv"})
    assert as_csv.text.splitlines()[0].startswith("vin,engine_number,")
    assert len(as_csv.text.splitlines()) == 1 + 10
    assert client.get("/api/v1/fleet/export", params={"format": "xml"}).status_code == 422


def test_health_readiness_metrics_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ok"
    client.get("/api/v1/vehicles")
    metrics = client.get("/metrics").text
    assert (
        'otacm_http_requests_total{method="GET",route="/api/v1/vehicles",status="200"}' in metrics
    )
    spec = client.get("/api/v1/openapi.json").json()
    assert {
        "/api/v1/vehicles",
        "/api/v1/vehicles/{vin}",
        "/api/v1/fleet/imports",
        "/api/v1/fleet/export",
    } <= set(spec["paths"])


def test_upload_parsed_by_worker_processes(
    settings: Settings,
    engine: Engine,
    make_operator: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server starts worker processes for a large upload, from the thread that serves
    the request: a first load, then an import into the registry that now holds vehicles
    (planned by workers on PostgreSQL, by the serving process on SQLite)."""
    pools: list[int] = []
    start_pool = importer._worker_pool

    def counted_pool(workers: int) -> Any:
        pools.append(workers)
        return start_pool(workers)

    monkeypatch.setattr(importer, "_worker_pool", counted_pool)
    settings = settings.model_copy(update={"import_parallel_min_bytes": 0, "import_workers": 2})
    with TestClient(create_app(settings, engine)) as client:
        client.headers["Authorization"] = f"Bearer {make_operator('admin', 'test-admin')}"
        first = upload(client, jsonl([vehicle(n) for n in range(1, 30)]))
        assert first["status"] == "completed" and first["counts"]["vehicles_created"] == 29
        newer = "2025-06-01T00:00:00Z"
        again = upload(client, jsonl([vehicle(n, exported_at=newer) for n in range(20, 40)]))
        assert again["counts"]["vehicles_created"] == 10
        assert again["counts"]["vehicles_unchanged"] == 10
        page = client.get("/api/v1/vehicles", params={"limit": 100}).json()
        assert len(page["items"]) == 39
    assert pools == ([2, 2] if is_postgresql(engine) else [2])
