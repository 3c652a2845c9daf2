"""Who may do what: one table from role to permissions, the only place that decides.

Every route declares the permission it needs (`otacm.security.auth.require`); `docs/roles.md`
documents this table and a test walks every route against it.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    FLEET_ADMIN = "fleet_admin"
    ENGINEER = "engineer"
    CAMPAIGN_MANAGER = "campaign_manager"
    VIEWER = "viewer"


class Permission(StrEnum):
    FLEET_READ = "fleet.read"
    FLEET_IMPORT = "fleet.import"
    FLEET_EXPORT = "fleet.export"
    VEHICLE_WRITE = "vehicle.write"
    UPDATES_READ = "updates.read"
    TARGETING_PREVIEW = "targeting.preview"
    CAMPAIGNS_READ = "campaigns.read"
    CAMPAIGNS_WRITE = "campaigns.write"
    CAMPAIGNS_APPROVE = "campaigns.approve"
    ALERTS_READ = "alerts.read"
    ALERTS_ACKNOWLEDGE = "alerts.acknowledge"
    UPDATES_WRITE = "updates.write"
    UPDATES_RELEASE = "updates.release"
    AUDIT_READ = "audit.read"
    USERS_MANAGE = "users.manage"
    TOKENS_OWN = "tokens.own"
    TOKENS_MANAGE = "tokens.manage"
    WEBHOOKS_MANAGE = "webhooks.manage"


_READ = {
    Permission.FLEET_READ,
    Permission.FLEET_EXPORT,
    Permission.UPDATES_READ,
    Permission.TARGETING_PREVIEW,
    Permission.CAMPAIGNS_READ,
    Permission.ALERTS_READ,
    Permission.AUDIT_READ,
    Permission.TOKENS_OWN,
}

ROLE_PERMISSIONS: dict[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.FLEET_ADMIN: frozenset(_READ | {Permission.FLEET_IMPORT, Permission.VEHICLE_WRITE}),
    Role.ENGINEER: frozenset(_READ | {Permission.UPDATES_WRITE, Permission.UPDATES_RELEASE}),
    Role.CAMPAIGN_MANAGER: frozenset(
        _READ
        | {Permission.CAMPAIGNS_WRITE, Permission.CAMPAIGNS_APPROVE, Permission.ALERTS_ACKNOWLEDGE}
    ),
    Role.VIEWER: frozenset(_READ),
}


def allows(role: str, permission: Permission) -> bool:
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False
