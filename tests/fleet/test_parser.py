"""The streaming reader of manufacturing exports: JSON Lines or CSV, plain or gzip."""

from __future__ import annotations

import csv
import io
import json
import zlib
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from otacm.config import VinCheckDigitPolicy
from otacm.fleet.parser import (
    CSV_HEADER,
    REQUIRED_CSV_COLUMNS,
    ExportReader,
    ImportFileError,
    TruncatedFile,
    open_export,
)
from otacm.fleet.records import Problem, RawRecord, VehicleRecord, validate_record
from tests.builders import csv_bytes, ecu, gz, jsonl, vehicle

MAX = 64 * 1024
BOM = b"\xef\xbb\xbf"
NA = VinCheckDigitPolicy.NORTH_AMERICA


@pytest.fixture(autouse=True)
def _restore_csv_field_size_limit() -> Iterator[None]:
    # open_export sets the process-wide csv.field_size_limit; keep it from leaking into
    # other tests (see test_open_export_leaves_the_csv_field_size_limit_alone).
    limit = csv.field_size_limit()
    yield
    csv.field_size_limit(limit)


def read(data: bytes, max_line_bytes: int = MAX) -> tuple[ExportReader, list[RawRecord]]:
    reader = open_export(io.BytesIO(data), max_line_bytes)
    return reader, list(reader.records)


def read_until_truncated(
    data: bytes, max_line_bytes: int = MAX
) -> tuple[list[RawRecord], TruncatedFile | None]:
    records: list[RawRecord] = []
    reader = open_export(io.BytesIO(data), max_line_bytes)
    try:
        for record in reader.records:
            records.append(record)
    except TruncatedFile as exc:
        return records, exc
    return records, None


def without_ecus(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "ecus"}


def line(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode() + b"\n"


def reasons(record: RawRecord) -> list[str]:
    return [p.reason for p in record.problems]


def csv_rows(header: list[str], rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def csv_table(records: list[dict[str, Any]]) -> list[list[str]]:
    text = csv_bytes(records).decode()
    return list(csv.reader(io.StringIO(text)))


# --- format and compression detection ------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_format_and_compression_are_detected_from_content(
    kind: str, bom: bool, compress: bool
) -> None:
    records = [vehicle(1), vehicle(2)]
    data = jsonl(records) if kind == "jsonl" else csv_bytes(records)
    if bom:
        data = BOM + data
    if compress:
        data = gz(data)
    reader, raws = read(data)
    assert reader.format == kind
    assert reader.compressed is compress
    assert [r.fields["vin"] for r in raws] == [records[0]["vin"], records[1]["vin"]]
    assert all(r.problems == [] for r in raws)
    assert "\ufeffvin" not in raws[0].fields
    assert [validate_record(r, NA) is not None for r in raws] == [True, True]


def test_leading_whitespace_before_json() -> None:
    reader, raws = read(b"\n  \n" + jsonl([vehicle(1)]))
    assert reader.format == "jsonl"
    assert [r.line for r in raws] == [3]


def test_format_detection_looks_past_a_long_run_of_blank_lines() -> None:
    reader, raws = read(b"\n" * 5000 + jsonl([vehicle(1)]))
    assert reader.format == "jsonl"
    assert [r.line for r in raws] == [5001]


def test_gzip_is_detected_without_a_file_name() -> None:
    reader, raws = read(gz(csv_bytes([vehicle(1)])))
    assert (reader.format, reader.compressed, len(raws)) == ("csv", True, 1)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"   ",
        b"\n\n\n",
        b" \t\r\n \n",
        BOM,
        BOM + b"\n \n",
        gz(b""),
        gz(b"\n \n"),
        b" " * 9000,
    ],
)
def test_empty_or_whitespace_only_file(data: bytes) -> None:
    with pytest.raises(ImportFileError, match="empty"):
        open_export(io.BytesIO(data), MAX)


@pytest.mark.parametrize("data", [b"\x1f\x8b", b"\x1f\x8bnot gzip at all", gz(b"x" * 100)[:15]])
def test_unreadable_gzip_is_an_import_file_error(data: bytes) -> None:
    with pytest.raises(ImportFileError, match="gzip"):
        open_export(io.BytesIO(data), MAX)


# --- JSON Lines -------------------------------------------------------------------------------


