"""Streaming readers for manufacturing exports: JSON Lines or CSV, plain or gzip.

The format is detected from the content, never from a file name. Each reader yields one
`RawRecord` per vehicle with the line it started on; defects of a single record become problems
on that record, defects of the whole file raise `ImportFileError`. Memory use is bounded by the
longest accepted line, whatever the file size.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from otacm.errors import ValidationFailed
from otacm.fleet.records import (
    ECU_FIELDS,
    KNOWN_VEHICLE_KEYS,
    OPTIONAL_ECU_FIELDS,
    VEHICLE_FIELDS,
    Problem,
    RawRecord,
)

CSV_HEADER = (
    "vin,engine_number,chassis_number,model,model_year,fuel_type,region,country,"
    "manufactured_at,exported_at,ecu_type,ecu_serial,hardware_part_number,hardware_version,"
    "protocol,software_part_number,software_version,calibration_id"
).split(",")
# CSV names the ECU serial `ecu_serial`; JSON Lines calls it `serial` inside `ecus`.
CSV_ECU_COLUMNS = {"ecu_serial" if f == "serial" else f: f for f in (*ECU_FIELDS,
                                                                       *OPTIONAL_ECU_FIELDS)}
REQUIRED_CSV_COLUMNS = [c for c in CSV_HEADER if c != "calibration_id"]
GZIP_MAGIC = b"\x1f\x8b"


class ImportFileError(ValidationFailed):
    code = "import_file_invalid"


class TruncatedFile(Exception):
    """The compressed stream ended (or broke) in the middle; raised after the last whole line."""

    def __init__(self, reason: str, line: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line = line


@dataclass(slots=True)
class ExportReader:
    format: str  # "jsonl" or "csv"
    compressed: bool
    records: Iterator[RawRecord]


def open_export(stream: IO[bytes], max_line_bytes: int) -> ExportReader:
    """Detect the encoding of `stream` and return a reader over its vehicle records."""
    buffered = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(
        stream  # type: ignore[arg-type]
    )
    compressed = buffered.peek(2)[:2] == GZIP_MAGIC
    source: IO[bytes] = buffered
    if compressed:
        source = io.BufferedReader(gzip.GzipFile(fileobj=buffered, mode="rb"))  # type: ignore[arg-type]
    try:
        head = source.peek(4096)[:4096]  # type: ignore[attr-defined]
    except (OSError, EOFError, zlib.error) as exc:
        raise ImportFileError(f"the gzip stream cannot be read: {exc}") from None
    text_head = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not text_head:
        raise ImportFileError("the file is empty: it holds no vehicle records")
    lines = _bounded_lines(source, max_line_bytes)
    if text_head.startswith(b"{"):
        return ExportReader("jsonl", compressed, _jsonl_records(lines, max_line_bytes))
    return ExportReader("csv", compressed, _csv_records(lines, max_line_bytes))


def _bounded_lines(source: IO[bytes], max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) for each line; None for a line longer than `max_bytes`."""
    number = 0
    try:
        while raw := source.readline(max_bytes + 1):
            number += 1
            if len(raw) > max_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):
                    raw = source.readline(max_bytes + 1)
                yield number, None
                continue
            yield number, raw
    except EOFError:
        raise TruncatedFile("the compressed file ends in the middle of its data", number) from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise TruncatedFile(f"the compressed data is corrupt: {exc}", number) from None


def _decode(raw: bytes, number: int) -> tuple[str, Problem | None]:
    if number == 1:
        raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return (
            raw.decode("utf-8", "replace"),
            Problem(None, f"is not valid UTF-8 (byte {exc.start + 1} of the line)"),
        )


def _too_long(max_bytes: int) -> Problem:
    return Problem(None, f"the line is longer than {max_bytes} bytes")


def _jsonl_records(
    lines: Iterator[tuple[int, bytes | None]], max_bytes: int
) -> Iterator[RawRecord]:
    loads = json.loads
    for number, raw in lines:
        if raw is None:
            yield RawRecord(number, {}, problems=[_too_long(max_bytes)])
            continue
        text, problem = _decode(raw, number)
        if problem:
            yield RawRecord(number, {}, problems=[problem])
            continue
        if not text.strip():
            continue
        try:
            data = loads(text)
        except ValueError as exc:
            reason = getattr(exc, "msg", str(exc))
            column = getattr(exc, "colno", None)
            where = f" at column {column}" if column else ""
            yield RawRecord(number, {}, problems=[Problem(None, f"not valid JSON: {reason}{where}")])
            continue
        if not isinstance(data, dict):
            yield RawRecord(number, {}, problems=[Problem(None, "a line must hold a JSON object")])
            continue
        ecus = data.pop("ecus", [])
        record = RawRecord(number, data)
        if not isinstance(ecus, list) or not all(isinstance(e, dict) for e in ecus):
            record.problems.append(Problem("ecus", "must be a list of ECU objects"))
        else:
            record.ecus = ecus
            record.ecu_lines = [number] * len(ecus)
        yield record


