"""The update catalog: browse and filter it, define and edit drafts (every field, the R156
documentation included), upload files with a progress bar, release and withdraw after a
confirmation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from otacm.config import Settings
from otacm.console import update_form
from otacm.console.forms import (
    FORM,
    FormDep,
    FormErrors,
    service_errors,
    text,
    upload,
    validation_errors,
)
from otacm.console.web import (
    ConsoleSession,
    ConsoleWriteSession,
    can_do,
    can_view,
    console_router,
    pager,
    render,
    see_other,
)
from otacm.db import unit_of_work, utcnow
from otacm.errors import OtacmError
from otacm.fleet.records import FuelType, Protocol
from otacm.security.auth import Principal
from otacm.security.permissions import Permission
from otacm.updates import artifacts, repository, rules, service
from otacm.updates.schemas import (
    SupportStatus,
    UpdateCategory,
    UpdateCreate,
    UpdateFields,
    UpdateOut,
    UpdateState,
    WithdrawRequest,
)
from otacm.updates.storage import ArtifactStorage

router = console_router()

PAGE_SIZE = 50
READ_CHUNK = 1 << 20  # bytes handed to the receiver at a time
GROUPS = {
    "ecu_type": "ECU type",
    "protocol": "Communication type",
    "category": "Category",
    "state": "State",
    "support_status": "Support",
}


def _out(request: Request, session: Session, update_id: int) -> UpdateOut:
    update = service.get_update(session, update_id)
    files = repository.artifacts_of(session, [update.id])[update.id]
    return service.update_out(update, files, utcnow().date(), str(request.base_url).rstrip("/"))


def _groups(items: list[UpdateOut], by: str) -> Iterator[tuple[str, list[UpdateOut]]]:
    if by not in GROUPS:
        yield "", items
        return
    grouped: dict[str, list[UpdateOut]] = {}
    for item in items:
        grouped.setdefault(str(getattr(item, by)), []).append(item)
    yield from sorted(grouped.items())


@router.get("/updates", response_class=HTMLResponse)
def catalog(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.UPDATES_READ))],
    cursor: str | None = None,
) -> HTMLResponse:
    params = request.query_params
    values = {
        name: params.get(name, "").strip()
        for name in (
            "version", "protocol", "model", "fuel_type", "ecu_type", "hardware_part_number",
            "hardware_version", "state", "support_status", "category", "q", "group",
        )
    }  # fmt: skip
    errors: FormErrors = {}
    for name, enum in (
        ("protocol", Protocol),
        ("fuel_type", FuelType),
        ("state", UpdateState),
        ("category", UpdateCategory),
        ("support_status", SupportStatus),
    ):
        if values[name] and values[name] not in {e.value for e in enum}:
            errors[name] = f"{values[name]!r} is not one of {', '.join(e.value for e in enum)}"
    items: list[UpdateOut] = []
    next_cursor = None
    if not errors:
        f = repository.CatalogFilter(
            version=values["version"] or None,
            protocols=[values["protocol"]] if values["protocol"] else [],
            models=[values["model"]] if values["model"] else [],
            fuel_types=[values["fuel_type"]] if values["fuel_type"] else [],
            ecu_types=[values["ecu_type"]] if values["ecu_type"] else [],
            hardware_part_number=values["hardware_part_number"] or None,
            hardware_version=values["hardware_version"] or None,
            states=[values["state"]] if values["state"] else [],
            support_status=SupportStatus(values["support_status"])
            if values["support_status"]
            else None,
            categories=[values["category"]] if values["category"] else [],
            text=values["q"] or None,
        )
        today = utcnow().date()
        try:
            rows, next_cursor = repository.search_updates(
                session, f, today=today, limit=PAGE_SIZE, cursor=cursor
            )
            files = repository.artifacts_of(session, [u.id for u in rows])
            items = [service.update_out(u, files[u.id], today, None) for u in rows]
        except OtacmError as exc:
            errors.update(service_errors(exc, tuple(values)))
    return render(
        request,
        "updates.html",
        status_code=422 if errors else 200,
        search=values,
        errors=errors,
        groups=list(_groups(items, values["group"])),
        group_label=GROUPS.get(values["group"]),
        pager=pager(request, next_cursor),
        options=_options(),
        group_options=list(GROUPS.items()),
    )


def _options() -> dict[str, list[Any]]:
    return {
        "protocol": list(Protocol),
        "category": list(UpdateCategory),
        "fuel_type": list(FuelType),
        "state": list(UpdateState),
        "support_status": list(SupportStatus),
    }


def _form_page(
    request: Request,
    values: dict[str, Any],
    errors: FormErrors,
    update: UpdateOut | None = None,
    status: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "update_form.html",
        status_code=status,
        values=values,
        errors=errors,
        update=update,
        options=_options(),
    )


@router.get("/updates/new", response_class=HTMLResponse)
def new_update(
    request: Request,
    _: Annotated[Principal, Depends(can_view(Permission.UPDATES_WRITE))],
) -> HTMLResponse:
    return _form_page(request, update_form.blank(), {})


def _check(
    values: dict[str, Any], model: type[UpdateFields], drop: tuple[str, ...] = ()
) -> tuple[Any, FormErrors]:
    errors: FormErrors = {}
    doc = update_form.document(values, errors)
    for name in drop:
        doc.pop(name, None)
    try:
        return model.model_validate(doc), errors
    except ValidationError as exc:
        return None, {**validation_errors(exc, update_form.FIELDS), **errors}


@router.post("/updates/new", response_class=HTMLResponse)
def create_update(
    request: Request,
    session: ConsoleWriteSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.UPDATES_WRITE))],
) -> Response:
    values = update_form.raw_values(form)
    data, errors = _check(values, UpdateCreate)
    if errors or data is None:
        return _form_page(request, values, errors, status=422)
    try:
        update = service.create_draft(session, principal.actor, data, _settings(request))
    except OtacmError as exc:
        session.rollback()
        return _form_page(
            request, values, service_errors(exc, update_form.FIELDS), status=exc.status_code
        )
    return see_other(f"/updates/{update.id}", "created")


@router.get("/updates/{update_id}", response_class=HTMLResponse)
def update_page(
    update_id: int,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.UPDATES_READ))],
) -> HTMLResponse:
    return _detail(request, session, update_id, {})


def _detail(
    request: Request, session: Session, update_id: int, errors: FormErrors, status: int = 200
) -> HTMLResponse:
    update = _out(request, session, update_id)
    stored = service.get_update(session, update_id)
    missing = (
        rules.missing_for_release(stored, len(update.artifacts))
        if update.state == UpdateState.DRAFT
        else []
    )
    return render(
        request,
        "update.html",
        status_code=status,
        update=update,
        missing=missing,
        errors=errors,
    )


@router.get("/updates/{update_id}/edit", response_class=HTMLResponse)
def edit_form(
    update_id: int,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.UPDATES_WRITE))],
) -> HTMLResponse:
    update = _out(request, session, update_id)
    service.require_draft(service.get_update(session, update_id))
    return _form_page(request, update_form.values_of(update), {}, update)


@router.post("/updates/{update_id}/edit", response_class=HTMLResponse)
def edit_update(
    update_id: int,
    request: Request,
    session: ConsoleWriteSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.UPDATES_WRITE))],
) -> Response:
    values = update_form.raw_values(form)
    current = _out(request, session, update_id)
    # Confidentiality is sent only when it changes: a draft with files may keep it.
    unchanged = ("confidential",) if values["confidential"] == current.confidential else ()
    data, errors = _check(values, UpdateFields, unchanged)
    if errors or data is None:
        return _form_page(request, values, errors, current, status=422)
    try:
        service.edit_draft(session, principal.actor, update_id, data, _settings(request))
    except OtacmError as exc:
        session.rollback()
        return _form_page(
            request,
            values,
            service_errors(exc, update_form.FIELDS),
            current,
            status=exc.status_code,
        )
    return see_other(f"/updates/{update_id}", "saved")


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


@router.post("/updates/{update_id}/files", response_class=HTMLResponse)
def upload_file(
    update_id: int,
    request: Request,
    session: ConsoleSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.UPDATES_WRITE))],
) -> Response:
    """Take the uploaded file (spooled to disk by the form parser) into staging storage, as
    the API's upload does: hashed (and encrypted for a confidential update) on the way in."""
    file = upload(form, "file")
    if file is None:
        return _detail(request, session, update_id, {"file": "choose a file"}, 422)
    filename = text(form, "filename") or (file.filename or "").rsplit("/", 1)[-1]
    settings = _settings(request)
    storage: ArtifactStorage = request.app.state.storage
    try:
        with unit_of_work(request.app.state.session_factory) as check:
            update = artifacts.check_upload_allowed(check, update_id, filename)
            data_key = service.data_key_of(update, settings)
        receiver = artifacts.ArtifactReceiver(
            storage,
            max_bytes=settings.artifact_max_bytes,
            data_key=data_key,
            declared_sha256=text(form, "sha256") or None,
        )
        with receiver:
            while chunk := file.file.read(READ_CHUNK):
                receiver.feed(chunk)
            received = receiver.finish()
        artifacts.attach_or_discard(
            request.app.state.write_session_factory,
            storage,
            principal.actor,
            update_id,
            filename,
            received,
            settings=settings,
        )
    except OtacmError as exc:
        errors = service_errors(exc, ("filename", "sha256"))
        errors.setdefault("file", exc.detail)
        return _detail(request, session, update_id, errors, exc.status_code)
    return see_other(f"/updates/{update_id}", "uploaded")


