"""Natural version ordering: examples from suppliers, and properties over arbitrary versions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otacm.updates.versions import compare, segments, sortable_version, version_key


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("4.9.2", "4.10.0"),
        ("4.10.0", "4.10.1"),
        ("SW.04.12.003", "SW.04.12.010"),
        ("SW.04.9.999", "SW.04.12.003"),
        ("1.2.0-rc1", "1.2.0"),
        ("1.2.0-rc1", "1.2.0-rc2"),
        ("1.2.0-alpha", "1.2.0-beta"),
        ("1.2.0", "1.2.0.1"),
        ("1.2.a", "1.2.3"),
        ("2", "10"),
        ("v1.9", "v1.10"),
        ("0.9", "1"),
        ("R2023A", "R2023B"),
        ("R2023B", "R2024A"),
    ],
)
def test_natural_order_examples(older: str, newer: str) -> None:
    assert compare(older, newer) == -1 and compare(newer, older) == 1
    assert sortable_version(older) < sortable_version(newer)


def test_segments_read_numbers_as_numbers_and_ignore_separators() -> None:
    assert segments("SW.04.12.003") == ["sw", 4, 12, 3]
    assert segments("4.10.0") == [4, 10, 0]
    assert segments("1.2.0-RC1+build.7") == [1, 2, 0, "rc", 1, "build", 7]


def test_the_same_reading_orders_by_text_and_is_never_equal_across_texts() -> None:
    assert compare("4.01", "4.1") != 0
    assert compare("4.1", "4.1") == 0
    assert sorted(["4.1", "4.01", "4.001"], key=version_key) == sorted(
        ["4.1", "4.01", "4.001"], key=sortable_version
    )


def test_sorting_a_release_train() -> None:
    train = ["4.10.0", "4.9.2", "4.2.3", "4.10.0-rc1", "4.1.0", "5.0.0-beta", "4.10.1"]
    assert sorted(train, key=version_key) == [
        "4.1.0",
        "4.2.3",
        "4.9.2",
        "4.10.0-rc1",
        "4.10.0",
        "4.10.1",
        "5.0.0-beta",
    ]


def test_absurd_numbers_are_refused() -> None:
    with pytest.raises(ValueError, match="digits"):
        segments("1." + "9" * 200)


versions = st.text(alphabet=st.sampled_from("0123456789.-_abcRSWx "), min_size=0, max_size=16)


@settings(max_examples=400, deadline=None)
@given(versions, versions)
def test_key_and_sortable_text_agree(a: str, b: str) -> None:
    by_key = (version_key(a) > version_key(b)) - (version_key(a) < version_key(b))
    by_text = (sortable_version(a) > sortable_version(b)) - (
        sortable_version(a) < sortable_version(b)
    )
    assert by_key == by_text


@settings(max_examples=300, deadline=None)
@given(versions, versions, versions)
def test_the_order_is_total_and_transitive(a: str, b: str, c: str) -> None:
    assert compare(a, b) == -compare(b, a)
    assert (compare(a, b) == 0) == (a == b)
    if compare(a, b) <= 0 and compare(b, c) <= 0:
        assert compare(a, c) <= 0
