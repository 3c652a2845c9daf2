"""Streaming readers for manufacturing exports: JSON Lines or CSV, plain or gzip.

The format is detected from the content, never from a file name. Each reader yields one
`RawRecord` per vehicle with the line it started on; defects of a single record become problems
on that record, defects of the whole file raise `ImportFileError`. Memory use is bounded by the
longest accepted line, whatever the file size.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from otacm.errors import ValidationFailed
from otacm.fleet.records import (
    ECU_FIELDS,
    KNOWN_VEHICLE_KEYS,
    OPTIONAL_ECU_FIELDS,
    VEHICLE_FIELDS,
    Problem,
    RawRecord,
)

# CSV names the ECU serial `ecu_serial`; JSON Lines calls it `serial` inside `ecus`.
CSV_HEADER = [
    *VEHICLE_FIELDS,
    *("ecu_serial" if f == "serial" else f for f in (*ECU_FIELDS, *OPTIONAL_ECU_FIELDS)),
]
CSV_ECU_COLUMNS = {
    "ecu_serial" if f == "serial" else f: f for f in (*ECU_FIELDS, *OPTIONAL_ECU_FIELDS)
}
REQUIRED_CSV_COLUMNS = [c for c in CSV_HEADER if c != "calibration_id"]
GZIP_MAGIC = b"\x1f\x8b"
# Bytes read from the file at a time.
BLOCK_BYTES = 1 << 20


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
    # JSON Lines: the numbered lines `records` reads; read one or the other, not both.
    lines: Iterator[tuple[int, bytes | None]] | None = None


class _BrokenStream(Exception):
    """The compressed input ended early or is corrupt."""


class _Gunzip(io.RawIOBase):
    """Gzip decompression that hands out every byte decoded before a broken stream is noticed.

    `gzip.GzipFile` drops the bytes it decompressed in the read that fails, which would lose
    whole records before the point where a transfer was cut off. Output per read is bounded,
    so a small file that inflates enormously never fills memory.
    """

    _OUTPUT = 1 << 20

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self._inflater = zlib.decompressobj(wbits=31)
        self._pending = b""
        self._held = b""
        self._broken: str | None = None
        self._done = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> None:
        inflater = self._inflater
        data = inflater.unconsumed_tail
        if not data:
            if inflater.eof and inflater.unused_data:
                # Another gzip member follows (concatenated files are valid gzip).
                data, self._inflater = inflater.unused_data, zlib.decompressobj(wbits=31)
            elif chunk := self._source.read(1 << 16):
                # The last 8 bytes may be the trailer (CRC and size): holding them back until
                # more arrives keeps a failed check from taking the data before it along.
                data = self._held + chunk
                data, self._held = data[:-8], data[-8:]
            else:
                data, self._held = self._held, b""
                if not data:
                    if inflater.eof:
                        self._done = True
                    else:
                        self._broken = "the gzip data ends in the middle of the file"
                    return
        try:
            self._pending = self._inflater.decompress(data, self._OUTPUT)
        except zlib.error as exc:
            self._broken = f"the gzip data is corrupt: {exc}"

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            if self._broken:
                raise _BrokenStream(self._broken)
            if self._done:
                return 0
            self._fill()
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def open_export(stream: IO[bytes], max_line_bytes: int) -> ExportReader:
    """Detect the encoding of `stream` and return a reader over its vehicle records.

    Raises:
        ImportFileError: no record can be read at all (empty, no usable CSV header, the
            compressed data broken before the first line).
    """
    buffered: Any = stream if isinstance(stream, io.BufferedReader) else io.BufferedReader(stream)
    compressed = buffered.peek(2)[:2] == GZIP_MAGIC
    source: Any = io.BufferedReader(_Gunzip(buffered), 1 << 16) if compressed else buffered
    lines = _bounded_lines(source, max_line_bytes)
    # Look at the first line that holds anything: '{' opens JSON Lines, else a CSV header.
    leading: list[tuple[int, bytes | None]] = []
    try:
        for number, raw in lines:
            leading.append((number, raw))
            if raw is None:
                raise ImportFileError(
                    f"line {number}: the first line is longer than {max_line_bytes} bytes",
                    line=number,
                )
            if raw.removeprefix(b"\xef\xbb\xbf").strip():
                break
        else:
            raise ImportFileError("the file is empty: it holds no vehicle records")
    except TruncatedFile as exc:
        raise ImportFileError(f"{exc.reason}, before its first record") from None
    first = leading[-1][1] or b""
    rest = itertools.chain(leading, lines)
    if first.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{"):
        return ExportReader("jsonl", compressed, jsonl_records(rest, max_line_bytes), rest)
    return ExportReader("csv", compressed, _csv_records(rest, len(leading), max_line_bytes))


def _bounded_lines(source: io.BufferedReader, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the newline) for each line; None for a line longer than
    `max_bytes`, which is skipped without being held in memory.

    Reads large blocks and splits them: one call per megabyte instead of one per line.
    """
    number = 0
    partial = b""
    overlong = False  # inside a line already reported as too long
    try:
        # read1: at most one read underneath, so a broken gzip stream loses no decoded bytes.
        while block := source.read1(BLOCK_BYTES):
            lines = (partial + block).split(b"\n")
            partial = lines.pop()
            for raw in lines:
                if overlong:
                    overlong = False
                    continue
                number += 1
                yield number, (raw if len(raw) <= max_bytes else None)
            if len(partial) > max_bytes:
                if not overlong:
                    number += 1
                    yield number, None
                    overlong = True
                partial = b""
    except _BrokenStream as exc:
        raise TruncatedFile(str(exc), number) from None
    if partial and not overlong:
        number += 1
        yield number, partial if len(partial) <= max_bytes else None


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


