"""One error base class for the whole service, and the JSON shape every API error takes.

Domain errors live beside their service and subclass `OtacmError`; the HTTP layer turns any of
them into `{"error": code, "detail": message, ...extra}` with the error's status code.
"""

from __future__ import annotations

from typing import Any


class OtacmError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


class NotFound(OtacmError):
    status_code = 404
    code = "not_found"


class ValidationFailed(OtacmError):
    status_code = 422
    code = "validation_failed"


class Conflict(OtacmError):
    status_code = 409
    code = "conflict"
