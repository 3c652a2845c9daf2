"""API shapes of operators, tokens and the audit log."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from otacm.security.permissions import Role


class UserOut(BaseModel):
    name: str
    role: str
    disabled: bool
    locked: bool
    created_at: datetime


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    role: Role
    password: str = Field(min_length=1, max_length=1000)


class UserChange(BaseModel):
    role: Role | None = None
    disabled: bool | None = None


class PasswordChange(BaseModel):
    password: str = Field(min_length=1, max_length=1000)


class TokenCreate(BaseModel):
    name: str = Field(default="token", max_length=100)
    user: str | None = Field(default=None, description="Admins only: whose token")
    expires_in: str | None = Field(default=None, description="e.g. 30d, 12h; none: no expiry")


class TokenOut(BaseModel):
    id: int
    user: str
    name: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewTokenOut(TokenOut):
    token: str = Field(description="The secret: shown this once, never again")


class AuditEntryOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    actor: str
    actor_role: str | None
    address: str | None
    request_id: str | None
    action: str
    object_type: str | None
    object_id: str | None
    outcome: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    detail: str | None
    entry_hash: str


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None


class WhoAmI(BaseModel):
    name: str
    role: str
    permissions: list[str]