def _text_lines(
    lines: Iterator[tuple[int, bytes | None]], flagged: dict[int, Problem], max_bytes: int
) -> Iterator[str]:
    """Decoded lines for the csv module; undecodable or overlong lines are flagged by number."""
    for number, raw in lines:
        if raw is None:
            flagged[number] = _too_long(max_bytes)
            yield "\n"
            continue
        text, problem = _decode(raw, number)
        if problem:
            flagged[number] = problem
        yield text


def _csv_records(
    lines: Iterator[tuple[int, bytes | None]], max_bytes: int
) -> Iterator[RawRecord]:
    flagged: dict[int, Problem] = {}
    csv.field_size_limit(max_bytes)
    reader = csv.reader(_text_lines(lines, flagged, max_bytes), strict=True)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise ImportFileError("the file is empty: it holds no vehicle records") from None
    except csv.Error as exc:
        raise ImportFileError(f"line 1: the CSV header cannot be read: {exc}") from None
    if 1 in flagged:
        raise ImportFileError(f"line 1: the CSV header {flagged[1].reason}")
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in header]
    if missing:
        raise ImportFileError(
            f"line 1: the CSV header lacks the column(s) {', '.join(missing)}",
            line=1, field=missing[0],
        )
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise ImportFileError(f"line 1: the CSV header repeats {', '.join(duplicated)}", line=1)
    width = len(header)
    vin_index = header.index("vin")
    vehicle_columns = [(i, c) for i, c in enumerate(header) if c not in CSV_ECU_COLUMNS]
    ecu_columns = [(i, CSV_ECU_COLUMNS[c]) for i, c in enumerate(header) if c in CSV_ECU_COLUMNS]

    current: RawRecord | None = None
    current_key: str | None = None
    current_values: list[str] = []
    previous_end = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            start, previous_end = previous_end + 1, reader.line_num
            if current is not None:
                yield current
                current = current_key = None
            yield RawRecord(start, {}, problems=[Problem(None, f"not valid CSV: {exc}")])
            continue
        start, previous_end = previous_end + 1, reader.line_num
        if start in flagged:
            if current is not None:
                yield current
                current = current_key = None
            yield RawRecord(start, {}, problems=[flagged.pop(start)])
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if len(row) != width:
            if current is not None:
                yield current
                current = current_key = None
            yield RawRecord(
                start, {}, problems=[Problem(None, f"has {len(row)} fields, the header {width}")]
            )
            continue
        key = row[vin_index].strip().upper()
        values = [row[i] for i, _ in vehicle_columns]
        if current is None or key != current_key or not key:
            if current is not None:
                yield current
            # An empty cell of an extra column means "no such attribute" for this vehicle.
            fields: dict[str, Any] = {
                name: row[i] for i, name in vehicle_columns
                if row[i] != "" or name in KNOWN_VEHICLE_KEYS
            }
            current, current_key, current_values = RawRecord(start, fields), key, values
        elif values != current_values:
            differing = next(
                name for (i, name), a, b in zip(vehicle_columns, values, current_values,
                                                strict=True) if a != b
            )
            current.problems.append(
                Problem(differing, f"differs from the vehicle's first row (line {current.line})",
                        len(current.ecus))
            )
        ecu = {name: row[i] for i, name in ecu_columns}
        if any(v.strip() for v in ecu.values()):
            current.ecus.append(ecu)
            current.ecu_lines.append(start)
        elif current.ecus or start != current.line:
            current.problems.append(Problem("ecu_type", "an ECU row without ECU data",
                                            len(current.ecus)))
            current.ecus.append(ecu)
            current.ecu_lines.append(start)
    if current is not None:
        yield current


def csv_column(field: str | None) -> str | None:
    """The CSV column a record field is read from."""
    return "ecu_serial" if field == "serial" else field


__all__ = [
    "CSV_HEADER",
    "VEHICLE_FIELDS",
    "ExportReader",
    "ImportFileError",
    "TruncatedFile",
    "csv_column",
    "open_export",
]