def test_jsonl_one_record_per_line() -> None:
    vehicles = [vehicle(1), vehicle(2, ecus=[ecu("X-1")]), vehicle(3, ecus=[])]
    _, raws = read(jsonl(vehicles))
    assert [r.line for r in raws] == [1, 2, 3]
    for raw, source in zip(raws, vehicles, strict=True):
        assert raw.fields == without_ecus(source)
        assert raw.ecus == source["ecus"]
        assert raw.ecu_lines == [raw.line] * len(source["ecus"])
        assert raw.problems == []


def test_jsonl_without_ecus_key() -> None:
    _, raws = read(line(without_ecus(vehicle(1))))
    assert raws[0].ecus == [] and raws[0].problems == []


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_jsonl_blank_lines_are_skipped_and_counted(newline: bytes) -> None:
    one, two = (json.dumps(vehicle(n)).encode() for n in (1, 2))
    data = newline.join([b"", one, b"", b"   ", b"\t", two, b"", b""])
    _, raws = read(data)
    assert [r.line for r in raws] == [2, 6]
    assert all(r.problems == [] for r in raws)


def test_jsonl_last_line_without_newline() -> None:
    _, raws = read(line(vehicle(1)) + json.dumps(vehicle(2)).encode())
    assert [(r.line, r.problems) for r in raws] == [(1, []), (2, [])]


@pytest.mark.parametrize(
    "bad", [b'{"vin": "X"', b"{'vin': 'X'}", b'{"vin": "X",}', b"{vin}", b'{"a": 1} {"b": 2}']
)
def test_jsonl_malformed_json(bad: bytes) -> None:
    _, raws = read(line(vehicle(1)) + bad + b"\n" + line(vehicle(3)))
    assert [r.line for r in raws] == [1, 2, 3]
    broken = raws[1]
    assert broken.fields == {} and broken.ecus == []
    assert len(broken.problems) == 1
    assert broken.problems[0].field is None
    assert broken.problems[0].reason.startswith("not valid JSON")
    assert "column" in broken.problems[0].reason
    assert raws[0].problems == raws[2].problems == []


@pytest.mark.parametrize("value", [b"[1, 2]", b"42", b'"text"', b"null", b"true", b"[{}]"])
def test_jsonl_line_that_is_not_an_object(value: bytes) -> None:
    _, raws = read(line(vehicle(1)) + value + b"\n" + line(vehicle(3)))
    assert [r.line for r in raws] == [1, 2, 3]
    assert reasons(raws[1]) == ["a line must hold a JSON object"]
    assert raws[2].problems == []


@pytest.mark.parametrize("ecus", [{"serial": "X"}, "BCM", 3, None, [ecu("A-1"), "B-1"], [[]]])
def test_jsonl_ecus_not_a_list_of_objects(ecus: Any) -> None:
    data = vehicle(1)
    data["ecus"] = ecus
    _, raws = read(line(data))
    (raw,) = raws
    assert raw.problems == [Problem("ecus", "must be a list of ECU objects")]
    assert raw.fields == without_ecus(vehicle(1))
    assert raw.ecus == [] and raw.ecu_lines == []


def test_jsonl_invalid_utf8_affects_only_its_line() -> None:
    bad = line(vehicle(2)).replace(b"Aurora", b"Aur\xff\xfeora")
    _, raws = read(line(vehicle(1)) + bad + line(vehicle(3)))
    assert [r.line for r in raws] == [1, 2, 3]
    assert raws[0].problems == [] and raws[2].problems == []
    (problem,) = raws[1].problems
    assert problem.field is None
    assert "not valid UTF-8" in problem.reason
    offset = bad.index(b"\xff") + 1
    assert f"byte {offset} of the line" in problem.reason


def test_jsonl_line_longer_than_the_limit() -> None:
    normal = [line(vehicle(n)) for n in (1, 3, 4)]
    limit = max(len(x) for x in normal) + 10
    long_line = line(vehicle(2, note="x" * (3 * limit)))
    _, raws = read(normal[0] + long_line + normal[1] + long_line + long_line + normal[2], limit)
    assert [r.line for r in raws] == [1, 2, 3, 4, 5, 6]
    for index in (1, 3, 4):
        assert reasons(raws[index]) == [f"the line is longer than {limit} bytes"]
        assert raws[index].fields == {}
    assert [r.fields["vin"] for r in (raws[0], raws[2], raws[5])] == [
        vehicle(n)["vin"] for n in (1, 3, 4)
    ]


