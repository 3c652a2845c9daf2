"""The update catalog's lifecycle: drafts are created and edited, released once, withdrawn.

Services only flush; the caller's unit of work commits. `release` publishes files in storage
as well, so it takes the session factory and owns its transaction: files are published by copy
before it commits, and the staged copies are deleted only after it did. Nothing is ever moved
back: a published object stays valid for whoever points at it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import suppress
from datetime import date, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from otacm.config import Settings
from otacm.db import is_postgresql, unit_of_work, utcnow
from otacm.errors import Conflict, NotFound, ValidationFailed
from otacm.security import audit, encryption
from otacm.security.audit import Actor
from otacm.updates import repository, rules, signing
from otacm.updates.models import ReleaseCounter, SoftwareUpdate, UpdateArtifact
from otacm.updates.schemas import (
    ArtifactOut,
    Dependency,
    Preconditions,
    Regulatory,
    SupportDetails,
    UpdateCreate,
    UpdateFields,
    UpdateOut,
    UpdateState,
)
from otacm.updates.storage import ArtifactStorage
from otacm.updates.versions import sortable_version

# What may still change, per state (only drafts are editable).
EDITABLE_STATES = frozenset({UpdateState.DRAFT})
WITHDRAWABLE_STATES = frozenset({UpdateState.RELEASED})


class UpdateImmutable(Conflict):
    code = "update_immutable"


class UpdateExists(Conflict):
    code = "update_exists"


class UpdateIncomplete(ValidationFailed):
    code = "update_incomplete"


class UpdateNotFound(NotFound):
    code = "update_not_found"


# Column values of the fields a new draft was not given, and of fields an edit sends as null;
# every other field is null then.
_DEFAULTS: dict[str, Any] = {
    "compatible_models": [],
    "fuel_types": [],
    "hardware_part_numbers": [],
    "hardware_versions": [],
    "applicable_versions": [],
    "dependencies": [],
    "release_notes": "",
    "preconditions": Preconditions().model_dump(mode="json"),
    "regulatory": Regulatory().model_dump(mode="json"),
    "install_order": 0,
}
# What every update has: an edit cannot remove it.
_REQUIRED = ("name", "version", "ecu_type", "software_part_number", "protocol", "category")


def _defaults() -> dict[str, Any]:
    return copy.deepcopy(_DEFAULTS)  # fresh lists and dicts for each row


def _columns(fields: UpdateFields) -> dict[str, Any]:
    """Model column values for the fields that were sent (validated by the request model). A
    group sent (`support`, `preconditions`, `regulatory`) replaces the stored one as a whole:
    what it leaves out takes its default."""
    sent = fields.model_dump(mode="json", include=fields.model_fields_set)
    defaults = _defaults()
    values: dict[str, Any] = {
        name: defaults.get(name) if value is None else value for name, value in sent.items()
    }
    if "support" in values:
        del values["support"]
        support = fields.support or SupportDetails()
        values["support_contact"] = support.contact
        values["documentation_url"] = support.documentation_url
        values["end_of_support"] = support.end_of_support  # a date, not its JSON text
    if values.get("version") is not None:  # None: refused by edit_draft
        values["version_sort"] = sortable_version(values["version"])
    return values


def _snapshot(update: SoftwareUpdate) -> dict[str, Any]:
    return {
        "name": update.name,
        "version": update.version,
        "ecu_type": update.ecu_type,
        "software_part_number": update.software_part_number,
        "state": update.state,
    }


def _check_unique(session: Session, update: SoftwareUpdate) -> None:
    # Without autoflush: flushing the edited row first would hit the unique constraint.
    with session.no_autoflush:
        clash = session.scalar(
            select(SoftwareUpdate.id).where(
                SoftwareUpdate.ecu_type == update.ecu_type,
                SoftwareUpdate.software_part_number == update.software_part_number,
                SoftwareUpdate.version == update.version,
                SoftwareUpdate.id != (update.id or 0),
            )
        )
    if clash is not None:
        raise UpdateExists(
            f"update {clash} already is {update.ecu_type} {update.software_part_number} "
            f"version {update.version}",
            update_id=clash,
            field="version",
        )


def _set_confidential(
    update: SoftwareUpdate, confidential: bool, settings: Settings, has_artifacts: bool
) -> None:
    if confidential == update.confidential:
        return
    if has_artifacts:
        raise Conflict(
            "confidentiality cannot change once files are uploaded; delete them first",
            field="confidential",
        )
    update.confidential = confidential
    update.wrapped_data_key = None
    if confidential:
        # Wrapping a new key may create the server key (the first confidential update).
        server_key = encryption.load_or_create_server_key(settings.resolved_keys_dir())
        update.wrapped_data_key = encryption.wrap_data_key(
            encryption.new_data_key(), server_key, context=_key_context(update)
        )


def key_context(update_id: int) -> bytes:
    """What an update's wrapped data key is bound to, under the server key and when wrapped
    for a vehicle (docs/vehicle-api.md): a key copied to another update does not unwrap."""
    return f"otacm-update:{update_id}".encode()


def _key_context(update: SoftwareUpdate) -> bytes:
    return key_context(update.id)


def data_key_of(update: SoftwareUpdate, settings: Settings) -> bytes | None:
    """The plaintext data key of a confidential update (None when it is not confidential).

    Raises:
        KeysNotInitialised: there is no server key (it is never created here: a new one could
            not open the key).
        KeyUnwrapFailed: the wrapped key does not open under the server key.
    """
    if not update.confidential or update.wrapped_data_key is None:
        return None
    server_key = encryption.load_server_key(settings.resolved_keys_dir())
    return encryption.unwrap_data_key(
        update.wrapped_data_key, server_key, context=_key_context(update)
    )


def create_draft(
    session: Session, actor: Actor, data: UpdateCreate, settings: Settings
) -> SoftwareUpdate:
    now = utcnow()
    values = _columns(data)
    confidential = bool(values.pop("confidential", False))
    update = SoftwareUpdate(
        state=UpdateState.DRAFT.value,
        created_at=now,
        created_by=actor.name,
        updated_at=now,
        confidential=False,
        **{**_defaults(), **values},
    )
    _check_dependencies(update)
    _check_unique(session, update)
    session.add(update)
    session.flush()
    _set_confidential(update, confidential, settings, has_artifacts=False)
    audit.record(
        session, actor, "update.create", object_type="update", object_id=update.id,
        after=_snapshot(update),
    )  # fmt: skip
    session.flush()
    return update


def get_update(session: Session, update_id: int, *, lock: bool = False) -> SoftwareUpdate:
    query = select(SoftwareUpdate).where(SoftwareUpdate.id == update_id)
    if lock and is_postgresql(session.get_bind().dialect):
        query = query.with_for_update()
    update = session.scalar(query)
    if update is None:
        raise UpdateNotFound(f"there is no software update {update_id}", update_id=update_id)
    return update


def require_draft(update: SoftwareUpdate) -> None:
    if update.state not in EDITABLE_STATES:
        raise UpdateImmutable(
            f"update {update.id} is {update.state}; released updates never change "
            "(define a new version instead)",
            update_id=update.id,
            state=update.state,
        )


def _check_dependencies(update: SoftwareUpdate) -> None:
    for dependency in update.dependencies:
        if dependency["ecu_type"] == update.ecu_type:
            raise ValidationFailed(
                f"an update of {update.ecu_type} cannot depend on {update.ecu_type} itself",
                field="dependencies",
            )


def edit_draft(
    session: Session, actor: Actor, update_id: int, changes: UpdateFields, settings: Settings
) -> SoftwareUpdate:
    update = get_update(session, update_id, lock=True)
    require_draft(update)
    before = _snapshot(update)
    values = _columns(changes)
    confidential = values.pop("confidential", None)
    for name, value in values.items():
        if value is None and name in _REQUIRED:
            raise ValidationFailed(f"{name} cannot be removed", field=name)
        setattr(update, name, value)
    rules.check_ranges(update)
    _check_dependencies(update)
    _check_unique(session, update)
    if confidential is not None:
        has_artifacts = bool(repository.artifacts_of(session, [update.id])[update.id])
        _set_confidential(update, bool(confidential), settings, has_artifacts)
    update.updated_at = utcnow()
    audit.record(
        session, actor, "update.edit", object_type="update", object_id=update.id,
        before=before, after={**_snapshot(update), "fields": sorted(changes.model_fields_set)},
    )  # fmt: skip
    session.flush()
    return update


# Releases run one at a time: two releases for the same hardware must not hand out the same
# counter (on SQLite the write transaction already serialises them).
RELEASE_LOCK_KEY = 0x6F7461636D5245  # "otacmRE"


def _serialise_releases(session: Session) -> None:
    if is_postgresql(session.get_bind().dialect):
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RELEASE_LOCK_KEY})


def _next_release_counter(session: Session, update: SoftwareUpdate) -> int:
    """One more than any counter handed out for the update's ECU type and hardware, so that a
    vehicle can refuse any image older than one it already has (Uptane's release counter)."""
    query = select(ReleaseCounter).where(
        ReleaseCounter.ecu_type == update.ecu_type,
        ReleaseCounter.hardware_part_number.in_(update.hardware_part_numbers),
    )
    if is_postgresql(session.get_bind().dialect):
        query = query.with_for_update()
    existing = {c.hardware_part_number: c for c in session.scalars(query)}
    counter = max((c.value for c in existing.values()), default=0) + 1
    for part_number in update.hardware_part_numbers:
        row = existing.get(part_number)
        if row is None:
            session.add(
                ReleaseCounter(
                    ecu_type=update.ecu_type, hardware_part_number=part_number, value=counter
                )
            )
        else:
            row.value = counter
    return counter


def _publish(storage: ArtifactStorage, artifact: UpdateArtifact, staged: list[str]) -> None:
    """Copy a staged file to its published, content-addressed key `artifacts/<sha256>`.

    An object already there holds the same bytes (published by another update, or left by a
    release of this one that failed) and is kept. Nothing published is ever removed again, so
    a release that fails cannot take a file away from one that shares it; the staged copy is
    deleted by the caller once the release committed.
    """
    published = f"artifacts/{artifact.sha256}"
    if artifact.storage_key == published:
        return
    storage.copy(artifact.storage_key, published)
    staged.append(artifact.storage_key)
    artifact.storage_key = published


def release(
    factory: sessionmaker[Session],
    actor: Actor,
    update_id: int,
    *,
    settings: Settings,
    storage: ArtifactStorage,
    clock: Callable[[], datetime] = utcnow,
) -> SoftwareUpdate:
    """Validate a draft as complete, freeze it, and sign its files into the image repository.

    No byte of a file is read again: hashes were taken on upload, and the files are published
    by a hard link (local disk) or a server-side copy (S3).
    """
    staged: list[str] = []  # deleted once the release committed
    with unit_of_work(factory) as session:
        update = get_update(session, update_id, lock=True)
        require_draft(update)
        artifacts = repository.artifacts_of(session, [update.id])[update.id]
        missing = rules.missing_for_release(update, len(artifacts))
        if missing:
            raise UpdateIncomplete(
                f"update {update.id} cannot be released yet; missing: {', '.join(missing)}",
                update_id=update.id,
                missing=missing,
            )
        now = clock()
        _serialise_releases(session)
        update.release_counter = _next_release_counter(session, update)
        for artifact in artifacts:
            _publish(storage, artifact, staged)
            artifact.target_path = rules.target_path(update.id, artifact.filename)
        session.flush()
        signing.sign_release(session, settings, update, artifacts, now)
        update.state = UpdateState.RELEASED.value
        update.released_at = now
        update.released_by = actor.name
        update.updated_at = now
        audit.record(
            session, actor, "update.release", object_type="update", object_id=update.id,
            after={**_snapshot(update), "release_counter": update.release_counter,
                   "artifacts": {a.filename: a.sha256 for a in artifacts}},
        )  # fmt: skip
        session.flush()
    for key in staged:
        with suppress(Exception):  # a leftover is swept with the staging area
            storage.delete(key)
    return update


def withdraw(session: Session, actor: Actor, update_id: int, reason: str) -> SoftwareUpdate:
    """Take a released update out of use for new campaigns. Its signed files stay available:
    vehicles in the middle of installing it must still be able to finish."""
    update = get_update(session, update_id, lock=True)
    if update.state not in WITHDRAWABLE_STATES:
        raise Conflict(
            f"update {update.id} is {update.state}; only released updates can be withdrawn",
            update_id=update.id,
            state=update.state,
        )
    before = _snapshot(update)
    now = utcnow()
    update.state = UpdateState.WITHDRAWN.value
    update.withdrawn_at = now
    update.withdrawn_by = actor.name
    update.withdrawal_reason = reason
    update.updated_at = now
    audit.record(
        session, actor, "update.withdraw", object_type="update", object_id=update.id,
        before=before, after=_snapshot(update), detail=reason,
    )  # fmt: skip
    session.flush()
    return update


def artifact_out(artifact: UpdateArtifact, base_url: str | None) -> ArtifactOut:
    url = None
    if artifact.target_path and base_url is not None:
        url = f"{base_url}/tuf/image/targets/{signing.hashed_target_path(artifact)}"
    return ArtifactOut(
        id=artifact.id,
        filename=artifact.filename,
        length=artifact.length,
        sha256=artifact.sha256,
        plaintext_length=artifact.plaintext_length,
        plaintext_sha256=artifact.plaintext_sha256,
        encrypted=artifact.encrypted,
        target_path=artifact.target_path,
        download_url=url,
        uploaded_at=artifact.uploaded_at,
        uploaded_by=artifact.uploaded_by,
    )


def update_out(
    update: SoftwareUpdate, artifacts: list[UpdateArtifact], today: date, base_url: str | None
) -> UpdateOut:
    return UpdateOut(
        id=update.id,
        state=UpdateState(update.state),
        name=update.name,
        version=update.version,
        ecu_type=update.ecu_type,
        software_part_number=update.software_part_number,
        protocol=update.protocol,
        category=update.category,
        confidential=update.confidential,
        compatible_models=update.compatible_models,
        model_year_min=update.model_year_min,
        model_year_max=update.model_year_max,
        fuel_types=update.fuel_types,
        hardware_part_numbers=update.hardware_part_numbers,
        hardware_versions=update.hardware_versions,
        applicable_versions=update.applicable_versions,
        applicable_version_min=update.applicable_version_min,
        applicable_version_max=update.applicable_version_max,
        dependencies=[Dependency.model_validate(d) for d in update.dependencies],
        release_notes=update.release_notes,
        support=SupportDetails(
            contact=update.support_contact,
            documentation_url=update.documentation_url,
            end_of_support=update.end_of_support,
        ),
        support_status=rules.support_status(update, today),
        estimated_install_minutes=update.estimated_install_minutes,
        preconditions=Preconditions.model_validate(update.preconditions),
        install_order=update.install_order,
        rollback_version=update.rollback_version,
        regulatory=Regulatory.model_validate(update.regulatory),
        release_counter=update.release_counter,
        artifacts=[artifact_out(a, base_url) for a in artifacts],
        created_at=update.created_at,
        created_by=update.created_by,
        updated_at=update.updated_at,
        released_at=update.released_at,
        released_by=update.released_by,
        withdrawn_at=update.withdrawn_at,
        withdrawn_by=update.withdrawn_by,
        withdrawal_reason=update.withdrawal_reason,
    )
