"""The target query language: hawkBit-style FIQL/RSQL over the fleet registry.

    model==Aurora;fuel_type=in=(electric,hybrid);region==EU;ecu.BCM.hardware_version=in=(B1,B2)

`parse` reads a query with a Lark grammar, checks what it means (selectors, operators, enum
values, numbers, limits) and returns a canonical AST of `And`, `Or` and `Comparison` nodes;
`to_text` writes an AST back as a query. `to_condition` compiles an AST into a SQLAlchemy
condition over `Vehicle`: every value goes into a bound parameter, never into SQL text. Every
problem is a `QueryError` naming the 0-based position and what could have stood there.

The grammar, the selectors and the semantics of ECU comparisons are documented in
docs/targeting.md ("Target selection").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedToken
from sqlalchemy import ColumnElement, Text, and_, case, cast, func, not_, or_, select, true

from otacm.errors import ValidationFailed
from otacm.fleet.models import Ecu, Vehicle
from otacm.fleet.records import FuelType, Protocol, Region, VehicleStatus

__all__ = [
    "MAX_DEPTH",
    "MAX_QUERY_LENGTH",
    "MAX_VALUES",
    "And",
    "Comparison",
    "Node",
    "Or",
    "QueryError",
    "Wildcard",
    "attribute_text",
    "ecu_match",
    "parse",
    "to_condition",
    "to_text",
]

MAX_QUERY_LENGTH = 10_000  # characters
MAX_DEPTH = 16  # parentheses open at once
MAX_VALUES = 1_000  # values in one =in= or =out= list

EQ, NE, IN, OUT, LT, LE, GT, GE = "==", "!=", "=in=", "=out=", "=lt=", "=le=", "=gt=", "=ge="
OPERATORS = (EQ, NE, IN, OUT, LT, LE, GT, GE)
ALIASES = {"<": LT, "<=": LE, ">": GT, ">=": GE}
_SINGLE = (EQ, NE, LT, LE, GT, GE)  # operators that take exactly one value
_MATCHING = (EQ, NE, IN, OUT)


class QueryError(ValidationFailed):
    """A query that cannot be read or means nothing: where, and what could stand there."""

    code = "invalid_query"

    def __init__(self, detail: str, *, position: int, expected: Sequence[str]) -> None:
        super().__init__(detail, field="query", position=position, expected=list(expected))
        self.position = position
        self.expected = list(expected)


# -- the AST ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Wildcard:
    """A value with `*` wildcards: the literal texts between the stars, in order.

    `Aur*` is ("Aur", ""), `*ora` is ("", "ora"), `*ro*` is ("", "ro", ""). Runs of stars are
    one star, so no part but the first and last is empty.
    """

    parts: tuple[str, ...]


Value: TypeAlias = str | Wildcard


@dataclass(frozen=True, slots=True)
class Comparison:
    """`selector operator values`, canonical: e.g. ("ecu.BCM.hardware_version", "=in=",
    ("B1", "B2")). `position` is where it starts in the query (for errors; not compared)."""

    selector: str
    operator: str
    values: tuple[Value, ...]
    position: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class And:
    children: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    children: tuple[Node, ...]


Node: TypeAlias = And | Or | Comparison


# -- selectors -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Spec:
    """What values a selector takes: free text, a whole number, one of `choices`, or a
    two-letter country code."""

    kind: Literal["text", "number", "choice", "country"]
    choices: tuple[str, ...] = ()
    upper: bool = False
    nullable: bool = False

    @property
    def operators(self) -> tuple[str, ...]:
        return OPERATORS if self.kind == "number" else _MATCHING


_TEXT = _Spec("text")
VEHICLE_SELECTORS: dict[str, _Spec] = {
    "vin": _Spec("text", upper=True),
    "model": _TEXT,
    "model_year": _Spec("number"),
    "fuel_type": _Spec("choice", tuple(m.value for m in FuelType)),
    "region": _Spec("choice", tuple(m.value for m in Region)),
    "country": _Spec("country"),
    "status": _Spec("choice", tuple(m.value for m in VehicleStatus)),
    "engine_number": _TEXT,
    "chassis_number": _TEXT,
}
ECU_FIELDS: dict[str, _Spec] = {
    "hardware_part_number": _TEXT,
    "hardware_version": _TEXT,
    "software_version": _TEXT,
    "software_part_number": _TEXT,
    "protocol": _Spec("choice", tuple(m.value for m in Protocol)),
    "serial": _TEXT,
    "calibration_id": _Spec("text", nullable=True),
}
_ATTRIBUTE = _Spec("text", nullable=True)
SELECTORS = (*VEHICLE_SELECTORS, "attr.NAME", "ecu.TYPE.FIELD")
_ECU_TYPE = re.compile(r"[A-Za-z0-9_\-]{1,32}")
_MODEL_YEAR = re.compile(r"0*[0-9]{1,4}")


@dataclass(frozen=True, slots=True)
class _Target:
    selector: str  # canonical spelling
    spec: _Spec
    ecu_type: str | None = None  # set for ECU fields
    name: str = ""  # the vehicle column, ECU column or attribute name


def _target(selector: str) -> _Target:
    """Raises _Invalid for a selector that names nothing."""
    spec = VEHICLE_SELECTORS.get(selector)
    if spec is not None:
        return _Target(selector, spec, name=selector)
    if selector.startswith("attr."):
        name = selector[5:]
        if not name or len(name) > 100:
            raise _Invalid(f"{selector!r} names no attribute", ["attr.NAME"])
        return _Target(selector, _ATTRIBUTE, name=name)
    if selector.startswith("ecu."):
        parts = selector.split(".")
        if len(parts) != 3 or not _ECU_TYPE.fullmatch(parts[1]):
            raise _Invalid(f"{selector!r} is not ecu.TYPE.FIELD", ["ecu.TYPE.FIELD"])
        ecu_type, name = parts[1].upper(), parts[2]
        if name not in ECU_FIELDS:
            raise _Invalid(
                f"{name!r} is not a field of an ECU",
                [f"ecu.{ecu_type}.{f}" for f in ECU_FIELDS],
            )
        return _Target(f"ecu.{ecu_type}.{name}", ECU_FIELDS[name], ecu_type, name)
    raise _Invalid(f"unknown selector {selector!r}", SELECTORS)


class _Invalid(Exception):
    """A meaning problem, placed by the caller: message and what could stand there."""

    def __init__(self, message: str, expected: Sequence[str]) -> None:
        super().__init__(message)
        self.message, self.expected = message, list(expected)


def _normalised(target: _Target, operator: str, value: Value) -> Value:
    spec = target.spec
    if isinstance(value, Wildcard):
        if spec.kind != "text" or operator not in (EQ, NE):
            raise _Invalid(
                f"wildcards (*) apply only to == and != on text selectors, not to "
                f"{operator} on {target.selector} (write \\* in quotes for a star)",
                ["a value without *"],
            )
        return Wildcard(tuple(p.upper() for p in value.parts)) if spec.upper else value
    if spec.kind == "number":
        text = value.strip()
        if not _MODEL_YEAR.fullmatch(text):
            raise _Invalid(f"{target.selector} takes a whole number, not {value!r}", ["a year"])
        return str(int(text))
    if spec.kind == "choice":
        for choice in spec.choices:
            if value.casefold() == choice.casefold():
                return choice
        raise _Invalid(f"{value!r} is not a {target.selector}", spec.choices)
    if spec.kind == "country":
        if len(value) != 2 or not value.isascii() or not value.isalpha():
            raise _Invalid(f"{value!r} is not a two-letter ISO 3166 code", ["a country code"])
        return value.upper()
    return value.upper() if spec.upper else value


def _check(
    selector: str, operator: str, values: Sequence[Value], where: Sequence[int], *, listed: bool
) -> Comparison:
    """The canonical comparison, or QueryError. `where` holds the positions of the selector,
    the operator, the list (if `listed`) and each value."""
    try:
        target = _target(selector)
    except _Invalid as exc:
        raise _error(where[0], exc.message, exc.expected) from None
    canonical = ALIASES.get(operator, operator.lower())
    if canonical not in OPERATORS:
        spellings = (*OPERATORS, *ALIASES)
        raise _error(where[1], f"unknown operator {operator!r}", spellings)
    if canonical not in target.spec.operators:
        raise _error(
            where[1], f"{operator} does not apply to {target.selector}", target.spec.operators
        )
    value_at = where[3:] if listed else where[2:]
    if canonical in _SINGLE and (listed or len(values) != 1):
        hint = "; for a list of values use =in=" if canonical in (EQ, NE) else ""
        raise _error(where[2], f"{operator} takes a single value{hint}", ["a value"])
    if len(values) > MAX_VALUES:
        raise _error(value_at[MAX_VALUES], f"a list holds at most {MAX_VALUES} values", [")"])
    normalised = []
    for value, position in zip(values, value_at, strict=True):
        try:
            normalised.append(_normalised(target, canonical, value))
        except _Invalid as exc:
            raise _error(position, exc.message, exc.expected) from None
    return Comparison(target.selector, canonical, tuple(normalised), where[0])


def _error(position: int, message: str, expected: Sequence[str]) -> QueryError:
    return QueryError(f"at position {position}: {message}", position=position, expected=expected)


# -- the grammar -----------------------------------------------------------------------------

_GRAMMAR = r"""
?start: disjunction
?disjunction: conjunction ((_COMMA | _OR) conjunction)*
?conjunction: _atom ((_SEMICOLON | _AND) _atom)*
_atom: comparison | _LPAR disjunction _RPAR
comparison: SELECTOR OPERATOR (_value | values)
values: _LPAR _value (_COMMA _value)* _RPAR
_value: UNQUOTED | DOUBLE_QUOTED | SINGLE_QUOTED