def test_jsonl_line_longer_than_the_limit_at_the_end_without_newline() -> None:
    first = line(vehicle(1))
    limit = len(first) + 5
    _, raws = read(first + b'{"vin": "' + b"A" * (limit * 2) + b'"}', limit)
    assert [r.line for r in raws] == [1, 2]
    assert "longer than" in reasons(raws[1])[0]


def test_jsonl_line_within_the_limit_is_read() -> None:
    data = line(vehicle(1))
    _, raws = read(data, len(data))
    assert raws[0].problems == []


def test_jsonl_deeply_nested_value_is_a_problem_not_a_crash() -> None:
    nested = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
    _, raws = read(line(vehicle(1)) + nested + line(vehicle(3)), 1 << 20)
    assert [r.line for r in raws] == [1, 2, 3]
    assert raws[1].problems and raws[2].problems == []


def test_jsonl_line_numbers_with_many_mixed_lines() -> None:
    parts = [
        line(vehicle(1)),
        b"\n",
        b"oops\n",
        line(vehicle(2)),
        b"\xff\n",
        b"[]\n",
        line(vehicle(3)),
    ]
    _, raws = read(b"".join(parts))
    assert [r.line for r in raws] == [1, 3, 4, 5, 6, 7]
    assert [bool(r.problems) for r in raws] == [False, True, False, True, True, False]


# --- CSV --------------------------------------------------------------------------------------


def test_csv_rows_of_one_vin_form_one_record() -> None:
    vehicles = [vehicle(1), vehicle(2, ecus=[ecu("X-2")]), vehicle(3)]
    reader, raws = read(csv_bytes(vehicles))
    assert reader.format == "csv"
    assert [r.line for r in raws] == [2, 4, 5]
    assert [r.ecu_lines for r in raws] == [[2, 3], [4], [5, 6]]
    for raw, source in zip(raws, vehicles, strict=True):
        assert raw.problems == []
        assert raw.fields == {k: str(v) for k, v in without_ecus(source).items()}
        assert raw.ecus == [{k: str(v) for k, v in e.items()} for e in source["ecus"]]


def test_csv_and_jsonl_give_the_same_vehicles() -> None:
    vehicles = [vehicle(1), vehicle(2, ecus=[ecu("X-2", calibration_id=None)]), vehicle(3)]
    from_csv = [validate_record(r, NA) for r in read(csv_bytes(vehicles))[1]]
    from_jsonl = [validate_record(r, NA) for r in read(jsonl(vehicles))[1]]
    assert all(isinstance(v, VehicleRecord) for v in from_csv)
    assert from_csv == from_jsonl


def test_csv_vin_groups_are_case_insensitive_and_trimmed() -> None:
    table = csv_table([vehicle(1)])
    table[2][0] = f" {table[2][0].lower()} "
    _, raws = read(csv_rows(table[0], table[1:]))
    assert len(raws) == 1
    # the vehicle columns are compared as written, so the differing VIN is reported
    assert [(p.field, p.ecu) for p in raws[0].problems] == [("vin", 1)]


def test_csv_same_vin_not_adjacent_gives_separate_records() -> None:
    table = csv_table([vehicle(1), vehicle(2)])
    rows = [table[1], table[3], table[2]]
    _, raws = read(csv_rows(table[0], rows))
    assert [(r.line, r.ecu_lines) for r in raws] == [(2, [2]), (3, [3]), (4, [4])]


@pytest.mark.parametrize("column", REQUIRED_CSV_COLUMNS)
def test_csv_header_missing_a_required_column(column: str) -> None:
    table = csv_table([vehicle(1)])
    index = table[0].index(column)
    data = csv_rows(
        [c for i, c in enumerate(table[0]) if i != index],
        [[v for i, v in enumerate(row) if i != index] for row in table[1:]],
    )
    with pytest.raises(ImportFileError) as exc:
        read(data)
    assert column in exc.value.detail
    assert exc.value.extra.get("field") == column
    assert exc.value.extra.get("line") == 1


def test_csv_calibration_id_column_is_optional() -> None:
    table = csv_table([vehicle(1)])
    index = table[0].index("calibration_id")
    data = csv_rows(
        [c for i, c in enumerate(table[0]) if i != index],
        [[v for i, v in enumerate(row) if i != index] for row in table[1:]],
    )
    _, raws = read(data)
    assert raws[0].problems == []
    record = validate_record(raws[0], NA)
    assert record is not None
    assert [e.calibration_id for e in record.ecus] == [None, None]


