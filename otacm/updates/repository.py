"""Queries of the update catalog."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import ColumnElement, Select, and_, exists, func, or_, select, type_coerce
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import InstrumentedAttribute, Session

from otacm.db import is_postgresql
from otacm.errors import ValidationFailed
from otacm.updates.models import SoftwareUpdate, UpdateArtifact
from otacm.updates.schemas import SupportStatus
from otacm.updates.versions import reading_key


@dataclass
class CatalogFilter:
    version: str | None = None
    protocols: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    fuel_types: list[str] = field(default_factory=list)
    ecu_types: list[str] = field(default_factory=list)
    hardware_part_number: str | None = None
    hardware_version: str | None = None
    states: list[str] = field(default_factory=list)
    support_status: SupportStatus | None = None
    categories: list[str] = field(default_factory=list)
    text: str | None = None


def json_array_contains(
    session: Session, column: InstrumentedAttribute[list[str]], value: str
) -> ColumnElement[bool]:
    """`value` is an element of the JSON array in `column` (JSONB @> on PostgreSQL)."""
    if is_postgresql(session.get_bind().dialect):
        return type_coerce(column, JSONB).contains([value])
    element = func.json_each(column).table_valued("value")
    return exists(select(element.c.value).where(element.c.value == value))


def _any_of(
    session: Session, column: InstrumentedAttribute[list[str]], values: Sequence[str]
) -> ColumnElement[bool]:
    return or_(*(json_array_contains(session, column, v) for v in values))


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _filtered(session: Session, f: CatalogFilter, today: date) -> Select[SoftwareUpdate]:
    query = select(SoftwareUpdate)
    conditions: list[ColumnElement[bool]] = []
    if f.version:
        # The same version however it is written: 4.01 matches 4.1. The sort key is the reading
        # key, a space, then the version's own text (a tie-breaker), which is left out here.
        try:
            key = reading_key(f.version) + " "
        except ValueError as exc:  # a number too long to order
            raise ValidationFailed(f"version: {exc}", field="version") from None
        conditions.append(SoftwareUpdate.version_sort.startswith(key, autoescape=True))
    if f.protocols:
        conditions.append(SoftwareUpdate.protocol.in_(f.protocols))
    if f.models:
        conditions.append(_any_of(session, SoftwareUpdate.compatible_models, f.models))
    if f.fuel_types:
        conditions.append(_any_of(session, SoftwareUpdate.fuel_types, f.fuel_types))
    if f.ecu_types:
        conditions.append(SoftwareUpdate.ecu_type.in_([e.upper() for e in f.ecu_types]))
    if f.hardware_part_number:
        part_numbers = SoftwareUpdate.hardware_part_numbers
        conditions.append(json_array_contains(session, part_numbers, f.hardware_part_number))
    if f.hardware_version:
        conditions.append(
            json_array_contains(session, SoftwareUpdate.hardware_versions, f.hardware_version)
        )
    if f.states:
        conditions.append(SoftwareUpdate.state.in_(f.states))
    if f.categories:
        conditions.append(SoftwareUpdate.category.in_(f.categories))
    if f.support_status is SupportStatus.END_OF_SUPPORT:
        conditions.append(SoftwareUpdate.end_of_support < today)
    elif f.support_status is SupportStatus.SUPPORTED:
        conditions.append(
            or_(SoftwareUpdate.end_of_support.is_(None), SoftwareUpdate.end_of_support >= today)
        )
    if f.text:
        pattern = f"%{_escape_like(f.text.lower())}%"
        conditions.append(
            or_(
                *(
                    func.lower(column).like(pattern, escape="\\")
                    for column in (
                        SoftwareUpdate.name,
                        SoftwareUpdate.software_part_number,
                        SoftwareUpdate.release_notes,
                        SoftwareUpdate.version,
                    )
                )
            )
        )
    return query.where(and_(*conditions)) if conditions else query


def _encode_cursor(update: SoftwareUpdate) -> str:
    raw = json.dumps(["v1", update.version_sort, update.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        tag, version_sort, update_id = json.loads(raw)
        if tag != "v1" or not isinstance(version_sort, str) or not isinstance(update_id, int):
            raise ValueError(tag)
        return version_sort, update_id
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ValidationFailed(
            "the cursor is not one this API handed out", field="cursor"
        ) from None


def search_updates(
    session: Session,
    f: CatalogFilter,
    *,
    today: date,
    newest_first: bool = True,
    limit: int,
    cursor: str | None,
) -> tuple[list[SoftwareUpdate], str | None]:
    """A page of the catalog in natural version order (ties broken by id)."""
    query = _filtered(session, f, today)
    key = (SoftwareUpdate.version_sort, SoftwareUpdate.id)
    if cursor:
        after = _decode_cursor(cursor)
        from sqlalchemy import tuple_

        position, bound = tuple_(*key), tuple_(*after)
        query = query.where(position < bound if newest_first else position > bound)
    order = [c.desc() for c in key] if newest_first else list(key)
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def artifacts_of(session: Session, update_ids: Sequence[int]) -> dict[int, list[UpdateArtifact]]:
    result: dict[int, list[UpdateArtifact]] = {i: [] for i in update_ids}
    if not update_ids:
        return result
    query = (
        select(UpdateArtifact)
        .where(UpdateArtifact.update_id.in_(update_ids))
        .order_by(UpdateArtifact.update_id, UpdateArtifact.filename)
    )
    for artifact in session.scalars(query):
        result[artifact.update_id].append(artifact)
    return result


def artifact_by_target(session: Session, path: str) -> UpdateArtifact | None:
    return session.scalar(select(UpdateArtifact).where(UpdateArtifact.target_path == path))
