"""The first load's chunks (`fleet._load`): cut from the file, numbered, encoded for COPY."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from otacm.fleet._bulk import ECU_COLUMNS
from otacm.fleet._load import copy_text, ecu_copy_text, jsonl_chunks
from otacm.fleet.parser import TruncatedFile


def numbered(count: int, first: int = 1) -> list[tuple[int, bytes | None]]:
    return [(n, b"{}") for n in range(first, first + count)]


def test_chunks_carry_their_first_line_and_a_range_of_ids() -> None:
    chunks = list(jsonl_chunks(iter(numbered(7)), 3, 100))
    assert [(c.number, c.first_line, c.first_id, len(c.lines)) for c in chunks] == [
        (1, 1, 100, 3),
        (2, 4, 103, 3),
        (3, 7, 106, 1),
    ]
    assert all(c.truncated is None for c in chunks)


def test_a_broken_file_ends_with_a_chunk_that_says_so() -> None:
    def lines() -> object:
        yield from numbered(4)
        raise TruncatedFile("the gzip data ends in the middle of the file", 4)

    chunks = list(jsonl_chunks(iter(lines()), 2, 1))  # type: ignore[arg-type]
    assert [(c.first_line, len(c.lines), c.truncated) for c in chunks] == [
        (1, 2, None),
        (3, 2, None),
        (5, 0, "the gzip data ends in the middle of the file"),
    ]


def test_copy_text_escapes_what_the_text_format_reserves() -> None:
    rows = [(1, "a\\b", "tab\there", None, "new\nline\r")]
    assert copy_text(rows) == "1\ta\\\\b\ttab\\there\t\\N\tnew\\nline\\r\n"


# Printable values without a backslash: what validated ECU values of a plain chunk hold.
plain_text = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\\"),
    min_size=1,
    max_size=12,
)


@given(
    st.lists(
        st.tuples(
            st.integers(1, 2**40),
            *[plain_text] * 7,
            st.none() | plain_text,
            plain_text,
            st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
            st.integers(1, 2**31),
            st.none() | plain_text,
            plain_text,
        ),
        max_size=5,
    )
)
def test_the_fast_ecu_encoding_is_the_careful_one(rows: list[tuple[object, ...]]) -> None:
    assert len(ECU_COLUMNS) == 14 and ECU_COLUMNS[0] == "vehicle_id"
    assert ecu_copy_text(rows) == copy_text(rows)