@router.post("/updates/{update_id}/files/delete", response_class=HTMLResponse)
def delete_file(
    update_id: int,
    request: Request,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.UPDATES_WRITE))],
) -> Response:
    with unit_of_work(request.app.state.write_session_factory) as session:
        key = artifacts.remove(session, principal.actor, update_id, text(form, "filename"))
    # The object goes after the row's transaction committed (a stray object is swept later).
    request.app.state.storage.delete(key)
    return see_other(f"/updates/{update_id}", "file_deleted")


@router.get("/updates/{update_id}/release", response_class=HTMLResponse)
def confirm_release(
    update_id: int,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.UPDATES_RELEASE))],
) -> HTMLResponse:
    return _confirm(request, session, update_id, "release", {})


@router.get("/updates/{update_id}/withdraw", response_class=HTMLResponse)
def confirm_withdraw(
    update_id: int,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.UPDATES_RELEASE))],
) -> HTMLResponse:
    return _confirm(request, session, update_id, "withdraw", {})


def _confirm(
    request: Request,
    session: Session,
    update_id: int,
    action: str,
    errors: FormErrors,
    status: int = 200,
    reason: str = "",
) -> HTMLResponse:
    update = _out(request, session, update_id)
    stored = service.get_update(session, update_id)
    missing = (
        rules.missing_for_release(stored, len(update.artifacts)) if action == "release" else []
    )
    return render(
        request,
        "update_confirm.html",
        status_code=status,
        update=update,
        action=action,
        missing=missing,
        errors=errors,
        reason=reason,
    )


