"""Targeting: pick released updates and a selection, see which vehicles they reach and, for
every other vehicle, why not (with charts of the reasons and breakdowns), download the list."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from otacm.console import charts, selection_form
from otacm.console.forms import FormErrors, service_errors, validation_errors
from otacm.console.web import ConsoleSession, can_view, console_router, query_string, render
from otacm.errors import OtacmError, ValidationFailed
from otacm.security.auth import Principal
from otacm.security.permissions import Permission
from otacm.targeting import endpoints, service
from otacm.targeting.eligibility import Reason
from otacm.targeting.query_language import QueryError
from otacm.targeting.schemas import PreviewOut, PreviewRequest
from otacm.updates.models import SoftwareUpdate
from otacm.updates.schemas import UpdateState

router = console_router()

# Released updates offered for choice, newest first.
SHOWN_UPDATES = 200
REASON_COLOURS = {Reason.ELIGIBLE.value: "#2e8540"}


def released_updates(session: Session) -> list[SoftwareUpdate]:
    return list(
        session.scalars(
            select(SoftwareUpdate)
            .where(SoftwareUpdate.state == UpdateState.RELEASED.value)
            .order_by(SoftwareUpdate.id.desc())
            .limit(SHOWN_UPDATES)
        )
    )


def preview_request(
    update_ids: list[str], values: dict[str, Any], allow_downgrade: bool, sample_size: int = 5
) -> tuple[PreviewRequest | None, FormErrors]:
    """The preview request of the inputs, or the errors next to their inputs."""
    selection, regions = selection_form.documents(values)
    document = {
        "update_ids": update_ids,
        "selection": selection,
        "regions": regions,
        "allow_downgrade": allow_downgrade,
        "sample_size": sample_size,
    }
    try:
        return PreviewRequest.model_validate(document), {}
    except QueryError as exc:  # raised as itself, with the position, by the query's validator
        return None, service_errors(exc, selection_form.FIELDS, prefix="selection.")
    except ValidationError as exc:
        return None, validation_errors(exc, selection_form.FIELDS)


def reason_charts(preview: PreviewOut) -> dict[str, Any]:
    """The reasons as one series; each breakdown as stacked bars, a series per reason."""
    reasons = [r.reason.value for r in preview.reasons]
    specs: dict[str, Any] = {
        "reasons": charts.bars(
            [r.replace("_", " ") for r in reasons],
            [("vehicles", [r.vehicles for r in preview.reasons], "#1f77b4")],
            horizontal=True,
        )
    }
    for name, values in preview.breakdowns.items():
        labels = sorted(values)
        specs[name] = charts.bars(
            labels,
            [
                (
                    reason.replace("_", " "),
                    [values[label].get(Reason(reason), 0) for label in labels],
                    REASON_COLOURS.get(reason),
                )
                for reason in reasons
            ],
            stacked=True,
        )
    return specs


def _targeting_page(request: Request, session: Session, *, compute: bool) -> HTMLResponse:
    """The targeting page. With updates chosen, the inputs are checked at once; the preview
    itself reads every selected vehicle (seconds on a large fleet), so unless `compute` the page
    shows itself first and fetches the preview after (or links to it without JavaScript)."""
    params = request.query_params
    values = selection_form.raw_values(params)
    chosen = [u for u in params.getlist("update") if u]
    allow_downgrade = params.get("allow_downgrade") == "true"
    preview: PreviewOut | None = None
    errors: FormErrors = {}
    ready = False
    if chosen:
        body, errors = preview_request(chosen, values, allow_downgrade)
        if body is not None:
            try:
                if compute:
                    preview = service.run_preview(session, body)
                else:
                    service.plan_for(session, body)
                ready = True
            except OtacmError as exc:
                errors = service_errors(exc, selection_form.FIELDS, prefix="selection.")
                if exc.extra.get("field") == "update_ids":
                    errors = {"update_ids": exc.detail}
    context: dict[str, Any] = {
        "errors": errors,
        "preview": preview,
        "ready": ready,
        "specs": reason_charts(preview) if preview else None,
        "query": query_string(request),
    }
    status_code = 422 if errors else 200
    if compute and request.headers.get("HX-Request"):
        # htmx swaps only successful answers; a failed preview shows its reason in the section.
        return render(request, "_targeting_preview.html", **context)
    return render(
        request,
        "targeting.html",
        status_code=status_code,
        updates=released_updates(session),
        chosen=chosen,
        values=values,
        allow_downgrade=allow_downgrade,
        options=selection_form.OPTIONS,
        reasons=list(Reason),
        **context,
    )


@router.get("/targeting", response_class=HTMLResponse)
def targeting(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.TARGETING_PREVIEW))],
) -> HTMLResponse:
    return _targeting_page(request, session, compute=False)


@router.get("/targeting/preview", response_class=HTMLResponse)
def targeting_preview(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.TARGETING_PREVIEW))],
) -> HTMLResponse:
    """The preview of the targeting page's inputs: the section alone for htmx, else the whole
    page with the preview in it."""
    return _targeting_page(request, session, compute=True)


@router.get("/targeting/vehicles.csv")
def vehicle_list(
    request: Request,
    _: Annotated[Principal, Depends(can_view(Permission.TARGETING_PREVIEW))],
) -> Response:
    """Every vehicle of the preview with its reason (only the chosen reasons), streamed."""
    params = request.query_params
    body, errors = preview_request(
        [u for u in params.getlist("update") if u],
        selection_form.raw_values(params),
        params.get("allow_downgrade") == "true",
    )
    if body is None:
        raise ValidationFailed(
            "the preview is not valid: " + "; ".join(f"{k}: {v}" for k, v in errors.items())
        )
    wanted = [Reason(r) for r in params.getlist("reason") if r in {x.value for x in Reason}]
    return StreamingResponse(
        endpoints.vehicle_list(request.app.state.session_factory, body, wanted, "csv"),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="targeting.csv"'},
    )
