"""The campaign wizard: updates → targets (with a live count of eligible vehicles) → rollout
policy → schedule, windows, regions and priority → user notice → review (the exact vehicle
count) → saved as a draft or submitted for approval. The same steps edit a draft.

Each step is a plain form post carrying everything typed so far; nothing is stored until the
last step, which calls the same services as the API (`campaigns.service.create`, `edit`,
`submit`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from otacm.campaigns import service
from otacm.campaigns.schemas import CampaignCategory, CampaignCreate, CampaignFields, Urgency
from otacm.console import campaign_form, selection_form
from otacm.console.campaign_form import STEP_TITLES, STEPS
from otacm.console.forms import FormDep, FormErrors, service_errors
from otacm.console.targeting import preview_request, released_updates
from otacm.console.web import (
    ConsoleSession,
    ConsoleWriteSession,
    can_do,
    can_view,
    console_router,
    render,
    see_other,
)
from otacm.errors import OtacmError
from otacm.security.auth import Principal
from otacm.security.permissions import Permission
from otacm.targeting import service as targeting
from otacm.targeting.schemas import PreviewOut

router = console_router()


def _count(session: Session, values: dict[str, Any]) -> tuple[PreviewOut | None, FormErrors]:
    """The exact preview of the inputs' updates, selection and regions (no samples)."""
    if not values["update_ids"]:
        return None, {"update_ids": "choose at least one released update (the first step)"}
    body, errors = preview_request(
        list(values["update_ids"]), values, allow_downgrade=False, sample_size=0
    )
    if body is None:
        return None, errors
    try:
        return targeting.run_preview(session, body), {}
    except OtacmError as exc:
        return None, service_errors(exc, campaign_form.ALL_FIELDS)


def _page(
    request: Request,
    session: Session,
    values: dict[str, Any],
    step: str,
    *,
    campaign_id: int | None,
    errors: FormErrors | None = None,
    counted: bool = False,
    status: int = 200,
) -> HTMLResponse:
    errors = errors or {}
    preview: PreviewOut | None = None
    count_errors: FormErrors = {}
    # The exact count reads every selected vehicle (seconds on a large fleet): the review step
    # fetches it after showing itself, and computes it in the page only when asked (no script).
    if counted:
        preview, count_errors = _count(session, values)
    shown = campaign_form.errors_for(step, errors)
    if step == "review":
        shown = {**errors}
    return render(
        request,
        "wizard.html",
        status_code=status,
        step=step,
        steps=[(s, STEP_TITLES[s]) for s in STEPS],
        values=values,
        draft=json.dumps(values),
        campaign_id=campaign_id,
        errors=shown,
        all_errors=[(campaign_form.step_of(n), n, m) for n, m in errors.items()],
        preview=preview,
        count_errors=count_errors,
        counted=counted,
        updates=released_updates(session),
        categories=list(CampaignCategory),
        urgencies=list(Urgency),
        options=selection_form.OPTIONS,
        notice_blocks=range(campaign_form.NOTICE_BLOCKS),
        next_title=STEP_TITLES[STEPS[STEPS.index(step) + 1]] if step != "review" else None,
    )


@router.get("/campaigns/new", response_class=HTMLResponse)
def new_campaign(
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.CAMPAIGNS_WRITE))],
) -> HTMLResponse:
    """The first step; a link from the targeting page brings its updates and selection."""
    values = campaign_form.blank()
    params = request.query_params
    if any(k.startswith(("selection.", "regions.")) for k in params):
        values.update(selection_form.raw_values(params))
    values["update_ids"] = [u for u in params.getlist("update") if u]
    return _page(request, session, values, "updates", campaign_id=None)


