"""The audit log, newest first, filtered as the API filters it; CSV export of the same."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import select

from otacm.console.web import (
    ConsoleSession,
    can_view,
    console_router,
    pager,
    query_string,
    render,
)
from otacm.fleet.repository import decode_cursor, encode_cursor
from otacm.security.auth import Principal
from otacm.security.models import AuditEntry
from otacm.security.permissions import Permission

router = console_router()

PAGE_SIZE = 50
TEXT_FILTERS = ("actor", "action", "object_type", "object_id")
OUTCOMES = ("success", "refused", "failed")


def _time(value: str) -> datetime:
    """A `datetime-local` input, read as UTC like the API reads a time without an offset."""
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


@router.get("/audit", response_class=HTMLResponse)
def audit_log(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.AUDIT_READ))],
    cursor: str | None = None,
) -> HTMLResponse:
    params = request.query_params
    values = {n: params.get(n, "").strip() for n in (*TEXT_FILTERS, "outcome", "since", "until")}
    errors: dict[str, str] = {}
    query = select(AuditEntry)
    for name in TEXT_FILTERS:
        if values[name]:
            query = query.where(getattr(AuditEntry, name) == values[name])
    if values["outcome"]:
        if values["outcome"] not in OUTCOMES:
            errors["outcome"] = f"choose one of {', '.join(OUTCOMES)}"
        query = query.where(AuditEntry.outcome == values["outcome"])
    for name, before in (("since", False), ("until", True)):
        if values[name]:
            try:
                moment = _time(values[name])
            except ValueError:
                errors[name] = "a date and time, e.g. 2026-05-01T08:00"
                continue
            query = query.where(AuditEntry.at < moment if before else AuditEntry.at >= moment)
    rows: list[AuditEntry] = []
    next_cursor = None
    if not errors:
        if cursor:
            query = query.where(AuditEntry.id < decode_cursor(cursor))
        rows = list(session.scalars(query.order_by(AuditEntry.id.desc()).limit(PAGE_SIZE + 1)))
        if len(rows) > PAGE_SIZE:
            next_cursor = encode_cursor(rows[PAGE_SIZE - 1].id)
    export = {k: v for k, v in values.items() if v}
    return render(
        request,
        "audit.html",
        status_code=422 if errors else 200,
        entries=rows[:PAGE_SIZE],
        search=values,
        errors=errors,
        outcomes=OUTCOMES,
        pager=pager(request, next_cursor),
        export_query=query_string(request, drop=("cursor", "done")) if export else "",
    )