SELECTOR: /[^\W\d][\w.:\-]*/
OPERATOR: /==|!=|<=|>=|<|>|=[A-Za-z]*=/
UNQUOTED: /[^\s"'();,=!<>\\]+/
DOUBLE_QUOTED: /"(?:[^"\\]|\\.)*"/s
SINGLE_QUOTED: /'(?:[^'\\]|\\.)*'/s
_SEMICOLON: ";"
_COMMA: ","
_AND: /(?<=\s)and(?=[\s(]|$)/i
_OR: /(?<=\s)or(?=[\s(]|$)/i
_LPAR: "("
_RPAR: ")"
%ignore /\s+/
"""

_PARSER = Lark(_GRAMMAR, parser="lalr", lexer="contextual", maybe_placeholders=False)

# What each terminal is called in an error, in the order errors list them.
_READABLE: dict[str, tuple[str, ...]] = {
    "SELECTOR": ("a selector",),
    "OPERATOR": (*OPERATORS, *ALIASES),
    "UNQUOTED": ("a value",),
    "DOUBLE_QUOTED": ("a value",),
    "SINGLE_QUOTED": ("a value",),
    "_LPAR": ("(",),
    "_RPAR": (")",),
    "_SEMICOLON": (";",),
    "_AND": ("and",),
    "_COMMA": (",",),
    "_OR": ("or",),
    "$END": ("the end of the query",),
}


def _expected(terminals: set[str]) -> list[str]:
    names: list[str] = []
    for terminal, readable in _READABLE.items():
        if terminal in terminals:
            names.extend(n for n in readable if n not in names)
    return names


def _syntax_error(query: str, position: int, accepted: Sequence[Token]) -> QueryError:
    """The error for a query read up to `position`, where the parser took `accepted`."""
    # A parser that refused a token may already have reduced on it; one fed only the tokens
    # it took knows everything that could have followed them.
    parser = _PARSER.parse_interactive("")
    for token in accepted:
        parser.feed_token(token)
    expected = _expected(parser.accepts())  # type: ignore[no-untyped-call]
    if position < len(query) and query[position] in "\"'" and "a value" in expected:
        quote = query[position]
        return _error(position, f"the value quoted here has no closing {quote}", [quote])
    wanted = " or ".join(expected) if len(expected) <= 2 else "one of " + ", ".join(expected)
    message = f"expected {wanted}"
    if accepted:
        message += f" after {accepted[-1].value!r}"
    found = re.match(r"[^\s]{1,20}", query[position:])
    message += f", found {found.group()!r}" if found else ", found the end of the query"
    return _error(position, message, expected)


def parse(query: str) -> Node:
    """The canonical AST of `query`; raises QueryError."""
    if len(query) > MAX_QUERY_LENGTH:
        raise _error(
            MAX_QUERY_LENGTH,
            f"the query is {len(query)} characters long, at most {MAX_QUERY_LENGTH}",
            [],
        )
    parser = _PARSER.parse_interactive(query)
    # iter_parse hands out each token, then feeds it to the parser.
    tokens: list[Token] = []
    depth = 0
    try:
        for token in parser.iter_parse():
            tokens.append(token)
            if token.type == "_LPAR":
                depth += 1
                if depth > MAX_DEPTH:
                    raise _error(
                        token.start_pos or 0,
                        f"parentheses nest at most {MAX_DEPTH} deep",
                        ["a selector"],
                    )
            elif token.type == "_RPAR":
                depth -= 1
        tree = parser.feed_eof(tokens[-1] if tokens else None)  # type: ignore[no-untyped-call]
    except UnexpectedCharacters as exc:
        raise _syntax_error(query, exc.pos_in_stream or 0, tokens) from None
    except UnexpectedToken as exc:
        culprit = exc.token
        if culprit.type == "$END":
            raise _syntax_error(query, len(query), tokens) from None
        # The parser refused the last token read, or the lexer found one that cannot stand
        # here (then it was never handed out).
        refused = bool(tokens) and tokens[-1].start_pos == culprit.start_pos
        accepted = tokens[:-1] if refused else tokens
        raise _syntax_error(query, culprit.start_pos or 0, accepted) from None
    return _Builder(query).node(tree)


class _Builder:
    """Parse tree to canonical AST: values unquoted, comparisons checked, nesting flattened."""

    def __init__(self, query: str) -> None:
        self.query = query

    def node(self, tree: Tree[Token]) -> Node:
        if tree.data == "comparison":
            return self.comparison(tree.children)
        kind = And if tree.data == "conjunction" else Or
        children: list[Node] = []
        for child in tree.children:
            assert isinstance(child, Tree)
            built = self.node(child)
            # a;(b;c) is a;b;c: one level per operator keeps the AST canonical.
            children.extend(built.children if isinstance(built, kind) else (built,))
        return kind(tuple(children))

    def comparison(self, children: Sequence[Token | Tree[Token]]) -> Comparison:
        selector, operator, argument = children
        assert isinstance(selector, Token) and isinstance(operator, Token)
        where = [selector.start_pos or 0, operator.start_pos or 0]
        listed = isinstance(argument, Tree)
        if isinstance(argument, Tree):
            tokens = [t for t in argument.children if isinstance(t, Token)]
            where.append(self.query.index("(", operator.end_pos or 0))
        else:
            tokens = [argument]
        where.extend(t.start_pos or 0 for t in tokens)
        values = [self.value(t) for t in tokens]
        return _check(str(selector), str(operator), values, where, listed=listed)

    @staticmethod
    def value(token: Token) -> Value:
        text = str(token)
        if token.type == "UNQUOTED":
            return _wildcard(text.split("*")) if "*" in text else text
        # Quoted: a backslash makes the next character literal, a bare star is a wildcard.
        parts, current, escaped = [], [], False
        for char in text[1:-1]:
            if escaped:
                current.append(char)
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == "*":
                parts.append("".join(current))
                current = []
            else:
                current.append(char)
        parts.append("".join(current))
        return _wildcard(parts) if len(parts) > 1 else parts[0]


def _wildcard(parts: Sequence[str]) -> Wildcard:
    inner = [p for p in parts[1:-1] if p]
    return Wildcard((parts[0], *inner, parts[-1]))


# -- back to text ----------------------------------------------------------------------------

_PLAIN = re.compile(r"[^\s\"'();,=!<>\\*]+")


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("*", "\\*")


def _value_text(value: Value) -> str:
    if isinstance(value, Wildcard):
        if all(not p or _PLAIN.fullmatch(p) for p in value.parts):
            return "*".join(value.parts)
        return '"' + "*".join(_quoted(p) for p in value.parts) + '"'
    return value if _PLAIN.fullmatch(value) else f'"{_quoted(value)}"'


def to_text(node: Node) -> str:
    """`node` as a query that parses back to the same AST."""
    if isinstance(node, Comparison):
        if node.operator in (IN, OUT):
            values = "(" + ",".join(_value_text(v) for v in node.values) + ")"
        else:
            values = _value_text(node.values[0])
        return f"{node.selector}{node.operator}{values}"
    if isinstance(node, And):
        return ";".join(
            f"({to_text(c)})" if isinstance(c, Or) else to_text(c) for c in node.children
        )
    return ",".join(to_text(c) for c in node.children)


# -- to SQL ----------------------------------------------------------------------------------


def ecu_match(ecu_type: str, conditions: Sequence[ColumnElement[bool]]) -> ColumnElement[bool]:
    """Vehicles with a fitted ECU of `ecu_type` meeting every condition (one and the same ECU).

    Written `vehicles.id IN (SELECT vehicle_id FROM ecus WHERE ...)` rather than as a
    correlated EXISTS: PostgreSQL plans both as the same semi-join, but SQLite runs an EXISTS
    once per vehicle through ix_ecus_vehicle_id (a full scan of the fleet when nothing else
    narrows it), while the IN list is read once from the (ecu_type, ...) indexes.
    """
    fitted = select(Ecu.vehicle_id).where(
        Ecu.ecu_type == ecu_type, Ecu.removed_at.is_(None), *conditions
    )
    return Vehicle.id.in_(fitted)


def attribute_text(name: str, dialect_name: str) -> ColumnElement[Any]:
    """The vehicle attribute `name` as text, alike on both engines: strings as they are,
    numbers as written, booleans as true/false, a missing attribute or null as NULL.

    SQLite reads it through json_each, not a JSON path: the importer stores keys with JSON
    escapes (non-ASCII, quotes), which json_extract paths do not match.
    """
    if dialect_name == "postgresql":
        as_text: ColumnElement[Any] = Vehicle.attributes[name].as_string()
        return as_text
    each = func.json_each(Vehicle.attributes).table_valued("key", "type", "atom")
    as_text = case(
        (each.c.type == "true", "true"),
        (each.c.type == "false", "false"),
        else_=cast(each.c.atom, Text),
    )
    return select(as_text).where(each.c.key == name).scalar_subquery()


def _pattern(column: Any, value: Wildcard, dialect_name: str) -> ColumnElement[bool]:
    """Case-sensitive wildcard match on both engines: GLOB on SQLite (its LIKE ignores case),
    LIKE with an explicit escape character elsewhere."""
    if dialect_name == "sqlite":
        glob = "*".join(re.sub(r"([*?\[])", r"[\1]", p) for p in value.parts)
        matched: ColumnElement[bool] = column.op("GLOB", is_comparison=True)(glob)
        return matched
    like = "%".join(re.sub(r"([%_\\])", r"\\\1", p) for p in value.parts)
    return column.like(like, escape="\\")  # type: ignore[no-any-return]


_VIN_PREFIX = re.compile(r"[A-HJ-NPR-Z0-9]{1,16}")


def _matches(column: Any, value: Value, dialect_name: str) -> ColumnElement[bool]:
    if not isinstance(value, Wildcard):
        equal: ColumnElement[bool] = column == value
        return equal
    matched = _pattern(column, value, dialect_name)
    prefix = value.parts[0]
    if column is Vehicle.vin and value.parts[1:] == ("",) and _VIN_PREFIX.fullmatch(prefix):
        # A range the unique VIN index serves on every engine and collation (neither LIKE nor
        # GLOB can use it there): VINs hold only digits and capitals, which sort alike.
        pad = 17 - len(prefix)
        return and_(column >= prefix + "0" * pad, column <= prefix + "Z" * pad, matched)
    return matched


def _comparison(node: Comparison, dialect_name: str) -> tuple[str | None, ColumnElement[bool]]:
    """The condition of one comparison, and the ECU type it is about (None: the vehicle)."""
    where = [node.position] * (2 + len(node.values))
    node = _check(node.selector, node.operator, node.values, where, listed=False)
    target = _target(node.selector)
    column: Any
    if target.ecu_type is not None:
        column = getattr(Ecu, target.name)
    elif target.spec is _ATTRIBUTE:
        column = attribute_text(target.name, dialect_name)
    else:
        column = getattr(Vehicle, target.name)
    values: list[Any] = list(node.values)
    if target.spec.kind == "number":
        values = [int(str(v)) for v in values]
    op = node.operator
    condition: ColumnElement[bool]
    if op in (LT, LE, GT, GE):
        compare = {LT: column.__lt__, LE: column.__le__, GT: column.__gt__, GE: column.__ge__}
        return target.ecu_type, compare[op](values[0])
    condition = _matches(column, values[0], dialect_name) if op in (EQ, NE) else column.in_(values)
    if op in (NE, OUT):
        # The complement, also where the value is missing (an attribute, a calibration id):
        # IS NOT TRUE holds for false and for NULL, and evaluates the value once.
        condition = condition.is_not(true()) if target.spec.nullable else not_(condition)
    return target.ecu_type, condition


def to_condition(node: Node, dialect_name: str) -> ColumnElement[bool]:
    """`node` as a condition over `Vehicle`, for `dialect_name` ("sqlite", "postgresql").

    Each ECU comparison asks for a fitted ECU of its type (`ecu_match`). Comparisons on one ECU
    type joined by AND at the same level are about one and the same ECU; joined by OR they
    share one `ecu_match` too, which changes nothing but the plan.
    """
    if isinstance(node, Comparison):
        ecu_type, condition = _comparison(node, dialect_name)
        return condition if ecu_type is None else ecu_match(ecu_type, [condition])
    join = and_ if isinstance(node, And) else or_
    parts: list[ColumnElement[bool]] = []
    per_ecu: dict[str, list[ColumnElement[bool]]] = {}
    for child in node.children:
        if isinstance(child, Comparison):
            ecu_type, condition = _comparison(child, dialect_name)
            if ecu_type is not None:
                per_ecu.setdefault(ecu_type, []).append(condition)
                continue
        else:
            condition = to_condition(child, dialect_name)
        parts.append(condition)
    parts.extend(ecu_match(t, [join(*c)]) for t, c in per_ecu.items())
    return join(*parts)
