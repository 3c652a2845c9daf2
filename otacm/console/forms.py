"""Reading console forms, and putting errors next to the field they concern.

Form fields are named like the API's JSON fields, nested ones with dots (`support.contact`),
so that a pydantic error's location or an `OtacmError`'s `field` names the input it belongs
to. Whatever cannot be placed goes to `_form`, shown above the form.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from otacm.errors import OtacmError

FORM = "_form"

# An error per input name; FORM for what belongs to no single input.
FormErrors = dict[str, str]


async def _form(request: Request) -> FormData:
    return await request.form()


# The parsed form, for handlers that read many fields (sync handlers run in a worker thread,
# so parsing happens before, on the event loop).
FormDep = Annotated[FormData, Depends(_form)]


def text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def texts(form: FormData, name: str) -> list[str]:
    """Every value of a repeated field (checkboxes, multiple selects), non-empty ones only."""
    return [v.strip() for v in form.getlist(name) if isinstance(v, str) and v.strip()]


def flag(form: FormData, name: str) -> bool:
    return isinstance(form.get(name), str) and form.get(name) not in ("", "false", "off")


def upload(form: FormData, name: str) -> UploadFile | None:
    value = form.get(name)
    if isinstance(value, UploadFile) and value.filename:
        return value
    return None


def split_list(value: str) -> list[str]:
    """A list typed into one input: separated by commas or new lines."""
    return [part.strip() for part in re.split(r"[,\n]", value) if part.strip()]


def optional(value: str) -> str | None:
    return value or None


def _message(error: Any) -> str:
    message = str(error.get("msg", "not valid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            message = message[len(prefix) :]
    return message


def validation_errors(
    exc: ValidationError, fields: Collection[str], prefix: str = ""
) -> FormErrors:
    """pydantic's errors, each under the longest input name its location starts with."""
    errors: FormErrors = {}
    for error in exc.errors():
        parts = [str(p) for p in error.get("loc", ()) if not isinstance(p, int)]
        name = FORM
        for end in range(len(parts), 0, -1):
            candidate = prefix + ".".join(parts[:end])
            if candidate in fields:
                name = candidate
                break
        message = _message(error)
        if name == FORM and parts:
            message = f"{'.'.join(parts)}: {message}"
        errors.setdefault(name, message)
    return errors


def service_errors(exc: OtacmError, fields: Collection[str], prefix: str = "") -> FormErrors:
    """A service's refusal, under the input its `field` names (when the form has one)."""
    field = exc.extra.get("field")
    name = f"{prefix}{field}" if isinstance(field, str) else FORM
    return {name if name in fields else FORM: exc.detail}