@router.get("/campaigns/{campaign_id}/edit", response_class=HTMLResponse)
def edit_campaign(
    campaign_id: int,
    request: Request,
    session: ConsoleSession,
    _: Annotated[Principal, Depends(can_view(Permission.CAMPAIGNS_WRITE))],
) -> HTMLResponse:
    campaign = service.get(session, campaign_id)
    if campaign.state not in service.EDITABLE:
        raise service.CampaignStateConflict(
            f"campaign {campaign_id} is {campaign.state}; only drafts and rejected campaigns "
            "can change",
            state=campaign.state,
        )
    out = service.out(campaign, service.update_ids_of(session, [campaign_id])[campaign_id])
    return _page(request, session, campaign_form.values_of(out), "updates", campaign_id=campaign_id)


def _values(form: Any, step: str) -> dict[str, Any]:
    try:
        values = campaign_form.blank()
        values.update(json.loads(str(form.get("draft") or "{}")))
    except (ValueError, TypeError):
        values = campaign_form.blank()
    lists = {
        name: [v for v in form.getlist(name) if isinstance(v, str)] for name in campaign_form.LISTS
    }
    campaign_form.take(values, step, form, lists)
    return values


@router.post("/campaigns/wizard", response_class=HTMLResponse)
def wizard_step(
    request: Request,
    session: ConsoleWriteSession,
    form: FormDep,
    principal: Annotated[Principal, Depends(can_do(Permission.CAMPAIGNS_WRITE))],
) -> Response:
    step = str(form.get("step") or "updates")
    step = step if step in STEPS else "updates"
    action = str(form.get("action") or "next")
    raw_id = str(form.get("campaign_id") or "")
    campaign_id = int(raw_id) if raw_id.isdigit() else None
    values = _values(form, step)
    position = STEPS.index(step)
    if action == "back":
        return _page(request, session, values, STEPS[max(position - 1, 0)], campaign_id=campaign_id)
    if action.startswith("goto:") and action[5:] in STEPS:
        return _page(request, session, values, action[5:], campaign_id=campaign_id)
    if action == "count":
        return _page(request, session, values, step, campaign_id=campaign_id, counted=True)
    data, errors = campaign_form.check(values)
    if action == "next":
        mine = campaign_form.errors_for(step, errors)
        if mine:
            return _page(
                request, session, values, step, campaign_id=campaign_id, errors=mine, status=422
            )
        return _page(
            request,
            session,
            values,
            STEPS[min(position + 1, len(STEPS) - 1)],
            campaign_id=campaign_id,
        )
    if action not in ("save", "submit"):
        return _page(request, session, values, step, campaign_id=campaign_id)
    if data is None:
        return _page(
            request, session, values, "review", campaign_id=campaign_id, errors=errors, status=422
        )
    try:
        campaign = _store(session, principal, data, campaign_id)
        if action == "submit":
            service.submit(session, principal.actor, campaign.id)
    except OtacmError as exc:
        session.rollback()
        return _page(
            request,
            session,
            values,
            "review",
            campaign_id=campaign_id,
            errors=service_errors(exc, campaign_form.ALL_FIELDS),
            status=exc.status_code,
        )
    return see_other(f"/campaigns/{campaign.id}", "submitted" if action == "submit" else "saved")


def _store(
    session: Session, principal: Principal, data: CampaignCreate, campaign_id: int | None
) -> Any:
    if campaign_id is None:
        return service.create(session, principal.actor, data)
    changes = CampaignFields.model_validate(data.model_dump(mode="json"))
    return service.edit(session, principal.actor, campaign_id, changes)


@router.post("/campaigns/wizard/count", response_class=HTMLResponse)
def live_count(
    request: Request,
    session: ConsoleSession,
    form: FormDep,
    _: Annotated[Principal, Depends(can_do(Permission.TARGETING_PREVIEW))],
) -> HTMLResponse:
    """The targets step's live count as the inputs change, and the review step's exact count
    (htmx)."""
    step = str(form.get("step") or "targets")
    values = _values(form, step if step in STEPS else "targets")
    preview, errors = _count(session, values)
    template = "_wizard_review_count.html" if step == "review" else "_wizard_count.html"
    return render(request, template, preview=preview, count_errors=errors, counted=True)