@pytest.mark.parametrize("column", ["model", "ecu_serial", "calibration_id", "note"])
def test_csv_header_repeats_a_column(column: str) -> None:
    header = [*CSV_HEADER, "note", column]
    rows = [[*row, "n", "x"] for row in csv_table([vehicle(1)])[1:]]
    with pytest.raises(ImportFileError, match=f"repeats {column}"):
        read(csv_rows(header, rows))


def test_csv_header_only() -> None:
    _, raws = read(csv_rows(CSV_HEADER, []))
    assert raws == []


def test_csv_header_columns_are_trimmed_and_may_be_reordered() -> None:
    table = csv_table([vehicle(1)])
    order = list(reversed(range(len(table[0]))))
    header = [f" {table[0][i]} " for i in order]
    rows = [[row[i] for i in order] for row in table[1:]]
    _, raws = read(csv_rows(header, rows))
    assert raws[0].problems == []
    assert validate_record(raws[0], NA) is not None


@pytest.mark.parametrize("delta", [-1, 1, -17])
def test_csv_row_with_wrong_field_count(delta: int) -> None:
    table = csv_table([vehicle(1), vehicle(2), vehicle(3)])
    bad = table[3]
    table[3] = bad[:delta] if delta < 0 else [*bad, "extra"]
    _, raws = read(csv_rows(table[0], table[1:]))
    assert [(r.line, r.ecu_lines) for r in raws] == [(2, [2, 3]), (4, []), (5, [5]), (6, [6, 7])]
    width = len(CSV_HEADER)
    assert reasons(raws[1]) == [f"has {width + delta} fields, the header {width}"]
    assert raws[0].problems == raws[2].problems == raws[3].problems == []


@pytest.mark.parametrize("column", ["model", "model_year", "manufactured_at", "country"])
def test_csv_vehicle_columns_differ_between_rows_of_one_vin(column: str) -> None:
    table = csv_table([vehicle(1, ecus=[ecu("A-1"), ecu("B-1"), ecu("C-1")]), vehicle(2)])
    table[3][table[0].index(column)] = "different"
    _, raws = read(csv_rows(table[0], table[1:]))
    assert [r.line for r in raws] == [2, 5]
    assert raws[0].ecu_lines == [2, 3, 4]
    assert raws[0].problems == [Problem(column, "differs from the vehicle's first row (line 2)", 2)]
    assert validate_record(raws[0], NA) is None
    assert raws[1].problems == []


def test_csv_extra_columns_are_vehicle_fields() -> None:
    vehicles = [vehicle(1, paint="red", trim="GTX"), vehicle(2, paint="blue"), vehicle(3)]
    _, raws = read(csv_bytes(vehicles, ["paint", "trim"]))
    assert [(r.fields.get("paint"), r.fields.get("trim")) for r in raws] == [
        ("red", "GTX"),
        ("blue", None),
        (None, None),
    ]
    assert "trim" not in raws[1].fields
    assert "paint" not in raws[2].fields and "trim" not in raws[2].fields
    records = [validate_record(r, NA) for r in raws]
    assert [r.attributes for r in records if r] == [
        {"paint": "red", "trim": "GTX"},
        {"paint": "blue"},
        {},
    ]


def test_csv_optional_columns() -> None:
    vehicles = [vehicle(1, rxswin="R10-1", vehicle_public_key="a2V5"), vehicle(2)]
    _, raws = read(csv_bytes(vehicles, ["vehicle_public_key", "rxswin"]))
    records = [validate_record(r, NA) for r in raws]
    assert [(r.rxswin, r.vehicle_public_key, r.attributes) for r in records if r] == [
        ("R10-1", "a2V5", {}),
        (None, None, {}),
    ]


