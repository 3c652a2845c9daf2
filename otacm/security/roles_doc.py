"""The role table as Markdown, for `docs/roles.md` (a test keeps the two the same)."""

from __future__ import annotations

from otacm.security.permissions import ROLE_PERMISSIONS, Permission, Role

DESCRIPTIONS = {
    Permission.FLEET_READ: "search vehicles, read vehicle detail and fleet imports",
    Permission.FLEET_IMPORT: "import manufacturing exports",
    Permission.FLEET_EXPORT: "export the whole registry",
    Permission.VEHICLE_WRITE: "change a vehicle's status (active, inactive, scrapped)",
    Permission.UPDATES_READ: "read the update catalog and its files' details",
    Permission.UPDATES_WRITE: "create and edit draft updates, upload and delete their files",
    Permission.UPDATES_RELEASE: "release updates (signing them) and withdraw them",
    Permission.TARGETING_PREVIEW: "preview which vehicles and ECUs updates reach, and why not",
    Permission.CAMPAIGNS_READ: "read campaigns",
    Permission.CAMPAIGNS_WRITE: "define campaigns, edit drafts, submit them for approval",
    Permission.CAMPAIGNS_APPROVE: "approve or reject another manager's campaign (four eyes)",
    Permission.ALERTS_READ: "read alerts (campaign paused, timeouts, finished)",
    Permission.ALERTS_ACKNOWLEDGE: "acknowledge alerts",
    Permission.AUDIT_READ: "read and export the audit log",
    Permission.USERS_MANAGE: "create users, change roles, disable, set passwords, lift lockouts",
    Permission.TOKENS_OWN: "see who one is; create, list and revoke one's own API tokens",
    Permission.TOKENS_MANAGE: "list, create and revoke any user's API tokens",
    Permission.WEBHOOKS_MANAGE: "configure webhook endpoints, rotate their secrets, see deliveries",
}


def role_table() -> str:
    lines = [
        "| permission | what it allows | " + " | ".join(r.value for r in Role) + " |",
        "|---|---|" + "---|" * len(Role),
    ]
    for permission in Permission:
        marks = " | ".join("yes" if permission in ROLE_PERMISSIONS[r] else "" for r in Role)
        lines.append(f"| `{permission.value}` | {DESCRIPTIONS[permission]} | {marks} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(role_table(), end="")