def _json_problem(raw: bytes, number: int) -> Problem | None:
    """Why a line that orjson refused is not a JSON object (or None for a blank line)."""
    text, problem = _decode(raw, number)
    if problem:
        return problem
    if not text.strip():
        return None
    try:
        json.loads(text)
    except RecursionError:
        return Problem(None, "not valid JSON: nested too deeply")
    except ValueError as exc:
        where = f" at column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        return Problem(None, f"not valid JSON: {getattr(exc, 'msg', exc)}{where}")
    return Problem(None, "not valid JSON: numbers or nesting beyond what a record may hold")


def jsonl_records(lines: Iterator[tuple[int, bytes | None]], max_bytes: int) -> Iterator[RawRecord]:
    loads = orjson.loads
    for number, raw in lines:
        if raw is None:
            yield RawRecord(number, {}, problems=[_too_long(max_bytes)])
            continue
        try:
            data = loads(raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw)
        except orjson.JSONDecodeError:
            # orjson is fast but terse; the standard library explains what is wrong.
            problem = _json_problem(raw, number)
            if problem:
                yield RawRecord(number, {}, problems=[problem])
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
        yield text + "\n"


def _csv_records(
    lines: Iterator[tuple[int, bytes | None]], header_line: int, max_bytes: int
) -> Iterator[RawRecord]:
    """Reads and checks the header now, so that a bad one fails before any record is taken."""
    flagged: dict[int, Problem] = {}
    # A process-wide setting of the csv module; every import sets the configured limit.
    csv.field_size_limit(max_bytes)
    reader = csv.reader(_text_lines(lines, flagged, max_bytes), strict=True)
    where = f"line {header_line}: the CSV header"
    try:
        header: list[str] = []
        while not header:
            header = [h.strip() for h in next(reader)]
    except (StopIteration, TruncatedFile):
        raise ImportFileError("the file is empty: it holds no vehicle records") from None
    except csv.Error as exc:
        raise ImportFileError(f"{where} cannot be read: {exc}", line=header_line) from None
    if header_line in flagged:
        raise ImportFileError(f"{where} {flagged[header_line].reason}", line=header_line)
    missing = [c for c in REQUIRED_CSV_COLUMNS if c not in header]
    if missing:
        raise ImportFileError(
            f"{where} lacks the column(s) {', '.join(missing)}",
            line=header_line,
            field=missing[0],
        )
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise ImportFileError(f"{where} repeats {', '.join(duplicated)}", line=header_line)
    return _csv_rows(reader, header, flagged)


def _csv_rows(reader: Any, header: list[str], flagged: dict[int, Problem]) -> Iterator[RawRecord]:
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
        # A quoted value may span lines: a defect on any of them spoils the row.
        defect = next(
            (flagged.pop(n) for n in range(start, previous_end + 1) if n in flagged), None
        )
        if defect:
            if current is not None:
                yield current
                current = current_key = None
            yield RawRecord(start, {}, problems=[defect])
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
                name: row[i]
                for i, name in vehicle_columns
                if row[i] != "" or name in KNOWN_VEHICLE_KEYS
            }
            current, current_key, current_values = RawRecord(start, fields), key, values
        elif values != current_values:
            differing = next(
                name
                for (i, name), a, b in zip(vehicle_columns, values, current_values, strict=True)
                if a != b
            )
            current.problems.append(
                Problem(
                    differing,
                    f"differs from the vehicle's first row (line {current.line})",
                    len(current.ecus),
                )
            )
        ecu = {name: row[i] for i, name in ecu_columns}
        if any(v.strip() for v in ecu.values()):
            current.ecus.append(ecu)
            current.ecu_lines.append(start)
        elif current.ecus or start != current.line:
            current.problems.append(
                Problem("ecu_type", "an ECU row without ECU data", len(current.ecus))
            )
            current.ecus.append(ecu)
            current.ecu_lines.append(start)
    if current is not None:
        yield current


def csv_column(field: str | None) -> str | None:
    """The CSV column a record field is read from."""
    return "ecu_serial" if field == "serial" else field