def test_csv_quoted_values_spanning_lines_keep_line_numbers() -> None:
    vehicles = [vehicle(1, note='one, "two"\nthree'), vehicle(2, note="plain")]
    _, raws = read(csv_bytes(vehicles, ["note"]))
    assert [(r.line, r.ecu_lines) for r in raws] == [(2, [2, 4]), (6, [6, 7])]
    assert raws[0].fields["note"] == 'one, "two"\nthree'
    assert raws[0].problems == raws[1].problems == []


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_csv_line_endings(newline: str) -> None:
    data = csv_bytes([vehicle(1), vehicle(2)]).decode().replace("\n", newline).encode()
    _, raws = read(data)
    assert [(r.line, r.ecu_lines, r.problems) for r in raws] == [(2, [2, 3], []), (4, [4, 5], [])]


def test_csv_blank_rows_are_skipped() -> None:
    text = csv_bytes([vehicle(1), vehicle(2)]).decode().splitlines(keepends=True)
    data = "".join([text[0], "\n", text[1], text[2], "  \n", text[3], text[4], "\n"]).encode()
    _, raws = read(data)
    assert [(r.line, r.ecu_lines) for r in raws] == [(3, [3, 4]), (6, [6, 7])]


def test_csv_vehicle_row_without_ecu_data() -> None:
    table = csv_table([vehicle(1, ecus=[ecu("A-1")])])
    empty_ecu = [v if i < 10 else "" for i, v in enumerate(table[1])]
    _, raws = read(csv_rows(table[0], [empty_ecu]))
    assert raws[0].ecus == [] and raws[0].problems == []
    assert validate_record(raws[0], NA) is not None
    _, raws = read(csv_rows(table[0], [table[1], empty_ecu]))
    assert [(p.field, p.ecu) for p in raws[0].problems] == [("ecu_type", 1)]


def test_csv_unterminated_quote_at_the_end() -> None:
    text = csv_bytes([vehicle(1), vehicle(2)]).decode().splitlines(keepends=True)
    text[4] = text[4].replace("Aurora", '"Aurora')
    _, raws = read("".join(text).encode())
    assert [(r.line, r.ecu_lines) for r in raws] == [(2, [2, 3]), (4, [4]), (5, [])]
    assert reasons(raws[2])[0].startswith("not valid CSV")
    assert raws[0].problems == raws[1].problems == []


def test_csv_error_in_the_middle_does_not_stop_the_file() -> None:
    text = csv_bytes([vehicle(1), vehicle(2), vehicle(3)]).decode().splitlines(keepends=True)
    text[3] = text[3].replace(",Aurora,", ',"Aur"ora,')  # in strict mode: '"' after a quote
    _, raws = read("".join(text).encode())
    assert [(r.line, r.ecu_lines) for r in raws] == [(2, [2, 3]), (4, []), (5, [5]), (6, [6, 7])]
    assert reasons(raws[1])[0].startswith("not valid CSV")
    assert raws[0].problems == raws[2].problems == raws[3].problems == []


def test_csv_invalid_utf8_affects_only_its_line() -> None:
    text = csv_bytes([vehicle(1), vehicle(2)]).splitlines(keepends=True)
    text[3] = text[3].replace(b"Aurora", b"Aur\xe9ora")
    _, raws = read(b"".join(text))
    assert [(r.line, r.ecu_lines) for r in raws] == [(2, [2, 3]), (4, []), (5, [5])]
    assert "not valid UTF-8" in reasons(raws[1])[0]
    assert raws[0].problems == raws[2].problems == []


def test_csv_line_longer_than_the_limit() -> None:
    vehicles = [vehicle(1), vehicle(2, note="x" * 5000), vehicle(3)]
    data = csv_bytes(vehicles, ["note"])
    limit = 1000
    _, raws = read(data, limit)
    assert [(r.line, r.ecu_lines) for r in raws] == [(2, [2, 3]), (4, []), (5, []), (6, [6, 7])]
    assert reasons(raws[1]) == [f"the line is longer than {limit} bytes"]
    assert reasons(raws[2]) == [f"the line is longer than {limit} bytes"]
    assert raws[0].problems == raws[3].problems == []


def test_csv_header_with_invalid_utf8() -> None:
    data = b"vin\xff," + csv_bytes([vehicle(1)])[4:]
    with pytest.raises(ImportFileError, match="line 1"):
        read(data)


@pytest.mark.parametrize("defect", ["utf8", "long"])
def test_csv_defect_on_a_continuation_line_rejects_the_record(defect: str) -> None:
    note = "first\n" + ("x" * 3000 if defect == "long" else "caf\udce9") + "\nlast"
    text = csv_bytes([vehicle(1, ecus=[ecu("A-1")]), vehicle(2)], ["note"]).decode()
    text = text.replace(",\n", f',"{note}"\n', 1)
    data = text.encode("utf-8", "surrogateescape")
    _, raws = read(data, 1000)
    assert raws[0].line == 2
    assert raws[0].problems or validate_record(raws[0], NA) is None


