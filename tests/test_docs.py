"""Documentation that states what the code decides must say what the code does."""

from __future__ import annotations

from pathlib import Path

from otacm.security.roles_doc import role_table

DOCS = Path(__file__).parent.parent / "docs"


def test_roles_page_shows_the_role_table_of_the_code() -> None:
    assert role_table() in (DOCS / "roles.md").read_text()
