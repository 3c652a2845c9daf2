"""Every operation of the operator API × every role, and every kind of bad credential.

The operations come from the OpenAPI document, their permissions from the dependency each route
declares (`otacm.security.auth.require`), what each role may do from `ROLE_PERMISSIONS`. A new
endpoint without a permission, or with an answer that disagrees with the table, fails here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Annotated, Any

import fastapi.routing
import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from httpx import Response
from sqlalchemy import Engine

from otacm.app import create_app
from otacm.config import Settings
from otacm.db import make_engine, make_session_factory, unit_of_work
from otacm.security import service
from otacm.security.auth import Principal, require
from otacm.security.permissions import ROLE_PERMISSIONS, Permission, Role
from tests.conftest import TEST_ACTOR
from tests.security.helpers import audit_rows, bearer, token_row

API_PREFIX = "/api/v1"
HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})
DUMMY_VIN = "WXA00000000000000"
DUMMY_ID = 999_999
DUMMY_NAME = "nobody-here"

Operation = tuple[str, str]  # (METHOD, path template)


def permissions_of(dependant: Dependant) -> list[Permission]:
    """Every permission the dependency tree of a route asks for."""
    found: list[Permission] = []
    stack = [dependant]
    while stack:
        node = stack.pop()
        permission = getattr(node.call, "permission", None)
        if permission is not None:
            found.append(permission)
        stack.extend(node.dependencies)
    return found


def api_routes(app: FastAPI) -> Iterator[tuple[str, set[str], Dependant]]:
    """(full path, methods, dependency tree) of every APIRoute, included routers' too.

    Recent FastAPI keeps included routers as lazy branches of `app.routes`; their effective
    routes (with the prefix and the router-level dependencies) come from `iter_route_contexts`.
    """
    iter_route_contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if iter_route_contexts is None:
        for route in app.routes:
            if isinstance(route, APIRoute):
                yield route.path, route.methods, route.dependant
        return
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield context.path, context.methods, context.dependant


def route_permissions(app: FastAPI) -> dict[Operation, list[Permission]]:
    table: dict[Operation, list[Permission]] = {}
    for path, methods, dependant in api_routes(app):
        for method in methods:
            table[(method.upper(), path)] = permissions_of(dependant)
    return table


def openapi_operations(client: TestClient) -> dict[Operation, dict[str, Any]]:
    response = client.get(f"{API_PREFIX}/openapi.json")
    assert response.status_code == 200, response.text
    return {
        (method.upper(), path): operation
        for path, operations in response.json()["paths"].items()
        if path.startswith(f"{API_PREFIX}/")
        for method, operation in operations.items()
        if method in HTTP_METHODS
    }


def protection_problems(app: FastAPI) -> list[str]:
    """Why the matrix could not vouch for some operation; empty when every one is covered."""
    with TestClient(app) as client:
        documented = openapi_operations(client)
    declared = route_permissions(app)
    problems = []
    for method, path in sorted(documented):
        permissions = declared.get((method, path))
        if permissions is None:
            problems.append(f"{method} {path}: in the OpenAPI document but no APIRoute serves it")
        elif len(permissions) != 1:
            problems.append(
                f"{method} {path}: declares {len(permissions)} permissions "
                f"({', '.join(permissions) or 'none'}); every route needs exactly one"
            )
    for method, path in sorted(declared):
        if path.startswith(f"{API_PREFIX}/") and (method, path) not in documented:
            problems.append(
                f"{method} {path}: hidden from the OpenAPI document, so no test walks it"
            )
    return problems


def fill_path(path: str, operation: dict[str, Any]) -> str:
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "path":
            continue
        name = parameter["name"]
        if parameter.get("schema", {}).get("type") == "integer":
            value = str(DUMMY_ID)
        elif name == "vin":
            value = DUMMY_VIN
        else:
            value = DUMMY_NAME
        path = path.replace("{" + name + "}", value)
    return path


def call(
    client: TestClient, operation_key: Operation, operation: dict[str, Any], headers: dict[str, str]
) -> Response:
    """Call an operation with dummy path values and an empty body of the type it accepts."""
    method, path = operation_key
    content_types = list(operation.get("requestBody", {}).get("content", {}))
    kwargs: dict[str, Any] = {}
    if "application/json" in content_types:
        kwargs["json"] = {}
    elif content_types:
        kwargs["content"] = b""
        headers = {**headers, "Content-Type": content_types[0]}
    return client.request(method, fill_path(path, operation), headers=headers, **kwargs)


def error_code(response: Response) -> str | None:
    if response.headers.get("content-type") != "application/json":
        return None
    code: str | None = response.json().get("error")
    return code


@pytest.fixture(scope="module")
def bare_app() -> FastAPI:
    """The application without a database behind it: enough to read its routes."""
    return create_app(Settings(database_url="sqlite://"), make_engine("sqlite://"))


def test_every_api_operation_declares_exactly_one_permission(bare_app: FastAPI) -> None:
    assert len(route_permissions(bare_app)) >= 20  # the walk really found the routers
    assert protection_problems(bare_app) == []


# The routes whose permission matters most, pinned: the matrix below checks that every route
# is enforced as declared; this checks that these are declared as they must be.
SENSITIVE = {
    ("POST", "/api/v1/users"): Permission.USERS_MANAGE,
    ("PATCH", "/api/v1/users/{name}"): Permission.USERS_MANAGE,
    ("POST", "/api/v1/users/{name}/password"): Permission.USERS_MANAGE,
    ("POST", "/api/v1/users/{name}/unlock"): Permission.USERS_MANAGE,
    ("POST", "/api/v1/fleet/imports"): Permission.FLEET_IMPORT,
    ("POST", "/api/v1/vehicles/{vin}/status"): Permission.VEHICLE_WRITE,
    ("GET", "/api/v1/fleet/export"): Permission.FLEET_EXPORT,
    ("GET", "/api/v1/audit"): Permission.AUDIT_READ,
    # What reaches vehicles (release, withdrawal) and what goes into it (drafts, files).
    ("POST", "/api/v1/updates/{update_id}/release"): Permission.UPDATES_RELEASE,
    ("POST", "/api/v1/updates/{update_id}/withdraw"): Permission.UPDATES_RELEASE,
    ("POST", "/api/v1/updates"): Permission.UPDATES_WRITE,
    ("PATCH", "/api/v1/updates/{update_id}"): Permission.UPDATES_WRITE,
    ("POST", "/api/v1/updates/{update_id}/artifacts"): Permission.UPDATES_WRITE,
    ("DELETE", "/api/v1/updates/{update_id}/artifacts/{filename}"): Permission.UPDATES_WRITE,
}


def test_sensitive_routes_declare_the_permission_they_must(bare_app: FastAPI) -> None:
    declared = route_permissions(bare_app)
    assert {op: declared.get(op) for op in SENSITIVE} == {
        op: [permission] for op, permission in SENSITIVE.items()
    }


def test_the_check_names_a_route_without_a_permission() -> None:
    app = create_app(Settings(database_url="sqlite://"), make_engine("sqlite://"))

    @app.get(f"{API_PREFIX}/unguarded")
    def unguarded() -> dict[str, str]:
        return {}

    @app.post(f"{API_PREFIX}/doubly-guarded")
    def doubly_guarded(
        a: Annotated[Principal, Depends(require(Permission.FLEET_READ))],
        b: Annotated[Principal, Depends(require(Permission.VEHICLE_WRITE))],
    ) -> dict[str, str]:
        return {}

    @app.get(f"{API_PREFIX}/hidden", include_in_schema=False)
    def hidden() -> dict[str, str]:
        return {}

    router = APIRouter(prefix=f"{API_PREFIX}/extra")

    @router.get("/guarded-by-router")
    def guarded_by_router() -> dict[str, str]:
        return {}

    app.include_router(router, dependencies=[Depends(require(Permission.AUDIT_READ))])
    other = APIRouter()
    other.add_api_route(f"{API_PREFIX}/included-unguarded", unguarded)
    app.include_router(other)

    problems = "\n".join(protection_problems(app))
    assert f"GET {API_PREFIX}/unguarded: declares 0 permissions" in problems
    assert f"POST {API_PREFIX}/doubly-guarded: declares 2 permissions" in problems
    assert f"GET {API_PREFIX}/hidden: hidden from the OpenAPI document" in problems
    assert f"GET {API_PREFIX}/included-unguarded: declares 0 permissions" in problems
    assert "guarded-by-router" not in problems  # a router-level permission counts
    assert len(problems.splitlines()) == 4, problems


def test_the_role_table_covers_every_role_and_admin_holds_every_permission() -> None:
    assert set(ROLE_PERMISSIONS) == set(Role)
    assert ROLE_PERMISSIONS[Role.ADMIN] == frozenset(Permission)
    for role, permissions in ROLE_PERMISSIONS.items():
        assert permissions <= ROLE_PERMISSIONS[Role.ADMIN], role


@pytest.fixture
def operations(anonymous_client: TestClient) -> Iterator[list[tuple[Operation, Any, Permission]]]:
    """(operation, its OpenAPI description, the one permission it needs), in a stable order."""
    declared = route_permissions(anonymous_client.app)  # type: ignore[arg-type]
    documented = openapi_operations(anonymous_client)
    yield [(key, documented[key], declared[key][0]) for key in sorted(documented)]


@pytest.mark.parametrize("role", list(Role), ids=[r.value for r in Role])
def test_each_role_is_answered_as_the_table_says(
    role: Role,
    anonymous_client: TestClient,
    make_operator: Callable[..., str],
    engine: Engine,
    operations: list[tuple[Operation, Any, Permission]],
) -> None:
    name = f"matrix-{role.value}"
    headers = bearer(make_operator(role.value, name))
    granted = ROLE_PERMISSIONS[role]
    wrong, refused = [], []
    for key, operation, permission in operations:
        response = call(anonymous_client, key, operation, headers)
        if permission in granted:
            if response.status_code in (401, 403):
                wrong.append(f"{key} needs {permission}, which {role} has: {response.text}")
        elif response.status_code != 403 or error_code(response) != "forbidden":
            wrong.append(
                f"{key} needs {permission}, which {role} lacks: "
                f"{response.status_code} {response.text[:200]}"
            )
        else:
            refused.append(f"{key[0]} {fill_path(key[1], operation)}")
    assert wrong == []
    # Every refusal is in the audit log, under the operator who tried.
    audited = [
        row["action"]
        for row in audit_rows(engine)
        if row["outcome"] == "refused" and row["actor"] == name
    ]
    assert sorted(audited) == sorted(refused)


def test_bad_credentials_are_answered_401_everywhere(
    anonymous_client: TestClient,
    make_operator: Callable[..., str],
    engine: Engine,
    operations: list[tuple[Operation, Any, Permission]],
) -> None:
    # Admins all: whatever answer comes, it is not for lack of a permission.
    revoked = make_operator("admin", "bad-credentials")
    expired = make_operator("admin", "bad-credentials", expires_in=timedelta(seconds=-1))
    disabled = make_operator("admin", "disabled-admin")
    with unit_of_work(make_session_factory(engine)) as session:
        service.revoke_token(session, TEST_ACTOR, token_row(engine, revoked).id)
        service.update_user(session, TEST_ACTOR, "disabled-admin", disabled=True)
    credentials = {
        "no credentials": {},
        "revoked token": bearer(revoked),
        "expired token": bearer(expired),
        "disabled user's token": bearer(disabled),
        "unknown token": bearer(service.TOKEN_PREFIX + "x" * 43),
        "not a bearer token": {"Authorization": f"Basic {revoked}"},
        "unknown session cookie": {"Cookie": "otacm_session=not-a-session"},
    }
    wrong, attempted_changes = [], []
    for key, operation, _permission in operations:
        for kind, headers in credentials.items():
            response = call(anonymous_client, key, operation, headers)
            if response.status_code != 401 or error_code(response) != "not_authenticated":
                wrong.append(f"{key} with {kind}: {response.status_code} {response.text[:200]}")
            if key[0] not in ("GET", "HEAD", "OPTIONS"):
                attempted_changes.append(f"{key[0]} {fill_path(key[1], operation)}")
    assert wrong == []
    # Attempts to change something are recorded as refused, reads are not.
    refused = [r for r in audit_rows(engine) if r["outcome"] == "refused"]
    assert {r["actor"] for r in refused} <= {"(unauthenticated)"}
    assert sorted(r["action"] for r in refused) == sorted(attempted_changes)