# --- truncated and corrupt gzip --------------------------------------------------------------


def _many_vehicles(count: int) -> list[dict[str, Any]]:
    return [vehicle(n) for n in range(1, count + 1)]


def _complete_lines_before_cut(compressed: bytes) -> int:
    return zlib.decompressobj(31).decompress(compressed).count(b"\n")


@pytest.mark.parametrize("fraction", [0.3, 0.55, 0.9])
def test_gzip_cut_off_raises_truncated_file_after_whole_records(fraction: float) -> None:
    vehicles = _many_vehicles(300)
    compressed = gz(jsonl(vehicles))
    cut = compressed[: int(len(compressed) * fraction)]
    records, exc = read_until_truncated(cut)
    assert exc is not None
    assert "ends in the middle" in exc.reason
    assert records, "records before the cut are yielded"
    assert [r.line for r in records] == list(range(1, len(records) + 1))
    for raw, source in zip(records, vehicles, strict=False):
        assert raw.problems == []
        assert raw.fields == without_ecus(source)
    assert exc.line == len(records)
    assert len(records) <= _complete_lines_before_cut(cut)


def test_gzip_csv_cut_off_raises_truncated_file() -> None:
    compressed = gz(csv_bytes(_many_vehicles(300)))
    records, exc = read_until_truncated(compressed[: len(compressed) // 2])
    assert exc is not None
    assert records
    assert all(r.problems == [] for r in records)
    assert [r.line for r in records] == list(range(2, 2 * len(records) + 1, 2))
    assert exc.line >= records[-1].ecu_lines[-1]


def test_gzip_with_bad_crc_raises_truncated_file() -> None:
    compressed = bytearray(gz(jsonl(_many_vehicles(50))))
    compressed[-6] ^= 0xFF
    records, exc = read_until_truncated(bytes(compressed))
    assert exc is not None
    assert "corrupt" in exc.reason
    assert all(r.problems == [] for r in records)


def test_gzip_concatenated_members_are_one_file() -> None:
    first, second = _many_vehicles(3), [vehicle(n) for n in (7, 8)]
    _, raws = read(gz(jsonl(first)) + gz(jsonl(second)))
    assert [r.line for r in raws] == [1, 2, 3, 4, 5]
    assert all(r.problems == [] for r in raws)


@pytest.mark.parametrize("how", ["cut", "trailing-garbage"])
def test_gzip_failure_yields_every_whole_record_before_it(how: str) -> None:
    vehicles = _many_vehicles(300)
    compressed = gz(jsonl(vehicles))
    if how == "cut":
        data = compressed[: len(compressed) // 2]
        whole = _complete_lines_before_cut(data)
    else:
        data = compressed + b"garbage after the gzip member"
        whole = len(vehicles)
    records, exc = read_until_truncated(data)
    assert exc is not None
    assert [r.line for r in records] == list(range(1, whole + 1))
    assert exc.line == whole


# --- properties ------------------------------------------------------------------------------


def exercise(data: bytes, max_line_bytes: int) -> list[RawRecord]:
    """Run the reader and the validator the way the importer does; return the records."""
    try:
        reader = open_export(io.BytesIO(data), max_line_bytes)
    except ImportFileError:
        event("rejected by open_export")
        return []
    assert reader.format in ("jsonl", "csv")
    event(f"format {reader.format}, compressed {reader.compressed}")
    records: list[RawRecord] = []
    try:
        for record in reader.records:
            records.append(record)
    except TruncatedFile as exc:
        event("TruncatedFile")
        assert reader.compressed
        assert exc.reason
        assert exc.line >= 0
    except ImportFileError:
        # A CSV header is checked when the records are first iterated: nothing is yielded.
        event("CSV header rejected")
        assert reader.format == "csv" and records == []
    if not reader.compressed:
        last_line = data.count(b"\n") + 1
        assert all(1 <= r.line <= last_line for r in records)
    lines = [r.line for r in records]
    assert lines == sorted(lines) and len(set(lines)) == len(lines)
    for raw in records:
        assert isinstance(raw, RawRecord)
        assert isinstance(raw.fields, dict)
        assert len(raw.ecu_lines) == len(raw.ecus)
        assert all(isinstance(e, dict) for e in raw.ecus)
        assert all(line >= raw.line for line in raw.ecu_lines)
        if raw.problems:
            continue
        result = validate_record(raw, NA)
        event(f"{reader.format} record {'rejected' if result is None else 'accepted'}")
        if result is None:
            assert raw.problems
        else:
            assert isinstance(result, VehicleRecord)
            assert raw.problems == []
    return records


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=8, max_value=4096))
def test_arbitrary_bytes(data: bytes, max_line_bytes: int) -> None:
    exercise(data, max_line_bytes)


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=8, max_value=4096), st.integers(0, 2000))
def test_arbitrary_bytes_compressed_and_cut(data: bytes, max_line_bytes: int, cut: int) -> None:
    compressed = gz(data)
    exercise(compressed, max_line_bytes)
    exercise(compressed[: max(2, len(compressed) - cut)], max_line_bytes)


