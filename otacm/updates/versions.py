"""Natural ordering of software versions, as ECU suppliers write them.

A version is read as a sequence of segments: runs of digits (numbers) and runs of letters
(words); anything else (`.`, `-`, `_`, `+`, spaces) only separates. Versions compare segment
by segment:

- numbers by value, so 4.10.0 > 4.9.2 and SW.04.12.003 equals SW.4.12.3;
- words alphabetically, ignoring case, so 2.0-beta > 2.0-alpha;
- a word sorts below a number in the same place, and below the version ending there, so
  pre-release tags come first: 1.2.0-rc1 < 1.2.0 < 1.2.0.1 and 1.2.a < 1.2.3.

Versions that read the same (4.01 and 4.1) are ordered by their text, which keeps the order
total. `version_key` is the key for Python; `sortable_version` gives text whose plain byte order
is the same order, for a database column sorted with a binary ("C") collation.
"""

from __future__ import annotations

import re
from functools import total_ordering
from typing import Any

_SEGMENT = re.compile(r"\d+|[^\W\d_]+")
# Ranks of what can stand at a position: a word < the end of the version < a number.
_WORD, _END, _NUMBER = 0, 1, 2
MAX_DIGITS = 99


@total_ordering
class _Segment:
    __slots__ = ("rank", "value")

    def __init__(self, rank: int, value: Any) -> None:
        self.rank, self.value = rank, value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Segment) and (self.rank, self.value) == (other.rank, other.value)

    def __lt__(self, other: _Segment) -> bool:
        return (self.rank, self.value) < (other.rank, other.value)

    def __hash__(self) -> int:
        return hash((self.rank, self.value))


def segments(version: str) -> list[int | str]:
    """The numbers and words of `version`, e.g. 'SW.04.12.003' → ['sw', 4, 12, 3]."""
    parts: list[int | str] = []
    for match in _SEGMENT.finditer(version):
        text = match.group()
        if text.isdigit() and text.isascii():
            digits = text.lstrip("0") or "0"
            if len(digits) > MAX_DIGITS:
                raise ValueError(f"{version[:40]!r} has a number longer than {MAX_DIGITS} digits")
            parts.append(int(digits))
        else:
            parts.append(text.casefold())
    return parts


def version_key(version: str) -> tuple[Any, ...]:
    """Sort key: `sorted(versions, key=version_key)` puts them in natural order."""
    key = [
        _Segment(_NUMBER, part) if isinstance(part, int) else _Segment(_WORD, part)
        for part in segments(version)
    ]
    return (*key, _Segment(_END, ""), version)


def compare(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is older than, the same as, or newer than `b`."""
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


def reading(version: str) -> tuple[Any, ...]:
    """What a version says, without how it is written: 4.01 and 4.1 read the same."""
    return version_key(version)[:-1]


def compare_reading(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` reads older than, the same as, or newer than `b`: unlike `compare`,
    versions written differently but reading the same (4.01, 4.1) are equal. Eligibility
    decides by this: an ECU on 4.01 already has 4.1."""
    ka, kb = reading(a), reading(b)
    return (ka > kb) - (ka < kb)


def reading_key(version: str) -> str:
    """`sortable_version` without the tie-break on the text: equal for versions that read the
    same, so it can key what is known per version."""
    return sortable_version(version).split(" ", 1)[0]


def sortable_version(version: str) -> str:
    """Text that sorts byte-wise like `version_key`: for an indexed database column."""
    out = []
    for part in segments(version):
        if isinstance(part, int):
            digits = str(part)
            out.append(f"C{len(digits):02d}{digits}")
        else:
            # "!" ends a word below every letter: "a" < "ab". Non-ASCII letters are kept in
            # their UTF-8 bytes, which sort after ASCII.
            out.append(f"A{part}!")
    out.append("B")
    # "B" ends the encoding and occurs nowhere else in it, so what follows only breaks ties.
    return "".join(out) + " " + version
