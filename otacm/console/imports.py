"""Fleet imports: upload a manufacturing export (with a progress bar), read every report with
every rejected line."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from otacm.console import snapshots
from otacm.console.forms import FORM, FormDep, flag, upload
from otacm.console.web import (
    ConsoleSession,
    can_do,
    can_view,
    console_router,
    pager,
    render,
    see_other,
)
from otacm.errors import OtacmError
from otacm.fleet import repository, service
from otacm.fleet.importer import run_import
from otacm.fleet.models import FleetImport
from otacm.security.auth import Principal
from otacm.security.permissions import Permission

router = console_router()

PAGE_SIZE = 25
REJECTIONS_PAGE = 200


def _list_page(
    request: Request,
    session: ConsoleSession,
    cursor: str | None,
    errors: dict[str, str],
    status: int = 200,
) -> HTMLResponse:
    rows, next_cursor = repository.list_imports(session, limit=PAGE_SIZE, cursor=cursor)
    return render(
        request,
        "imports.html",
        status_code=status,
        imports=[service.import_out(r, []) for r in rows],
        pager=pager(request, next_cursor),
        errors=errors,
    )


@router.get("/fleet/imports", response_class=HTMLResponse)
def imports(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.FLEET_READ))],
    cursor: str | None = None,
) -> HTMLResponse:
    return _list_page(request, session, cursor, {})


@router.get("/fleet/imports/running", response_class=HTMLResponse)
def running(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.FLEET_READ))],
) -> HTMLResponse:
    """The import under way, if any: what the upload form shows while the server imports."""
    row = session.scalar(
        select(FleetImport).where(FleetImport.status == "running").order_by(FleetImport.id.desc())
    )
    report = service.import_out(row, []) if row is not None else None
    return render(request, "_import_running.html", report=report)


@router.post("/fleet/imports", response_class=HTMLResponse)
def start_import(
    request: Request,
    session: ConsoleSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.FLEET_IMPORT))],
) -> Response:
    """Import the uploaded file (already spooled to disk by the form parser), as the API does:
    the answer comes when the import is done, and is its report."""
    file = upload(form, "file")
    if file is None:
        return _list_page(request, session, None, {"file": "choose the export file"}, 422)
    try:
        report = run_import(
            request.app.state.engine,
            file.file,
            settings=request.app.state.settings,
            source_name=file.filename or "upload",
            strict=flag(form, "strict"),
            actor=principal.actor,
        )
    except OtacmError as exc:  # the file as a whole is unreadable: recorded as failed
        return _list_page(request, session, None, {"file": exc.detail, FORM: exc.detail}, 422)
    # The dashboard's fleet figures are out of date now: count again on the next view.
    snapshots.of(request.app.state).forget()
    return see_other(f"/fleet/imports/{report.import_id}", "imported")


@router.get("/fleet/imports/{import_id}", response_class=HTMLResponse)
def import_report(
    import_id: int,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.FLEET_READ))],
    cursor: str | None = None,
) -> HTMLResponse:
    report = service.import_report(session, import_id, 0)
    rejections, next_cursor = repository.rejections_of(
        session, import_id, limit=REJECTIONS_PAGE, cursor=cursor
    )
    return render(
        request,
        "import.html",
        report=report,
        rejections=rejections,
        pager=pager(request, next_cursor),
    )