# Fragments of plausible exports: good, damaged and odd values in the right places.
weird_text = st.text(max_size=12) | st.sampled_from(
    ["", " ", '"', '""', ",", "\n", "\r\n", "a,b", 'x"y', "\x00", "\ufeff", "null", "{", "[]"]
)
field_text = {
    "vin": st.sampled_from(
        [
            "1M8GDM9AXKP042788",
            "1M8GDM9A0KP042788",
            "WVWZZZ1KZ6W000001",
            "wvwzzz1kz6w000001 ",
            "1M8GDM9AXKP04278O",
        ]
    ),
    "model_year": st.integers(1900, 2200).map(str) | st.sampled_from(["2025.0", "-1", "MY25"]),
    "fuel_type": st.sampled_from(["electric", "DIESEL", "plug_in_hybrid", "steam"]),
    "region": st.sampled_from(["EU", "na", "Mars"]),
    "country": st.sampled_from(["DE", "us", "DEU"]),
    "manufactured_at": st.sampled_from(
        ["2025-03-01T10:00:00Z", "2025-03-01T10:00:00", "2025-03-03T10:00:00+02:00", "soon"]
    ),
    "exported_at": st.sampled_from(["2025-03-02T00:00:00Z", "2025-03-02", "1990-01-01T00:00Z"]),
    "protocol": st.sampled_from(["CAN", "can_fd", "MOST", "USB"]),
    "serial": st.sampled_from(["BCM-000001", "BCM-000002", "DUP"]),
}
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | weird_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(weird_text, inner, max_size=3),
    max_leaves=5,
)


def _messy(draw: st.DrawFn, data: dict[str, Any], names: list[str], json_ok: bool) -> None:
    for name in draw(st.lists(st.sampled_from(names), max_size=3)):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            data.pop(name, None)
        elif choice == 1 and name in field_text:
            data[name] = draw(field_text[name])
        elif choice == 2 and json_ok:
            data[name] = draw(json_values)
        else:
            data[name] = draw(weird_text)


vehicle_names = [*CSV_HEADER[:10], "vehicle_public_key", "rxswin", "note", "paint"]
ecu_names = [
    "ecu_type",
    "serial",
    "hardware_part_number",
    "hardware_version",
    "protocol",
    "software_part_number",
    "software_version",
    "calibration_id",
]


@st.composite
def messy_vehicle(draw: st.DrawFn, json_ok: bool) -> dict[str, Any]:
    n = draw(st.integers(1, 4))
    data = vehicle(
        n, ecus=[ecu(f"BCM-{n:06d}"), ecu(f"BMS-{n:06d}", "BMS")][: draw(st.integers(0, 2))]
    )
    _messy(draw, data, vehicle_names, json_ok)
    for e in data["ecus"]:
        _messy(draw, e, ecu_names, json_ok)
    return data


@st.composite
def jsonl_lines(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["good", "messy", "messy", "prefix", "odd", "blank"]))
    if kind == "good":
        return json.dumps(vehicle(draw(st.integers(1, 4))))
    if kind == "messy":
        data = draw(messy_vehicle(json_ok=True))
        if draw(st.booleans()):
            data["ecus"] = draw(json_values)
        return json.dumps(data, ensure_ascii=draw(st.booleans()))
    if kind == "prefix":
        text = json.dumps(vehicle(draw(st.integers(1, 4))))
        return text[: draw(st.integers(0, len(text)))]
    if kind == "odd":
        return draw(
            weird_text
            | st.sampled_from(['{"ecus": 5}', '{"ecus": [1]}', "{}", '{"vin"'])
            | json_values.map(json.dumps)
        )
    return draw(st.sampled_from(["", " ", "\t"]))