@router.post("/updates/{update_id}/release", response_class=HTMLResponse)
def release_update(
    update_id: int,
    request: Request,
    session: ConsoleSession,
    principal: Annotated[Principal, Depends(can_do(Permission.UPDATES_RELEASE))],
) -> Response:
    try:
        # The release owns its transaction: files are published before it commits.
        service.release(
            request.app.state.write_session_factory,
            principal.actor,
            update_id,
            settings=_settings(request),
            storage=request.app.state.storage,
        )
    except OtacmError as exc:
        return _confirm(request, session, update_id, "release", {FORM: exc.detail}, exc.status_code)
    return see_other(f"/updates/{update_id}", "released")


@router.post("/updates/{update_id}/withdraw", response_class=HTMLResponse)
def withdraw_update(
    update_id: int,
    request: Request,
    session: ConsoleWriteSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.UPDATES_RELEASE))],
) -> Response:
    reason = text(form, "reason")
    try:
        body = WithdrawRequest(reason=reason)
        service.withdraw(session, principal.actor, update_id, body.reason)
    except ValidationError as exc:
        return _confirm(
            request, session, update_id, "withdraw",
            validation_errors(exc, ("reason",)), 422, reason,
        )  # fmt: skip
    except OtacmError as exc:
        session.rollback()
        return _confirm(
            request, session, update_id, "withdraw",
            service_errors(exc, ("reason",)), exc.status_code, reason,
        )  # fmt: skip
    return see_other(f"/updates/{update_id}", "withdrawn")