def _csv_cells(data: dict[str, Any], header: list[str]) -> list[list[str]]:
    """The CSV rows of `data` for `header` (one per ECU, or one without ECU data)."""
    rows = []
    for e in data["ecus"] or [{}]:
        cells = {
            **{k: v for k, v in data.items() if k != "ecus"},
            **{("ecu_serial" if k == "serial" else k): v for k, v in e.items()},
        }
        rows.append(["" if cells.get(h) is None else str(cells.get(h)) for h in header])
    return rows


@st.composite
def csv_lines(draw: st.DrawFn, header: list[str]) -> str:
    kind = draw(st.sampled_from(["good", "messy", "messy", "prefix", "odd", "blank"]))
    if kind in ("good", "messy", "prefix"):
        if kind == "messy":
            data = draw(messy_vehicle(json_ok=False))
        else:
            data = vehicle(draw(st.integers(1, 4)))
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(_csv_cells(data, header))
        text = out.getvalue().rstrip("\n")
        if kind == "prefix":
            return text[: draw(st.integers(0, len(text)))]
        return text
    if kind == "odd":
        cells = draw(st.lists(weird_text, min_size=1, max_size=len(header) + 2))
        return ",".join(cells) if draw(st.booleans()) else ",".join(f'"{c}"' for c in cells)
    return draw(st.sampled_from(["", " ", ","]))


@st.composite
def csv_headers(draw: st.DrawFn) -> list[str]:
    header = list(CSV_HEADER) + draw(
        st.lists(
            st.sampled_from(["note", "paint", "rxswin", "vehicle_public_key"]),
            max_size=2,
            unique=True,
        )
    )
    change = draw(st.sampled_from(["none"] * 6 + ["shuffle", "shuffle", "drop", "repeat"]))
    if change == "shuffle":
        header = draw(st.permutations(header))
    elif change == "drop":
        header.pop(draw(st.integers(0, len(header) - 1)))
    elif change == "repeat":
        header.append(draw(st.sampled_from(header)))
    return list(header)


@st.composite
def exports(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        body = draw(st.lists(jsonl_lines(), max_size=8))
        first = draw(st.sampled_from(["good", "messy", "messy", "any", "csv header"]))
        if first == "good":
            body.insert(0, json.dumps(vehicle(draw(st.integers(1, 4)))))
        elif first == "messy":
            body.insert(0, json.dumps(draw(messy_vehicle(json_ok=True))))
        elif first == "csv header":
            body.insert(0, ",".join(CSV_HEADER))
    else:
        header = draw(csv_headers())
        body = [",".join(header), *draw(st.lists(csv_lines(header), max_size=8))]
        if draw(st.integers(0, 4)) == 0:
            body.insert(draw(st.integers(1, len(body))), draw(jsonl_lines()))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    text = newline.join(body) + draw(st.sampled_from(["", newline]))
    data = text.encode()
    if draw(st.booleans()):
        data = BOM + data
    if data and draw(st.integers(0, 7)) == 0:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + data[at:]
    if draw(st.integers(0, 4)) == 0:
        data = gz(data)
        if draw(st.booleans()):
            data = data[: draw(st.integers(2, len(data)))]
    return data


@settings(max_examples=300, deadline=None)
@given(exports(), st.sampled_from([300, 1024, MAX, MAX]))
def test_plausible_exports(data: bytes, max_line_bytes: int) -> None:
    exercise(data, max_line_bytes)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=6), st.booleans(), st.booleans())
def test_well_formed_exports_round_trip(numbers: list[int], as_csv: bool, compress: bool) -> None:
    vehicles = [vehicle(n) for n in dict.fromkeys(numbers)]
    data = csv_bytes(vehicles) if as_csv else jsonl(vehicles)
    if compress:
        data = gz(data)
    records = exercise(data, MAX)
    assert [r.fields["vin"] for r in records] == [v["vin"] for v in vehicles]
    assert all(validate_record(r, NA) is not None for r in records)
